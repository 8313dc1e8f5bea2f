"""The images a metric run scores, and where they come from: a dataset folder, a folder of
generator pairs (``*_image.png`` + ``*_mask.png``), or ids in the results store.

A dataset (folder or id) can be loaded at ``size``: then every pair goes through the square
preprocessing the generator trains on (``sonoaudit.datasets.pairs.preprocess``: longer side to
``size``, centred, padded with 0; the stored copy when the import made one), so real and synthetic
images are compared at the same geometry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sonoaudit.datasets.records import CLASSES

if TYPE_CHECKING:
    from sonoaudit.context import AppContext


MAX_PROBLEMS_SHOWN = 5
PAIRS_LAYOUT = ("or a folder of generator pairs: <name>_image.png with an optional "
                "<name>_mask.png, searched recursively")
UNKNOWN_CLASS = "unknown"  # Image.class_label of a generated image without a class


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


def manifest_classes(folder: Path) -> dict[str, str]:
    """{image file name: class} from a generator ``manifest.json`` in ``folder`` (its run's
    ``class_label`` for every sample it lists); {} without one or for a run without a class."""
    path = folder / "manifest.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SampleError(f"{path}: unreadable generator manifest ({exc})") from exc
    if not isinstance(data, dict) or "generation_run_id" not in data:
        return {}  # some other manifest.json: not ours to interpret
    label = data.get("class_label")
    if label not in CLASSES:
        return {}
    return {str(x["image"]): str(label) for x in data.get("samples") or []
            if isinstance(x, dict) and "image" in x}


def load_pairs_dir(root: Path) -> list[ImageSample]:
    """A generator output folder: every ``<name>_image.png`` with its ``<name>_mask.png``
    (mask optional), searched recursively; class from a parent folder named after a class,
    else from the generator's ``manifest.json`` beside the files (the run's class)."""
    from sonoaudit.datasets.imageio import ImageReadError, read_grey, read_mask

    out: list[ImageSample] = []
    manifests: dict[Path, dict[str, str]] = {}
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
        label = _class_from_path(img_path, root)
        if label is None:
            if img_path.parent not in manifests:
                manifests[img_path.parent] = manifest_classes(img_path.parent)
            label = manifests[img_path.parent].get(img_path.name)
        out.append(ImageSample(rel, image, mask, label, source=str(img_path)))
    return out


def square_size(samples: list[ImageSample]) -> int | None:
    """The side of the images when all are squares of one size, else None."""
    shapes = {s.image.shape for s in samples}
    if len(shapes) != 1:
        return None
    h, w = next(iter(shapes))
    return h if h == w else None


def load_dataset_dir(root: Path, size: int | None = None) -> list[ImageSample]:
    """A dataset folder in a layout ``sonoaudit.datasets.scan`` reads (BUS-BRA, UDIAT, BUSI);
    with ``size`` each pair preprocessed to the generator's ``size``² padded square."""
    from sonoaudit.datasets.pairs import load_pair, preprocess
    from sonoaudit.datasets.records import DatasetError
    from sonoaudit.datasets.scan import scan

    result = scan(root)
    if not result.records:
        detail = "; ".join(str(p) for p in result.problems[:5]) or "no images found"
        if result.format == "unknown":  # no dataset layout: say what else a folder may be
            detail += f"; {PAIRS_LAYOUT}"
        raise SampleError(f"{root}: no readable images ({detail})")
    if result.problems:
        # Never score what is left after dropping a bad file: the set would silently shrink.
        shown = "; ".join(str(p) for p in result.problems[:MAX_PROBLEMS_SHOWN])
        more = len(result.problems) - MAX_PROBLEMS_SHOWN
        raise SampleError(
            f"{root}: the {result.format} dataset fails validation, "
            f"{len(result.problems)} problem(s): {shown}"
            + (f"; … and {more} more" if more > 0 else "")
            + f" (see `sonoaudit datasets inspect {root}`)")
    out: list[ImageSample] = []
    for rec in result.records:
        try:
            image, mask = load_pair(rec)
        except DatasetError as exc:
            raise SampleError(str(exc)) from exc
        _check_image(image, str(rec.image_path))
        meta: dict[str, Any] = {"case_id": rec.case_id}
        if size is not None:
            image, mask = preprocess(image, mask, size)
            meta["preprocessed"] = {"size": size, "from": "computed"}
        out.append(ImageSample(rec.name, image, mask, rec.class_label,
                               source=str(rec.image_path), meta=meta))
    return out


def load_dir(path: Path, size: int | None = None) -> tuple[list[ImageSample], str]:
    """Samples of a folder and which kind of folder it was ('pairs' or the dataset format);
    ``size`` preprocesses a dataset folder (pairs folders are read as they are)."""
    if not path.is_dir():
        raise SampleError(f"{path}: not a folder")
    if any(path.rglob("*_image.png")):
        return load_pairs_dir(path), "pairs"
    return load_dataset_dir(path, size), "dataset"


def load_store(ctx: AppContext, ref: str, class_label: str | None = None,
               size: int | None = None) -> tuple[list[ImageSample], str]:
    """Images of a dataset id (real) or a generation run id (synthetic) in the results store;
    ``size`` gives a dataset's preprocessed ``size``² copies (what the generator trained on)."""
    from sonoaudit.datasets.imageio import (
        ImageReadError,
        binarize,
        mask_levels,
        open_bytes,
        to_grey,
    )
    from sonoaudit.datasets.records import DatasetError
    from sonoaudit.datasets.stored import load_stored_preprocessed
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
        meta: dict[str, Any] = {"case_id": row.case_id}
        mask: np.ndarray | None
        try:
            if size is not None and kind == "dataset":
                stored = (row.meta or {}).get("preprocessed", {}).get(str(size))
                image, mask = load_stored_preprocessed(ctx.store, row, size)
                meta["preprocessed"] = {"size": size, "from": "stored" if stored else "computed"}
            else:
                image, _ = to_grey(open_bytes(ctx.store.get(row.path)))
                mask = None
                if row.mask_path:
                    mask, _ = binarize(mask_levels(open_bytes(ctx.store.get(row.mask_path))))
        except DatasetError as exc:
            raise SampleError(f"image {row.id} ({row.name}): {exc}") from exc
        except (ImageReadError, OSError) as exc:
            raise SampleError(f"image {row.id} ({row.name}, store path {row.path}): {exc}") from exc
        _check_image(image, f"image {row.id} ({row.name})")
        label = row.class_label if row.class_label != UNKNOWN_CLASS else None
        out.append(ImageSample(row.name, image, mask, label, image_id=row.id,
                               source=f"store:{row.path}", meta=meta))
    return out, kind


def load_ref(ref: str, ctx: AppContext | None = None, class_label: str | None = None,
             size: int | None = None) -> tuple[list[ImageSample], str]:
    """Resolve a CLI/API reference: an existing folder, else a store id (needs ``ctx``).
    ``size`` applies to datasets only (see the module docstring)."""
    p = Path(ref)
    if p.exists():
        samples, kind = load_dir(p, size)
        if class_label is not None:
            samples = [x for x in samples if x.class_label == class_label]
        return samples, kind
    if ctx is None:
        raise SampleError(f"{ref}: no such folder (and no results store to look the id up in)")
    return load_store(ctx, ref, class_label, size)
