"""Accuracy against ground truth with item-bootstrap CIs: per rater (reader, LLM replicate), and
the readers' majority vote; sensitivity/specificity (one class vs the rest), per-class recall and
confusion matrices (truth rows × answer columns)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from sonoaudit_raters.stats.bootstrap import (
    DEFAULT_N_BOOT,
    Features,
    estimate,
    replicate_sums,
    safe_div,
)
from sonoaudit_raters.stats.table import MISSING, RatingTable, RatingTableError

TiePolicy = Literal["wrong", "exclude"]
MissingPolicy = Literal["exclude", "wrong"]
TIE_POLICIES = {
    "wrong": "a tie between the most frequent classes counts as a wrong answer (conservative)",
    "exclude": "tied items are left out of the majority-vote accuracy and counted separately",
}


def truth_codes(table: RatingTable, truth: Sequence[str | None]) -> NDArray[np.int64]:
    index = {c: k for k, c in enumerate(table.categories)}
    out = np.full(table.n_items, MISSING, dtype=np.int64)
    for i, t in enumerate(truth):
        if t is None:
            continue
        if t not in index:
            raise RatingTableError(
                f"ground truth {t!r} of item {table.items[i]!r} is not on the scale "
                f"{table.categories}")
        out[i] = index[t]
    return out


def majority_codes(table: RatingTable) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Plurality label per item (MISSING when unrated or tied) and the tie mask."""
    counts = table.counts()
    top = counts.max(axis=1, keepdims=True)
    n_top = (counts == top).sum(axis=1)
    rated = counts.sum(axis=1) > 0
    tie = rated & (n_top > 1)
    winner = np.where(rated & ~tie, counts.argmax(axis=1), MISSING)
    return winner.astype(np.int64), tie


def _add_rater(feats: Features, key: str, pred: NDArray[np.int64], truth: NDArray[np.int64],
               eligible: NDArray[np.bool_], q: int, pos: int | None) -> None:
    correct = eligible & (pred == truth)
    feats.add(f"{key}.n", eligible)
    feats.add(f"{key}.correct", correct)
    t1 = np.zeros((len(truth), q))
    t1[truth >= 0, truth[truth >= 0]] = 1.0
    feats.add(f"{key}.class_n", t1 * eligible[:, None])
    feats.add(f"{key}.class_hit", t1 * correct[:, None])
    if pos is not None:
        neg = eligible & (truth != pos)
        feats.add(f"{key}.neg_n", neg)
        feats.add(f"{key}.neg_hit", neg & (pred != pos) & (pred != MISSING))


def _result(sums: Any, key: str, table: RatingTable, pred: NDArray[np.int64],
            truth: NDArray[np.int64], eligible: NDArray[np.bool_], pos: int | None,
            missing_label: str | None) -> dict[str, Any]:
    """``missing_label``: the confusion-matrix column for eligible items without an answer
    ("no answer" for an abstaining rater, "tie" for the majority vote), or None."""
    n = int(sums[f"{key}.n"][0, 0])
    why = "no_items_with_answer_and_ground_truth"
    out: dict[str, Any] = {
        "n": n,
        "n_correct": int(sums[f"{key}.correct"][0, 0]),
        "accuracy": estimate(safe_div(sums[f"{key}.correct"][:, 0], sums[f"{key}.n"][:, 0]),
                             lambda: why, n),
    }
    recall = {}
    cn, ch = sums[f"{key}.class_n"], sums[f"{key}.class_hit"]
    for k, c in enumerate(table.categories):
        nk = int(cn[0, k])
        recall[c] = estimate(safe_div(ch[:, k], cn[:, k]), f"no_items_of_class_{c}", nk)
    out["recall"] = recall
    if pos is not None:
        out["sensitivity"] = recall[table.categories[pos]]
        nn = int(sums[f"{key}.neg_n"][0, 0])
        out["specificity"] = estimate(safe_div(sums[f"{key}.neg_hit"][:, 0],
                                               sums[f"{key}.neg_n"][:, 0]),
                                      lambda: "no_items_outside_the_positive_class", nn)
    q = table.q
    cm = np.zeros((q, q + int(missing_label is not None)), dtype=np.int64)
    for i in np.nonzero(eligible)[0]:
        col = pred[i] if pred[i] != MISSING else q
        if col < cm.shape[1]:
            cm[truth[i], col] += 1
    out["confusion"] = {"rows_truth": list(table.categories),
                        "cols_answer": list(table.categories) + (
                            [missing_label] if missing_label is not None else []),
                        "counts": cm.tolist()}
    return out


def accuracy(table: RatingTable, truth: Sequence[str | None], *,
             positive: str | None = "malignant", missing: MissingPolicy = "exclude",
             majority: bool = True, tie_policy: TiePolicy = "wrong",
             n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Per-rater accuracy and the majority vote of all raters in ``table``.

    ``missing="exclude"``: an item a rater did not answer is left out of that rater's n (readers
    who have not reached it yet). ``missing="wrong"``: every item with ground truth counts and an
    absent answer is wrong (an LLM that abstained or answered invalidly) — shown as a "no answer"
    column in the confusion matrix, never dropped."""
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie_policy must be one of {sorted(TIE_POLICIES)}")
    t = truth_codes(table, truth)
    has_truth = t != MISSING
    pos = table.categories.index(positive) if positive in table.categories else None
    q = table.q
    feats = Features(table.n_items)
    for j in range(table.n_raters):
        pred = table.codes[:, j]
        elig = has_truth if missing == "wrong" else has_truth & (pred != MISSING)
        _add_rater(feats, f"r{j}", pred, t, elig, q, pos)
    mv_pred, tie = majority_codes(table)
    rated = (table.codes != MISSING).any(axis=1)
    mv_elig = has_truth & rated & (~tie if tie_policy == "exclude" else True)
    if majority:
        _add_rater(feats, "mv", mv_pred, t, mv_elig, q, pos)
    sums = replicate_sums(feats, n_boot, seed)
    out: dict[str, Any] = {"positive_class": positive if pos is not None else None,
                           "missing_policy": missing, "raters": {}}
    for j, rater in enumerate(table.raters):
        pred = table.codes[:, j]
        elig = has_truth if missing == "wrong" else has_truth & (pred != MISSING)
        res = _result(sums, f"r{j}", table, pred, t, elig, pos,
                      "no answer" if missing == "wrong" else None)
        res["n_no_answer"] = int((elig & (pred == MISSING)).sum())
        out["raters"][rater] = res
    if majority:
        res = _result(sums, "mv", table, mv_pred, t, mv_elig, pos,
                      "tie (no majority)" if tie_policy == "wrong" else None)
        res["tie_policy"] = tie_policy
        res["tie_policy_text"] = TIE_POLICIES[tie_policy]
        res["n_ties"] = int((tie & has_truth).sum())
        res["voters"] = list(table.raters)
        out["majority_vote"] = res
    return out


def match_summary(values: Sequence[str | None]) -> dict[str, Any]:
    """Counts and shares of answers to a categorical question (e.g. 'does the LLM match you')."""
    given = [v for v in values if v is not None]
    counts: dict[str, int] = {}
    for v in given:
        counts[v] = counts.get(v, 0) + 1
    n = len(given)
    return {"n": n, "counts": counts,
            "shares": {k: v / n for k, v in counts.items()} if n else {},
            "n_missing": len(values) - n}
