"""The toy world's side of the concept and timestep methods: what a lesson or a test passes to
:mod:`nbhelpers.conceptor`, :mod:`nbhelpers.timesteps` and :mod:`nbhelpers.widgets` when the model is the
bundled toy model, and the world's ground truth to check their answers against.

- :data:`TEMPLATE` and :func:`vocabulary`: the concept template and the words the world's captions use
  (``conceptor.decompose(m, "nurse", template=TEMPLATE, vocabulary=vocabulary())``);
- :func:`expectation`, :func:`check`, :func:`rate`, :func:`colours`: what the world draws for a concept
  word, and whether the checker reads that in generated images;
- :func:`emergence_reader`: the checker as a reader for ``timesteps.concept_emergence(..., reader=...)``;
- :func:`describe`: a one-line reading of an image, for ``widgets.prompt_explorer(..., describe=...)``.
"""
from __future__ import annotations

import numpy as np

from . import world as W
from .checker import read_image
from .world import vocabulary  # noqa: F401  (the concept methods' ``vocabulary=`` for the toy model)

TEMPLATE = "a {}"  # the toy model's captions read "a big red circle ...": a concept goes where a noun phrase does


# --- what a concept word draws ------------------------------------------------------------------------------
def expectation(concept: str) -> dict:
    """What the toy world draws for a concept word: allowed ``colour``/``shape``/``size``/``position``
    values (sets; an attribute not named is free)."""
    w = concept.strip().lower()
    if w in W.COLOURS:
        return {"colour": {w}}
    if w == W.SYNONYM[0]:
        return {"colour": {W.SYNONYM[1]}}
    if w in W.GROUP_COLOURS:
        return {"colour": {W.GROUP_COLOURS[w]}}
    if w in W.SHAPES:
        return {"shape": {w}}
    if w in W.SIZES:
        return {"size": {w}}
    if w in W.SUBJECT_SHAPES:
        return {"shape": {W.SUBJECT_SHAPES[w]}, "colour": set(W.GROUP_COLOURS.values())}
    if w == W.HOMONYM:
        return {"shape": set(W.HOMONYM_SHAPE.values())}
    raise ValueError(f"no toy-world expectation for {concept!r}; use a colour, shape, size, 'crimson', 'warm', "
                     f"'cool', 'bat' or a subject noun ({', '.join(W.SUBJECT_SHAPES)})")


def check(concept: str, image: np.ndarray) -> bool:
    """True when the world's checker reads an object in ``image`` that is what the concept draws
    (its largest object has every attribute :func:`expectation` names)."""
    want = expectation(concept)
    reads = read_image(np.asarray(image), max_objects=1)
    if not reads:
        return False
    r = reads[0]
    return all(getattr(r, attr) in allowed for attr, allowed in want.items())


def rate(concept: str, images) -> float:
    """Fraction of ``images`` that pass :func:`check`."""
    return float(np.mean([check(concept, im) for im in images]))


def colours(images) -> dict:
    """Share of images whose largest object the checker reads in each colour (None: no object)."""
    out: dict = {}
    for im in images:
        r = read_image(np.asarray(im), max_objects=1)
        c = r[0].colour if r else None
        out[c] = out.get(c, 0) + 1 / len(images)
    return out


# --- readers for the methods ---------------------------------------------------------------------------------
def emergence_reader(image: np.ndarray) -> dict | None:
    """The toy world's checker as a reader for ``timesteps.concept_emergence``: attributes of the largest
    object, or None if none.

    Early predictions are blurry: an object's pixels are mixtures of its colour and the background,
    and a mixed yellow is nearer green than yellow. So the colour is read by direction: the palette
    colour c whose c − background points most nearly (cosine) along the blob's mean pixel −
    background, which is invariant to how much background is mixed in."""
    r = read_image(image, max_objects=1)
    if not r:
        return None
    bg = np.asarray(W.BACKGROUND, float)
    d = np.asarray(image, float)[r[0].mask].mean(0) - bg
    names = list(W.COLOURS)
    dirs = np.array([np.asarray(W.COLOURS[k], float) - bg for k in names])
    cos = dirs @ d / (np.linalg.norm(dirs, axis=1) * max(np.linalg.norm(d), 1e-9))
    return {"colour": names[int(np.argmax(cos))], "shape": r[0].shape, "size": r[0].size, "position": r[0].position}


def describe(image: np.ndarray) -> str:
    """What the world's checker reads in ``image``, in one line (``widgets.prompt_explorer``'s ``describe``)."""
    seen = "; ".join(f"{r.size} {r.colour} {r.shape} ({r.position})" for r in read_image(np.asarray(image)))
    return f"checker sees: {seen or 'nothing'}"
