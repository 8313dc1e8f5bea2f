"""Dataset readers (BUS-BRA, UDIAT Dataset B, BUSI), validation, preprocessing, patient-level
splits, the phantom generator and import into the results store.

Public API (import from here):
    scan(path) -> DatasetScan                       every problem collected, never raises
    load_pair(record) -> (uint8 HxW, bool HxW)      grey image, OR-merged binary mask
    preprocess(image, mask, size) -> (uint8, bool)  square, aspect kept, 0-padded
    split_by_case(records, val_fraction, seed) -> (train, val)
    write_phantom(root, n_per_class=40, seed=0, size=128) -> Path
    import_dataset(ctx, path, *, size=None, val_fraction=0.2, seed=0, name=None) -> Dataset
    load_stored_pair(store, image_row) / load_stored_preprocessed(store, image_row, size)

``import_dataset`` and the ``load_stored_*`` helpers touch the database models; they are imported
lazily so ``from sonoaudit.datasets import scan`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sonoaudit.datasets.pairs import load_pair, preprocess
from sonoaudit.datasets.phantom import write_phantom
from sonoaudit.datasets.records import (
    CLASSES,
    DatasetError,
    DatasetScan,
    ImageRecord,
    Problem,
)
from sonoaudit.datasets.scan import FORMATS, detect_format, scan
from sonoaudit.datasets.split import split_by_case

if TYPE_CHECKING:
    from sonoaudit.datasets.importer import import_dataset
    from sonoaudit.datasets.stored import load_stored_pair, load_stored_preprocessed

__all__ = [
    "CLASSES",
    "FORMATS",
    "DatasetError",
    "DatasetScan",
    "ImageRecord",
    "Problem",
    "detect_format",
    "import_dataset",
    "load_pair",
    "load_stored_pair",
    "load_stored_preprocessed",
    "preprocess",
    "scan",
    "split_by_case",
    "write_phantom",
]

_LAZY = {
    "import_dataset": "sonoaudit.datasets.importer",
    "load_stored_pair": "sonoaudit.datasets.stored",
    "load_stored_preprocessed": "sonoaudit.datasets.stored",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sonoaudit.datasets' has no attribute {name!r}")
