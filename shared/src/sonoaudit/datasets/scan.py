"""``scan(path)``: find the layout, read it, check every file, and collect every problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sonoaudit.datasets import busbra, busi, udiat
from sonoaudit.datasets.layout import ReaderResult
from sonoaudit.datasets.records import DatasetScan, Problem
from sonoaudit.datasets.validate import check_records

# Order matters only for ambiguous folders; each layout's marker files are distinct.
READERS: dict[str, tuple[Callable[[Path], bool], Callable[[Path], ReaderResult]]] = {
    "busbra": (busbra.looks_like, busbra.read),
    "udiat": (udiat.looks_like, udiat.read),
    "busi": (busi.looks_like, busi.read),
}
FORMATS = tuple(READERS)


def detect_format(root: Path) -> tuple[str, Path] | None:
    """(format, dataset root). Looks at ``root`` and then at its only sub-folder, so both
    ``Dataset_BUSI_with_GT/`` and the folder above it work."""
    for candidate in (root, _only_subdir(root)):
        if candidate is None:
            continue
        for name, (looks_like, _) in READERS.items():
            if looks_like(candidate):
                return name, candidate
    return None


def _only_subdir(root: Path) -> Path | None:
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    return subdirs[0] if len(subdirs) == 1 else None


def scan(path: Path | str, *, format: str | None = None, progress: bool = False) -> DatasetScan:
    """Read a dataset folder and check every file; never raises for dataset problems.

    ``format`` forces a layout (busbra | udiat | busi) instead of auto-detection.
    """
    root = Path(path)
    if not root.exists():
        return DatasetScan("unknown", root, [], [Problem(str(root), "path does not exist")])
    if not root.is_dir():
        return DatasetScan("unknown", root, [], [Problem(str(root), (
            "not a folder; expected a dataset folder (BUS-BRA, UDIAT Dataset B or BUSI layout)"))])
    if format is not None:
        if format not in READERS:
            raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
        fmt, data_root = format, root
    else:
        found = detect_format(root)
        if found is None:
            return DatasetScan("unknown", root, [], [Problem(str(root), (
                "no known dataset layout: expected BUS-BRA (Images/, Masks/, bus_data.csv), "
                "UDIAT Dataset B (original/, GT/, DatasetB.xlsx) or BUSI (benign/, malignant/, "
                "normal/)"))])
        fmt, data_root = found

    result = READERS[fmt][1](data_root)
    records, file_problems = check_records(
        result.records, result.expected_classes, progress=progress)
    problems = result.problems + file_problems
    for rec in records:
        declared = (rec.meta.get("declared_width"), rec.meta.get("declared_height"))
        if None not in declared and declared != (rec.width, rec.height):
            problems.append(Problem(str(rec.image_path), (
                f"image is {rec.width}x{rec.height} but {rec.meta.get('labels_file')} line "
                f"{rec.meta.get('labels_line')} says {declared[0]}x{declared[1]}")))
    # Counts cover the images that passed the checks: an image is left out when a problem
    # names it or one of its masks (a stray file, a missing image or a bad labels row names
    # no listed image, so it leaves the counts alone).
    flagged = {p.path for p in problems}
    clean = [r for r in records if str(r.image_path) not in flagged
             and not any(str(m) in flagged for m in r.mask_paths)]
    return DatasetScan(fmt, data_root, clean, problems, is_phantom=result.is_phantom,
                       n_images_checked=len(result.records))
