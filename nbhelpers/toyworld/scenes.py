"""The toy world as a client of the localisation and caption-scoring studies: which words of a pair
scene name one object, the exact object masks and shape-difference masks, the attribute- and
relation-swapped captions, and the image sets (exact renders, or generations the checker reads fully
right) the lessons and tests evaluate on.

    from nbhelpers import captions, localisation
    from nbhelpers.toyworld import scenes as world_scenes
    sc, images, masks = world_scenes.world_pairs(40)
    localisation.localisation_study(m, images, world_scenes.localisation_cases(sc, masks))
    captions.caption_scoring_study(m, images, world_scenes.caption_swaps(sc))
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..cache import cached
from ..localisation import LocalisationCase, WordTarget
from . import world
from .checker import check_scene, match_readings


def localisation_words(scene) -> list[tuple[str, int]]:
    """(word, object index) for words naming exactly one object of a pair scene."""
    words = []
    for i, o in enumerate(scene.objects):
        for w in (o.colour_word or o.colour).split() + [o.noun]:
            words.append((w, i))
    counts: dict[str, int] = {}
    for w, _ in words:
        counts[w] = counts.get(w, 0) + 1
    return [(w, i) for w, i in words if counts[w] == 1]


def shape_difference_mask(scene, i: int, size: int | None = None) -> np.ndarray:
    """Pixels of object ``i`` of ``scene`` that would change if it had another shape (same colour, size
    and place): where a shape word's information can lie. Its IoU with the object's own mask is the best
    mIoU a perfect shape-word map can reach against that mask (about 0.32 in the world: the shapes of
    one size share their interior)."""
    size = size or world.IMAGE_SIZE
    own = scene.object_masks(size)[i]
    out = np.zeros_like(own)
    for shape in world.SHAPES:
        if shape != scene.objects[i].shape:
            objs = tuple(replace(o, shape=shape) if j == i else o for j, o in enumerate(scene.objects))
            out |= own ^ replace(scene, objects=objs).object_masks(size)[i]
    return out


def localisation_cases(scenes, masks) -> list[LocalisationCase]:
    """One case per pair scene: its caption and, for every word naming one object, the object's mask
    (``masks[k][i]``: exact for renders, the checker's blob for generations), the kind of word
    ("colour" or "noun") and, for nouns, the shape-difference mask (scored as ``cmi vs shape difference``)."""
    cases = []
    for scene, m in zip(scenes, masks):
        targets = []
        for w, i in localisation_words(scene):
            noun = w == scene.objects[i].noun
            extra = {"shape difference": shape_difference_mask(scene, i, m[i].shape[0])} if noun else {}
            targets.append(WordTarget(w, m[i], "noun" if noun else "colour", i, extra))
        cases.append(LocalisationCase(scene.caption(), tuple(targets)))
    return cases


def caption_swaps(scenes) -> list[tuple[str, dict[str, str]]]:
    """Per pair scene: (its caption, {swap kind: swapped caption}) for the caption-scoring study
    (attribute binding and relation order; see :func:`nbhelpers.toyworld.world.swapped_captions`)."""
    return [(world.with_plain_red(s).caption(), world.swapped_captions(s)) for s in scenes]


def world_pairs(n_images: int, seed: int = 0, split: str = "all"):
    """Two-object scenes of the world with at least one word naming one object, their renders and exact
    object masks: (scenes, images, masks)."""
    pool = world.sample_scenes(2 * n_images + 10, seed=seed, split=split, kind="pair")
    scenes = [s for s in (world.with_plain_red(s) for s in pool) if localisation_words(s)][:n_images]
    return scenes, np.stack([s.render() for s in scenes]), [list(s.object_masks()) for s in scenes]


@cached("studies")
def generated_pairs(model, n_images: int, seed: int = 0, steps: int = 25, guidance: float = 3.0,
                    batch: int | None = None, split: str = "all"):
    """Generate pair scenes and keep those the checker reads fully right and with at least one word
    naming one object (as :func:`world_pairs`); masks are the checker's blobs. Returns (scenes, images, masks).
    ``batch``: generations per pipeline call (default: ``n_images`` plus an eighth, the model's measured
    failure rate being under 5 %, so one call usually suffices)."""
    scenes, images, masks = [], [], []
    batch = batch or n_images + n_images // 8 + 2
    pool = world.sample_scenes(4 * n_images, seed=seed, split=split, kind="pair")
    for start in range(0, len(pool), batch):
        chunk = [world.with_plain_red(s) for s in pool[start : start + batch]]
        gen = model.generate([s.caption() for s in chunk], seed=[seed + start + j for j in range(len(chunk))],
                             steps=steps, guidance=guidance)
        for s, img in zip(chunk, gen.images):
            if localisation_words(s) and all(all(r.values()) for r in check_scene(s, img)):
                scenes.append(s)
                images.append(img)
                masks.append([r.mask for r in match_readings(s, img)])
        if len(scenes) >= n_images:
            break
    if not scenes:
        raise NoWorldPicturesError(
            f"none of the {len(pool)} generations of {getattr(model, 'name', 'the model')!r} drew its caption as the world's "
            "checker reads it (a model that has not learned this world); use the world's own pictures "
            "(world_pairs, source='render') instead")
    return scenes[:n_images], np.stack(images[:n_images]), masks[:n_images]


class NoWorldPicturesError(RuntimeError):
    """A model's generations held no picture the world's checker reads as its caption."""
