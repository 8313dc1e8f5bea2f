"""Undefined statistics are null with a reason — never NaN, a silent 0/1, or a crash — and the
reference libraries' raw behaviour on the same inputs is pinned so an upgrade is noticed."""

from __future__ import annotations

import json
import math

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from sonoaudit_raters.stats import RatingTableError, agreement, from_long, public
from statsmodels.stats.inter_rater import fleiss_kappa


def rows_of(data: dict[str, list]) -> list[dict]:
    return [{"item": i, "rater": r, "value": v} for r, vs in data.items()
            for i, v in enumerate(vs)]


def no_nan(obj: object) -> None:
    json.dumps(obj, allow_nan=False)


@pytest.mark.filterwarnings("ignore")
def test_single_category_is_null_with_reason() -> None:
    t = from_long(rows_of({"a": ["benign"] * 5, "b": ["benign"] * 5}),
                  scale=["benign", "malignant", "normal"])
    res = public(agreement(t, n_boot=100))
    no_nan(res)
    assert res["percent_agreement"]["value"] == 1.0  # plain agreement is defined
    for key in ("fleiss_kappa", "gwet_ac1", "krippendorff_alpha"):
        assert res[key]["value"] is None and res[key]["reason"] == "single_category", key
    assert res["cohen_kappa_pairwise"][0]["reason"] == "single_category"
    assert res["light_kappa"]["value"] is None
    assert res["light_kappa"]["reason"] == "pairwise_kappa_undefined"
    # Libraries disagree on this case: pin them.
    assert math.isnan(cohen_kappa_score(["benign"] * 5, ["benign"] * 5))
    assert math.isnan(fleiss_kappa(np.array([[2, 0, 0]] * 5)))
    with pytest.raises(ValueError, match="more than one value"):
        krippendorff.alpha(reliability_data=[[0] * 5, [0] * 5], level_of_measurement="nominal")


def test_one_rater_is_null() -> None:
    t = from_long(rows_of({"a": ["benign", "malignant", "benign"]}))
    res = public(agreement(t, n_boot=50))
    no_nan(res)
    for key in ("percent_agreement", "fleiss_kappa", "gwet_ac1", "krippendorff_alpha"):
        assert res[key]["value"] is None
        assert res[key]["reason"] == "fewer_than_two_raters", key
    assert res["cohen_kappa_pairwise"] == []


def test_no_pairable_items() -> None:
    t = from_long(rows_of({"a": ["x", None, "y"], "b": [None, "x", None]}))
    res = public(agreement(t, n_boot=50))
    no_nan(res)
    assert res["percent_agreement"]["reason"] == "no_pairable_units"
    assert res["krippendorff_alpha"]["reason"] == "no_pairable_units"
    assert res["cohen_kappa_pairwise"][0]["reason"] == "no_pairable_units"
    assert res["cohen_kappa_pairwise"][0]["n"] == 0


def test_undefined_replicates_are_counted() -> None:
    # 1 disagreement among 9 agreeing items: many resamples miss it -> single category.
    t = from_long(rows_of({"a": ["x"] * 9 + ["x"], "b": ["x"] * 9 + ["y"]}))
    res = agreement(t, n_boot=500, seed=1)
    alpha = res["krippendorff_alpha"]
    assert alpha.value is not None
    expected_missing = (0.9**10) * 500  # P(item with the 'y' never drawn)
    assert 0.5 * expected_missing < alpha.n_undefined < 2 * expected_missing
    d = alpha.to_dict()
    assert d["bootstrap"] == {"B": 500, "undefined": alpha.n_undefined}


def test_bootstrap_is_seeded_and_contains_estimate() -> None:
    rows = rows_of({"a": list("xxyyzxyzxy"), "b": list("xyyyzxyzxx"), "c": list("xxyzzxyzyy")})
    t = from_long(rows)
    r1 = public(agreement(t, n_boot=300, seed=5))
    r2 = public(agreement(t, n_boot=300, seed=5))
    r3 = public(agreement(t, n_boot=300, seed=6))
    assert r1 == {**r1, **{k: r2[k] for k in r1 if k != "provenance"}}
    assert r1["fleiss_kappa"]["ci95"] != r3["fleiss_kappa"]["ci95"]
    for key in ("fleiss_kappa", "gwet_ac1", "krippendorff_alpha", "percent_agreement"):
        lo, hi = r1[key]["ci95"]
        assert lo <= r1[key]["value"] <= hi


@pytest.mark.parametrize(("rows", "kwargs", "message"), [
    ([], {}, "empty"),
    ([{"item": 1, "rater": "a"}], {}, "column 'value' missing"),
    ([{"item": 1, "rater": "a", "value": 7}], {"scale": [0, 20]}, "row 1: column 'value' has '7'"),
    ([{"item": 1, "rater": "a", "value": 1}, {"item": 1, "rater": "a", "value": 2}], {},
     "rated item '1' again"),
    ([{"item": 1, "rater": "a", "value": "low"}], {"level": "interval"},
     "row 1: column 'value' has 'low', not a finite number"),
    ([{"item": 1, "rater": "a", "value": 20}], {"level": "interval", "scale": [0, 20, "x"]},
     "--scale: --level interval needs numeric levels; 'x'"),
])
def test_bad_input_names_the_problem(rows: list, kwargs: dict, message: str) -> None:
    with pytest.raises(RatingTableError, match=message):
        from_long(rows, **kwargs)


def test_row_order_does_not_change_the_cis() -> None:
    rows = rows_of({"a": list("xxyyzxyzxy"), "b": list("xyyyzxyzxx"), "c": list("xxyzzxyzyy")})
    r1 = public(agreement(from_long(rows), n_boot=200, seed=2))
    r2 = public(agreement(from_long(rows[::-1]), n_boot=200, seed=2))
    assert r1 == r2


def test_cluster_bootstrap_resamples_whole_clusters() -> None:
    """Each item copied twice into one cluster: kappa is unchanged by doubling, and resampling
    the clusters draws exactly what resampling the original items draws (same seed), so the
    replicates are equal; a row bootstrap of the copies would be too narrow."""
    from sonoaudit_raters.stats import pairwise_kappa

    base = rows_of({"a": list("xxyyzxyzxyxxzy"), "b": list("xyyyzxyzxxxyzz")})
    doubled = [dict(r, item=f"{r['item']}#{k}", image=str(r["item"])) for r in base
               for k in (0, 1)]
    ref = pairwise_kappa(from_long(base), n_boot=300, seed=4)[0]["_estimate"]
    t2 = from_long(doubled, attrs=("image",))
    clustered = pairwise_kappa(t2, n_boot=300, seed=4, cluster_attr="image")[0]["_estimate"]
    rows_only = pairwise_kappa(t2, n_boot=300, seed=4)[0]["_estimate"]
    assert clustered.value == pytest.approx(ref.value, abs=1e-12)
    # Item ids sort differently from "i#k" labels, so compare distributions, not order.
    assert np.sort(clustered.replicates) == pytest.approx(np.sort(ref.replicates), abs=1e-6)
    width = np.diff(clustered.ci95())[0]
    assert np.diff(rows_only.ci95())[0] < 0.85 * width


def test_one_resampling_unit_gives_no_ci() -> None:
    from sonoaudit_raters.stats import pairwise_kappa
    from sonoaudit_raters.stats.accuracy import accuracy

    t = from_long(rows_of({"a": ["x"], "b": ["y"]}), scale=["x", "y"])
    acc = public(accuracy(t, ["x"], n_boot=40))["raters"]["a"]["accuracy"]
    assert acc["value"] == 1.0 and acc["ci95"] is None  # not [1, 1]
    assert acc["bootstrap"] == {"B": 40, "undefined": 40}
    assert acc["ci_reason"] == "fewer_than_two_items"
    # Several rows but one cluster: the same.
    rows = [{"item": f"u{k}", "rater": r, "value": v, "image": "one"}
            for k, pair in enumerate([("x", "x"), ("x", "y"), ("y", "y")])
            for r, v in zip("ab", pair, strict=True)]
    k = pairwise_kappa(from_long(rows, attrs=("image",)), n_boot=30,
                       cluster_attr="image")[0]["_estimate"]
    assert k.value is not None and k.ci95() is None and k.n_undefined == 30


def test_one_observed_level_without_scale_warns_nothing() -> None:
    """No --scale and every rating 'benign': q = 1. AC1 divides by q − 1; that 0/0 used to
    print a numpy RuntimeWarning. Kappa/AC1/alpha are null (single_category); % agreement 1."""
    import warnings

    t = from_long(rows_of({"a": ["benign"] * 3, "b": ["benign"] * 3}))
    assert t.categories == ["benign"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = public(agreement(t, n_boot=100))
    no_nan(res)
    assert res["percent_agreement"]["value"] == 1.0
    for key in ("fleiss_kappa", "gwet_ac1", "krippendorff_alpha"):
        assert res[key]["value"] is None and res[key]["reason"] == "single_category", key
        assert res[key]["ci95"] is None


def test_a_pair_with_one_shared_item_has_no_ci() -> None:
    """A and B share item 1 only (A: x, B: y): p_o = 0, p_e = 1·0 + 0·1 = 0, κ = 0. Every
    replicate resamples that one item, so the bootstrap said [0, 0]; now no CI, with a reason,
    the way a one-item table is handled. A~C and B~C (two items each) keep their CIs."""
    rows = [{"item": i, "rater": r, "value": v} for i, r, v in [
        (1, "A", "x"), (1, "B", "y"), (2, "A", "x"), (2, "C", "x"), (3, "A", "y"), (3, "C", "y"),
        (4, "B", "x"), (4, "C", "y"), (5, "B", "y"), (5, "C", "x")]]
    res = public(agreement(from_long(rows), n_boot=200, seed=0))
    no_nan(res)
    pairs = {(p["rater_a"], p["rater_b"]): p for p in res["cohen_kappa_pairwise"]}
    ab = pairs[("A", "B")]
    assert (ab["n"], ab["value"], ab["ci95"]) == (1, 0.0, None)
    assert ab["ci_reason"] == "fewer_than_two_items"
    assert ab["bootstrap"] == {"B": 200, "undefined": 200}
    # A~C agree on both shared items: κ = 1; B~C disagree on both: p_o = 0, p_e = ½ → κ = −1
    assert (pairs[("A", "C")]["n"], pairs[("A", "C")]["value"]) == (2, 1.0)
    assert (pairs[("B", "C")]["n"], pairs[("B", "C")]["value"]) == (2, -1.0)
    assert pairs[("A", "C")]["ci95"] is not None and pairs[("B", "C")]["ci95"] is not None


def test_one_pairable_item_among_many_has_no_ci() -> None:
    """Item 1 rated x by both a and b, items 2–4 by a only: % agreement over the one pairable
    item is 1, and every replicate that draws it says 1 again: no CI (fewer_than_two_items)."""
    t = from_long(rows_of({"a": ["x", "y", "x", "y"], "b": ["x", None, None, None]}))
    res = public(agreement(t, n_boot=100, seed=3))
    pa = res["percent_agreement"]
    assert (pa["value"], pa["n"], pa["ci95"], pa["ci_reason"]) == (
        1.0, 1, None, "fewer_than_two_items")


def test_no_bootstrap_gives_a_ci_reason() -> None:
    """-B 0: values (hand: 2 of 3 items agree → % agreement 2/3) but no CI, and it says why."""
    t = from_long(rows_of({"a": ["x", "y", "x"], "b": ["x", "y", "y"]}))
    res = public(agreement(t, n_boot=0))
    no_nan(res)
    pa = res["percent_agreement"]
    assert pa["value"] == pytest.approx(2 / 3) and pa["ci95"] is None
    assert pa["ci_reason"] == "no_bootstrap_replicates" and "bootstrap" not in pa
    for key in ("fleiss_kappa", "gwet_ac1", "krippendorff_alpha", "light_kappa"):
        assert res[key]["ci_reason"] == "no_bootstrap_replicates", key
    assert res["cohen_kappa_pairwise"][0]["ci_reason"] == "no_bootstrap_replicates"


def test_ci_bounds_carry_no_float32_noise() -> None:
    """Every item has three ratings x, x, y (or x, y, y): 2 of the 6 ordered pairs agree, so
    each item's % agreement is 1/3 and so is every replicate's mean. The bounds are 1/3 to
    float64 precision (float32 sums gave 0.3333333134651184 and 0.3333333730697632)."""
    rows = [{"item": i, "rater": r, "value": v} for i in range(12)
            for r, v in zip("abc", "xxy" if i < 6 else "xyy", strict=True)]
    e = agreement(from_long(rows), n_boot=200, seed=0)["percent_agreement"]
    assert e.value == pytest.approx(1 / 3, abs=1e-15)
    assert np.abs(e.replicates - 1 / 3).max() < 1e-15
    lo, hi = e.ci95()  # type: ignore[misc]
    assert abs(lo - 1 / 3) < 1e-15 and abs(hi - 1 / 3) < 1e-15
