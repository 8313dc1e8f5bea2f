"""The records every reader produces and every consumer (generator, metrics, study) reads.

This module is the contract between the dataset readers and the rest of the system.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLASSES = ("benign", "malignant", "normal")


@dataclass(frozen=True)
class ImageRecord:
    """One image and its mask on disk, with its label and patient key."""

    name: str  # stable id within the dataset, e.g. "bus_0011-r"
    image_path: Path
    mask_paths: tuple[Path, ...]  # several for BUSI's extra _mask_N files (OR-merged); () = empty
    class_label: str  # one of CLASSES
    case_id: str  # patient key: splits group on it
    meta: dict[str, Any] = field(default_factory=dict)
    # Filled by ``scan`` once the files were read and checked; None on hand-built records.
    sha256: str | None = None  # of the image file's bytes
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Problem:
    """A reason the dataset cannot be imported as is; ``path`` names the file at fault."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class DatasetScan:
    format: str  # busbra | udiat | busi
    root: Path
    records: list[ImageRecord]
    problems: list[Problem]
    is_phantom: bool = False
    # Images checked file by file (the layout paired them with labels and masks), with
    # problems or not; ``records`` holds only those that passed every check.
    n_images_checked: int | None = None

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            out[r.class_label] = out.get(r.class_label, 0) + 1
        return out

    @property
    def n_cases(self) -> int:
        return len({r.case_id for r in self.records})

    @property
    def classes(self) -> list[str]:
        """Classes present, in the fixed order of ``CLASSES``."""
        present = set(self.counts)
        return [c for c in CLASSES if c in present] + sorted(present - set(CLASSES))

    def raise_for_problems(self) -> None:
        """Raise :class:`DatasetError` with every problem found, if there is any."""
        if self.problems:
            raise DatasetError(self.problems)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (what ``sonoaudit datasets inspect --json`` prints)."""
        return {
            "format": self.format,
            "root": str(self.root),
            "is_phantom": self.is_phantom,
            "n_images": len(self.records),
            "n_images_checked": (len(self.records) if self.n_images_checked is None
                               else self.n_images_checked),
            "counts": self.counts,
            "classes": self.classes,
            "n_cases": self.n_cases,
            "problems": [{"path": p.path, "problem": p.problem} for p in self.problems],
        }


class DatasetError(ValueError):
    """Raised when a dataset has problems; carries every problem found (not just the first)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems[:50])
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} problem(s) in dataset:\n{lines}{more}")
