"""Small builders shared by the metrics tests: drawn images/masks and pair folders."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sonoaudit_metrics.samples import ImageSample


def disc_mask(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def speckle_sample(name: str, seed: int, size: int = 64, label: str | None = None,
                   lesion: bool = True) -> ImageSample:
    """A speckle-like grey image with a dark (hypoechoic) disc lesion and its mask."""
    rng = np.random.default_rng(seed)
    img = rng.gamma(2.0, 40.0, size=(size, size))
    mask = disc_mask(size, size / 2 + rng.integers(-8, 8), size / 2 + rng.integers(-8, 8),
                     size / 6 + rng.integers(0, 4))
    if lesion:
        img[mask] *= 0.3
    return ImageSample(name, np.clip(img, 0, 255).astype(np.uint8), mask, label,
                       source=f"drawn:{name}")


def write_pairs(root: Path, samples: list[ImageSample]) -> Path:
    """A generator-style folder: <name>_image.png + <name>_mask.png (class subfolder if known)."""
    for s in samples:
        d = root / s.class_label if s.class_label else root
        d.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(s.image).save(d / f"{s.name}_image.png")
        if s.mask is not None:
            PILImage.fromarray(s.mask.astype(np.uint8) * 255).save(d / f"{s.name}_mask.png")
    return root


def truncated_dataset(root: Path, n_per_class: int = 3) -> tuple[Path, Path]:
    """A small phantom BUS-BRA-layout dataset with its second image cut in half (an unreadable
    PNG that ``datasets inspect`` flags); (dataset root, the damaged file)."""
    from sonoaudit.datasets.phantom import write_phantom

    write_phantom(root, n_per_class=n_per_class, size=64)
    bad = sorted((root / "Images").glob("*.png"))[1]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return root, bad


def busbra_dataset_of(src: Path, dst: Path, keep: Callable[[int, dict[str, str]], bool]) -> Path:
    """The BUS-BRA images whose bus_data.csv rows ``keep(index, row)`` accepts (files and rows)
    as a dataset of the official layout at ``dst``."""
    with (src / "bus_data.csv").open() as fh:
        rows = [r for i, r in enumerate(csv.DictReader(fh)) if keep(i, r)]
    (dst / "Images").mkdir(parents=True)
    (dst / "Masks").mkdir()
    for r in rows:
        shutil.copy(src / "Images" / f"{r['ID']}.png", dst / "Images")
        shutil.copy(src / "Masks" / f"mask_{r['ID'][4:]}.png", dst / "Masks")
    with (dst / "bus_data.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dst
