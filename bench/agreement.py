"""Benchmark: all agreement statistics with a B = 2000 item bootstrap on 10,000 items × 10
readers (20 % missing), for the class question (nominal, 3 levels) and the confidence question
(ordinal, 6 levels: weighted kappas, alpha ordinal/interval). sonoaudit's vectorised bootstrap vs
a loop that calls the reference libraries once per replicate (krippendorff.alpha, scikit-learn
cohen_kappa_score for the 45 pairs, and a direct count-table computation of percent agreement /
generalised Fleiss / AC1, which no installable library computes with missing ratings).

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
from sonoaudit_raters.stats.table import MISSING, Level, RatingTable

CLASSES = ["benign", "malignant", "normal"]
CONFIDENCE = ["0", "20", "40", "60", "80", "100"]


def make_table(n_items: int, n_readers: int, missing: float, seed: int,
               scale: list[str], level: Level) -> RatingTable:

    rng = np.random.default_rng(seed)
    q = len(scale)
    truth = rng.integers(0, q, size=n_items)
    right = rng.random((n_items, n_readers)) < 0.75
    near = np.clip(truth[:, None] + rng.integers(-1, 2, (n_items, n_readers)), 0, q - 1)
    codes = np.where(right, truth[:, None], near)
    codes[rng.random((n_items, n_readers)) < missing] = MISSING
    return RatingTable([str(i) for i in range(n_items)], [f"r{j}" for j in range(n_readers)],
                       scale, codes.astype(np.int64), level)


def reference_replicate(codes: np.ndarray, q: int, ordinal: bool) -> dict[str, float]:
    """All statistics of one replicate from the reference libraries (plus count tables)."""
    import krippendorff
    from sklearn.metrics import cohen_kappa_score

    out: dict[str, float] = {}
    data = codes.T.astype(float)
    data[codes.T < 0] = np.nan
    levels: list[Level] = ["nominal", "ordinal", "interval"] if ordinal else ["nominal"]
    for lv in levels:
        out[f"alpha_{lv}"] = float(krippendorff.alpha(
            reliability_data=data, level_of_measurement=lv, value_domain=list(range(q))))
    counts = np.stack([(codes == k).sum(axis=1) for k in range(q)], axis=1).astype(float)
    r = counts.sum(axis=1)
    pair = r >= 2
    pa = ((counts * (counts - 1)).sum(axis=1)[pair] / (r * (r - 1))[pair]).mean()
    pi = (counts[r > 0] / r[r > 0, None]).mean(axis=0)
    pe_f, pe_g = (pi**2).sum(), (pi * (1 - pi)).sum() / (q - 1)
    out.update(pa=pa, fleiss=(pa - pe_f) / (1 - pe_f), ac1=(pa - pe_g) / (1 - pe_g))
    weights = [None, "linear", "quadratic"] if ordinal else [None]
    for a, b in itertools.combinations(range(codes.shape[1]), 2):
        both = (codes[:, a] >= 0) & (codes[:, b] >= 0)
        for w in weights:
            out[f"k{a}_{b}_{w}"] = float(cohen_kappa_score(
                codes[both, a], codes[both, b], labels=list(range(q)), weights=w))
    return out


def run(name: str, table: RatingTable, args: argparse.Namespace) -> tuple[float, float]:
    from sonoaudit_raters.stats import agreement

    ordinal = table.level != "nominal"
    t0, c0 = time.perf_counter(), time.process_time()
    res = agreement(table, n_boot=args.boot, seed=0)
    ours = time.perf_counter() - t0
    cpu = time.process_time() - c0
    n_pairs = len(res["cohen_kappa_pairwise"])
    what = ("% agreement, Fleiss, AC1, Light, alpha nominal/ordinal/interval, "
            f"{n_pairs} pairwise kappas x (unweighted, linear, quadratic)" if ordinal else
            f"% agreement, Fleiss, alpha, AC1, Light, {n_pairs} pairwise kappas")
    print(f"[{name}] sonoaudit vectorised bootstrap: {ours:.2f} s wall, {cpu:.2f} s CPU "
          f"({what}; point + {args.boot} replicates)")
    rng = np.random.default_rng(1)
    k = min(args.reference_replicates, args.boot)
    t0 = time.perf_counter()
    ref0 = reference_replicate(table.codes, table.q, ordinal)
    for _ in range(k):
        idx = rng.integers(0, table.n_items, table.n_items)
        reference_replicate(table.codes[idx], table.q, ordinal)
    per_rep = (time.perf_counter() - t0) / (k + 1)
    ref_total = per_rep * (args.boot + 1)
    print(f"[{name}] reference loop (krippendorff + sklearn + count tables, once per "
          f"replicate): {per_rep * 1000:.0f} ms/replicate, timed on {k + 1} replicates, "
          f"extrapolated to {args.boot + 1}: {ref_total:.1f} s")
    by_level = res["krippendorff_alpha_by_level"]
    p0 = res["cohen_kappa_pairwise"][0]
    checks = {"alpha_nominal": (by_level["nominal"].value, ref0["alpha_nominal"]),
              "fleiss": (res["fleiss_kappa"].value, ref0["fleiss"]),
              "ac1": (res["gwet_ac1"].value, ref0["ac1"]),
              "pa": (res["percent_agreement"].value, ref0["pa"]),
              "kappa": (p0["value"], ref0["k0_1_None"])}
    if ordinal:
        checks["alpha_ordinal"] = (by_level["ordinal"].value, ref0["alpha_ordinal"])
        checks["alpha_interval"] = (by_level["interval"].value, ref0["alpha_interval"])
        checks["kappa_quadratic"] = (p0["weighted"]["quadratic"]["value"],
                                     ref0["k0_1_quadratic"])
    worst = max(abs(a - b) for a, b in checks.values())
    print(f"[{name}] point estimates equal to the reference: max |difference| = {worst:.2e}")
    print(f"[{name}] ratio (reference / sonoaudit): {ref_total / ours:.1f}x (goal >= 10x); "
          f"absolute {ours:.2f} s (goal < 10 s)")
    return ours, ref_total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--readers", type=int, default=10)
    ap.add_argument("--missing", type=float, default=0.2)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--reference-replicates", type=int, default=20)
    args = ap.parse_args()

    print(f"data: {args.items} items x {args.readers} readers, {args.missing:.0%} missing; "
          f"B = {args.boot}; cpus = {os.cpu_count()}; load average {os.getloadavg()[0]:.1f} "
          "(wall times grow with other processes' load; CPU time does not)")
    warnings.simplefilter("ignore")
    run("class, nominal, 3 levels",
        make_table(args.items, args.readers, args.missing, 0, CLASSES, "nominal"), args)
    run("confidence, ordinal, 6 levels",
        make_table(args.items, args.readers, args.missing, 1, CONFIDENCE, "ordinal"), args)

if __name__ == "__main__":
    main()
