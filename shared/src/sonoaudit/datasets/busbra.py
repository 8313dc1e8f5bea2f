"""BUS-BRA reader: ``Images/bus_NNNN-X.png``, ``Masks/mask_NNNN-X.png``, ``bus_data.csv``.

Labels come from the ``Pathology`` column, the patient key from ``Case`` (``-l``/``-r`` images
are two halves of one capture and share it). A ``PHANTOM.txt`` file at the root marks the
synthetic phantom written by :mod:`sonoaudit.datasets.phantom`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from sonoaudit.datasets.layout import ReaderResult, child_dir, child_file, list_files
from sonoaudit.datasets.records import ImageRecord, Problem

LABELS_FILE = "bus_data.csv"
PHANTOM_MARKER = "PHANTOM.txt"
PHANTOM_DEVICE = "sonoaudit phantom"  # Device column of phantom rows
REQUIRED_COLUMNS = ("ID", "Case", "Pathology")
CLASSES = ("benign", "malignant")


def looks_like(root: Path) -> bool:
    return child_file(root, LABELS_FILE) is not None or (
        child_dir(root, "Images") is not None and child_dir(root, "Masks") is not None)


def mask_name(image_id: str) -> str:
    """``bus_0001-l`` → ``mask_0001-l`` (the official naming rule)."""
    return "mask_" + image_id[len("bus_"):] if image_id.startswith("bus_") else "mask_" + image_id


def _parse_bbox(raw: str) -> list[int] | None:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return None
    if isinstance(value, list) and all(isinstance(v, int | float) for v in value):
        return [int(v) for v in value]
    return None


def read(root: Path) -> ReaderResult:
    out = ReaderResult(is_phantom=(root / PHANTOM_MARKER).is_file())
    images_dir = child_dir(root, "Images")
    masks_dir = child_dir(root, "Masks")
    labels = child_file(root, LABELS_FILE)
    for what, found in (("Images/", images_dir), ("Masks/", masks_dir), (LABELS_FILE, labels)):
        if found is None:
            out.problems.append(Problem(str(root / what.rstrip("/")),
                                        f"BUS-BRA layout: {what} is missing"))
    if images_dir is None or masks_dir is None or labels is None:
        return out

    try:
        with labels.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()}
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        out.problems.append(Problem(str(labels), f"cannot read labels CSV ({exc})"))
        return out
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing_cols:
        out.problems.append(Problem(str(labels), (
            f"missing column(s) {', '.join(missing_cols)}; expected a header with "
            f"{', '.join(REQUIRED_COLUMNS)} (found {', '.join(columns) or 'nothing'})")))
        return out
    # Only now: a class without images means something once the labels could be read.
    out.expected_classes = {c: str(labels) for c in CLASSES}
    devices = [row.get("Device", "") for row in rows]
    if devices and all(d.startswith(PHANTOM_DEVICE) for d in devices):
        out.is_phantom = True  # also without the marker file, e.g. when it was deleted

    listed: set[str] = set()
    expected_masks: set[str] = set()
    for line, row in enumerate(rows, start=2):
        image_id = row["ID"]
        where = f"{labels} (line {line})"
        if not image_id:
            out.problems.append(Problem(str(labels), f"line {line}: empty ID"))
            continue
        if image_id in listed:
            out.problems.append(Problem(str(labels), f"line {line}: ID {image_id} listed twice"))
            continue
        listed.add(image_id)
        image_path = images_dir / f"{image_id}.png"
        mask_path = masks_dir / f"{mask_name(image_id)}.png"
        expected_masks.add(mask_path.name)
        ok = True
        label = row["Pathology"].lower()
        if label not in CLASSES:
            out.problems.append(Problem(str(labels), (
                f"line {line} ({image_id}): unknown class label {row['Pathology']!r} in column "
                f"Pathology; expected one of {', '.join(CLASSES)}")))
            ok = False
        if not row["Case"]:
            out.problems.append(Problem(str(labels), f"line {line} ({image_id}): empty Case"))
            ok = False
        if not image_path.is_file():
            out.problems.append(Problem(str(image_path),
                                        f"image listed in {where} is missing"))
            ok = False
        if not mask_path.is_file():
            out.problems.append(Problem(str(mask_path),
                                        f"missing mask for image {image_id}.png"))
            ok = False
        if not ok:
            continue
        meta: dict[str, Any] = {
            "original_path": str(image_path),
            "original_mask_paths": [str(mask_path)],
            "labels_file": str(labels),
            "labels_line": line,
        }
        for col, key in (("Histology", "histology"), ("BIRADS", "birads"),
                         ("Device", "device"), ("Side", "side")):
            if row.get(col):
                meta[key] = row[col]
        if row.get("BBOX"):
            meta["bbox_xywh"] = _parse_bbox(row["BBOX"])
        for col, key in (("Width", "declared_width"), ("Height", "declared_height")):
            if row.get(col, "").isdigit():
                meta[key] = int(row[col])
        out.records.append(ImageRecord(
            name=image_id, image_path=image_path, mask_paths=(mask_path,),
            class_label=label, case_id=row["Case"], meta=meta))

    for p in list_files(images_dir):
        if p.suffix.lower() != ".png" or not p.name.startswith("bus_"):
            out.problems.append(Problem(str(p), "unexpected file in Images/ (expected bus_*.png)"))
        elif p.stem not in listed:
            out.problems.append(Problem(str(p), f"image is not listed in {labels.name}"))
    for p in list_files(masks_dir):
        if p.suffix.lower() != ".png" or not p.name.startswith("mask_"):
            out.problems.append(Problem(str(p), "unexpected file in Masks/ (expected mask_*.png)"))
        elif p.name not in expected_masks:
            out.problems.append(Problem(str(p), "extra mask: no listed image has this mask"))
    return out
