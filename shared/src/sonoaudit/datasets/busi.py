"""BUSI reader: ``benign|malignant|normal/`` folders with ``name (N).png`` images and
``name (N)_mask.png`` masks; extra lesions come as ``name (N)_mask_1.png``, ``_mask_2`` … and are
OR-merged. Normal images have all-black masks (a missing mask is read as empty for them only).

BUSI has no patient key, so each image is its own case: a patient with several images can land
on both sides of a split. Deduplicate BUSI first; the exact duplicates it contains are refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from sonoaudit.datasets.layout import ReaderResult, child_dir, list_files
from sonoaudit.datasets.records import ImageRecord, Problem

CLASSES = ("benign", "malignant", "normal")
REQUIRED_CLASSES = ("benign", "malignant")  # some copies drop normal/ on purpose
RELEASE_FOLDER = "Dataset_BUSI_with_GT"
MASK_RE = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<extra>\d+))?$", re.IGNORECASE)
IMAGE_SUFFIXES = (".png",)


def looks_like(root: Path) -> bool:
    return sum(child_dir(root, c) is not None for c in CLASSES) >= 2


def read(root: Path) -> ReaderResult:
    out = ReaderResult()
    class_dirs = {c: child_dir(root, c) for c in CLASSES}
    for cls in REQUIRED_CLASSES:
        found = class_dirs[cls]
        if found is None:
            out.problems.append(Problem(str(root / cls),
                                        f"BUSI layout: class folder {cls}/ is missing"))
        else:
            out.expected_classes[cls] = str(found)
    if class_dirs["normal"] is not None:
        out.expected_classes["normal"] = str(class_dirs["normal"])

    known = {c.lower() for c in CLASSES}
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith((".", "__MACOSX")) and p.name.lower() not in known:
            out.problems.append(Problem(str(p), (
                f"unknown class folder {p.name}/; expected {', '.join(CLASSES)}")))

    names: dict[str, Path] = {}
    for cls, folder in class_dirs.items():
        if folder is None:
            continue
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for p in list_files(folder):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                out.problems.append(Problem(str(p), f"unexpected file in {cls}/ (expected .png)"))
                continue
            m = MASK_RE.match(p.stem)
            if m:
                order = int(m["extra"]) if m["extra"] is not None else 0
                masks.setdefault(m["stem"], []).append((order, p))
            else:
                images[p.stem] = p
        for stem, mlist in sorted(masks.items()):
            if stem not in images:
                for _, mp in mlist:
                    out.problems.append(Problem(str(mp), (
                        f"extra mask: no image {stem}.png in {cls}/")))
        for stem, image_path in sorted(images.items()):
            mlist = sorted(masks.get(stem, []))
            if not mlist and cls != "normal":
                out.problems.append(Problem(str(folder / f"{stem}_mask.png"), (
                    f"missing mask for image {image_path.name}")))
                continue
            if mlist and mlist[0][0] != 0:
                out.problems.append(Problem(str(folder / f"{stem}_mask.png"), (
                    f"missing main mask for image {image_path.name} (only "
                    f"{', '.join(p.name for _, p in mlist)} found)")))
                continue
            if stem in names:
                out.problems.append(Problem(str(image_path), (
                    f"image name {stem} also used by {names[stem]}")))
                continue
            names[stem] = image_path
            mask_paths = tuple(p for _, p in mlist)
            out.records.append(ImageRecord(
                name=stem, image_path=image_path, mask_paths=mask_paths, class_label=cls,
                case_id=stem,
                meta={"original_path": str(image_path),
                      "original_mask_paths": [str(p) for p in mask_paths],
                      "n_masks": len(mask_paths)}))
    return out
