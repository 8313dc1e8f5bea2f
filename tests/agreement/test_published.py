"""Published values reproduced: Fleiss (1971), Krippendorff (2011) and Gwet's irrCAC examples."""

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


# Gwet's irrCAC (R package, README/vignette output; Gwet 2014, Handbook of Inter-Rater
# Reliability): three published data sets with every coefficient printed to 5-7 digits.
# cac.raw4raters is the Krippendorff (2011) table (12 units x 4 raters, missing ratings), so it
# pins the generalised Fleiss kappa and AC1 *with missing data* (no Python library computes them).
def test_gwet_irrcac_raw4raters_with_missing_ratings() -> None:
    res = agreement(from_long(krippendorff_rows(), scale=[1, 2, 3, 4, 5]), n_boot=0)
    assert res["percent_agreement"].value == pytest.approx(0.8181818, abs=1e-7)
    assert res["gwet_ac1"].value == pytest.approx(0.77544, abs=5e-6)
    assert res["fleiss_kappa"].value == pytest.approx(0.76117, abs=5e-6)
    assert res["krippendorff_alpha"].value == pytest.approx(0.74342, abs=5e-6)


def test_gwet_irrcac_distrib_6raters() -> None:
    # distrib.6raters is the first 15 patients of Fleiss (1971).
    rows = [r for r in fleiss_rows() if int(r["item"][1:]) < 15]
    res = agreement(from_long(rows, scale=[1, 2, 3, 4, 5]), n_boot=0, pairwise=False)
    assert res["percent_agreement"].value == pytest.approx(0.5511111, abs=1e-7)
    assert res["gwet_ac1"].value == pytest.approx(0.4448007, abs=1e-7)
    assert res["fleiss_kappa"].value == pytest.approx(0.4139265, abs=1e-7)
    assert res["krippendorff_alpha"].value == pytest.approx(0.4204384, abs=1e-7)


def test_gwet_irrcac_cont3x3abstractors_two_raters() -> None:
    # 100 pregnancies classified by 2 abstractors (contingency table, rows A, columns B).
    table = [[13, 0, 0], [0, 20, 7], [0, 4, 56]]
    cats = ["Ectopic", "AIU", "NIU"]
    rows, n = [], 0
    for a, line in enumerate(table):
        for b, count in enumerate(line):
            for _ in range(count):
                rows += [{"item": n, "rater": "A", "value": cats[a]},
                         {"item": n, "rater": "B", "value": cats[b]}]
                n += 1
    res = agreement(from_long(rows, scale=cats), n_boot=0)
    assert res["percent_agreement"].value == pytest.approx(0.89, abs=1e-12)
    assert res["cohen_kappa_pairwise"][0]["value"] == pytest.approx(0.7964094, abs=1e-7)
    assert res["cohen_kappa_pairwise"][0]["n"] == 100
    # Fleiss' kappa with two raters is Scott's pi.
    assert res["fleiss_kappa"].value == pytest.approx(0.7962397, abs=1e-7)
    assert res["gwet_ac1"].value == pytest.approx(0.8493305, abs=1e-7)
    assert res["krippendorff_alpha"].value == pytest.approx(0.7972585, abs=1e-7)
