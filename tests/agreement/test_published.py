"""Published values reproduced: Fleiss (1971) and Krippendorff (2011)."""

from __future__ import annotations

import pytest
from agreement_data import fleiss_rows, krippendorff_rows
from sonoaudit_raters.stats import agreement, from_long


def test_fleiss_1971_kappa_is_0430() -> None:
    t = from_long(fleiss_rows(), scale=[1, 2, 3, 4, 5])
    res = agreement(t, n_boot=0, pairwise=False)
    assert res["fleiss_kappa"].value == pytest.approx(0.430, abs=5e-4)
    # statsmodels/R irr give 0.4302445 on the same table
    assert res["fleiss_kappa"].value == pytest.approx(0.4302445, abs=1e-7)
    assert res["n_items"] == 30 and res["n_ratings"] == 180


@pytest.mark.parametrize(("level", "published"),
                         [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_2011_alpha(level: str, published: float) -> None:
    t = from_long(krippendorff_rows(), level=level, scale=[1, 2, 3, 4, 5])  # type: ignore[arg-type]
    res = agreement(t, n_boot=200, seed=3)
    alpha = res["krippendorff_alpha"]
    assert alpha.value == pytest.approx(published, abs=5e-4)
    # The vectorised coincidence form used by the bootstrap matches the package at the point.
    from sonoaudit_raters.stats.agreement import alpha_from_coincidences, coincidences

    o = coincidences(t.counts()).sum(axis=0, keepdims=True)
    ours = alpha_from_coincidences(o, level, t.numeric_values())[0]
    assert ours == pytest.approx(published, abs=5e-4)
    # 11 of 12 units are pairable (unit 12 has a single value).
    assert res["n_pairable_items"] == 11 and res["n_items_single_rating"] == 1
    lo, hi = alpha.ci95()
    assert lo <= alpha.value <= hi
