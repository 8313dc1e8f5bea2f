"""Small dataset layouts written in tmp_path: BUS-BRA, UDIAT Dataset B and BUSI, with images whose
content and masks the tests know exactly."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(seed: int, h: int = 40, w: int = 56) -> np.ndarray:
    """A distinct grey image per seed (so no accidental duplicates)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def box_mask(h: int = 40, w: int = 56, top: int = 10, left: int = 12, bh: int = 8,
             bw: int = 14) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[top:top + bh, left:left + bw] = True
    return m


def save_grey(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def save_mask(path: Path, mask: np.ndarray, mode: str = "1") -> Path:
    """Mask as 1-bit ("1"), 0/255 grey ("L"), white-on-black RGB or RGBA."""
    path.parent.mkdir(parents=True, exist_ok=True)
    grey = Image.fromarray(mask.astype(np.uint8) * 255)
    grey.convert(mode).save(path)
    return path


BUSBRA_HEADER = ["ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Width", "Height",
                 "Side", "BBOX"]


def make_busbra(root: Path, rows: list[tuple[str, str, str]], seed: int = 0, *, h: int = 40,
                w: int = 56) -> Path:
    """BUS-BRA layout; ``rows`` are (ID, Case, Pathology). Images ``w``x``h`` (56x40) noise,
    box masks."""
    (root / "Images").mkdir(parents=True, exist_ok=True)
    (root / "Masks").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image_id, case, label) in enumerate(rows):
        img = noise_image(seed * 1000 + i, h, w)
        save_grey(root / "Images" / f"{image_id}.png", img)
        save_mask(root / "Masks" / f"{image_id.replace('bus_', 'mask_')}.png", box_mask(h, w))
        side = {"l": "left", "r": "right"}.get(image_id[-1], "single")
        lines.append([image_id, case, "x", label, "4", "test", str(w), str(h), side,
                      "[13,11,13,7]"])
    with (root / "bus_data.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(BUSBRA_HEADER)
        out.writerows(lines)
    return root


def small_busbra(root: Path) -> Path:
    """Six images, five cases (case 3 has -l/-r), 3 benign and 3 malignant."""
    return make_busbra(root, [
        ("bus_0001-s", "1", "benign"), ("bus_0002-s", "2", "benign"),
        ("bus_0003-l", "3", "benign"), ("bus_0004-s", "4", "malignant"),
        ("bus_0005-l", "5", "malignant"), ("bus_0005-r", "5", "malignant"),
    ])


def make_udiat(root: Path, labels: dict[int, str], *, header_row: int = 1,
               extra_rows: list[list[object]] | None = None, h: int = 33, w: int = 47) -> Path:
    """UDIAT Dataset B layout; ``labels`` maps image number → Type text as in the xlsx. Images
    ``w``x``h`` (47x33) noise, box masks."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    for _ in range(header_row - 1):
        ws.append(["UDIAT Dataset B"])
    ws.append(["Image", "Type", "Histology"])
    for i, (number, kind) in enumerate(sorted(labels.items())):
        ws.append([number, kind, "CYST" if kind.lower() == "benign" else "IDC"])
        save_grey(root / "original" / f"{number:06d}.png", noise_image(500 + i, h, w))
        save_mask(root / "GT" / f"{number:06d}.png", box_mask(h, w, 5, 6, 10, 12), mode="L")
    for row in extra_rows or []:
        ws.append(row)
    root.mkdir(parents=True, exist_ok=True)
    wb.save(root / "DatasetB.xlsx")
    return root


def make_busi(root: Path) -> Path:
    """BUSI layout: benign (1) with two masks (second one as RGBA), benign (2), malignant (1)
    with an RGB mask, malignant (2), normal (1) with an all-black mask."""
    h, w = 36, 44
    save_grey(root / "benign" / "benign (1).png", noise_image(901, h, w))
    save_mask(root / "benign" / "benign (1)_mask.png", box_mask(h, w, 2, 2, 6, 6), mode="L")
    save_mask(root / "benign" / "benign (1)_mask_1.png", box_mask(h, w, 20, 25, 5, 7),
              mode="RGBA")
    save_grey(root / "benign" / "benign (2).png", noise_image(902, h, w))
    save_mask(root / "benign" / "benign (2)_mask.png", box_mask(h, w), mode="L")
    rgb = np.stack([noise_image(903, h, w)] * 3, axis=-1)  # BUSI images are grey saved as RGB
    (root / "malignant").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(root / "malignant" / "malignant (1).png")
    save_mask(root / "malignant" / "malignant (1)_mask.png", box_mask(h, w, 4, 4, 9, 9),
              mode="RGB")
    save_grey(root / "malignant" / "malignant (2).png", noise_image(904, h, w))
    save_mask(root / "malignant" / "malignant (2)_mask.png", box_mask(h, w), mode="L")
    save_grey(root / "normal" / "normal (1).png", noise_image(905, h, w))
    save_mask(root / "normal" / "normal (1)_mask.png", np.zeros((h, w), dtype=bool), mode="L")
    return root


# --- One small, clean dataset per layout, with the knobs the bad-case matrix turns -------------

SIDE = 32  # every image of the matrix layouts is SIDE x SIDE
LAYOUT_FORMATS = ("busbra", "udiat", "busi")


@dataclass
class Layout:
    """A clean dataset of one format: two benign and two malignant 32x32 images (BUSI adds one
    normal image with its all-black mask), and where each of its files is.

    ``images``/``masks`` are keyed ``"benign 0"``, ``"benign 1"``, ``"malignant 0"``, … (a
    BUSI normal image is ``"normal 0"``). The format-specific edits are the callables below; each
    returns the path a problem report must name.
    """

    fmt: str
    root: Path
    images: dict[str, Path]
    masks: dict[str, Path]
    labels: Path | None  # bus_data.csv / DatasetB.xlsx; None for BUSI (class = folder name)
    image_dir: Path  # where a stray file next to the images goes
    orphan_mask: Path  # where a mask without an image would sit
    relabel: Callable[[str, str], Path]  # (key, new label text) → file that carries the label
    empty_class: Callable[[str], Path]  # (class) → path blamed for the class having no images

    @property
    def size(self) -> tuple[int, int]:
        return SIDE, SIDE


def _busbra_layout(root: Path) -> Layout:
    ids = {"benign 0": "bus_0001-s", "benign 1": "bus_0002-s",
           "malignant 0": "bus_0003-s", "malignant 1": "bus_0004-s"}
    make_busbra(root, [(i, i[4:8].lstrip("0"), k.split()[0]) for k, i in ids.items()], seed=7,
                h=SIDE, w=SIDE)
    csv_path = root / "bus_data.csv"

    def relabel(key: str, text: str) -> Path:
        with csv_path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        col = rows[0].index("Pathology")
        for row in rows[1:]:
            if row[0] == ids[key]:
                row[col] = text
        with csv_path.open("w", newline="") as fh:
            csv.writer(fh).writerows(rows)
        return csv_path

    def empty_class(cls: str) -> Path:
        other = "benign" if cls == "malignant" else "malignant"
        for key in ids:
            if key.startswith(cls):
                relabel(key, other)
        return csv_path

    return Layout(
        "busbra", root,
        images={k: root / "Images" / f"{i}.png" for k, i in ids.items()},
        masks={k: root / "Masks" / f"{i.replace('bus_', 'mask_')}.png" for k, i in ids.items()},
        labels=csv_path, image_dir=root / "Images", orphan_mask=root / "Masks" / "mask_0099-s.png",
        relabel=relabel, empty_class=empty_class)


def _udiat_layout(root: Path) -> Layout:
    numbers = {"benign 0": 1, "benign 1": 2, "malignant 0": 3, "malignant 1": 4}
    make_udiat(root, {n: k.split()[0].capitalize() for k, n in numbers.items()}, h=SIDE, w=SIDE)
    xlsx = root / "DatasetB.xlsx"

    def relabel(key: str, text: str) -> Path:
        from openpyxl import load_workbook

        wb = load_workbook(xlsx)
        ws = wb.worksheets[0]
        for row in ws.iter_rows(min_row=2):
            if row[0].value == numbers[key]:
                row[1].value = text
        wb.save(xlsx)
        return xlsx

    def empty_class(cls: str) -> Path:
        other = "Benign" if cls == "malignant" else "Malignant"
        for key in numbers:
            if key.startswith(cls):
                relabel(key, other)
        return xlsx

    return Layout(
        "udiat", root,
        images={k: root / "original" / f"{n:06d}.png" for k, n in numbers.items()},
        masks={k: root / "GT" / f"{n:06d}.png" for k, n in numbers.items()},
        labels=xlsx, image_dir=root / "original", orphan_mask=root / "GT" / "000099.png",
        relabel=relabel, empty_class=empty_class)


def _busi_layout(root: Path) -> Layout:
    keys = ["benign 0", "benign 1", "malignant 0", "malignant 1", "normal 0"]
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for seed, key in enumerate(keys):
        cls, i = key.split()
        name = f"{cls} ({int(i) + 1})"
        images[key] = save_grey(root / cls / f"{name}.png", noise_image(7000 + seed, SIDE, SIDE))
        lesion = box_mask(SIDE, SIDE) if cls != "normal" else np.zeros((SIDE, SIDE), dtype=bool)
        masks[key] = save_mask(root / cls / f"{name}_mask.png", lesion, mode="L")

    def relabel(key: str, text: str) -> Path:
        """BUSI's label is its folder: file the pair under a folder named ``text``."""
        folder = root / text
        folder.mkdir(exist_ok=True)
        for p in (images[key], masks[key]):
            p.rename(folder / p.name)
        return folder

    def empty_class(cls: str) -> Path:
        for p in (root / cls).iterdir():
            p.unlink()
        return root / cls

    return Layout(
        "busi", root, images=images, masks=masks, labels=None, image_dir=root / "benign",
        orphan_mask=root / "benign" / "benign (99)_mask.png", relabel=relabel,
        empty_class=empty_class)


def build_layout(fmt: str, root: Path) -> Layout:
    """A clean small dataset of ``fmt`` (busbra | udiat | busi) in ``root``."""
    return {"busbra": _busbra_layout, "udiat": _udiat_layout, "busi": _busi_layout}[fmt](root)
