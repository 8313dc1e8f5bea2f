"""Reading imported images back from the file store (what consumers of ``Image`` rows call)."""

from __future__ import annotations

import numpy as np

from sonoaudit.datasets.imageio import ImageReadError, binarize, mask_levels, open_bytes, to_grey
from sonoaudit.datasets.pairs import preprocess
from sonoaudit.datasets.records import DatasetError, Problem
from sonoaudit.db.models import Image
from sonoaudit.filestore import FileStore


def load_stored_pair(store: FileStore, image: Image) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 HxW grey, bool HxW mask) of an ``Image`` row; no mask = empty mask."""
    try:
        grey, _ = to_grey(open_bytes(store.get(image.path)))
        if image.mask_path:
            mask, _ = binarize(mask_levels(open_bytes(store.get(image.mask_path))))
        else:
            mask = np.zeros(grey.shape, dtype=bool)
    except (OSError, ImageReadError) as exc:
        raise DatasetError([Problem(f"store:{image.path}", (
            f"stored image {image.name} ({image.id}) cannot be read: {exc}"))]) from exc
    if mask.shape != grey.shape:
        raise DatasetError([Problem(f"store:{image.mask_path}", (
            f"stored mask of {image.name} is {mask.shape} but the image is {grey.shape}"))])
    return grey, mask


def load_stored_preprocessed(
    store: FileStore, image: Image, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The square ``size`` pair: the stored preprocessed copy when the import made one (same
    bytes every time), else computed now with :func:`preprocess`."""
    entry = (image.meta or {}).get("preprocessed", {}).get(str(size))
    if entry:
        try:
            grey, _ = to_grey(open_bytes(store.get(entry["path"])))
            mask, _ = binarize(mask_levels(open_bytes(store.get(entry["mask_path"]))))
            return grey, mask
        except (OSError, ImageReadError) as exc:
            raise DatasetError([Problem(f"store:{entry['path']}", (
                f"stored {size}px copy of {image.name} cannot be read: {exc}"))]) from exc
    grey, mask = load_stored_pair(store, image)
    return preprocess(grey, mask, size)
