"""The one input every statistic takes: a long-format rating table (item, rater, value) turned into
an items × raters matrix of category codes, plus per-item attributes (source, class, dataset).

The declared scale is kept in full so weighted statistics use every level, not only those used."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

Level = Literal["nominal", "ordinal", "interval"]
LEVELS: tuple[str, ...] = ("nominal", "ordinal", "interval")
MISSING = -1


class RatingTableError(ValueError):
    """Bad input: the message names the column/row and what was expected."""


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _norm(v: Any) -> str:
    """Values compare as text so '20', '20.0' and 20 are one level of a numeric scale."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    s = str(v).strip()
    try:
        f = float(s)
    except ValueError:
        return s
    if math.isfinite(f) and f.is_integer():
        return str(int(f))
    return s


def _is_number(v: str) -> bool:
    """A finite number (the interval metric takes differences of the levels)."""
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


@dataclass
class RatingTable:
    items: list[str]
    raters: list[str]
    categories: list[str]  # declared scale, in order
    codes: NDArray[np.int64]  # items × raters, MISSING where a rater did not rate an item
    level: Level = "nominal"
    attrs: dict[str, list[str | None]] = field(default_factory=dict)  # per item

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise RatingTableError(f"level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.codes.shape != (len(self.items), len(self.raters)):
            raise RatingTableError("codes must be items × raters")

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_raters(self) -> int:
        return len(self.raters)

    @property
    def n_ratings(self) -> int:
        return int((self.codes != MISSING).sum())

    @property
    def q(self) -> int:
        return len(self.categories)

    def numeric_values(self) -> NDArray[np.float64] | None:
        """The scale as numbers (interval metric), or None when a level is not a number."""
        try:
            return np.array([float(c) for c in self.categories], dtype=np.float64)
        except ValueError:
            return None

    def counts(self) -> NDArray[np.float64]:
        """items × categories: how many raters chose each category for each item."""
        out = np.zeros((self.n_items, self.q), dtype=np.float64)
        rows, cols = np.nonzero(self.codes != MISSING)
        np.add.at(out, (rows, self.codes[rows, cols]), 1.0)
        return out

    def subset(self, mask: NDArray[np.bool_] | Sequence[bool]) -> RatingTable:
        m = np.asarray(mask, dtype=bool)
        return RatingTable(
            items=[it for it, keep in zip(self.items, m, strict=True) if keep],
            raters=list(self.raters),
            categories=list(self.categories),
            codes=self.codes[m],
            level=self.level,
            attrs={k: [v for v, keep in zip(vals, m, strict=True) if keep]
                   for k, vals in self.attrs.items()},
        )

    def select_raters(self, raters: Sequence[str]) -> RatingTable:
        idx = [self.raters.index(r) for r in raters]
        return RatingTable(list(self.items), list(raters), list(self.categories),
                           self.codes[:, idx], self.level, dict(self.attrs))

    def with_level(self, level: Level) -> RatingTable:
        return RatingTable(list(self.items), list(self.raters), list(self.categories),
                           self.codes, level, dict(self.attrs))

    def reliability_matrix(self) -> NDArray[np.float64]:
        """raters × items, NaN for missing: the orientation the ``krippendorff`` package wants."""
        out = self.codes.T.astype(np.float64)
        out[self.codes.T == MISSING] = np.nan
        return out

    def to_long(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for i, item in enumerate(self.items):
            for j, rater in enumerate(self.raters):
                c = int(self.codes[i, j])
                if c != MISSING:
                    row: dict[str, Any] = {"item": item, "rater": rater,
                                           "value": self.categories[c]}
                    for k, vals in self.attrs.items():
                        row[k] = vals[i]
                    rows.append(row)
        return rows


def from_long(
    rows: Iterable[Mapping[str, Any]],
    *,
    item: str = "item",
    rater: str = "rater",
    value: str = "value",
    level: Level = "nominal",
    scale: Sequence[Any] | None = None,
    attrs: Sequence[str] = (),
    source: str = "input",
    first_row: int = 1,
) -> RatingTable:
    """Build a table from long-format rows (one per item × rater).

    ``scale`` declares every level in order; without it the observed values are used (sorted
    numerically when all are numbers, else alphabetically — pass a scale for ordinal text labels).
    Rows with an empty value are missing ratings. A repeated (item, rater) pair is an error: the
    caller decides which answer counts (the reader study keeps the latest event)."""
    if level not in LEVELS:
        raise RatingTableError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    triples: list[tuple[str, str, str | None]] = []
    item_attrs: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[str, str], int] = {}
    n_rows = 0
    for n, row in enumerate(rows, start=first_row):
        n_rows += 1
        for col in (item, rater, value, *attrs):
            if col not in row:
                raise RatingTableError(
                    f"{source}: column {col!r} missing (row {n} has columns {sorted(row)})")
        it, ra, va = row[item], row[rater], row[value]
        if _is_missing(it) or _is_missing(ra):
            raise RatingTableError(
                f"{source}: row {n}: empty {item if _is_missing(it) else rater!r} column")
        key = (str(it).strip(), str(ra).strip())
        if key in seen:
            raise RatingTableError(
                f"{source}: row {n}: rater {key[1]!r} rated item {key[0]!r} again "
                f"(first at row {seen[key]}); keep one rating per item and rater")
        seen[key] = n
        triples.append((key[0], key[1], None if _is_missing(va) else _norm(va)))
        a = item_attrs.setdefault(key[0], {})
        for col in attrs:
            v = None if _is_missing(row[col]) else str(row[col])
            if col in a and a[col] != v:
                raise RatingTableError(
                    f"{source}: row {n}: column {col!r} is {v!r} but {a[col]!r} earlier for item "
                    f"{key[0]!r}; an item attribute must be the same on every row")
            a[col] = v
    if n_rows == 0:
        raise RatingTableError(f"{source}: the table is empty (no rows)")
    if scale is not None:
        categories = [_norm(s) for s in scale]
        if len(set(categories)) != len(categories):
            raise RatingTableError(f"--scale has repeated levels: {list(scale)}")
        if len(categories) < 2:
            raise RatingTableError("--scale must declare at least two levels")
        if level == "interval":
            bad = [c for c in categories if not _is_number(c)]
            if bad:
                raise RatingTableError(
                    f"--scale: --level interval needs numeric levels; {bad[0]!r} is not a "
                    f"finite number (scale {categories})")
    elif level == "interval":
        for (_, _, va), n in zip(triples, seen.values(), strict=True):
            if va is not None and not _is_number(va):
                raise RatingTableError(
                    f"{source}: row {n}: column {value!r} has {va!r}, not a finite number "
                    "(--level interval needs numeric values)")
    else:
        observed = sorted({v for _, _, v in triples if v is not None})
        try:
            categories = sorted(observed, key=float)
        except ValueError:
            categories = observed
    index = {c: k for k, c in enumerate(categories)}
    # Sorted, not first-seen: the same ratings in any row order give the same bootstrap draws,
    # hence the same CIs (the CLI on an export and the service agree whatever the sorting).
    items = sorted({t[0] for t in triples})
    raters = sorted({t[1] for t in triples})
    ii = {x: k for k, x in enumerate(items)}
    rr = {x: k for k, x in enumerate(raters)}
    codes = np.full((len(items), len(raters)), MISSING, dtype=np.int64)
    for (it, ra, va), n in zip(triples, seen.values(), strict=True):
        if va is None:
            continue
        if va not in index:
            raise RatingTableError(
                f"{source}: row {n}: column {value!r} has {va!r}, outside the declared scale "
                f"{categories}")
        codes[ii[it], rr[ra]] = index[va]
    return RatingTable(items, raters, categories, codes, level,
                       {col: [item_attrs[it].get(col) for it in items] for col in attrs})
