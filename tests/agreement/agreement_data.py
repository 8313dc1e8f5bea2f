"""Published data sets used by the agreement tests."""

from __future__ import annotations

from typing import Any

import numpy as np

# Fleiss (1971), Psychol. Bull. 76:378, Table 1: 30 patients, 6 psychiatrists each, 5 diagnoses
# (1 depression, 2 personality disorder, 3 schizophrenia, 4 neurosis, 5 other); the raw form
# distributed as `diagnoses` in R's irr package. Published kappa 0.430.
FLEISS_1971 = np.array([
    [4, 4, 4, 4, 4, 4], [2, 2, 2, 5, 5, 5], [2, 3, 3, 3, 3, 5], [5, 5, 5, 5, 5, 5],
    [2, 2, 2, 4, 4, 4], [1, 1, 3, 3, 3, 3], [3, 3, 3, 3, 5, 5], [1, 1, 3, 3, 3, 4],
    [1, 1, 4, 4, 4, 4], [5, 5, 5, 5, 5, 5], [1, 4, 4, 4, 4, 4], [1, 2, 4, 4, 4, 4],
    [2, 2, 2, 3, 3, 3], [1, 4, 4, 4, 4, 4], [2, 2, 4, 4, 4, 5], [3, 3, 3, 3, 3, 5],
    [1, 1, 1, 4, 5, 5], [1, 1, 1, 1, 1, 2], [2, 2, 4, 4, 4, 4], [1, 3, 3, 5, 5, 5],
    [5, 5, 5, 5, 5, 5], [2, 4, 4, 4, 4, 4], [2, 2, 4, 5, 5, 5], [1, 1, 4, 4, 4, 4],
    [1, 4, 4, 4, 4, 5], [2, 2, 2, 2, 2, 4], [1, 1, 1, 1, 5, 5], [2, 2, 4, 4, 4, 4],
    [1, 3, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5],
])

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers ×
# 12 units, values 1-5, "." = missing. Published alpha: nominal .743, ordinal .815, interval .849.
KRIPPENDORFF_2011 = """\
1 2 3 3 2 1 4 1 2 . . .
1 2 3 3 2 2 4 1 2 5 . 3
. 3 3 3 2 3 4 2 2 5 1 .
1 2 3 3 2 4 4 1 2 5 1 ."""


def fleiss_rows() -> list[dict[str, Any]]:
    # The 6 columns are not the same people (6 of 43 psychiatrists per patient): rater ids are
    # slots, so only Fleiss' kappa and alpha mean anything here.
    return [{"item": f"p{i}", "rater": f"slot{j}", "value": int(v)}
            for i, row in enumerate(FLEISS_1971) for j, v in enumerate(row)]


def krippendorff_rows() -> list[dict[str, Any]]:
    rows = []
    for c, line in enumerate(KRIPPENDORFF_2011.splitlines()):
        for u, v in enumerate(line.split()):
            rows.append({"item": f"u{u + 1}", "rater": "ABCD"[c],
                         "value": None if v == "." else int(v)})
    return rows
