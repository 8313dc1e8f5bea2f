"""split_by_case: by patient, never by image; deterministic for a seed; class-balanced."""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_builders import make_busbra
from sonoaudit.datasets import ImageRecord, scan, split_by_case


def records(n_cases: int, pairs_every: int = 2) -> list[ImageRecord]:
    out = []
    for c in range(n_cases):
        label = "benign" if c % 3 else "malignant"
        sides = ("l", "r") if c % pairs_every == 0 else ("s",)
        for s in sides:
            out.append(ImageRecord(name=f"bus_{c:04d}-{s}", image_path=Path("x"), mask_paths=(),
                                   class_label=label, case_id=str(c)))
    return out


def test_one_case_never_on_both_sides() -> None:
    recs = records(60)
    for seed in range(20):
        train, val = split_by_case(recs, 0.25, seed)
        assert {r.case_id for r in train}.isdisjoint({r.case_id for r in val})
        assert len(train) + len(val) == len(recs)


def test_fraction_is_of_cases_per_class() -> None:
    recs = records(60)  # 20 malignant cases (c % 3 == 0), 40 benign
    _, val = split_by_case(recs, 0.25, 3)
    val_cases = {(r.case_id, r.class_label) for r in val}
    assert sum(1 for _, c in val_cases if c == "malignant") == 5
    assert sum(1 for _, c in val_cases if c == "benign") == 10


def test_deterministic_and_seed_dependent() -> None:
    recs = records(60)
    a = split_by_case(recs, 0.2, 7)
    b = split_by_case(list(reversed(recs)), 0.2, 7)  # input order does not matter
    assert {r.name for r in a[1]} == {r.name for r in b[1]}
    c = split_by_case(recs, 0.2, 8)
    assert {r.name for r in a[1]} != {r.name for r in c[1]}


def test_zero_fraction_and_bad_fraction() -> None:
    recs = records(10)
    train, val = split_by_case(recs, 0.0, 0)
    assert val == [] and len(train) == len(recs)
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_case(recs, 1.0, 0)


def test_left_right_halves_of_a_busbra_capture_stay_together(tmp_path: Path) -> None:
    rows = []
    for c in range(1, 21):
        label = "benign" if c <= 10 else "malignant"
        rows += [(f"bus_{c:04d}-l", str(c), label), (f"bus_{c:04d}-r", str(c), label)]
    result = scan(make_busbra(tmp_path, rows))
    assert result.problems == [] and result.n_cases == 20
    for seed in range(10):
        train, val = split_by_case(result.records, 0.3, seed)
        val_names = {r.name for r in val}
        for c in range(1, 21):
            assert (f"bus_{c:04d}-l" in val_names) == (f"bus_{c:04d}-r" in val_names)
        assert len(val) == 2 * 6  # 3 of 10 cases per class, two images each
