"""Inter-rater agreement with item-bootstrap CIs: percent agreement, Fleiss' kappa (Gwet's
generalised form for unequal raters per item), Krippendorff's alpha, Gwet's AC1 and pairwise
(weighted) Cohen's kappa. One entry point, :func:`agreement`, used by the CLI, the service and the
report.

Undefined cases give ``value: null`` with a reason code: ``fewer_than_two_raters``,
``no_pairable_units`` (no item with two ratings), ``single_category`` (only one category observed:
chance agreement is 1), ``zero_expected_disagreement``."""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sonoaudit_raters.stats.bootstrap import (
    DEFAULT_N_BOOT,
    Estimate,
    Features,
    Sums,
    estimate,
    replicate_sums,
    safe_div,
)
from sonoaudit_raters.stats.table import MISSING, RatingTable

WEIGHT_SCHEMES = ("nominal", "linear", "quadratic")


def disagreement_weights(q: int, scheme: str) -> NDArray[np.float64]:
    """Cohen's disagreement weights over the full declared scale (by position in the scale, as
    sklearn with ``labels=`` and statsmodels with category scores 0..q-1)."""
    i, j = np.meshgrid(np.arange(q), np.arange(q), indexing="ij")
    if scheme == "nominal":
        return (i != j).astype(np.float64)
    if scheme == "linear":
        return np.abs(i - j).astype(np.float64)
    if scheme == "quadratic":
        return ((i - j) ** 2).astype(np.float64)
    raise ValueError(f"unknown weight scheme {scheme!r}")


def coincidences(counts: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-item Krippendorff coincidence matrices, flattened: items × q²."""
    r = counts.sum(axis=1)
    pairable = r >= 2
    o = counts[:, :, None] * counts[:, None, :]
    q = counts.shape[1]
    o[:, np.arange(q), np.arange(q)] -= counts
    o /= np.where(pairable, r - 1, 1.0)[:, None, None]
    o[~pairable] = 0.0
    return o.reshape(len(counts), q * q)


def alpha_from_coincidences(o_flat: NDArray[np.float64], level: str,
                            values: NDArray[np.float64] | None) -> NDArray[np.float64]:
    """Krippendorff's alpha per row of summed coincidence matrices (rows × q²)."""
    q = int(round(np.sqrt(o_flat.shape[1])))
    o = o_flat.reshape(-1, q, q)
    n_c = o.sum(axis=2)
    n = n_c.sum(axis=1)
    if level == "nominal":
        d = np.broadcast_to(1.0 - np.eye(q), o.shape)
    elif level == "interval":
        assert values is not None
        d = np.broadcast_to((values[:, None] - values[None, :]) ** 2, o.shape)
    elif level == "ordinal":
        # δ²(c,k) = (Σ_{g=c..k} n_g − (n_c + n_k)/2)², from this replicate's marginals.
        cum = np.cumsum(n_c, axis=1)
        lo = np.minimum.outer(np.arange(q), np.arange(q))
        hi = np.maximum.outer(np.arange(q), np.arange(q))
        below = np.where(lo > 0, cum[:, np.maximum(lo - 1, 0)], 0.0)
        between = cum[:, hi] - below
        d = (between - (n_c[:, :, None] + n_c[:, None, :]) / 2.0) ** 2
    else:
        raise ValueError(f"unknown level {level!r}")
    d_o = (o * d).sum(axis=(1, 2))
    d_e = (n_c[:, :, None] * n_c[:, None, :] * d).sum(axis=(1, 2))
    alpha = 1.0 - (n - 1.0) * safe_div(d_o, d_e)
    alpha[n < 2] = np.nan
    return alpha


def _krippendorff_point(table: RatingTable, level: str) -> float | None:
    """The reference value from the ``krippendorff`` package (None when it finds it undefined)."""
    import krippendorff

    data = table.reliability_matrix()
    if np.isnan(data).all():
        return None
    metric: Any = level
    if level == "interval":
        values = table.numeric_values()
        assert values is not None
        data = np.where(np.isnan(data), np.nan, values[np.nan_to_num(data).astype(int)])
        domain: Any = values
    else:
        domain = np.arange(table.q, dtype=np.float64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            a = float(krippendorff.alpha(reliability_data=data, level_of_measurement=metric,
                                         value_domain=domain))
    except (ValueError, ZeroDivisionError):
        return None
    return None if not np.isfinite(a) else a


def _reason(table: RatingTable, counts: NDArray[np.float64]) -> str:
    rated_by = (table.codes != MISSING).any(axis=0).sum()
    if rated_by < 2:
        return "fewer_than_two_raters"
    if not (counts.sum(axis=1) >= 2).any():
        return "no_pairable_units"
    used = counts[counts.sum(axis=1) >= 2].sum(axis=0) > 0
    if used.sum() < 2:
        return "single_category"
    return "zero_expected_disagreement"


def _pairs(table: RatingTable, pairs: list[tuple[str, str]] | None) -> list[tuple[int, int]]:
    if pairs is None:
        return list(itertools.combinations(range(table.n_raters), 2))
    return [(table.raters.index(a), table.raters.index(b)) for a, b in pairs]


def pairwise_features(table: RatingTable, feats: Features, pairs: list[tuple[int, int]],
                      schemes: tuple[str, ...]) -> None:
    """Per pair: [both rated], Σ weighted disagreement per scheme, and each rater's marginals on
    the shared items — enough for (weighted) kappa per replicate without the full joint table."""
    q = table.q
    onehot = np.zeros((table.n_items, table.n_raters, q))
    rows, cols = np.nonzero(table.codes != MISSING)
    onehot[rows, cols, table.codes[rows, cols]] = 1.0
    for a, b in pairs:
        both = (table.codes[:, a] != MISSING) & (table.codes[:, b] != MISSING)
        feats.add(f"pair{a}_{b}.n", both)
        ca = np.where(both, table.codes[:, a], 0)
        cb = np.where(both, table.codes[:, b], 0)
        for s in schemes:
            feats.add(f"pair{a}_{b}.d_{s}", disagreement_weights(q, s)[ca, cb] * both)
        feats.add(f"pair{a}_{b}.row", onehot[:, a, :] * both[:, None])
        feats.add(f"pair{a}_{b}.col", onehot[:, b, :] * both[:, None])


def kappa_from_sums(sums: Sums, a: int, b: int, scheme: str, q: int) -> NDArray[np.float64]:
    n = sums[f"pair{a}_{b}.n"][:, 0]
    d_obs = sums[f"pair{a}_{b}.d_{scheme}"][:, 0]
    row = sums[f"pair{a}_{b}.row"]
    col = sums[f"pair{a}_{b}.col"]
    w = disagreement_weights(q, scheme)
    d_exp = np.einsum("bi,ij,bj->b", row, w, col)
    # κ_w = 1 − Σ w·o / Σ w·e with e = row·col/n: scale both by n.
    kappa = 1.0 - safe_div(d_obs * n, d_exp)
    kappa[n < 1] = np.nan
    return kappa


def _pair_reason(table: RatingTable, a: int, b: int) -> str:
    both = (table.codes[:, a] != MISSING) & (table.codes[:, b] != MISSING)
    if not both.any():
        return "no_pairable_units"
    used = set(table.codes[both, a]) | set(table.codes[both, b])
    return "single_category" if len(used) < 2 else "zero_expected_disagreement"


def pairwise_kappa(table: RatingTable, *, pairs: list[tuple[str, str]] | None = None,
                   n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                   cluster_attr: str | None = None) -> list[dict[str, Any]]:
    """Cohen's kappa for each pair of raters on the items both rated (weighted too when ordinal).

    ``cluster_attr``: an item attribute whose equal values are resampled together (see
    :func:`replicate_sums`)."""
    idx = _pairs(table, pairs)
    schemes = ("nominal",) if table.level == "nominal" else WEIGHT_SCHEMES
    feats = Features(table.n_items)
    pairwise_features(table, feats, idx, schemes)
    sums = replicate_sums(feats, n_boot, seed,
                          None if cluster_attr is None else table.attrs[cluster_attr])
    return [_pair_result(table, sums, a, b, schemes) for a, b in idx]


def _pair_result(table: RatingTable, sums: Sums, a: int, b: int,
                 schemes: tuple[str, ...]) -> dict[str, Any]:
    n = int(sums[f"pair{a}_{b}.n"][0, 0])
    reason = _pair_reason(table, a, b)
    out: dict[str, Any] = {"rater_a": table.raters[a], "rater_b": table.raters[b], "n": n}
    k = estimate(kappa_from_sums(sums, a, b, "nominal", table.q), lambda: reason, n)
    out.update(k.to_dict())
    out["_estimate"] = k
    if len(schemes) > 1:
        out["weighted"] = {}
        for s in schemes[1:]:
            e = estimate(kappa_from_sums(sums, a, b, s, table.q), lambda: reason, n)
            out["weighted"][s] = e.to_dict()
            out[f"_estimate_{s}"] = e
    return out


def agreement(table: RatingTable, *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
              pairwise: bool = True) -> dict[str, Any]:
    """Every agreement statistic for one table, each ``{value, ci95, n, reason?, bootstrap}``.

    Keys whose name starts with ``_`` hold :class:`Estimate` objects (replicates) for group
    differences; :func:`public` strips them for output."""
    counts = table.counts()
    r = counts.sum(axis=1)
    rated = r >= 1
    pairable = r >= 2
    feats = Features(table.n_items)
    # Percent agreement per item: share of agreeing ordered rating pairs (Fleiss/Gwet's p_a).
    pa_i = safe_div((counts * (counts - 1)).sum(axis=1), r * (r - 1))
    feats.add("pairable", pairable)
    feats.add("pa", np.where(pairable, np.nan_to_num(pa_i), 0.0))
    feats.add("rated", rated)
    feats.add("share", np.where(rated[:, None], counts / np.maximum(r, 1)[:, None], 0.0))
    feats.add("coinc", coincidences(counts))
    idx = _pairs(table, None) if pairwise else []
    schemes = ("nominal",) if table.level == "nominal" else WEIGHT_SCHEMES
    pairwise_features(table, feats, idx, schemes)
    sums = replicate_sums(feats, n_boot, seed)

    reason = _reason(table, counts)
    n_pairable = int(pairable.sum())
    raters_used = int((table.codes != MISSING).any(axis=0).sum())
    few = raters_used < 2

    pa = safe_div(sums["pa"][:, 0], sums["pairable"][:, 0])
    pi = safe_div(sums["share"], sums["rated"][:, :1])
    pe_fleiss = (pi**2).sum(axis=1)
    fleiss = safe_div(pa - pe_fleiss, 1.0 - pe_fleiss)
    q = table.q
    # q = 1 (one observed level, no declared scale): AC1 is undefined (single_category below);
    # safe_div keeps numpy from warning about the 0/0 on the way there.
    pe_gwet = safe_div((pi * (1.0 - pi)).sum(axis=1), np.full(len(pi), q - 1.0))
    ac1 = safe_div(pa - pe_gwet, 1.0 - pe_gwet)
    # One observed category: AC1's formula gives 1, kappa 0/0; both are reported as undefined.
    single = (pi > 0).sum(axis=1) < 2
    ac1[single] = np.nan
    fleiss[single] = np.nan
    if few:
        pa[0] = fleiss[0] = ac1[0] = np.nan

    out: dict[str, Any] = {
        "level": table.level,
        "scale": list(table.categories),
        "n_items": table.n_items,
        "n_raters": table.n_raters,
        "n_ratings": table.n_ratings,
        "n_pairable_items": n_pairable,
        "n_items_single_rating": int((r == 1).sum()),
    }
    e_pa = estimate(pa, lambda: "fewer_than_two_raters" if few else "no_pairable_units",
                    n_pairable)
    e_fleiss = estimate(fleiss, lambda: reason, n_pairable,
                        method="Gwet's generalised Fleiss kappa (unequal raters per item allowed; "
                               "equals Fleiss 1971 when every item has the same number)")
    e_ac1 = estimate(ac1, lambda: reason, n_pairable)
    out["percent_agreement"] = e_pa
    out["fleiss_kappa"] = e_fleiss
    out["gwet_ac1"] = e_ac1
    alphas: dict[str, Estimate] = {}
    levels = ["nominal"]
    if table.level in ("ordinal", "interval"):
        levels.append("ordinal")
    if table.numeric_values() is not None and table.level != "nominal":
        levels.append("interval")
    for lv in levels:
        reps = alpha_from_coincidences(sums["coinc"], lv, table.numeric_values())
        point = None if few else _krippendorff_point(table, lv)
        reps[0] = np.nan if point is None else point
        alphas[lv] = estimate(reps, lambda: reason, n_pairable)
    out["krippendorff_alpha"] = alphas[table.level if table.level in alphas else "nominal"]
    out["krippendorff_alpha_by_level"] = alphas
    pair_results = [_pair_result(table, sums, a, b, schemes) for a, b in idx]
    out["cohen_kappa_pairwise"] = pair_results
    if pair_results:
        ks = np.stack([kappa_from_sums(sums, a, b, "nominal", q) for a, b in idx])
        # Light's kappa: mean of pairwise kappas; undefined if any pair is (no silent dropping).
        light = ks.mean(axis=0)
        out["light_kappa"] = estimate(light, lambda: "pairwise_kappa_undefined",
                                      n_pairable)
    else:
        out["light_kappa"] = Estimate(None, 0, "fewer_than_two_raters")
    return out


def public(obj: Any) -> Any:
    """Plain JSON: Estimates become dicts, private ``_`` keys are dropped, NaN never appears."""
    if isinstance(obj, Estimate):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {k: public(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [public(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
