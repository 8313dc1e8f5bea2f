"""`datasets inspect` counts only the images that passed every check (docs/datasets.md): broken
copies of the real BUS-BRA sample (80 images, 40 benign + 40 malignant, 80 cases) each lose
exactly the image at fault, and `n_images_checked` keeps the total that was checked."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sonoaudit.cli.main import app
from sonoaudit.datasets.scan import scan
from typer.testing import CliRunner

BENIGN, MALIGNANT = "bus_0011-r", "bus_0014-s"  # 279x327 benign, 360x385 malignant


def _mask(root: Path, image_id: str) -> Path:
    return root / "Masks" / f"{image_id.replace('bus_', 'mask_')}.png"


def _size(root: Path, image_id: str) -> tuple[int, int]:
    with Image.open(root / "Images" / f"{image_id}.png") as im:
        return im.size


def wrong_size_mask(root: Path, image_id: str) -> None:
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(_mask(root, image_id))


def non_binary_mask(root: Path, image_id: str) -> None:
    w, h = _size(root, image_id)
    ramp = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
    Image.fromarray(ramp).save(_mask(root, image_id))


def empty_mask(root: Path, image_id: str) -> None:
    w, h = _size(root, image_id)
    Image.fromarray(np.zeros((h, w), np.uint8)).save(_mask(root, image_id))


def csv_size_mismatch(root: Path, image_id: str) -> None:
    path = root / "bus_data.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if row["ID"] == image_id:
            row["Width"] = str(int(row["Width"]) + 1)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def truncated_image(root: Path, image_id: str) -> None:
    path = root / "Images" / f"{image_id}.png"
    path.write_bytes(path.read_bytes()[:200])


@pytest.fixture
def copy_of(busbra_sample: Path, tmp_path: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        return Path(shutil.copytree(busbra_sample, tmp_path / name))
    return make


def test_clean_sample_counts_every_image(copy_of: Callable[[str], Path]) -> None:
    s = scan(copy_of("clean")).summary()
    assert (s["n_images"], s["n_images_checked"], s["counts"], s["n_cases"], s["problems"]) == (
        80, 80, {"benign": 40, "malignant": 40}, 80, [])


@pytest.mark.parametrize("breaks", [wrong_size_mask, non_binary_mask, empty_mask,
                                    csv_size_mismatch, truncated_image])
@pytest.mark.parametrize(("image_id", "cls"), [(BENIGN, "benign"), (MALIGNANT, "malignant")])
def test_the_image_at_fault_is_not_counted(copy_of: Callable[[str], Path],
                                           breaks: Callable[[Path, str], None], image_id: str,
                                           cls: str) -> None:
    root = copy_of(f"{breaks.__name__}-{cls}")
    breaks(root, image_id)
    s = scan(root).summary()
    assert len(s["problems"]) == 1, s["problems"]
    expected = {"benign": 40, "malignant": 40}
    expected[cls] -= 1
    assert (s["n_images"], s["counts"], s["n_cases"]) == (79, expected, 79)
    assert s["n_images_checked"] == 80  # all 80 were read or tried, one failed


def test_a_duplicate_counts_once(copy_of: Callable[[str], Path]) -> None:
    """A copy of bus_0011-r as bus_9999-s (benign, its own case): 81 checked, 80 usable —
    the copy is the problem, the first one still counts."""
    root = copy_of("dupe")
    shutil.copy(root / "Images" / f"{BENIGN}.png", root / "Images" / "bus_9999-s.png")
    shutil.copy(_mask(root, BENIGN), root / "Masks" / "mask_9999-s.png")
    with (root / "bus_data.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    src = next(r for r in rows if r["ID"] == BENIGN)
    rows.append(src | {"ID": "bus_9999-s", "Case": "9999", "Side": "single"})
    with (root / "bus_data.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    s = scan(root).summary()
    assert [p["path"] for p in s["problems"]] == [str(root / "Images" / "bus_9999-s.png")]
    assert (s["n_images"], s["n_images_checked"], s["counts"], s["n_cases"]) == (
        80, 81, {"benign": 40, "malignant": 40}, 80)


def test_cli_prints_usable_of_checked(copy_of: Callable[[str], Path]) -> None:
    root = copy_of("cli")
    wrong_size_mask(root, MALIGNANT)
    runner = CliRunner()
    res = runner.invoke(app, ["datasets", "inspect", str(root)])
    assert res.exit_code == 1
    assert "usable images: 79 of 80 checked (benign 40, malignant 39); cases: 79" in res.output
    res = runner.invoke(app, ["datasets", "inspect", str(root), "--json"])
    out = json.loads(res.stdout)
    assert (out["n_images"], out["n_images_checked"]) == (79, 80)
