"""COCO captions and instance masks (the official JSON files, read with ``pycocotools``), and the COCO-IT
selection of Kong et al. (2024) for word localisation.

Layout (as downloaded)::

    ROOT/annotations/captions_val2014.json    {"images": [...], "annotations": [{"image_id", "caption"}, ...]}
    ROOT/annotations/instances_val2014.json   {"images", "annotations": [{"image_id", "category_id",
                                               "segmentation" (polygons or RLE), "iscrowd", ...}], "categories"}
    ROOT/val2014/COCO_val2014_000000000042.jpg  (the "file_name" of each image)

(``split="val2017"`` reads ``captions_val2017.json``, ``instances_val2017.json`` and ``val2017/``.)

COCO-IT: an image is kept when one of its captions names, as a whole word (or its plural with -s/-es), a
category that has an instance in the image; the first such caption (in the file's order) is the prompt and
each category it names is a word to localise, its mask the union of that category's instance masks
(``pycocotools``' ``annToMask``, so polygons and crowd RLEs alike). Only one-word category names are used
(the CMI of a word deletes one word; "traffic light", "hot dog" and the other 15 two-word names are left out).
"""
from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import DatasetError, read_image, require, square

WHERE = ("Download the images and the 'Train/Val annotations' zip of the same year from cocodataset.org "
         "(#download) and unpack both under one root folder: ROOT/annotations/ and ROOT/{split}/.")


@dataclass
class CocoItItem:
    """One COCO-IT image: its caption and the words of it that name its categories, with masks (H, W) bool
    at the image's own resolution."""

    image_id: int
    path: Path
    caption: str
    words: list[str]
    categories: list[str]
    masks: list[np.ndarray] = field(repr=False)

    def image(self) -> np.ndarray:
        """uint8 (H, W, 3)."""
        return read_image(self.path)


def _coco(path: Path):
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise DatasetError("reading COCO needs pycocotools: pip install 'nbhelpers[data]'") from None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress
        try:
            return COCO(str(path))
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{path} is not a COCO annotation file ({type(e).__name__}: {e})") from None


def _name_pattern(name: str) -> re.Pattern:
    return re.compile(rf"\b({re.escape(name)}(?:s|es)?)\b", re.IGNORECASE)


def coco_it(root: str | Path, split: str = "val2014", limit: int | None = None) -> list[CocoItItem]:
    """The COCO-IT items of ``root`` (see the module docstring), in image-id order; ``limit``: the first ones."""
    root = Path(root)
    require(root, "the COCO root folder", WHERE)
    caps = _coco(require(root / "annotations" / f"captions_{split}.json", f"COCO captions ({split})", WHERE))
    inst = _coco(require(root / "annotations" / f"instances_{split}.json", f"COCO instance masks ({split})", WHERE))
    image_dir = require(root / split, f"the COCO {split} image folder", WHERE)
    cats = {c["id"]: c["name"] for c in inst.loadCats(inst.getCatIds()) if " " not in c["name"]}
    patterns = {cid: _name_pattern(name) for cid, name in cats.items()}
    items = []
    for image_id in sorted(caps.getImgIds()):
        anns = [a for a in inst.loadAnns(inst.getAnnIds(imgIds=[image_id])) if a["category_id"] in cats]
        present = sorted({a["category_id"] for a in anns})
        for cap in caps.loadAnns(caps.getAnnIds(imgIds=[image_id])):
            text = cap["caption"].strip()
            hits = [(cid, m.group(1)) for cid in present for m in [patterns[cid].search(text)] if m]
            if not hits:
                continue
            info = inst.loadImgs([image_id])[0] if image_id in inst.imgs else caps.loadImgs([image_id])[0]
            masks = [np.any([inst.annToMask(a) > 0 for a in anns if a["category_id"] == cid], axis=0) for cid, _ in hits]
            items.append(CocoItItem(image_id, image_dir / info["file_name"], text, [w for _, w in hits],
                                    [cats[cid] for cid, _ in hits], masks))
            break
        if limit is not None and len(items) >= limit:
            break
    return items


def localisation_inputs(items: list[CocoItItem], size: int):
    """``(images, cases)`` for :func:`nbhelpers.localisation.localisation_study`: images uint8 (N, size, size, 3)
    and one :class:`~nbhelpers.localisation.LocalisationCase` per item (centre square crop, resized; words whose
    mask the crop leaves empty are dropped)."""
    from ..localisation import LocalisationCase, WordTarget

    images, cases = [], []
    for it in items:
        img = it.image()
        targets = []
        sq = square(img, size)
        for word, cat, mask in zip(it.words, it.categories, it.masks):
            _, m = square(img, size, mask)
            if m.any():
                targets.append(WordTarget(word, m, kind=cat))
        images.append(sq)
        cases.append(LocalisationCase(it.caption, tuple(targets)))
    return np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8), cases
