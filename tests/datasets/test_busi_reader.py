"""BUSI layout built here: class folders, `name (N)_mask.png`, extra `_mask_1` OR-merged,
RGB/RGBA masks, normal = empty mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from dataset_builders import box_mask, make_busi, noise_image, save_grey, save_mask
from sonoaudit.datasets import load_pair, scan


def test_reads_layout(tmp_path: Path) -> None:
    root = make_busi(tmp_path / "Dataset_BUSI_with_GT")
    result = scan(tmp_path)  # the folder above the release folder works too
    assert result.problems == []
    assert result.format == "busi"
    assert result.counts == {"benign": 2, "malignant": 2, "normal": 1}
    assert result.classes == ["benign", "malignant", "normal"]
    by_name = {r.name: r for r in result.records}
    assert by_name["benign (1)"].mask_paths == (
        root / "benign" / "benign (1)_mask.png", root / "benign" / "benign (1)_mask_1.png")


def test_extra_masks_are_or_merged(tmp_path: Path) -> None:
    make_busi(tmp_path)
    rec = {r.name: r for r in scan(tmp_path).records}["benign (1)"]
    _, mask = load_pair(rec)
    expected = box_mask(36, 44, 2, 2, 6, 6) | box_mask(36, 44, 20, 25, 5, 7)
    assert np.array_equal(mask, expected)
    assert mask.sum() == 36 + 35


def test_rgb_image_and_mask_become_grey_and_binary(tmp_path: Path) -> None:
    make_busi(tmp_path)
    rec = {r.name: r for r in scan(tmp_path).records}["malignant (1)"]
    image, mask = load_pair(rec)
    assert image.ndim == 2 and image.dtype == np.uint8
    # Grey replicated into RGB converts back exactly (luma weights sum to 1).
    assert np.array_equal(image, noise_image(903, 36, 44))
    assert rec.meta["grey_conversion"] == "luma601"
    assert np.array_equal(mask, box_mask(36, 44, 4, 4, 9, 9))


def test_normal_has_empty_mask(tmp_path: Path) -> None:
    make_busi(tmp_path)
    rec = {r.name: r for r in scan(tmp_path).records}["normal (1)"]
    _, mask = load_pair(rec)
    assert mask.shape == (36, 44) and not mask.any()


def test_coloured_mask_counts_by_channel_maximum(tmp_path: Path) -> None:
    """A red lesion drawing (255, 0, 0) is lesion: luma would give 76 and lose it."""
    make_busi(tmp_path)
    red = np.zeros((36, 44, 3), dtype=np.uint8)
    red[5:15, 5:20, 0] = 255
    from PIL import Image

    Image.fromarray(red).save(tmp_path / "benign" / "benign (2)_mask.png")
    rec = {r.name: r for r in scan(tmp_path).records}["benign (2)"]
    _, mask = load_pair(rec)
    assert mask.sum() == 10 * 15


def test_bad_cases(tmp_path: Path) -> None:
    make_busi(tmp_path)
    # missing mask, extra mask, normal with a lesion, unknown class folder, main mask missing
    save_grey(tmp_path / "benign" / "benign (3).png", noise_image(906, 36, 44))
    save_mask(tmp_path / "malignant" / "malignant (9)_mask.png", box_mask(36, 44))
    save_mask(tmp_path / "normal" / "normal (1)_mask.png", box_mask(36, 44), mode="L")
    save_grey(tmp_path / "axilla" / "axilla (1).png", noise_image(907, 36, 44))
    save_grey(tmp_path / "benign" / "benign (4).png", noise_image(908, 36, 44))
    save_mask(tmp_path / "benign" / "benign (4)_mask_1.png", box_mask(36, 44))
    result = scan(tmp_path)
    found = {(Path(p.path).name, p.problem.split(":")[0].split(" (")[0]) for p in result.problems}
    assert ("benign (3)_mask.png", "missing mask for image benign") in found
    assert ("malignant (9)_mask.png", "extra mask") in found
    assert ("normal (1)_mask.png", "image labelled normal has a non-empty mask") in found
    assert ("axilla", "unknown class folder axilla/; expected benign, malignant, normal") in found
    assert ("benign (4)_mask.png", "missing main mask for image benign") in found
    assert len(result.problems) == 5


def test_empty_class_folder_and_cross_class_duplicate(tmp_path: Path) -> None:
    """BUSI's known defect: the same image filed as benign and as malignant."""
    make_busi(tmp_path)
    for p in (tmp_path / "normal").iterdir():
        p.unlink()
    same = (tmp_path / "benign" / "benign (2).png").read_bytes()
    (tmp_path / "malignant" / "malignant (2).png").write_bytes(same)
    result = scan(tmp_path)
    found = {(Path(p.path).name, p.problem) for p in result.problems}
    assert ("normal", "class 'normal' has no images") in found
    dup = [m for n, m in found if n == "malignant (2).png"]
    assert len(dup) == 1 and dup[0].startswith("duplicate image across classes")
    assert len(result.problems) == 2
