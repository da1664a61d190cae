"""Read a toy-world image back into attributes (colour, shape, size, position), and score it
against the scene it was meant to show."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .world import BACKGROUND, COLOURS, IMAGE_SIZE, POSITIONS, SHAPES, SIZES, Scene, WorldObject, coverage

FOREGROUND_DISTANCE = 70.0  # RGB distance from the background that counts as an object
MIN_PIXELS = 10  # smaller blobs are noise


@dataclass
class Reading:
    """What the checker sees of one object. ``cx, cy`` in pixels of a 32-px image."""

    colour: str
    shape: str
    size: str
    cx: float
    cy: float
    position: str
    n_pixels: int
    shape_iou: float
    mask: np.ndarray | None = None  # the blob's pixels, bool (32, 32)


def _nearest(value: np.ndarray, table: dict) -> str:
    names = list(table)
    d = [np.linalg.norm(np.asarray(table[k], float) - value) for k in names]
    return names[int(np.argmin(d))]


def _shape_of(mask: np.ndarray, cx: float, cy: float, extent: float) -> tuple[str, float, str]:
    """Best template (shape, size word) by IoU with the blob."""
    best = ("", -1.0, "")
    for size in SIZES:
        for shape in SHAPES:
            tmpl = coverage(WorldObject("red", shape, size, cx, cy, shape), mask.shape[0]) >= 0.5
            iou = (tmpl & mask).sum() / max((tmpl | mask).sum(), 1)
            if iou > best[1]:
                best = (shape, float(iou), size)
    return best


def read_image(image: np.ndarray, max_objects: int = 2) -> list[Reading]:
    """Objects found in a uint8 RGB image (H, W, 3), largest first (at most ``max_objects``)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    if image.shape[0] != IMAGE_SIZE:
        from PIL import Image

        image = np.asarray(Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
    img = image.astype(np.float64)
    dist = np.linalg.norm(img - np.asarray(BACKGROUND, float), axis=-1)
    fg = dist > FOREGROUND_DISTANCE
    labels, n = ndimage.label(fg)
    blobs = []
    for k in range(1, n + 1):
        m = labels == k
        if m.sum() >= MIN_PIXELS:
            blobs.append(m)
    blobs.sort(key=lambda m: -m.sum())
    out = []
    for m in blobs[:max_objects]:
        ys, xs = np.nonzero(m)
        # centre of the bounding box (the shapes are drawn around the centre of their box)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        core = ndimage.binary_erosion(m) if m.sum() > 30 else m
        if core.sum() == 0:
            core = m
        colour = _nearest(np.median(img[core], axis=0), COLOURS)
        shape, iou, size = _shape_of(m, cx, cy, max(x1 - x0, y1 - y0))
        position = _nearest(np.array([cx, cy]), POSITIONS)
        out.append(Reading(colour, shape, size, cx, cy, position, int(m.sum()), iou, m))
    return out


def match_readings(scene: Scene, image: np.ndarray) -> list[Reading | None]:
    """The reading of each object of ``scene`` in ``image`` (None where none was found). For a pair,
    the blobs are ordered along the relation's axis and matched to where the objects should be."""
    readings = read_image(image, max_objects=len(scene.objects))
    if len(scene.objects) == 1:
        return [readings[0] if readings else None]
    matched: list[Reading | None] = [None, None]
    if len(readings) < 2:
        for r in readings:  # one blob: the object whose expected centre is nearest
            i = int(np.argmin([np.hypot(r.cx - o.cx, r.cy - o.cy) for o in scene.objects]))
            matched[i] = r
        return matched
    horizontal = scene.relation in ("left of", "right of")
    key = (lambda r: r.cx) if horizontal else (lambda r: r.cy)
    obj_key = (lambda o: o.cx) if horizontal else (lambda o: o.cy)
    order = sorted(range(2), key=lambda i: obj_key(scene.objects[i]))
    for r, i in zip(sorted(readings, key=key), order):
        matched[i] = r
    return matched


def check_scene(scene: Scene, image: np.ndarray) -> list[dict]:
    """Per object of ``scene``: which attributes the image gets right.

    Returns one dict per object with boolean ``found``, ``colour``, ``shape``, ``size`` and
    ``position``. For a pair, ``position`` means the two blobs are separated (≥ 6 px) along the
    relation's axis in the order the relation says (see :func:`match_readings`)."""
    matched = match_readings(scene, image)
    found = [r for r in matched if r is not None]
    separated = True
    if len(scene.objects) == 2:
        horizontal = scene.relation in ("left of", "right of")
        key = (lambda r: r.cx) if horizontal else (lambda r: r.cy)
        separated = len(found) == 2 and abs(key(found[0]) - key(found[1])) >= 6.0
    out = []
    for o, r in zip(scene.objects, matched):
        if r is None:
            out.append({"found": False, "colour": False, "shape": False, "size": False, "position": False})
            continue
        position = (r.position == o.position) if len(scene.objects) == 1 else separated
        out.append({"found": True, "colour": r.colour == o.colour, "shape": r.shape == o.shape,
                    "size": r.size == o.size, "position": bool(position)})
    return out
