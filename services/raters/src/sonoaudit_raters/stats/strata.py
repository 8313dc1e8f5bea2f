"""Run a statistic on every stratum of a table (all, real/synthetic, class, dataset, class ×
source) and the difference real − synthetic with its CI (stratified bootstrap: the two groups are
disjoint item sets resampled independently with the same B)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sonoaudit_raters.stats.bootstrap import Estimate, difference
from sonoaudit_raters.stats.table import RatingTable

Analysis = Callable[[RatingTable, int], dict[str, Any]]


def strata(table: RatingTable) -> list[tuple[str, dict[str, str], np.ndarray]]:
    """(label, filters, mask) for every stratum worth reporting, overall first."""
    n = table.n_items
    out: list[tuple[str, dict[str, str], np.ndarray]] = [("all", {}, np.ones(n, dtype=bool))]
    src = table.attrs.get("source")
    gt = table.attrs.get("ground_truth")
    ds = table.attrs.get("dataset")
    for name, col in (("source", src), ("ground_truth", gt), ("dataset", ds)):
        if col is None:
            continue
        for v in sorted({x for x in col if x is not None}):
            out.append((f"{name}={v}", {name: v}, np.array([x == v for x in col])))
    if src is not None and gt is not None:
        for g in sorted({x for x in gt if x is not None}):
            for s in ("real", "synthetic"):
                m = np.array([a == s and b == g for a, b in zip(src, gt, strict=True)])
                if m.any():
                    out.append((f"ground_truth={g}&source={s}",
                                {"ground_truth": g, "source": s}, m))
    return out


def flatten_estimates(obj: Any, prefix: str = "") -> dict[str, Estimate]:
    """Every Estimate inside a result, keyed by its path (pairs keyed by their rater names)."""
    out: dict[str, Estimate] = {}
    if isinstance(obj, Estimate):
        out[prefix] = obj
    elif isinstance(obj, dict):
        if "rater_a" in obj and "_estimate" in obj:
            key = f"{prefix}/{obj['rater_a']}~{obj['rater_b']}"
            out[key] = obj["_estimate"]
            for k, v in obj.items():
                if k.startswith("_estimate_"):
                    out[f"{key}/{k[len('_estimate_'):]}"] = v
            return out
        for k, v in obj.items():
            if not str(k).startswith("_"):
                out.update(flatten_estimates(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(obj, list):
        for v in obj:
            out.update(flatten_estimates(v, prefix))
    return out


def real_minus_synthetic(real: dict[str, Any], synthetic: dict[str, Any]) -> dict[str, Estimate]:
    a, b = flatten_estimates(real), flatten_estimates(synthetic)
    return {k: difference(a[k], b[k]) for k in a if k in b}


def by_strata(table: RatingTable, analysis: Analysis, seed: int) -> dict[str, Any]:
    """``analysis(sub_table, seed)`` per stratum, plus real − synthetic overall and per class."""
    results: dict[str, Any] = {}
    masks: dict[str, np.ndarray] = {}
    filters: dict[str, dict[str, str]] = {}
    for k, (label, flt, mask) in enumerate(strata(table)):
        # Each stratum gets its own stream, so the real and synthetic resamples are independent.
        results[label] = analysis(table.subset(mask), seed + 7919 * k)
        masks[label] = mask
        filters[label] = flt
    diffs: dict[str, dict[str, Estimate]] = {}
    if "source=real" in results and "source=synthetic" in results:
        diffs["all"] = real_minus_synthetic(results["source=real"], results["source=synthetic"])
    for label, flt in filters.items():
        if flt.get("source") == "real" and "ground_truth" in flt:
            other = f"ground_truth={flt['ground_truth']}&source=synthetic"
            if other in results:
                diffs[f"ground_truth={flt['ground_truth']}"] = real_minus_synthetic(
                    results[label], results[other])
    return {"strata": results, "n_items": {k: int(m.sum()) for k, m in masks.items()},
            "real_minus_synthetic": diffs}
