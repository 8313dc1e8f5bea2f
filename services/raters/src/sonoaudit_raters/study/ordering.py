"""Each reader's reading order: a seeded shuffle per (study, reader), stored at enrolment.

Repeated items are kept at least ``min_gap`` positions from their original so a reader does not
recognise the repeat from the item just seen."""

from __future__ import annotations

import random


def reader_order(
    item_ids: list[str],
    repeat_of: dict[str, str],
    *,
    study_seed: int,
    study_id: str,
    reader_id: str,
    min_gap: int = 5,
    max_tries: int = 200,
) -> list[str]:
    """Item ids in this reader's order; the same arguments always give the same order."""
    rng = random.Random(f"{study_seed}:{study_id}:{reader_id}")
    base = sorted(item_ids)
    # Never ask for a gap the list cannot hold.
    gap = max(1, min(min_gap, len(base) // 3))
    order = base[:]
    for _ in range(max_tries):
        order = base[:]
        rng.shuffle(order)
        pos = {item: i for i, item in enumerate(order)}
        if all(abs(pos[r] - pos[o]) >= gap for r, o in repeat_of.items() if o in pos):
            return order
    return order
