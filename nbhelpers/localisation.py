"""Unsupervised localisation of words with information and attention maps, scored against the toy
world's ground truth (Kong et al.'s COCO-IT protocol, on the toy world).

For each two-object image and each word that names one object (its colour and its noun, when the
word is not shared by both objects), five maps are compared with the object's mask:
``cmi`` (i(x; word | rest) per pixel), ``cmi smoothed`` (the same, Gaussian-smoothed with σ =
``smooth`` latent pixels: each pixel's Monte-Carlo estimate is noisy, and a latent pixel's neighbours
share its object), ``mi`` (i(x; prompt) per pixel, the same for every word), ``attention`` (DAAM-style
cross-attention) and ``attention+cmi`` (mean of the two min-max-normalised maps). Scores: mIoU at
thresholds of the min-max-normalised map (the best of 50 in [0.1, 0.5] as
published, chosen on the evaluation set itself, and a threshold chosen on a separate calibration half,
which is the honest number), and the threshold-free AUROC.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .attention import word_attention_maps
from .info import prompt_information
from .metrics import auroc, iou, minmax, upsample
from .cache import cached

METHODS = ("cmi", "cmi smoothed", "mi", "attention", "attention+cmi", "whole image")
THRESHOLDS = np.linspace(0.1, 0.5, 50)


@dataclass
class LocalisationResult:
    """Per (image, word) records and a summary table (mean over records) per method."""

    records: list[dict]
    thresholds: np.ndarray
    iou_curves: dict  # method -> (n_records, n_thresholds)
    params: dict = field(default_factory=dict)

    def summary(self, kind: str | None = None):
        """pandas table: method, mIoU (best threshold on the evaluation set), mIoU (threshold chosen on
        the calibration half, scored on the other half), the chosen threshold, and mean AUROC.
        ``kind``: only "colour" words (their information covers the whole object) or only "noun"
        words (a shape word's information lies where the shapes differ: see :func:`shape_difference_mask`)."""
        import pandas as pd

        keep = np.array([kind is None or r.get("kind") == kind for r in self.records], bool)
        if not keep.any():
            raise ValueError(f"no records of kind {kind!r}; kinds are 'colour' and 'noun'")
        recs = [r for r, k in zip(self.records, keep) if k]
        n = len(recs)
        image = np.array([r["image"] for r in recs])
        calib, held = image % 2 == 0, image % 2 == 1  # halves by image (an image's words stay together)
        rows = []
        for m, all_curves in self.iou_curves.items():
            curves = all_curves[keep]
            best = int(np.argmax(curves.mean(0)))
            t_cal = int(np.argmax(curves[calib].mean(0))) if calib.any() else best
            rows.append({"method": m, "mIoU (best threshold)": float(curves.mean(0)[best]),
                         "mIoU (calibrated threshold)": float(curves[held, t_cal].mean()) if held.any() else np.nan,
                         "threshold": float(self.thresholds[t_cal]),
                         "AUROC": float(np.nanmean([r["auroc"][m] for r in recs]))})
        return pd.DataFrame(rows).set_index("method")

    def to_dict(self) -> dict:
        kinds = sorted({r.get("kind") for r in self.records} - {None})
        return {"summary": self.summary().reset_index().to_dict(orient="records"), "n_records": len(self.records),
                "by_kind": {k: self.summary(k).reset_index().to_dict(orient="records") for k in kinds},
                "params": self.params}


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


def score_maps(maps: dict[str, np.ndarray], mask: np.ndarray) -> tuple[dict, dict]:
    """IoU curve over THRESHOLDS and AUROC for each method's map (upsampled to the mask's size)."""
    curves, aucs = {}, {}
    for m, raw in maps.items():
        up = minmax(upsample(raw, mask.shape[0])) if raw is not None else np.ones(mask.shape)
        curves[m] = np.array([iou(up >= t, mask) for t in THRESHOLDS])
        aucs[m] = auroc(up, mask) if raw is not None else 0.5
    return curves, aucs


def shape_difference_mask(scene, i: int, size: int | None = None) -> np.ndarray:
    """Pixels of object ``i`` of ``scene`` that would change if it had another shape (same colour, size
    and place): where a shape word's information can lie. Its IoU with the object's own mask is the best
    mIoU a perfect shape-word map can reach against that mask (about 0.32 in the world: the shapes of
    one size share their interior)."""
    from dataclasses import replace

    from .toyworld import world

    size = size or world.IMAGE_SIZE
    own = scene.object_masks(size)[i]
    out = np.zeros_like(own)
    for shape in world.SHAPES:
        if shape != scene.objects[i].shape:
            objs = tuple(replace(o, shape=shape) if j == i else o for j, o in enumerate(scene.objects))
            out |= own ^ replace(scene, objects=objs).object_masks(size)[i]
    return out


@cached("studies")
def localisation_study(model, scenes, images: np.ndarray, masks: list[list[np.ndarray]], n: int = 32,
                       attention_n: int = 8, seed: int = 0, batch_size: int = 32,
                       smooth: float = 1.0, form: str = "orthogonal") -> LocalisationResult:
    """Localise the object words of each pair scene in its image. ``masks[k][i]`` is object i's mask in
    image k (exact for renders; the checker's blob for generations). ``smooth``: σ of the ``cmi
    smoothed`` map, in latent pixels (fixed in advance, not tuned on the evaluation set). ``form``:
    the maps' form; the orthogonal one (the published choice) is non-negative per pixel, which a
    map to threshold needs, and its value is not the pointwise information of the image."""
    from scipy.ndimage import gaussian_filter

    if not smooth > 0:
        raise ValueError(f"smooth must be a positive σ in latent pixels, got {smooth!r}")
    records, curves = [], {m: [] for m in METHODS}
    for k, (scene, image) in enumerate(tqdm(list(zip(scenes, images)), desc="localisation", leave=False)):
        words = localisation_words(scene)
        if not words:
            continue
        prompt = scene.caption()
        info = prompt_information(model, image, prompt, words=[w for w, _ in words], n=n, seed=seed + k,
                                  batch_size=batch_size, form=form)
        att = word_attention_maps(model, image, prompt, words=[w for w, _ in words], n=attention_n, seed=seed + k)
        for w, i in words:
            cmi = info.words[w].map
            maps = {"cmi": cmi, "cmi smoothed": gaussian_filter(cmi, smooth, mode="nearest"),
                    "mi": info.prompt.map, "attention": att[w],
                    "attention+cmi": (minmax(att[w]) + minmax(cmi)) / 2, "whole image": None}
            c, a = score_maps(maps, masks[k][i])
            for m in METHODS:
                curves[m].append(c[m])
            kind = "noun" if w == scene.objects[i].noun else "colour"
            if kind == "noun":  # where a shape word's information can lie (exact for renders)
                a["cmi vs shape difference"] = auroc(upsample(cmi, masks[k][i].shape[0]),
                                                     shape_difference_mask(scene, i, masks[k][i].shape[0]))
            records.append({"image": k, "word": w, "object": i, "prompt": prompt, "auroc": a, "kind": kind,
                            "cmi_value": info.words[w].value})
    return LocalisationResult(records, THRESHOLDS, {m: np.array(v) for m, v in curves.items()},
                              dict(n=n, attention_n=attention_n, seed=seed, n_images=len(scenes), smooth=smooth))


def world_pairs(n_images: int, seed: int = 0, split: str = "all"):
    """Two-object scenes of the world with at least one word naming one object, their renders and exact
    object masks: (scenes, images, masks)."""
    from .toyworld import world

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
    from .toyworld import world
    from .toyworld.checker import check_scene, match_readings

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
    return scenes[:n_images], np.stack(images[:n_images]), masks[:n_images]
