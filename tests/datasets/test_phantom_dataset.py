"""The phantom generator: BUS-BRA layout, labelled phantom, exact masks, hypoechoic lesions,
benign wider-than-tall with posterior enhancement, malignant taller-than-wide with shadowing."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation
from sonoaudit.datasets import load_pair, scan, write_phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom(tmp_path_factory.mktemp("phantom"), n_per_class=40, seed=0, size=128)


def test_layout_labels_and_marker(phantom: Path) -> None:
    result = scan(phantom)
    assert result.problems == []
    assert result.format == "busbra"
    assert result.is_phantom is True
    assert result.counts == {"benign": 40, "malignant": 40}
    assert result.n_cases < 80  # some cases have -l/-r views
    assert "NOT PATIENT DATA" in (phantom / "PHANTOM.txt").read_text()
    with (phantom / "bus_data.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["Device"].startswith("sonoaudit phantom") for r in rows)
    assert {r["Side"] for r in rows} == {"left", "right", "single"}


def test_phantom_flag_survives_losing_the_marker(tmp_path: Path) -> None:
    root = write_phantom(tmp_path, n_per_class=2, seed=1, size=64)
    (root / "PHANTOM.txt").unlink()
    assert scan(root).is_phantom is True


def test_masks_are_exact_and_lesions_hypoechoic(phantom: Path) -> None:
    for rec in scan(phantom).records:
        image, mask = load_pair(rec)
        assert mask.any()
        ys, xs = np.nonzero(mask)
        x, y, w, h = rec.meta["bbox_xywh"]  # BUS-BRA convention, written from the mask
        assert [xs.min() + 1, ys.min() + 1, xs.max() - xs.min(), ys.max() - ys.min()] == [
            x, y, w, h]
        ring = binary_dilation(mask, iterations=4) & ~mask
        assert image[mask].mean() < 0.75 * image[ring].mean(), rec.name
        # Mask edges are where the darkness is: the pixels just inside are darker than the
        # pixels just outside (the mask is not shifted or blurred relative to the lesion).
        inner_edge = mask & ~binary_dilation(~mask, iterations=2)
        assert image[inner_edge].mean() < image[ring].mean()


def test_shape_and_posterior_signs(phantom: Path) -> None:
    for rec in scan(phantom).records:
        image, mask = load_pair(rec)
        ys, xs = np.nonzero(mask)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        x0, x1, bottom = xs.min(), xs.max(), ys.max()
        cols = np.arange(x0 + width // 4, x1 - width // 4 + 1)
        rows = np.arange(bottom + 3, min(bottom + 3 + 20, 110))
        behind = image[np.ix_(rows, cols)].mean()
        lateral_cols = np.r_[0:max(x0 - 6, 1), min(x1 + 7, 127):128]
        beside = image[np.ix_(rows, lateral_cols)].mean()
        if rec.class_label == "benign":
            assert width > height, rec.name
            assert behind > 1.1 * beside, (rec.name, behind, beside)  # enhancement
        else:
            assert height > width, rec.name
            assert behind < 0.75 * beside, (rec.name, behind, beside)  # shadowing


def test_malignant_outline_is_irregular(phantom: Path) -> None:
    """Solidity (area / convex-hull area) separates spiculated from oval outlines."""
    from scipy.spatial import ConvexHull

    solidity: dict[str, list[float]] = {"benign": [], "malignant": []}
    for rec in scan(phantom).records:
        _, mask = load_pair(rec)
        ys, xs = np.nonzero(mask)
        pts = np.concatenate([np.c_[xs + dx, ys + dy] for dx in (0, 1) for dy in (0, 1)])
        solidity[rec.class_label].append(mask.sum() / ConvexHull(pts).volume)
    assert min(solidity["benign"]) > 0.9
    assert max(solidity["malignant"]) < min(solidity["benign"])


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.name != "PHANTOM.txt":
                h.update(p.name.encode() + p.read_bytes())
        return h.hexdigest()

    a = digest(write_phantom(tmp_path / "a", n_per_class=3, seed=5, size=64))
    b = digest(write_phantom(tmp_path / "b", n_per_class=3, seed=5, size=64))
    c = digest(write_phantom(tmp_path / "c", n_per_class=3, seed=6, size=64))
    assert a == b != c


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_per_class"):
        write_phantom(tmp_path, n_per_class=0)
    with pytest.raises(ValueError, match="size"):
        write_phantom(tmp_path, size=8)
