"""Small dataset layouts written in tmp_path: BUS-BRA, UDIAT Dataset B and BUSI, with images whose
content and masks the tests know exactly."""

from __future__ import annotations

import csv
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


def make_busbra(root: Path, rows: list[tuple[str, str, str]], seed: int = 0) -> Path:
    """BUS-BRA layout; ``rows`` are (ID, Case, Pathology). Images 56x40 noise, box masks."""
    (root / "Images").mkdir(parents=True, exist_ok=True)
    (root / "Masks").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image_id, case, label) in enumerate(rows):
        img = noise_image(seed * 1000 + i)
        save_grey(root / "Images" / f"{image_id}.png", img)
        save_mask(root / "Masks" / f"{image_id.replace('bus_', 'mask_')}.png", box_mask())
        side = {"l": "left", "r": "right"}.get(image_id[-1], "single")
        lines.append([image_id, case, "x", label, "4", "test", "56", "40", side, "[13,11,13,7]"])
    with (root / "bus_data.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(BUSBRA_HEADER)
        w.writerows(lines)
    return root


def small_busbra(root: Path) -> Path:
    """Six images, five cases (case 3 has -l/-r), 3 benign and 3 malignant."""
    return make_busbra(root, [
        ("bus_0001-s", "1", "benign"), ("bus_0002-s", "2", "benign"),
        ("bus_0003-l", "3", "benign"), ("bus_0004-s", "4", "malignant"),
        ("bus_0005-l", "5", "malignant"), ("bus_0005-r", "5", "malignant"),
    ])


def make_udiat(root: Path, labels: dict[int, str], *, header_row: int = 1,
               extra_rows: list[list[object]] | None = None) -> Path:
    """UDIAT Dataset B layout; ``labels`` maps image number → Type text as in the xlsx."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    assert ws is not None
    for _ in range(header_row - 1):
        ws.append(["UDIAT Dataset B"])
    ws.append(["Image", "Type", "Histology"])
    for i, (number, kind) in enumerate(sorted(labels.items())):
        ws.append([number, kind, "CYST" if kind.lower() == "benign" else "IDC"])
        save_grey(root / "original" / f"{number:06d}.png", noise_image(500 + i, 33, 47))
        save_mask(root / "GT" / f"{number:06d}.png", box_mask(33, 47, 5, 6, 10, 12), mode="L")
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
