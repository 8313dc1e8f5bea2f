"""Benchmark: all agreement statistics with a B = 2000 item bootstrap on 10,000 items × 10 readers
(20 % missing, 3 classes), sonoaudit's vectorised bootstrap vs a loop that calls the reference
libraries once per replicate (krippendorff.alpha, scikit-learn cohen_kappa_score for the 45 pairs,
and a direct count-table computation of percent agreement / generalised Fleiss / AC1, which no
installable library computes with missing ratings).

The reference loop is timed on a subsample of replicates and extrapolated to B (stated in the
output). Usage: .venv/bin/python bench/agreement.py [--items 10000] [--readers 10] [--boot 2000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
import warnings

import numpy as np


def make_table(n_items: int, n_readers: int, missing: float, seed: int):  # type: ignore[no-untyped-def]
    from sonoaudit_raters.stats.table import MISSING, RatingTable

    rng = np.random.default_rng(seed)
    truth = rng.choice(3, size=n_items, p=[0.45, 0.45, 0.10])
    right = rng.random((n_items, n_readers)) < 0.75
    codes = np.where(right, truth[:, None], rng.integers(0, 3, (n_items, n_readers)))
    codes[rng.random((n_items, n_readers)) < missing] = MISSING
    return RatingTable([str(i) for i in range(n_items)], [f"r{j}" for j in range(n_readers)],
                       ["benign", "malignant", "normal"], codes.astype(np.int64), "nominal")


def reference_replicate(codes: np.ndarray) -> dict[str, float]:
    import krippendorff
    from sklearn.metrics import cohen_kappa_score

    out: dict[str, float] = {}
    data = codes.T.astype(float)
    data[codes.T < 0] = np.nan
    out["alpha"] = float(krippendorff.alpha(reliability_data=data,
                                            level_of_measurement="nominal",
                                            value_domain=[0, 1, 2]))
    counts = np.stack([(codes == k).sum(axis=1) for k in range(3)], axis=1).astype(float)
    r = counts.sum(axis=1)
    pair = r >= 2
    pa = ((counts * (counts - 1)).sum(axis=1)[pair] / (r * (r - 1))[pair]).mean()
    pi = (counts[r > 0] / r[r > 0, None]).mean(axis=0)
    pe_f, pe_g = (pi**2).sum(), (pi * (1 - pi)).sum() / 2
    out.update(pa=pa, fleiss=(pa - pe_f) / (1 - pe_f), ac1=(pa - pe_g) / (1 - pe_g))
    for a, b in itertools.combinations(range(codes.shape[1]), 2):
        both = (codes[:, a] >= 0) & (codes[:, b] >= 0)
        out[f"k{a}{b}"] = float(cohen_kappa_score(codes[both, a], codes[both, b],
                                                  labels=[0, 1, 2]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--readers", type=int, default=10)
    ap.add_argument("--missing", type=float, default=0.2)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--reference-replicates", type=int, default=20)
    args = ap.parse_args()

    from sonoaudit_raters.stats import agreement

    table = make_table(args.items, args.readers, args.missing, seed=0)
    print(f"data: {args.items} items x {args.readers} readers, {args.missing:.0%} missing, "
          f"3 classes; B = {args.boot}; cpus = {os.cpu_count()}")

    t0 = time.perf_counter()
    res = agreement(table, n_boot=args.boot, seed=0)
    ours = time.perf_counter() - t0
    print(f"sonoaudit vectorised bootstrap: {ours:.2f} s for point estimates + {args.boot} "
          f"replicates of % agreement, Fleiss, alpha, AC1, Light and "
          f"{len(res['cohen_kappa_pairwise'])} pairwise kappas")

    rng = np.random.default_rng(1)
    k = min(args.reference_replicates, args.boot)
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    ref0 = reference_replicate(table.codes)  # the point estimates, to check agreement
    for _ in range(k):
        idx = rng.integers(0, table.n_items, table.n_items)
        reference_replicate(table.codes[idx])
    per_rep = (time.perf_counter() - t0) / (k + 1)
    ref_total = per_rep * (args.boot + 1)
    print(f"reference loop (krippendorff + sklearn + count tables, once per replicate): "
          f"{per_rep * 1000:.0f} ms/replicate, timed on {k + 1} replicates, extrapolated to "
          f"{args.boot + 1}: {ref_total:.1f} s")
    checks = {"alpha": res["krippendorff_alpha"].value, "fleiss": res["fleiss_kappa"].value,
              "ac1": res["gwet_ac1"].value, "pa": res["percent_agreement"].value,
              "k01": res["cohen_kappa_pairwise"][0]["value"]}
    worst = max(abs(checks[key] - ref0[key]) for key in checks)
    print(f"point estimates equal to the reference: max |difference| = {worst:.2e}")
    print(f"ratio (reference / sonoaudit): {ref_total / ours:.1f}x  (goal >= 10x); "
          f"absolute {ours:.2f} s (goal < 10 s)")


if __name__ == "__main__":
    main()
