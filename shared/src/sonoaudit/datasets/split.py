"""Train/validation split by patient (``case_id``), never by image.

Cases are grouped by their class set (almost always one class), and within each group a seeded
shuffle of the sorted case ids sends ``round(n_cases * val_fraction)`` cases to validation, so
both sides keep the class balance and the same seed always gives the same split.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from sonoaudit.datasets.records import ImageRecord


def split_by_case(
    records: Sequence[ImageRecord], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, val) record lists; every case lies entirely on one side. Order follows input."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    classes_of: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        classes_of[rec.case_id].add(rec.class_label)
    strata: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for case, classes in classes_of.items():
        strata[tuple(sorted(classes))].append(case)

    val_cases: set[str] = set()
    for key in sorted(strata):
        cases = sorted(strata[key])
        # One generator per stratum keyed on the seed and the stratum, so adding a class to the
        # dataset does not reshuffle the others.
        rng = np.random.default_rng([seed, *(sum(map(ord, k)) for k in key)])
        order = rng.permutation(len(cases))
        n_val = int(round(len(cases) * val_fraction))
        val_cases.update(cases[i] for i in order[:n_val])

    train = [r for r in records if r.case_id not in val_cases]
    val = [r for r in records if r.case_id in val_cases]
    return train, val


def split_labels(
    records: Sequence[ImageRecord], val_fraction: float = 0.2, seed: int = 0
) -> dict[str, str]:
    """record name → "train" | "val" (what the store records in ``Image.split``)."""
    train, val = split_by_case(records, val_fraction, seed)
    return {**{r.name: "train" for r in train}, **{r.name: "val" for r in val}}
