"""What every layout reader returns, and the folder-listing rules they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sonoaudit.datasets.records import ImageRecord, Problem

# Files that operating systems drop into folders; never data, never a problem.
IGNORED_NAMES = frozenset({"Thumbs.db", "desktop.ini", "Icon\r"})


@dataclass
class ReaderResult:
    """Records found by a layout reader, the layout problems it saw, and the classes it expects
    (class → path to blame when the class ends up with no images)."""

    records: list[ImageRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    expected_classes: dict[str, str] = field(default_factory=dict)
    is_phantom: bool = False


def list_files(folder: Path) -> list[Path]:
    """Regular files in ``folder`` (sorted, hidden and OS junk files skipped)."""
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name not in IGNORED_NAMES
    )


def child_dir(root: Path, name: str) -> Path | None:
    """``root/name`` matched case-insensitively (copies of datasets differ in case)."""
    exact = root / name
    if exact.is_dir():
        return exact
    for p in root.iterdir() if root.is_dir() else []:
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def child_file(root: Path, name: str) -> Path | None:
    exact = root / name
    if exact.is_file():
        return exact
    for p in root.iterdir() if root.is_dir() else []:
        if p.is_file() and p.name.lower() == name.lower():
            return p
    return None
