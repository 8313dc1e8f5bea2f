"""Every statistic against an independent computation: scikit-learn, statsmodels, the
krippendorff package, and plain-loop implementations of Gwet's formulas written from the book."""

from __future__ import annotations

import itertools

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from sonoaudit_raters.stats import agreement, from_long, pairwise_kappa
from sonoaudit_raters.stats.accuracy import accuracy
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

CONF = [0, 20, 40, 60, 80, 100]


def random_rows(seed: int, n_items: int, n_raters: int, scale: list, missing: float,
                skew: float = 0.6) -> list[dict]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(scale), n_items)
    rows = []
    for i in range(n_items):
        for j in range(n_raters):
            if rng.random() < missing:
                continue
            v = truth[i] if rng.random() < skew else rng.integers(0, len(scale))
            rows.append({"item": f"i{i}", "rater": f"r{j}", "value": scale[int(v)]})
    return rows


def loop_gwet(codes: np.ndarray, q: int) -> tuple[float, float, float]:
    """(p_a, generalised Fleiss kappa, AC1) with explicit loops (Gwet 2014, ch. 2 and 4)."""
    units = [[c for c in row if c >= 0] for row in codes]
    units = [u for u in units if len(u) >= 1]
    n = len(units)
    pair_units = [u for u in units if len(u) >= 2]
    pa = 0.0
    for u in pair_units:
        r = len(u)
        pa += sum(u.count(k) * (u.count(k) - 1) for k in range(q)) / (r * (r - 1))
    pa /= len(pair_units)
    pi = [sum(u.count(k) / len(u) for u in units) / n for k in range(q)]
    pe_f = sum(p * p for p in pi)
    pe_g = sum(p * (1 - p) for p in pi) / (q - 1)
    return pa, (pa - pe_f) / (1 - pe_f), (pa - pe_g) / (1 - pe_g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fleiss_equals_statsmodels_on_complete_data(seed: int) -> None:
    rows = random_rows(seed, 40, 5, ["benign", "malignant", "normal"], missing=0.0)
    t = from_long(rows, scale=["benign", "malignant", "normal"])
    ours = agreement(t, n_boot=0)["fleiss_kappa"].value
    table, _ = aggregate_raters(t.codes, n_cat=3)
    assert ours == pytest.approx(fleiss_kappa(table), abs=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_generalised_fleiss_and_ac1_with_missing_match_loop_formulas(seed: int) -> None:
    rows = random_rows(seed, 60, 6, ["benign", "malignant", "normal"], missing=0.3)
    t = from_long(rows, scale=["benign", "malignant", "normal"])
    res = agreement(t, n_boot=0)
    pa, kf, ac1 = loop_gwet(t.codes, 3)
    assert res["percent_agreement"].value == pytest.approx(pa, abs=1e-12)
    assert res["fleiss_kappa"].value == pytest.approx(kf, abs=1e-12)
    assert res["gwet_ac1"].value == pytest.approx(ac1, abs=1e-12)


def test_ac1_hand_worked() -> None:
    # 2 raters, 10 items, 2 categories: 8 agree on "a", 1 agree on "b", 1 disagreement.
    # p_a = 0.9; pi_a = (16 + 1)/20 = 0.85; pe = 2·0.85·0.15/1 = 0.255; AC1 = 0.645/0.745.
    pairs = [("a", "a")] * 8 + [("b", "b"), ("a", "b")]
    rows = [{"item": k, "rater": r, "value": v} for k, p in enumerate(pairs)
            for r, v in zip("xy", p, strict=True)]
    res = agreement(from_long(rows), n_boot=0)
    assert res["gwet_ac1"].value == pytest.approx(0.645 / 0.745, abs=1e-12)
    # Cohen: p_e = 0.9·0.8 + 0.1·0.2 = 0.74 → κ = 0.16/0.26
    assert res["cohen_kappa_pairwise"][0]["value"] == pytest.approx(0.16 / 0.26, abs=1e-12)
    # AC1's chance term divides by q − 1 over the DECLARED scale (Gwet: list every possible
    # category, used or not — e.g. "normal" absent from BUS-BRA): q = 3 → p_e = 0.255/2.
    declared = agreement(from_long(rows, scale=["a", "b", "c"]), n_boot=0)
    assert declared["gwet_ac1"].value == pytest.approx((0.9 - 0.1275) / (1 - 0.1275), abs=1e-12)
    # kappa and Fleiss do not depend on unused categories.
    assert declared["fleiss_kappa"].value == pytest.approx(res["fleiss_kappa"].value, abs=1e-12)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
@pytest.mark.parametrize("seed", [5, 6])
def test_alpha_bootstrap_form_equals_package(level: str, seed: int) -> None:
    from sonoaudit_raters.stats.agreement import alpha_from_coincidences, coincidences

    rows = random_rows(seed, 50, 4, CONF, missing=0.25)
    # Level 20 unused: alpha must not depend on declared-but-unused levels.
    rows = [r for r in rows if r["value"] != 20]
    t = from_long(rows, level=level, scale=CONF)  # type: ignore[arg-type]
    data = np.array([[np.nan if c < 0 else CONF[c] for c in col] for col in t.codes.T])
    ref = krippendorff.alpha(reliability_data=data, level_of_measurement=level,
                             value_domain=CONF)
    o = coincidences(t.counts()).sum(axis=0, keepdims=True)
    assert alpha_from_coincidences(o, level, t.numeric_values())[0] == pytest.approx(ref, abs=1e-10)
    assert agreement(t, n_boot=0)["krippendorff_alpha"].value == pytest.approx(ref, abs=1e-12)
    used_only = from_long(rows, level=level, scale=[c for c in CONF if c != 20])  # type: ignore[arg-type]
    o2 = coincidences(used_only.counts()).sum(axis=0, keepdims=True)
    assert alpha_from_coincidences(o2, level, used_only.numeric_values())[0] == pytest.approx(
        ref, abs=1e-10)


@pytest.mark.parametrize("seed", [7, 8])
def test_pairwise_weighted_kappa_equals_sklearn_over_full_scale(seed: int) -> None:
    rows = random_rows(seed, 40, 3, CONF, missing=0.2)
    # Leave levels 20 and 60 unused so that the full-scale requirement matters.
    rows = [r for r in rows if r["value"] not in (20, 60)]
    t = from_long(rows, level="ordinal", scale=CONF)
    res = pairwise_kappa(t, n_boot=0)
    for p in res:
        a, b = t.raters.index(p["rater_a"]), t.raters.index(p["rater_b"])
        both = (t.codes[:, a] >= 0) & (t.codes[:, b] >= 0)
        assert p["n"] == both.sum()
        ya, yb = t.codes[both, a], t.codes[both, b]
        labels = list(range(6))
        assert p["value"] == pytest.approx(cohen_kappa_score(ya, yb, labels=labels), abs=1e-12)
        for w in ("linear", "quadratic"):
            ref = cohen_kappa_score(ya, yb, labels=labels, weights=w)
            assert p["weighted"][w]["value"] == pytest.approx(ref, abs=1e-12)


def test_accuracy_sensitivity_specificity_hand_worked() -> None:
    truth = {"1": "malignant", "2": "malignant", "3": "benign", "4": "benign", "5": "normal"}
    ans = {"x": ["malignant", "benign", "benign", "malignant", "benign"],
           "y": ["malignant", "malignant", "benign", "benign", "normal"],
           "z": ["benign", "benign", "malignant", "benign", None]}
    rows = [{"item": i, "rater": r, "value": v} for r, vs in ans.items()
            for i, v in zip(truth, vs, strict=True)]
    t = from_long(rows, scale=["benign", "malignant", "normal"])
    res = accuracy(t, [truth[i] for i in t.items], n_boot=0)
    x = res["raters"]["x"]
    assert x["accuracy"].value == pytest.approx(2 / 5)
    assert x["sensitivity"].value == pytest.approx(1 / 2)
    assert x["specificity"].value == pytest.approx(2 / 3)  # items 3, 5 not called malignant
    assert x["recall"]["normal"].value == 0.0
    assert x["confusion"]["counts"] == [[1, 1, 0], [1, 1, 0], [1, 0, 0]]
    z = res["raters"]["z"]
    assert z["n"] == 4 and z["accuracy"].value == pytest.approx(1 / 4)
    # Majority: item1 malignant (2/3), item2 benign (2/3), item3 benign, item4 benign,
    # item5 benign vs normal tie (z missing) -> policy "wrong".
    mv = res["majority_vote"]
    assert mv["n_ties"] == 1 and mv["n"] == 5
    assert mv["accuracy"].value == pytest.approx(3 / 5)
    mv_ex = accuracy(t, [truth[i] for i in t.items], n_boot=0, tie_policy="exclude")
    assert mv_ex["majority_vote"]["n"] == 4
    assert mv_ex["majority_vote"]["accuracy"].value == pytest.approx(3 / 4)
    # LLM-style: a missing answer counts as wrong and appears in a "no answer" column.
    wrong = accuracy(t, [truth[i] for i in t.items], n_boot=0, missing="wrong")
    assert wrong["raters"]["z"]["n"] == 5 and wrong["raters"]["z"]["n_no_answer"] == 1
    assert wrong["raters"]["z"]["confusion"]["counts"][2] == [0, 0, 0, 1]


def test_bootstrap_percentile_matches_naive_resampling_loop() -> None:
    """The matrix-product bootstrap equals recomputing the statistic on resampled items."""
    from sonoaudit_raters.stats.bootstrap import resample_weights

    rows = random_rows(9, 30, 3, ["a", "b", "c"], missing=0.1)
    t = from_long(rows)
    res = agreement(t, n_boot=50, seed=11)
    rng = np.random.default_rng(11)
    W = np.concatenate(list(resample_weights(t.n_items, 50, rng)))
    for b in range(5):
        idx = np.repeat(np.arange(t.n_items), W[b].astype(int))
        data = t.codes[idx].T.astype(float)
        data[t.codes[idx].T < 0] = np.nan
        ref = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal",
                                 value_domain=[0, 1, 2])
        assert res["krippendorff_alpha"].replicates[b] == pytest.approx(ref, abs=1e-5)
        _, kf, ac1 = loop_gwet(t.codes[idx], 3)
        assert res["fleiss_kappa"].replicates[b] == pytest.approx(kf, abs=1e-5)
        assert res["gwet_ac1"].replicates[b] == pytest.approx(ac1, abs=1e-5)
    # Pairwise Cohen's kappa: every replicate equals scikit-learn on that replicate's resampled
    # items (with repeats) that both raters rated.
    assert [(p["rater_a"], p["rater_b"]) for p in res["cohen_kappa_pairwise"]] == [
        (t.raters[i], t.raters[j]) for i, j in itertools.combinations(range(3), 2)]
    for (i, j), p in zip(itertools.combinations(range(3), 2), res["cohen_kappa_pairwise"],
                         strict=True):
        reps = p["_estimate"].replicates
        assert reps.size == 50
        for b in range(50):
            idx = np.repeat(np.arange(t.n_items), W[b].astype(int))
            a_codes, b_codes = t.codes[idx, i], t.codes[idx, j]
            both = (a_codes >= 0) & (b_codes >= 0)
            ref = cohen_kappa_score(a_codes[both], b_codes[both], labels=[0, 1, 2])
            assert reps[b] == pytest.approx(ref, abs=1e-9), (t.raters[i], t.raters[j], b)
        both = (t.codes[:, i] >= 0) & (t.codes[:, j] >= 0)
        assert p["_estimate"].value == pytest.approx(
            cohen_kappa_score(t.codes[both, i], t.codes[both, j], labels=[0, 1, 2]), abs=1e-12)
        assert p["n"] == int(both.sum())
