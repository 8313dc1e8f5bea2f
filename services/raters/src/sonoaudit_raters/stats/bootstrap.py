"""Vectorised item bootstrap.

Every statistic here is a function of per-item sums: for a feature matrix F (items × K) a bootstrap
replicate is the weighted sum wᵀF, w = how often each item was drawn. All replicates at once are one
matrix product W @ F (W: replicates × items, multinomial counts), so B = 2000 costs a few BLAS calls
instead of 2000 calls into a reference library. Items are resampled whole: all of an item's ratings
stay together."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

DEFAULT_N_BOOT = 2000
CHUNK = 256


def resample_weights(n_items: int, n_boot: int, rng: np.random.Generator,
                     chunk: int = CHUNK) -> Iterator[NDArray[np.float64]]:
    """Chunks of W: rows are replicates, W[b, i] = times item i was drawn in replicate b."""
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n_items, size=(b, n_items))
        idx += (np.arange(b) * n_items)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * n_items)
        yield counts.reshape(b, n_items).astype(np.float64)


class Features:
    """Named column blocks of per-item features, summed per replicate in one product."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.blocks: list[NDArray[np.float64]] = []
        self.slices: dict[str, slice] = {}
        self.width = 0

    def add(self, name: str, values: NDArray[Any]) -> None:
        v = np.asarray(values, dtype=np.float64)
        if v.ndim == 1:
            v = v[:, None]
        v = v.reshape(self.n_items, -1)
        self.slices[name] = slice(self.width, self.width + v.shape[1])
        self.blocks.append(v)
        self.width += v.shape[1]

    def matrix(self) -> NDArray[np.float64]:
        if not self.blocks:
            return np.zeros((self.n_items, 0))
        return np.concatenate(self.blocks, axis=1)


@dataclass
class Sums:
    """Column sums for the point estimate (row 0) and every replicate (rows 1..B)."""

    data: NDArray[np.float64]
    slices: dict[str, slice]

    def __getitem__(self, name: str) -> NDArray[np.float64]:
        s = self.slices[name]
        return self.data[:, s]


def replicate_sums(features: Features, n_boot: int, seed: int,
                   clusters: Sequence[Any] | None = None) -> Sums:
    """``clusters`` (one label per row): resample whole clusters instead of rows — e.g. the
    units reader × image of a pooled intra-reader kappa, clustered by image, so that one
    image's readings by several readers stay together. Sums are additive, so a cluster's row
    is the sum of its rows' features."""
    F = features.matrix()
    point = F.sum(axis=0, keepdims=True)
    if n_boot <= 0 or features.n_items == 0:
        return Sums(point, features.slices)
    if clusters is not None:
        if len(clusters) != features.n_items:
            raise ValueError(f"{len(clusters)} cluster labels for {features.n_items} rows")
        _, inverse = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
        G = np.zeros((int(inverse.max()) + 1, F.shape[1]))
        np.add.at(G, inverse, F)
        F = G
    if F.shape[0] < 2:
        # One item (or cluster) resampled is itself every time: a zero-width "CI" that says
        # nothing about sampling error. Every replicate is undefined instead (counted).
        nan = np.full((n_boot, F.shape[1]), np.nan)
        return Sums(np.concatenate([point, nan], axis=0), features.slices)
    # float64 throughout: float32 sums put noise into the CI bounds (0.8333333134651184 for
    # 5/6); the product costs about the same here (bench/agreement.py, docs/agreement.md).
    rng = np.random.default_rng(seed)
    parts = [point]
    for W in resample_weights(F.shape[0], n_boot, rng):
        parts.append(W @ F)
    return Sums(np.concatenate(parts, axis=0), features.slices)


@dataclass
class Estimate:
    """A statistic: its value, percentile 95 % CI over item-bootstrap replicates, n, and why it is
    missing when it is. ``replicates`` (NaN = undefined) is kept for differences between groups."""

    value: float | None
    n: int
    reason: str | None = None
    replicates: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    extra: dict[str, Any] = field(default_factory=dict)
    no_ci: str | None = None  # why there is no CI although the value is defined, if known

    @property
    def n_boot(self) -> int:
        return int(self.replicates.size)

    @property
    def n_undefined(self) -> int:
        return int(np.isnan(self.replicates).sum())

    def ci95(self) -> list[float] | None:
        if self.value is None or self.replicates.size == 0:
            return None
        ok = self.replicates[~np.isnan(self.replicates)]
        if ok.size == 0:
            return None
        lo, hi = np.percentile(ok, [2.5, 97.5])
        return [float(lo), float(hi)]

    def to_dict(self) -> dict[str, Any]:
        ci = self.ci95()
        out: dict[str, Any] = {"value": self.value, "ci95": ci, "n": self.n}
        if self.reason is not None:
            out["reason"] = self.reason
        if self.n_boot:
            out["bootstrap"] = {"B": self.n_boot, "undefined": self.n_undefined}
        if self.value is not None and ci is None:
            out["ci_reason"] = self.no_ci or (
                "all_bootstrap_replicates_undefined" if self.n_boot else "no_bootstrap_replicates")
        out.update(self.extra)
        return out


def estimate(values: NDArray[np.float64], reasons: str | Callable[[], str | None], n: int,
             **extra: Any) -> Estimate:
    """Row 0 of ``values`` is the point estimate; NaN there means undefined, for ``reasons``.

    ``n`` counts the items the statistic rests on (e.g. the items a rater pair both rated).
    Below 2, every replicate resamples the same single item: as in :func:`replicate_sums` for a
    one-item table, all replicates are undefined (counted) and there is no CI, not a zero-width
    one (``ci_reason: fewer_than_two_items``)."""
    v0 = float(values[0])
    reps = np.asarray(values[1:], dtype=np.float64)
    no_ci = None
    if n < 2 and reps.size:
        reps = np.full(reps.shape, np.nan)
        no_ci = "fewer_than_two_items"
    if np.isnan(v0):
        why = reasons if isinstance(reasons, str) else reasons()
        return Estimate(None, n, why or "undefined", reps, extra, no_ci)
    return Estimate(v0, n, None, reps, extra, no_ci)


def difference(a: Estimate, b: Estimate) -> Estimate:
    """a − b from independent bootstraps of two disjoint item groups (a stratified bootstrap)."""
    n = a.n + b.n
    if a.value is None or b.value is None:
        why = f"{'first' if a.value is None else 'second'} group: {a.reason or b.reason}"
        return Estimate(None, n, why)
    m = min(a.replicates.size, b.replicates.size)
    return Estimate(a.value - b.value, n, None, a.replicates[:m] - b.replicates[:m],
                    no_ci=a.no_ci or b.no_ci)


def safe_div(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    """num/den with NaN where den is zero (the statistic is undefined there, not 0 or 1)."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    # A tolerance, not != 0: 1 − pe computed from floats is 1e-17, not 0, when pe is 1.
    ok = np.broadcast_to(np.abs(den) > 1e-12, out.shape)
    np.divide(num, den, out=out, where=ok)
    return out
