"""Every bad case gives a problem naming the file at fault; all problems are collected in one
scan; ``DatasetError`` carries them all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dataset_builders import box_mask, make_busbra, noise_image, save_grey, save_mask, small_busbra
from PIL import Image
from sonoaudit.datasets import DatasetError, scan


def problems_by_file(root: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in scan(root).problems:
        out.setdefault(Path(p.path).name, []).append(p.problem)
    return out


def test_clean_layout_has_no_problems(tmp_path: Path) -> None:
    result = scan(small_busbra(tmp_path))
    assert result.problems == []
    assert result.counts == {"benign": 3, "malignant": 3}
    assert result.n_cases == 5


def test_missing_mask(tmp_path: Path) -> None:
    root = small_busbra(tmp_path)
    (root / "Masks" / "mask_0002-s.png").unlink()
    assert problems_by_file(root) == {"mask_0002-s.png": ["missing mask for image bus_0002-s.png"]}


def test_extra_mask(tmp_path: Path) -> None:
    root = small_busbra(tmp_path)
    save_mask(root / "Masks" / "mask_0099-s.png", box_mask())
    assert problems_by_file(root) == {
        "mask_0099-s.png": ["extra mask: no listed image has this mask"]}


def test_image_not_listed_and_listed_image_missing(tmp_path: Path) -> None:
    root = small_busbra(tmp_path)
    save_grey(root / "Images" / "bus_0042-s.png", noise_image(42))
    (root / "Images" / "bus_0001-s.png").unlink()
    found = problems_by_file(root)
    assert found["bus_0042-s.png"] == ["image is not listed in bus_data.csv"]
    assert found["bus_0001-s.png"] == ["image listed in "
                                       f"{root / 'bus_data.csv'} (line 2) is missing"]


def test_size_mismatch(tmp_path: Path) -> None:
    root = small_busbra(tmp_path)
    save_mask(root / "Masks" / "mask_0004-s.png", box_mask(h=41, w=56))
    assert problems_by_file(root) == {
        "mask_0004-s.png": ["mask is 56x41 but its image bus_0004-s.png is 56x40"]}


def test_unreadable_image_and_non_image_file(tmp_path: Path) -> None:
    root = small_busbra(tmp_path)
    (root / "Images" / "bus_0002-s.png").write_text("this is not a PNG")
    data = (root / "Images" / "bus_0004-s.png").read_bytes()
    (root / "Images" / "bus_0004-s.png").write_bytes(data[: len(data) // 2])  # truncated
    (root / "Images" / "notes.txt").write_text("hello")
    (root / "Images" / ".DS_Store").write_bytes(b"\0")  # OS junk is ignored
    found = problems_by_file(root)
    assert found["bus_0002-s.png"] == ["not an image file (cannot identify an image format)"]
    assert len(found["bus_0004-s.png"]) == 1
    assert found["bus_0004-s.png"][0].startswith("unreadable image (")
    assert found["notes.txt"] == ["unexpected file in Images/ (expected bus_*.png)"]
    assert set(found) == {"bus_0002-s.png", "bus_0004-s.png", "notes.txt"}


def test_non_binary_mask_beyond_tolerance(tmp_path: Path) -> None:
    root = small_busbra(tmp_path)
    soft = np.zeros((40, 56), dtype=np.uint8)
    soft[10:20, 10:30] = 128  # 200 of 2240 pixels grey: 8.9 %
    Image.fromarray(soft).save(root / "Masks" / "mask_0001-s.png")
    found = problems_by_file(root)
    assert list(found) == ["mask_0001-s.png"]
    assert found["mask_0001-s.png"][0].startswith("mask is not binary: 8.9% of pixels")


def test_few_grey_edge_pixels_are_tolerated(tmp_path: Path) -> None:
    """Anti-aliased edges: 20 of 2240 pixels (0.9 %) grey stays under the 1 % tolerance."""
    root = small_busbra(tmp_path)
    m = box_mask().astype(np.uint8) * 255
    m[0, :20] = 100
    Image.fromarray(m).save(root / "Masks" / "mask_0001-s.png")
    assert scan(root).problems == []


def test_unknown_class_label(tmp_path: Path) -> None:
    root = make_busbra(tmp_path, [("bus_0001-s", "1", "benign"), ("bus_0002-s", "2", "Malignant"),
                                  ("bus_0003-s", "3", "borderline")])
    result = scan(root)
    assert result.counts == {"benign": 1, "malignant": 1}  # labels are case-insensitive
    assert [(Path(p.path).name, p.problem) for p in result.problems] == [
        ("bus_data.csv", "line 4 (bus_0003-s): unknown class label 'borderline' in column "
                         "Pathology; expected one of benign, malignant")]


def test_class_with_no_images(tmp_path: Path) -> None:
    root = make_busbra(tmp_path, [("bus_0001-s", "1", "benign"), ("bus_0002-s", "2", "benign")])
    assert problems_by_file(root) == {"bus_data.csv": ["class 'malignant' has no images"]}


def test_duplicate_across_classes(tmp_path: Path) -> None:
    root = small_busbra(tmp_path)
    same = (root / "Images" / "bus_0001-s.png").read_bytes()
    (root / "Images" / "bus_0004-s.png").write_bytes(same)  # benign copy labelled malignant
    found = problems_by_file(root)
    assert list(found) == ["bus_0004-s.png"]
    assert found["bus_0004-s.png"][0].startswith(
        "duplicate image across classes: identical file to ")
    assert "bus_0001-s.png (benign) but labelled malignant" in found["bus_0004-s.png"][0]


def test_re_encoded_duplicate_within_a_class(tmp_path: Path) -> None:
    """Same pixels, different bytes (saved as RGB): still a duplicate, and it would leak."""
    root = small_busbra(tmp_path)
    grey = Image.open(root / "Images" / "bus_0001-s.png")
    grey.convert("RGB").save(root / "Images" / "bus_0002-s.png")
    found = problems_by_file(root)
    assert found == {"bus_0002-s.png": [
        f"duplicate image: identical pixels to {root / 'Images' / 'bus_0001-s.png'} (same class "
        "benign); remove one copy, or it leaks across splits"]}


def test_missing_columns(tmp_path: Path) -> None:
    root = small_busbra(tmp_path)
    (root / "bus_data.csv").write_text("ID,Label\nbus_0001-s,benign\n")
    assert problems_by_file(root) == {"bus_data.csv": [
        "missing column(s) Case, Pathology; expected a header with ID, Case, Pathology "
        "(found ID, Label)"]}


def test_declared_size_mismatch(tmp_path: Path) -> None:
    root = small_busbra(tmp_path)
    csv = (root / "bus_data.csv").read_text().replace("bus_0002-s,2,x,benign,4,test,56,40",
                                                      "bus_0002-s,2,x,benign,4,test,60,40")
    (root / "bus_data.csv").write_text(csv)
    found = problems_by_file(root)
    assert found == {"bus_0002-s.png": [
        f"image is 56x40 but {root / 'bus_data.csv'} line 3 says 60x40"]}


def test_all_problems_collected_and_raised(tmp_path: Path) -> None:
    root = small_busbra(tmp_path)
    (root / "Masks" / "mask_0002-s.png").unlink()
    save_mask(root / "Masks" / "mask_0099-s.png", box_mask())
    (root / "Images" / "bus_0004-s.png").write_text("junk")
    result = scan(root)
    assert len(result.problems) == 3
    with pytest.raises(DatasetError) as err:
        result.raise_for_problems()
    assert err.value.problems == result.problems
    text = str(err.value)
    for name in ("mask_0002-s.png", "mask_0099-s.png", "bus_0004-s.png"):
        assert name in text


def test_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    result = scan(tmp_path / "random")
    assert result.format == "unknown"
    assert "no known dataset layout" in result.problems[0].problem
    assert scan(tmp_path / "nope").problems[0].problem == "path does not exist"


def test_lesion_class_with_empty_mask(tmp_path: Path) -> None:
    root = small_busbra(tmp_path)
    save_mask(root / "Masks" / "mask_0004-s.png", np.zeros((40, 56), dtype=bool))
    assert problems_by_file(root) == {
        "mask_0004-s.png": ["image labelled malignant has an empty mask (no lesion pixels)"]}
