"""UDIAT Dataset B reader: ``original/NNNNNN.png``, ``GT/NNNNNN.png``, labels in ``DatasetB.xlsx``
(column ``Image``: integer 1–163, zero-padded to 6 digits to match the file stem; column ``Type``:
Benign/Malignant; other columns, e.g. histology, kept as metadata).

The set has no patient key, so each image is its own case (the published set has one image per
lesion). It is licensed for research only and must never be committed or redistributed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sonoaudit.datasets.layout import ReaderResult, child_dir, child_file, list_files
from sonoaudit.datasets.records import ImageRecord, Problem

LABELS_FILE = "DatasetB.xlsx"
CLASSES = ("benign", "malignant")
HEADER_SEARCH_ROWS = 10  # the header is on the first row of the release; tolerate a title above


def looks_like(root: Path) -> bool:
    return child_file(root, LABELS_FILE) is not None or (
        child_dir(root, "original") is not None and child_dir(root, "GT") is not None)


def _stem(value: Any) -> str | None:
    """``Image`` cell → 6-digit stem; None when it is not a whole number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return f"{value:06d}" if value >= 0 else None
    text = str(value).strip()
    if text.lower().endswith(".png"):
        text = text[:-4]
    return f"{int(text):06d}" if text.isdigit() else None


def _read_xlsx(path: Path) -> tuple[list[str], list[tuple[int, list[Any]]]]:
    """(header, [(row number, cells)]) of the first sheet; the header is the first row among the
    first few that has both ``Image`` and ``Type``."""
    from openpyxl import load_workbook

    wb = load_workbook(path, read_only=True, data_only=True)
    try:
        ws = wb.worksheets[0]
        header: list[str] = []
        rows: list[tuple[int, list[Any]]] = []
        for number, cells in enumerate(ws.iter_rows(values_only=True), start=1):
            values = list(cells)
            if not header:
                names = [str(v).strip() if v is not None else "" for v in values]
                if {"image", "type"} <= {n.lower() for n in names}:
                    header = names
                elif number >= HEADER_SEARCH_ROWS:
                    break
                continue
            if any(v is not None and str(v).strip() for v in values):
                rows.append((number, values))
        return header, rows
    finally:
        wb.close()


def read(root: Path) -> ReaderResult:
    out = ReaderResult()
    images_dir = child_dir(root, "original")
    masks_dir = child_dir(root, "GT")
    labels = child_file(root, LABELS_FILE)
    for what, found in (("original/", images_dir), ("GT/", masks_dir), (LABELS_FILE, labels)):
        if found is None:
            out.problems.append(Problem(str(root / what.rstrip("/")),
                                        f"UDIAT Dataset B layout: {what} is missing"))
    if images_dir is None or masks_dir is None or labels is None:
        return out

    try:
        header, rows = _read_xlsx(labels)
    except Exception as exc:  # openpyxl raises many types for a damaged workbook
        out.problems.append(Problem(str(labels), f"cannot read the workbook ({exc})"))
        return out
    if not header:
        out.problems.append(Problem(str(labels), (
            f"no header row with columns Image and Type in the first {HEADER_SEARCH_ROWS} rows "
            "of the first sheet")))
        return out
    lower = [h.lower() for h in header]
    col_image, col_type = lower.index("image"), lower.index("type")
    # Only now: a class without images means something once the labels could be read.
    out.expected_classes = {c: str(labels) for c in CLASSES}

    listed: set[str] = set()
    for number, cells in rows:
        cells = cells + [None] * (len(header) - len(cells))
        stem = _stem(cells[col_image])
        if stem is None:
            out.problems.append(Problem(str(labels), (
                f"row {number}: column Image is {cells[col_image]!r}; expected a whole number "
                "(the file stem without zero padding)")))
            continue
        if stem in listed:
            out.problems.append(Problem(str(labels), f"row {number}: image {stem} listed twice"))
            continue
        listed.add(stem)
        raw_type = cells[col_type]
        label = str(raw_type).strip().lower() if raw_type is not None else ""
        image_path = images_dir / f"{stem}.png"
        mask_path = masks_dir / f"{stem}.png"
        ok = True
        if label not in CLASSES:
            out.problems.append(Problem(str(labels), (
                f"row {number} (image {stem}): unknown class label {raw_type!r} in column Type; "
                "expected Benign or Malignant")))
            ok = False
        if not image_path.is_file():
            out.problems.append(Problem(str(image_path),
                                        f"image listed in {labels.name} row {number} is missing"))
            ok = False
        if not mask_path.is_file():
            out.problems.append(Problem(str(mask_path), f"missing mask for image {stem}.png"))
            ok = False
        if not ok:
            continue
        meta: dict[str, Any] = {
            "original_path": str(image_path),
            "original_mask_paths": [str(mask_path)],
            "labels_file": str(labels),
            "labels_row": number,
        }
        for i, name in enumerate(header):
            if i not in (col_image, col_type) and name and cells[i] is not None:
                value = cells[i]
                meta[name.lower()] = value if isinstance(value, int | float) else str(value)
        out.records.append(ImageRecord(
            name=stem, image_path=image_path, mask_paths=(mask_path,),
            class_label=label, case_id=stem, meta=meta))

    for p in list_files(images_dir):
        if p.suffix.lower() != ".png":
            out.problems.append(Problem(str(p),
                                        "unexpected file in original/ (expected NNNNNN.png)"))
        elif p.stem not in listed:
            out.problems.append(Problem(str(p), f"image is not listed in {labels.name}"))
    for p in list_files(masks_dir):
        if p.suffix.lower() != ".png":
            out.problems.append(Problem(str(p), "unexpected file in GT/ (expected NNNNNN.png)"))
        elif p.stem not in listed:
            out.problems.append(Problem(str(p), "extra mask: no listed image has this mask"))
    return out
