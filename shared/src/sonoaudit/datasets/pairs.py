"""Loading an image with its mask, and the square preprocessing every model input goes through.

``preprocess`` keeps the aspect ratio: the longer side is scaled to ``size`` and the shorter side
is padded with 0 (black, like the area outside an ultrasound sector), centred. Images are
resampled with Pillow's bicubic filter (``IMAGE_FILTER``; it low-passes when shrinking, so no
aliasing), masks with nearest neighbour (``MASK_FILTER``) so they stay exactly binary.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from sonoaudit.datasets.imageio import ImageReadError, merge_masks, read_grey
from sonoaudit.datasets.records import DatasetError, ImageRecord, Problem

IMAGE_FILTER = Image.Resampling.BICUBIC
MASK_FILTER = Image.Resampling.NEAREST
PAD_VALUE = 0


def load_pair(record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 HxW grey image, bool HxW mask) of a record; masks OR-merged, none = empty.

    Raises :class:`DatasetError` naming the file when a file cannot be read or sizes differ.
    """
    try:
        image, _ = read_grey(record.image_path)
    except ImageReadError as exc:
        raise DatasetError([Problem(str(record.image_path), str(exc))]) from exc
    try:
        mask = merge_masks(record.mask_paths, image.shape)
    except ImageReadError as exc:
        where = str(record.mask_paths[0]) if record.mask_paths else str(record.image_path)
        raise DatasetError([Problem(where, str(exc))]) from exc
    return image, mask


def fit_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after scaling the longer side to ``size``, aspect kept, each side at least 1."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def preprocess(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square ``size``×``size`` (uint8 image, bool mask): aspect kept, centred, padded with 0.

    ``mask`` is bool, or any array where nonzero means lesion (e.g. 0/255 uint8).
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"image must be a 2-D uint8 grey array, got {image.dtype} {image.shape}")
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    h, w = image.shape
    nh, nw = fit_size(h, w, size)
    img = np.asarray(Image.fromarray(image).resize((nw, nh), IMAGE_FILTER), dtype=np.uint8)
    lesion = (np.asarray(mask) != 0).astype(np.uint8) * 255
    msk = np.asarray(Image.fromarray(lesion).resize((nw, nh), MASK_FILTER)) >= 128
    top, left = (size - nh) // 2, (size - nw) // 2
    out_img = np.full((size, size), PAD_VALUE, dtype=np.uint8)
    out_msk = np.zeros((size, size), dtype=bool)
    out_img[top:top + nh, left:left + nw] = img
    out_msk[top:top + nh, left:left + nw] = msk
    return out_img, out_msk
