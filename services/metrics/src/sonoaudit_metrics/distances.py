"""Distances between feature sets: FID (Fréchet), KID (polynomial-kernel MMD²), IS, and
precision/recall/density/coverage. All statistics in float64."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance (unbiased, n-1) of a feature set, float64."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def gaussian_stats(features: np.ndarray) -> GaussianStats:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors, got shape {f.shape}")
    mu = f.mean(axis=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return GaussianStats(mu, sigma, f.shape[0])


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """‖μa−μb‖² + Tr(Σa + Σb − 2(ΣaΣb)^½), the root's trace from the eigenvalues of ΣaΣb.

    ΣaΣb is similar to the PSD matrix Σa^½ΣbΣa^½, so its eigenvalues are real and ≥ 0 up to
    rounding; tiny negative or imaginary parts from rounding are dropped (real part of the
    complex sqrt), which is what torchmetrics does. Unlike scipy's sqrtm this never yields a
    complex result or NaN for rank-deficient Σ (n < feature dim).
    """
    diff = a.mu - b.mu
    prod = torch.from_numpy(a.sigma) @ torch.from_numpy(b.sigma)
    eig = torch.linalg.eigvals(prod)
    tr_sqrt = float(eig.sqrt().real.sum())
    value = float(diff @ diff) + float(np.trace(a.sigma) + np.trace(b.sigma)) - 2.0 * tr_sqrt
    if not math.isfinite(value):
        raise ArithmeticError("FID is not finite; check the features for NaN/inf")
    return value


def _poly_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int, coef: float) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + coef) ** degree
    kyy = (y @ y.T / d + coef) ** degree
    kxy = (x @ y.T / d + coef) ** degree
    m = x.shape[0]
    sxx = kxx.sum() - kxx.diagonal().sum()
    syy = kyy.sum() - kyy.diagonal().sum()
    return float((sxx + syy) / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kid(real: np.ndarray, fake: np.ndarray, *, subset_size: int | None = None,
        subsets: int = 100, degree: int = 3, coef: float = 1.0, seed: int = 0
        ) -> dict[str, float | int | str]:
    """Kernel Inception Distance: unbiased MMD² with k(x,y)=(xᵀy/d+1)³ averaged over random
    subsets of size min(n_real, n_fake, 1000). Subsets are drawn as torchmetrics does (one
    randperm per side per subset) from a private generator seeded with ``seed``; std is the
    population std over subsets (torchmetrics' convention)."""
    r = torch.from_numpy(np.asarray(real, dtype=np.float64))
    f = torch.from_numpy(np.asarray(fake, dtype=np.float64))
    m = subset_size if subset_size is not None else min(r.shape[0], f.shape[0], 1000)
    if m < 2 or m > min(r.shape[0], f.shape[0]):
        raise ValueError(
            f"KID subset size {m} needs 2 ≤ m ≤ min(n_real={r.shape[0]}, n_fake={f.shape[0]})")
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        pr = torch.randperm(r.shape[0], generator=gen)[:m]
        pf = torch.randperm(f.shape[0], generator=gen)[:m]
        scores.append(_poly_mmd2(r[pr], f[pf], degree, coef))
    arr = np.asarray(scores)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "subset_size": m,
            "subsets": subsets, "degree": degree, "seed": seed, "std_kind": "population"}


def inception_score(logits: np.ndarray, *, splits: int = 10, seed: int = 0) -> dict[str, float | int]:
    """IS = exp(E KL(p(y|x) ‖ p(y))) per split of shuffled samples; mean and sample std over
    splits (torchmetrics' convention). ``logits`` are the unbiased 1008-way logits."""
    lg = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    if lg.shape[0] < splits:
        raise ValueError(f"IS needs at least {splits} images (one per split), got {lg.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    lg = lg[torch.randperm(lg.shape[0], generator=gen)]
    prob = lg.softmax(dim=1)
    log_prob = lg.log_softmax(dim=1)
    values = []
    for p, lp in zip(prob.chunk(splits), log_prob.chunk(splits), strict=True):
        mean_p = p.mean(dim=0, keepdim=True)
        kl = (p * (lp - mean_p.log())).sum(dim=1).mean().exp()
        values.append(float(kl))
    arr = np.asarray(values)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if splits > 1 else 0.0,
            "splits": splits, "seed": seed}


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = _pairwise(x, x)
    # index 0 after sorting is the point itself (distance 0); the k-th neighbour is index k.
    return np.sort(d, axis=1)[:, k]


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float | int]:
    """Precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020)
    with k-nearest-neighbour balls; k is lowered to n-1 for small sets."""
    r = np.asarray(real, dtype=np.float64)
    f = np.asarray(fake, dtype=np.float64)
    k_used = min(k, r.shape[0] - 1, f.shape[0] - 1)
    if k_used < 1:
        raise ValueError("precision/recall need at least 2 images per side")
    r_rad = _kth_radius(r, k_used)
    f_rad = _kth_radius(f, k_used)
    d_rf = _pairwise(r, f)  # (n_real, n_fake)
    inside_real = d_rf <= r_rad[:, None]
    precision = float(inside_real.any(axis=0).mean())
    recall = float((d_rf <= f_rad[None, :]).any(axis=1).mean())
    density = float(inside_real.sum() / (k_used * f.shape[0]))
    coverage = float((d_rf.min(axis=1) <= r_rad).mean())
    return {"precision": precision, "recall": recall, "density": density,
            "coverage": coverage, "k": k_used}
