"""The images a metric run scores, and where they come from: a dataset folder, a folder of
generator pairs (``*_image.png`` + ``*_mask.png``), or ids in the results store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sonoaudit.datasets.records import CLASSES

if TYPE_CHECKING:
    from sonoaudit.context import AppContext


class SampleError(ValueError):
    """A set cannot be scored; the message names the file or reference at fault."""


@dataclass(frozen=True)
class ImageSample:
    """One grey uint8 image (H×W), its lesion mask (bool H×W or None) and where it came from."""

    name: str
    image: np.ndarray
    mask: np.ndarray | None = None
    class_label: str | None = None
    image_id: str | None = None  # Image.id in the results store, when known
    source: str = ""  # file path or store path, for error messages
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """Hash of the decoded pixels (and shape): the feature cache key."""
        h = hashlib.sha256(f"{self.image.shape}".encode())
        h.update(np.ascontiguousarray(self.image).tobytes())
        return h.hexdigest()


def _check_image(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise SampleError(f"{where}: expected a 2-D uint8 grey image, got {arr.dtype} {arr.shape}")
    if min(arr.shape) < 8:
        raise SampleError(f"{where}: image is {arr.shape[1]}x{arr.shape[0]}, smaller than 8 px")
    return arr


def _class_from_path(path: Path, root: Path) -> str | None:
    for part in path.relative_to(root).parts[:-1]:
        if part.lower() in CLASSES:
            return part.lower()
    return None


def load_pairs_dir(root: Path) -> list[ImageSample]:
    """A generator output folder: every ``<name>_image.png`` with its ``<name>_mask.png``
    (mask optional), searched recursively; class from a parent folder named after a class."""
    from sonoaudit.datasets.imageio import ImageReadError, read_grey, read_mask

    out: list[ImageSample] = []
    for img_path in sorted(root.rglob("*_image.png")):
        stem = img_path.name[: -len("_image.png")]
        try:
            image, _ = read_grey(img_path)
        except ImageReadError as exc:
            raise SampleError(f"{img_path}: {exc}") from exc
        _check_image(image, str(img_path))
        mask_path = img_path.with_name(f"{stem}_mask.png")
        mask = None
        if mask_path.exists():
            try:
                mask, _ = read_mask(mask_path)
            except ImageReadError as exc:
                raise SampleError(f"{mask_path}: {exc}") from exc
            if mask.shape != image.shape:
                raise SampleError(f"{mask_path}: mask is {mask.shape}, image is {image.shape}")
        rel = img_path.relative_to(root).with_name(stem).as_posix()
        out.append(ImageSample(rel, image, mask, _class_from_path(img_path, root),
                               source=str(img_path)))
    return out


def load_dataset_dir(root: Path) -> list[ImageSample]:
    """A dataset folder in a layout ``sonoaudit.datasets.scan`` reads (BUS-BRA, UDIAT, BUSI)."""
    from sonoaudit.datasets.pairs import load_pair
    from sonoaudit.datasets.records import DatasetError
    from sonoaudit.datasets.scan import scan

    result = scan(root)
    if not result.records:
        detail = "; ".join(str(p) for p in result.problems[:5]) or "no images found"
        raise SampleError(f"{root}: no readable images ({detail})")
    out: list[ImageSample] = []
    for rec in result.records:
        try:
            image, mask = load_pair(rec)
        except DatasetError as exc:
            raise SampleError(str(exc)) from exc
        _check_image(image, str(rec.image_path))
        out.append(ImageSample(rec.name, image, mask, rec.class_label,
                               source=str(rec.image_path), meta={"case_id": rec.case_id}))
    return out


def load_dir(path: Path) -> tuple[list[ImageSample], str]:
    """Samples of a folder and which kind of folder it was ('pairs' or the dataset format)."""
    if not path.is_dir():
        raise SampleError(f"{path}: not a folder")
    if any(path.rglob("*_image.png")):
        return load_pairs_dir(path), "pairs"
    return load_dataset_dir(path), "dataset"


def load_store(ctx: AppContext, ref: str, class_label: str | None = None
               ) -> tuple[list[ImageSample], str]:
    """Images of a dataset id (real) or a generation run id (synthetic) in the results store."""
    from sonoaudit.datasets.imageio import (
        ImageReadError,
        binarize,
        mask_levels,
        open_bytes,
        to_grey,
    )
    from sonoaudit.db.models import Dataset, GenerationRun, Image
    from sqlalchemy import select

    with ctx.sessions() as s:
        if s.get(Dataset, ref) is not None:
            kind, cond = "dataset", Image.dataset_id == ref
        elif s.get(GenerationRun, ref) is not None:
            kind, cond = "generation_run", Image.generation_run_id == ref
        else:
            raise SampleError(f"{ref!r} is neither a folder nor a dataset or generation run id")
        q = select(Image).where(cond)
        if class_label is not None:
            q = q.where(Image.class_label == class_label)
        rows = list(s.scalars(q.order_by(Image.name, Image.sample_index)))
    out: list[ImageSample] = []
    for row in rows:
        try:
            image, _ = to_grey(open_bytes(ctx.store.get(row.path)))
            mask = None
            if row.mask_path:
                mask, _ = binarize(mask_levels(open_bytes(ctx.store.get(row.mask_path))))
        except (ImageReadError, OSError) as exc:
            raise SampleError(f"image {row.id} ({row.name}, store path {row.path}): {exc}") from exc
        _check_image(image, f"image {row.id} ({row.name})")
        out.append(ImageSample(row.name, image, mask, row.class_label, image_id=row.id,
                               source=f"store:{row.path}", meta={"case_id": row.case_id}))
    return out, kind


def load_ref(ref: str, ctx: AppContext | None = None, class_label: str | None = None
             ) -> tuple[list[ImageSample], str]:
    """Resolve a CLI/API reference: an existing folder, else a store id (needs ``ctx``)."""
    p = Path(ref)
    if p.exists():
        samples, kind = load_dir(p)
        if class_label is not None:
            samples = [x for x in samples if x.class_label == class_label]
        return samples, kind
    if ctx is None:
        raise SampleError(f"{ref}: no such folder (and no results store to look the id up in)")
    return load_store(ctx, ref, class_label)
