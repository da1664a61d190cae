"""Loaders for the published benchmarks, in their own file formats (nothing is downloaded: point a loader at
your copy, and a missing file is named with where to get it).

- :mod:`.coco`: COCO captions and instance masks (through ``pycocotools``); the COCO-IT selection of Kong et al.
  (images whose caption names one of their object categories) as localisation cases.
- :mod:`.aro`: ARO's VG-Relation and VG-Attribution (their JSON files and image folder) as caption-scoring pairs.
- :mod:`.segmentation`: ImageNet-Segmentation (``gtsegs_ijcv.mat``) and Pascal VOC segmentation masks, the
  ConceptAttention benchmarks.

Every loader returns small dataclasses that read their image lazily (``item.image()``: uint8 (H, W, 3)) and
a helper that turns a list of them into what a study takes (images of one size and cases or caption pairs),
with :func:`square` cropping and resizing images and masks the same way.
"""
from __future__ import annotations

from .common import DatasetError, DatasetFileMissingError, require, square  # noqa: F401
