"""BUS-BRA reader on the real 80-image sample (40 benign, 40 malignant, one image per case)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sonoaudit.datasets import load_pair, scan


def test_real_sample_counts(busbra_sample: Path) -> None:
    result = scan(busbra_sample)
    assert result.problems == []
    assert result.format == "busbra"
    assert result.is_phantom is False
    assert result.counts == {"benign": 40, "malignant": 40}
    assert result.n_cases == 80
    # Independent count straight from the published CSV.
    with (busbra_sample / "bus_data.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 80
    by_id = {r["ID"]: r for r in rows}
    for rec in result.records:
        assert rec.class_label == by_id[rec.name]["Pathology"]
        assert rec.case_id == by_id[rec.name]["Case"]
        mask_name = rec.name.replace("bus_", "mask_")
        assert rec.mask_paths == (busbra_sample / "Masks" / f"{mask_name}.png",)


def test_load_pair_matches_published_size_and_bbox(busbra_sample: Path) -> None:
    """Each pair has the CSV's Width/Height, and its mask's bounding box equals the published
    BBOX (BUS-BRA writes it 1-based with width = last - first)."""
    result = scan(busbra_sample)
    for rec in result.records:
        image, mask = load_pair(rec)
        assert image.dtype == np.uint8 and mask.dtype == bool
        assert image.shape == (rec.meta["declared_height"], rec.meta["declared_width"])
        assert mask.shape == image.shape
        ys, xs = np.nonzero(mask)
        x, y, w, h = rec.meta["bbox_xywh"]
        found = [xs.min() + 1, ys.min() + 1, xs.max() - xs.min(), ys.max() - ys.min()]
        assert found == [x, y, w, h]
        assert rec.meta["grey_conversion"] == "none"  # release images are 8-bit grey


def test_sha256_recorded(busbra_sample: Path) -> None:
    import hashlib

    rec = scan(busbra_sample).records[0]
    assert rec.sha256 == hashlib.sha256(rec.image_path.read_bytes()).hexdigest()
