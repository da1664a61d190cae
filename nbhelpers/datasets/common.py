"""What every loader shares: its errors, a file check that says where to get the file, and one image/mask
geometry (centre square crop, then resize)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import NbhelpersError
from ..validate import ArgumentError


class DatasetError(NbhelpersError, ValueError):
    """A data set file that is there but not in the expected format (the message names the file and field)."""


class DatasetFileMissingError(NbhelpersError, FileNotFoundError):
    """A data set file or folder that is not where the loader looked; the message says where to get it."""


def require(path: str | Path, what: str, where: str) -> Path:
    """``path`` if it exists, else :class:`DatasetFileMissingError` naming ``what`` it is and ``where`` to get it."""
    path = Path(path)
    if not path.exists():
        raise DatasetFileMissingError(f"{what} not found: {path} does not exist. {where}")
    return path


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def square(image: np.ndarray, size: int, mask: np.ndarray | None = None):
    """Centre-crop ``image`` (H, W, 3) uint8 to a square and resize it to ``size`` × ``size`` (bicubic); a
    ``mask`` (H, W) (bool or integer labels) gets the same crop and a nearest-neighbour resize. Returns the
    image, or (image, mask)."""
    from PIL import Image

    if not (isinstance(size, int) and size > 0):
        raise ArgumentError(f"size={size!r}: give the model's image size in pixels, e.g. model.image_size")
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = Image.fromarray(np.ascontiguousarray(image[top:top + s, left:left + s]))
    out = np.asarray(img.resize((size, size), Image.BICUBIC))
    if mask is None:
        return out
    if mask.shape[:2] != (h, w):
        raise DatasetError(f"mask of shape {mask.shape} for an image of shape {image.shape}; they must match")
    m = np.ascontiguousarray(mask[top:top + s, left:left + s])
    dtype = m.dtype
    m_img = Image.fromarray(m.astype(np.uint8) if dtype == bool else m.astype(np.int32))
    m_out = np.asarray(m_img.resize((size, size), Image.NEAREST))
    return out, (m_out > 0 if dtype == bool else m_out.astype(dtype))
