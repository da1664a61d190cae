"""ARO's VG-Relation and VG-Attribution (Yuksekgonul et al., ICLR 2023) in their own format.

Layout (as the ARO authors distribute it)::

    ROOT/visual_genome_relation.json      [{"image_path": "2315375.jpg", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
                                            "true_caption", "false_caption", "relation_name"}, ...]
    ROOT/visual_genome_attribution.json   [{... the same ..., "attributes": [a1, a2]}, ...]
    ROOT/images/2315375.jpg               (the Visual Genome images, their vgr_vga_images.zip)

Each item's image is cropped to its box (as ARO does: the region holding the relation or the attributes);
the task is to score the true caption above the false one (chance 50 %).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import DatasetError, read_image, require, square

KINDS = {"relation": "visual_genome_relation.json", "attribution": "visual_genome_attribution.json"}
WHERE = ("Get the ARO benchmark's annotation JSON and its image archive (vgr_vga_images.zip) as its authors' "
         "repository (mertyg/vision-language-models-are-bows) describes, and unpack the images to ROOT/images/.")
FIELDS = ("image_path", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "true_caption", "false_caption")


@dataclass
class AroItem:
    """One ARO test case: the image file, its box (x, y, w, h) in pixels, the true and the false caption, and
    its label (the relation name, or "attr1_attr2")."""

    path: Path
    box: tuple[float, float, float, float]
    true: str
    false: str
    kind: str
    label: str

    def image(self) -> np.ndarray:
        """The image cropped to the box, uint8 (h, w, 3)."""
        img = read_image(self.path)
        x, y, w, h = (int(round(v)) for v in self.box)
        crop = img[max(y, 0):y + h, max(x, 0):x + w]
        if crop.size == 0:
            raise DatasetError(f"the box {self.box} of {self.path} is outside its {img.shape[1]}x{img.shape[0]} image")
        return crop


def load_aro(root: str | Path, kind: str = "relation", limit: int | None = None) -> list[AroItem]:
    """The ``kind`` ("relation": VG-Relation, "attribution": VG-Attribution) test cases under ``root``."""
    if kind not in KINDS:
        raise DatasetError(f"kind={kind!r}; ARO's Visual Genome sets are {sorted(KINDS)}")
    root = Path(root)
    path = require(root / KINDS[kind], f"ARO VG-{kind.capitalize()} annotations", WHERE)
    images = require(root / "images", "the ARO image folder", WHERE)
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise DatasetError(f"{path} is not JSON ({e})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path} holds a {type(data).__name__}; ARO's file is a list of test cases")
    items = []
    for i, d in enumerate(data[:limit] if limit is not None else data):
        missing = [f for f in FIELDS if f not in d]
        if missing:
            raise DatasetError(f"{path}, item {i}: no field(s) {missing}; an ARO item has {list(FIELDS)}")
        label = d.get("relation_name") if kind == "relation" else "_".join(d.get("attributes", []))
        items.append(AroItem(images / d["image_path"], (d["bbox_x"], d["bbox_y"], d["bbox_w"], d["bbox_h"]),
                             d["true_caption"], d["false_caption"], kind, str(label)))
    return items


def caption_inputs(items: list[AroItem], size: int):
    """``(images, captions)`` for :func:`nbhelpers.captions.caption_scoring_study`: the cropped images squared
    and resized to ``size`` (uint8 (N, size, size, 3)) and ``(true, {kind: false})`` per item."""
    for it in items:
        require(it.path, f"the ARO image {it.path.name}", WHERE)
    images = [square(it.image(), size) for it in items]
    return (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
            [(it.true, {it.kind: it.false}) for it in items])
