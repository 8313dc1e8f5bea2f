"""UDIAT Dataset B layout built here: original/, GT/, DatasetB.xlsx (written with openpyxl)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from dataset_builders import box_mask, make_udiat, noise_image
from sonoaudit.datasets import load_pair, scan


def test_reads_labels_from_xlsx(tmp_path: Path) -> None:
    root = make_udiat(tmp_path / "Dataset_B", {1: "Benign", 2: "Malignant", 17: "Benign"})
    result = scan(root)
    assert result.problems == []
    assert result.format == "udiat"
    assert result.counts == {"benign": 2, "malignant": 1}
    by_name = {r.name: r for r in result.records}
    assert set(by_name) == {"000001", "000002", "000017"}  # Image 17 → zero-padded stem
    assert by_name["000002"].class_label == "malignant"
    assert by_name["000017"].image_path == root / "original" / "000017.png"
    assert by_name["000001"].meta["histology"] == "CYST"
    assert result.n_cases == 3  # no patient key: one case per image
    image, mask = load_pair(by_name["000017"])
    assert np.array_equal(image, noise_image(502, 33, 47))
    assert np.array_equal(mask, box_mask(33, 47, 5, 6, 10, 12))


def test_parent_folder_and_title_row(tmp_path: Path) -> None:
    """Pointing at the folder above Dataset_B works; a title row above the header is skipped."""
    make_udiat(tmp_path / "copy" / "Dataset_B", {1: "benign", 2: "MALIGNANT"}, header_row=3)
    result = scan(tmp_path / "copy")
    assert result.problems == []
    assert result.root == tmp_path / "copy" / "Dataset_B"
    assert result.counts == {"benign": 1, "malignant": 1}


def test_unknown_type_and_bad_image_number(tmp_path: Path) -> None:
    root = make_udiat(tmp_path / "B", {1: "Benign", 2: "Malignant", 3: "Suspicious"},
                      extra_rows=[["abc", "Benign", "CYST"]])
    result = scan(root)
    msgs = [(Path(p.path).name, p.problem) for p in result.problems]
    assert any(n == "DatasetB.xlsx" and "row 4" in m and "'Suspicious'" in m for n, m in msgs), msgs
    assert any(n == "DatasetB.xlsx" and "row 5" in m and "whole number" in m for n, m in msgs)
    assert len(msgs) == 2, msgs  # a refused row is reported once, not again as "not listed"


def test_missing_workbook(tmp_path: Path) -> None:
    root = make_udiat(tmp_path / "B", {1: "Benign", 2: "Malignant"})
    (root / "DatasetB.xlsx").unlink()
    result = scan(root)
    assert [(Path(p.path).name, "missing" in p.problem) for p in result.problems] == [
        ("DatasetB.xlsx", True)]


def test_damaged_workbook(tmp_path: Path) -> None:
    root = make_udiat(tmp_path / "B", {1: "Benign", 2: "Malignant"})
    (root / "DatasetB.xlsx").write_bytes(b"not a zip file")
    result = scan(root)
    assert len(result.problems) == 1
    assert result.problems[0].path.endswith("DatasetB.xlsx")
    assert "cannot read the workbook" in result.problems[0].problem


def test_missing_and_extra_gt_and_size_mismatch(tmp_path: Path) -> None:
    from dataset_builders import save_mask

    root = make_udiat(tmp_path / "B", {1: "Benign", 2: "Malignant", 3: "Benign"})
    (root / "GT" / "000001.png").unlink()
    save_mask(root / "GT" / "000099.png", box_mask(33, 47))
    save_mask(root / "GT" / "000003.png", box_mask(30, 47), mode="L")
    found = sorted((Path(p.path).name, p.problem) for p in scan(root).problems)
    assert found == [
        ("000001.png", "missing mask for image 000001.png"),
        ("000003.png", "mask is 47x30 but its image 000003.png is 47x33"),
        ("000099.png", "extra mask: no listed image has this mask"),
    ]
