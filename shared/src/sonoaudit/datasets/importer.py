"""Import a scanned dataset into the results store: all rows in one transaction, or none.

Image bytes go to the content-addressed file store as 8-bit grey PNG (a file that already is one
is stored byte-identical; others are converted once, and the conversion is recorded). Masks are
stored as 0/255 grey PNG after the OR-merge. Originals are stored unresized; when ``size`` is
given, the square preprocessed pair is stored too and recorded in ``Image.meta["preprocessed"]``.

A dataset is identified by its fingerprint (sha256 over the sorted per-image lines of name, class,
case and file hashes), so importing the same files again returns the existing row.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from tqdm import tqdm

from sonoaudit.context import AppContext
from sonoaudit.datasets.imageio import (
    MASK_NONBINARY_TOLERANCE,
    MASK_THRESHOLD,
    is_8bit_grey_png,
    png_bytes,
)
from sonoaudit.datasets.pairs import IMAGE_FILTER, MASK_FILTER, load_pair, preprocess
from sonoaudit.datasets.records import DatasetScan, ImageRecord
from sonoaudit.datasets.scan import scan
from sonoaudit.datasets.split import split_labels
from sonoaudit.db.models import Dataset, Image
from sonoaudit.db.session import session_scope
from sonoaudit.filestore import sha256_file
from sonoaudit.provenance import provenance

log = logging.getLogger(__name__)

READER_VERSION = 1


def fingerprint(records: list[ImageRecord]) -> str:
    """sha256 over the sorted lines ``name, class, case, image sha256, mask sha256s``."""
    lines = []
    for rec in records:
        if rec.sha256 is None:
            raise ValueError(f"record {rec.name} was not scanned (no sha256)")
        masks = ",".join(sha256_file(p) for p in rec.mask_paths)
        lines.append(f"{rec.name}\t{rec.class_label}\t{rec.case_id}\t{rec.sha256}\t{masks}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def _json_safe(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        out[k] = v if isinstance(v, str | int | float | bool | list | dict) or v is None else str(v)
    return out


def _check_existing(ds: Dataset, val_fraction: float, seed: int) -> None:
    split = ds.provenance.get("split", {})
    if split.get("val_fraction") != val_fraction or split.get("seed") != seed:
        raise ValueError(
            f"dataset {ds.root_path} is already imported as {ds.id} ({ds.name!r}) with "
            f"val_fraction={split.get('val_fraction')}, seed={split.get('seed')}; it cannot be "
            f"re-imported with val_fraction={val_fraction}, seed={seed} (the split of stored "
            "results would change); use the stored split or the same parameters")


def import_dataset(
    ctx: AppContext,
    path: Path | str,
    *,
    size: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    name: str | None = None,
    progress: bool = False,
    dataset_scan: DatasetScan | None = None,
) -> Dataset:
    """Scan ``path`` and register it; raise :class:`DatasetError` (writing nothing) on any
    problem. Returns the existing :class:`Dataset` when the same files were imported before.

    ``dataset_scan`` lets a caller that already scanned ``path`` skip the second scan.
    """
    if size is not None and size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if name is not None and not 0 < len(name) <= 200:
        raise ValueError(f"name must have 1 to 200 characters, got {len(name)}")
    result = dataset_scan if dataset_scan is not None else scan(path, progress=progress)
    result.raise_for_problems()
    fp = fingerprint(result.records)

    with session_scope(ctx.sessions) as s:
        existing = s.scalars(select(Dataset).where(Dataset.fingerprint == fp)).first()
        if existing is not None:
            _check_existing(existing, val_fraction, seed)
            log.info("dataset %s already imported as %s", result.root, existing.id)
    if existing is not None:
        if size is not None:
            _add_size(ctx, existing.id, size, progress=progress)
            with session_scope(ctx.sessions) as s:
                existing = s.get_one(Dataset, existing.id)
        return existing

    splits = split_labels(result.records, val_fraction, seed)
    rows: list[Image] = []
    for rec in tqdm(result.records, desc="importing", unit="img", disable=not progress):
        image, mask = load_pair(rec)
        if is_8bit_grey_png(rec.image_path):
            img_sha, img_rel = ctx.store.put(rec.image_path.read_bytes())
        else:
            img_sha, img_rel = ctx.store.put(png_bytes(image))
        mask_sha, mask_rel = ctx.store.put(png_bytes(mask))
        meta = _json_safe(dict(rec.meta))
        meta["original_sha256"] = rec.sha256
        meta["lesion_pixels"] = int(mask.sum())
        if size is not None:
            p_img, p_mask = preprocess(image, mask, size)
            p_img_sha, p_img_rel = ctx.store.put(png_bytes(p_img))
            p_mask_sha, p_mask_rel = ctx.store.put(png_bytes(p_mask))
            meta["preprocessed"] = {str(size): {
                "path": p_img_rel, "sha256": p_img_sha,
                "mask_path": p_mask_rel, "mask_sha256": p_mask_sha}}
        rows.append(Image(
            sha256=img_sha, mask_sha256=mask_sha, source="real", class_label=rec.class_label,
            split=splits[rec.name], case_id=rec.case_id, name=rec.name, path=img_rel,
            mask_path=mask_rel, width=image.shape[1], height=image.shape[0], meta=meta))

    ds = Dataset(
        name=name or (f"{result.root.name} (phantom)" if result.is_phantom else result.root.name),
        format=result.format, root_path=str(Path(result.root).resolve()),
        is_phantom=result.is_phantom, classes=result.classes, counts=result.counts,
        n_cases=result.n_cases, fingerprint=fp,
        provenance=provenance(
            reader_version=READER_VERSION,
            dataset_format=result.format,
            is_phantom=result.is_phantom,
            split={"by": "case_id", "val_fraction": val_fraction, "seed": seed,
                   "counts": _split_counts(rows)},
            mask_rule={"threshold": MASK_THRESHOLD, "nonbinary_tolerance":
                       MASK_NONBINARY_TOLERANCE, "merge": "OR", "storage": "PNG 0/255"},
            preprocess={"sizes": [size] if size is not None else [],
                        "image_filter": IMAGE_FILTER.name, "mask_filter": MASK_FILTER.name,
                        "pad_value": 0, "aspect": "kept, centred"},
        ),
    )
    try:
        with session_scope(ctx.sessions) as s:
            s.add(ds)
            s.flush()
            for row in rows:
                row.dataset_id = ds.id
            s.add_all(rows)
    except IntegrityError:
        # Another process imported the same files between our check and our insert.
        with session_scope(ctx.sessions) as s:
            existing = s.scalars(select(Dataset).where(Dataset.fingerprint == fp)).first()
        if existing is None:
            raise
        _check_existing(existing, val_fraction, seed)
        return existing
    log.info("imported %s: %d images as dataset %s", result.root, len(rows), ds.id)
    return ds


def _add_size(ctx: AppContext, dataset_id: str, size: int, *, progress: bool = False) -> None:
    """Store the ``size`` preprocessed copies for an imported dataset that lacks them."""
    from sonoaudit.datasets.stored import load_stored_pair

    with session_scope(ctx.sessions) as s:
        ds = s.get_one(Dataset, dataset_id, with_for_update=True)
        pre = dict(ds.provenance.get("preprocess", {}))
        if size in pre.get("sizes", []):
            return
        images = s.scalars(select(Image).where(Image.dataset_id == dataset_id)).all()
        for row in tqdm(images, desc=f"preprocessing {size}px", unit="img", disable=not progress):
            grey, mask = load_stored_pair(ctx.store, row)
            p_img, p_mask = preprocess(grey, mask, size)
            p_img_sha, p_img_rel = ctx.store.put(png_bytes(p_img))
            p_mask_sha, p_mask_rel = ctx.store.put(png_bytes(p_mask))
            meta = dict(row.meta)
            meta["preprocessed"] = {**meta.get("preprocessed", {}), str(size): {
                "path": p_img_rel, "sha256": p_img_sha,
                "mask_path": p_mask_rel, "mask_sha256": p_mask_sha}}
            row.meta = meta  # a new dict, so SQLAlchemy sees the JSON change
        pre["sizes"] = sorted([*pre.get("sizes", []), size])
        ds.provenance = {**ds.provenance, "preprocess": pre}


def _split_counts(rows: list[Image]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        side = out.setdefault(row.split or "none", {})
        side[row.class_label] = side.get(row.class_label, 0) + 1
    return out
