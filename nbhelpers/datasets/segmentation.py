"""Zero-shot segmentation benchmarks (ConceptAttention's): ImageNet-Segmentation and Pascal VOC.

ImageNet-Segmentation (Guillaumin et al., 2014; 4,276 images) is one MATLAB v7.3 file, ``gtsegs_ijcv.mat`` (an
HDF5 file, read with ``h5py``): ``/value/img``, ``/value/gt`` and ``/value/id`` are (N, 1) arrays of object
references; image k is ``f[f['/value/img'][k, 0]]`` stored transposed (3, W, H) uint8, its mask
``f[f[f['/value/gt'][k, 0]][0, 0]]`` (W, H) with 1 on the object, its synset id ``f[f['/value/id'][k, 0]]``
as UTF-16 code units (e.g. "n02085620_1234"). Names of synsets are not in the file: pass ``names``
({wnid: word}) to give each item the word a concept-based method needs.

Pascal VOC 2012 (as in ``VOCtrainval_11-May-2012.tar``)::

    ROOT/ImageSets/Segmentation/val.txt   image ids, one a line
    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png       palette PNG: class index per pixel (0 background, 1-20, 255 void)

ConceptAttention's single-class split keeps the images with exactly one object class.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import DatasetError, read_image, require, square

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
VOC_VOID = 255
VOC_WHERE = ("Download the Pascal VOC 2012 train/val archive (VOCtrainval_11-May-2012.tar) from the PASCAL VOC "
             "site and give its VOCdevkit/VOC2012 folder as ROOT.")
IMAGENET_SEG_WHERE = ("Get gtsegs_ijcv.mat (Guillaumin, Küttel and Ferrari's ImageNet segmentation ground truth, "
                      "the file ConceptAttention and Transformer-Explainability evaluate on) and give its path.")


@dataclass
class SegmentationItem:
    """One image with the mask of what it shows: ``mask`` (H, W) bool (the object, or one class), ``label``
    (a synset id or a VOC class name), ``word`` (the concept word; None if unknown)."""

    key: str
    label: str
    word: str | None
    mask: np.ndarray = field(repr=False)
    _image: object = field(repr=False, default=None)

    def image(self) -> np.ndarray:
        """uint8 (H, W, 3)."""
        return self._image() if callable(self._image) else self._image


# -- ImageNet-Segmentation ----------------------------------------------------------------------------------
def _h5py():
    try:
        import h5py
    except ImportError:
        raise DatasetError("reading gtsegs_ijcv.mat needs h5py: pip install 'nbhelpers[data]'") from None
    return h5py


def load_imagenet_segmentation(path: str | Path, names: dict[str, str] | None = None,
                               limit: int | None = None) -> list[SegmentationItem]:
    """The items of ``gtsegs_ijcv.mat`` (see the module docstring), images and masks read now (H, W)."""
    h5py = _h5py()
    path = require(path, "ImageNet-Segmentation (gtsegs_ijcv.mat)", IMAGENET_SEG_WHERE)
    items = []
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path} is not an HDF5 (MATLAB v7.3) file ({e}); {IMAGENET_SEG_WHERE}") from None
    with f:
        for name in ("/value/img", "/value/gt", "/value/id"):
            if name not in f:
                raise DatasetError(f"{path} has no {name}; it is not ImageNet-Segmentation's gtsegs_ijcv.mat")
        n = f["/value/img"].shape[0]
        for k in range(n if limit is None else min(n, limit)):
            img = np.asarray(f[f["/value/img"][k, 0]]).transpose(2, 1, 0).astype(np.uint8)
            gt = np.asarray(f[f[f["/value/gt"][k, 0]][0, 0]]).transpose(1, 0)
            code = "".join(map(chr, np.asarray(f[f["/value/id"][k, 0]]).ravel())).strip()
            wnid = code.split("_")[0]
            items.append(SegmentationItem(str(k), wnid, (names or {}).get(wnid), gt > 0, img))
    return items


# -- Pascal VOC ---------------------------------------------------------------------------------------------
def load_voc(root: str | Path, split: str = "val", single_class: bool = False,
             limit: int | None = None) -> list[SegmentationItem]:
    """One item per (image, object class present) of the VOC ``split``: the class's mask (void pixels are not
    part of it) and its name as ``label`` and ``word``. ``single_class``: only images with one class."""
    from PIL import Image

    root = Path(root)
    ids_file = require(root / "ImageSets" / "Segmentation" / f"{split}.txt", f"the VOC {split} list", VOC_WHERE)
    ids = [ln.strip() for ln in ids_file.read_text().splitlines() if ln.strip()]
    items = []
    for i in ids:
        img_path = require(root / "JPEGImages" / f"{i}.jpg", f"the VOC image {i}", VOC_WHERE)
        with Image.open(require(root / "SegmentationClass" / f"{i}.png", f"the VOC mask {i}", VOC_WHERE)) as m:
            if m.mode != "P":
                raise DatasetError(f"{root / 'SegmentationClass' / f'{i}.png'} is a {m.mode} image; VOC class masks "
                                   "are palette (P) PNGs holding class indices")
            labels = np.asarray(m)
        present = [int(c) for c in np.unique(labels) if 0 < c < len(VOC_CLASSES)]
        bad = [int(c) for c in np.unique(labels) if c >= len(VOC_CLASSES) and c != VOC_VOID]
        if bad:
            raise DatasetError(f"the VOC mask {i}.png has class indices {bad}; VOC has 0-20 and 255 (void)")
        if single_class and len(present) != 1:
            continue
        for c in present:
            items.append(SegmentationItem(i, VOC_CLASSES[c], VOC_CLASSES[c], labels == c,
                                          lambda p=img_path: read_image(p)))
        if limit is not None and len(items) >= limit:
            break
    return items[:limit] if limit is not None else items


def segmentation_inputs(items: list[SegmentationItem], size: int):
    """``(images, masks, words)``: images uint8 (N, size, size, 3), masks (N, size, size) bool, the words."""
    images, masks = [], []
    for it in items:
        im, m = square(it.image(), size, it.mask)
        images.append(im)
        masks.append(m)
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), bool), []
    return np.stack(images), np.stack(masks), [it.word for it in items]
