"""The LLM's agreement with itself across replicates (same image, prompt, condition, model).

Fleiss' kappa (Fleiss 1971, *Psychol Bull* 76:378) treats the replicates of one image as that
image's raters. Only images where every replicate gave a validated label count; images with an
abstain, invalid or error answer are reported as ``excluded`` (their number matters as much as
kappa: a model that abstains at random is not consistent). Kappa is undefined when every answer
carries the same label (chance agreement 1); it is then None with the reason, never 1.0."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sonoaudit_classifier.verdict import LABELS


class _Answer(Protocol):
    image_sha256: str
    backend: str
    model: str
    prompt_version: str
    condition: str
    replicate: int
    status: str
    label: str | None


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Kappa from an items × categories table of rater counts (same number of raters per item,
    at least 2). None when chance agreement is 1 (a single category used throughout)."""
    if not counts:
        return None
    m = sum(counts[0])
    if m < 2 or any(sum(row) != m for row in counts):
        raise ValueError("every item needs the same number (>= 2) of ratings")
    n = len(counts)
    p_bar = sum((sum(c * c for c in row) - m) / (m * (m - 1)) for row in counts) / n
    totals = [sum(row[j] for row in counts) for j in range(len(counts[0]))]
    p_e = sum((t / (n * m)) ** 2 for t in totals)
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def self_agreement(rows: Iterable[_Answer]) -> list[dict[str, Any]]:
    """One summary per (backend, model, prompt version, condition) with >= 2 replicates:
    Fleiss' kappa, mean pairwise agreement, share of unanimous images, counts."""
    groups: dict[tuple[str, str, str, str], dict[str, list[_Answer]]] = defaultdict(
        lambda: defaultdict(list))
    for r in rows:
        groups[(r.backend, r.model, r.prompt_version, r.condition)][r.image_sha256].append(r)
    out = []
    for (backend, model, version, condition), by_image in sorted(groups.items()):
        sizes = {len(v) for v in by_image.values()}
        m = max(sizes)
        if m < 2:
            continue
        table: list[list[int]] = []
        excluded = 0
        for answers in by_image.values():
            if len(answers) != m or any(a.status != "ok" or a.label not in LABELS
                                        for a in answers):
                excluded += 1
                continue
            table.append([sum(a.label == lab for a in answers) for lab in LABELS])
        kappa = fleiss_kappa(table) if table else None
        reason = None
        if not table:
            reason = "no image with a validated label in every replicate"
        elif kappa is None:
            reason = "every answer has the same label (chance agreement 1)"
        pairwise = (sum((sum(c * c for c in row) - m) / (m * (m - 1)) for row in table)
                    / len(table)) if table else None
        out.append({
            "backend": backend, "model": model, "prompt_version": version,
            "condition": condition, "replicates": m, "n_images": len(table),
            "excluded": excluded, "fleiss_kappa": kappa, "kappa_reason": reason,
            "pairwise_agreement": pairwise,
            "unanimous": (sum(max(row) == m for row in table) / len(table)) if table else None,
        })
    return out
