"""FID, KID, IS and PRDC on feature arrays, against independent references: the pytorch-fid
formula with scipy.linalg.sqrtm, torchmetrics' own metrics fed the same features through an
identity ``feature`` module, brute-force loops and hand-computed small cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from sonoaudit_metrics.distances import (
    GaussianStats,
    frechet_distance,
    gaussian_stats,
    inception_score,
    kid,
    prdc,
)
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance


class Identity(nn.Module):
    """torchmetrics ``feature`` module handing the given rows through unchanged."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.num_features = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance (scipy sqrtm, real part kept)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def pair(n_a: int, n_b: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_a, d))
    b = rng.normal(0.3, 1.0, size=(n_b, d)) @ rng.normal(scale=0.3, size=(d, d))
    return a, b


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("n_a", "n_b", "d"), [(400, 420, 32), (60, 70, 48), (30, 25, 96)])
def test_fid_matches_scipy_sqrtm_both_root_paths(n_a: int, n_b: int, d: int) -> None:
    a, b = pair(n_a, n_b, d)
    ref = fid_sqrtm(a, b)
    sa, sb = gaussian_stats(a), gaussian_stats(b)
    via_features = frechet_distance(sa, sb)  # SVD of the centred cross product (n ≤ d) or eigh
    via_sigma = frechet_distance(GaussianStats(sa.mu, sa.sigma, sa.n),
                                 GaussianStats(sb.mu, sb.sigma, sb.n))  # symmetric eigh only
    # sqrtm loses digits when Σ is rank-deficient (n < d); 1e-6 relative still separates a
    # wrong formula (e.g. eigvalsh of the non-symmetric product) by orders of magnitude.
    assert via_features == pytest.approx(ref, rel=1e-6)
    assert via_sigma == pytest.approx(ref, rel=1e-6)
    assert via_features == pytest.approx(via_sigma, rel=1e-8)


def test_fid_matches_torchmetrics_on_the_same_features() -> None:
    a, b = pair(200, 150, 16, seed=3)
    tm = FrechetInceptionDistance(feature=Identity(16))
    tm.update(torch.from_numpy(a).float(), real=True)
    tm.update(torch.from_numpy(b).float(), real=False)
    ours = frechet_distance(gaussian_stats(a.astype(np.float32)),
                            gaussian_stats(b.astype(np.float32)))
    assert ours == pytest.approx(float(tm.compute()), rel=1e-5)


def test_fid_hand_computed_and_identical_sets() -> None:
    # 1-D: FID = (μa-μb)² + σa² + σb² - 2σaσb = (μa-μb)² + (σa-σb)².
    a = np.array([[0.0], [2.0]])  # μ 1, var 2
    b = np.array([[4.0], [8.0]])  # μ 6, var 8
    assert frechet_distance(gaussian_stats(a), gaussian_stats(b)) == pytest.approx(
        25 + (np.sqrt(2) - np.sqrt(8)) ** 2, rel=1e-12)
    x, _ = pair(50, 50, 40)
    assert abs(frechet_distance(gaussian_stats(x), gaussian_stats(x))) < 1e-9
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(x[:1])
    x_nan = x.copy()
    x_nan[0, 0] = np.nan
    with pytest.raises((ArithmeticError, np.linalg.LinAlgError)):
        frechet_distance(gaussian_stats(x_nan), gaussian_stats(x))


def test_kid_matches_torchmetrics_with_the_same_seed() -> None:
    a, b = pair(60, 50, 24, seed=5)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    ours = kid(a32, b32, subset_size=30, subsets=20, seed=7)
    tm = KernelInceptionDistance(feature=Identity(24), subsets=20, subset_size=30)
    tm.update(torch.from_numpy(a32), real=True)
    tm.update(torch.from_numpy(b32), real=False)
    torch.manual_seed(7)  # torchmetrics draws its subsets from the global generator
    mean, std = tm.compute()
    assert ours["mean"] == pytest.approx(float(mean), rel=1e-5)
    assert ours["std"] == pytest.approx(float(std), rel=1e-4)
    assert ours["subset_size"] == 30


def test_kid_hand_computed_and_default_subset_size() -> None:
    # m = 2, d = 1, k(x,y) = (xy + 1)^3: real {0, 1}, fake {1, 2}.
    # kxx off-diagonal 2·1 = 2; kyy off-diag 2·(2+1)^3 = 54; kxy: 1+1+8+27 = 37.
    # MMD² = (2 + 54)/2 - 2·37/4 = 28 - 18.5 = 9.5 (every subset is the whole set).
    res = kid(np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]]), subsets=3)
    assert res["mean"] == pytest.approx(9.5) and res["std"] == pytest.approx(0.0, abs=1e-12)
    a, b = pair(30, 12, 8)
    assert kid(a, b, subsets=2)["subset_size"] == 12  # min(n_real, n_fake, 1000)
    with pytest.raises(ValueError, match="subset size"):
        kid(a, b, subset_size=13)
    x, _ = pair(200, 10, 8, seed=9)
    same = kid(x[:100], x[100:], subsets=50)
    assert abs(same["mean"]) < 0.05 < kid(x, x * 3 + 2, subsets=5)["mean"]


def test_inception_score_matches_torchmetrics_with_the_same_seed() -> None:
    logits = np.random.default_rng(2).normal(scale=3.0, size=(40, 12)).astype(np.float32)
    ours = inception_score(logits, splits=4, seed=11)
    tm = InceptionScore(feature=Identity(12), splits=4)
    tm.update(torch.from_numpy(logits))
    torch.manual_seed(11)
    mean, std = tm.compute()
    assert ours["mean"] == pytest.approx(float(mean), rel=1e-5)
    assert ours["std"] == pytest.approx(float(std), rel=1e-4)


def test_inception_score_hand_computed() -> None:
    # Every image sure of its own class, classes spread uniformly: IS = number of classes.
    logits = np.tile(np.eye(5) * 60.0, (2, 1))
    res = inception_score(logits, splits=2)
    assert res["mean"] == pytest.approx(5.0, rel=1e-6)
    # All images identical: p(y|x) = p(y), KL 0, IS exactly 1.
    assert inception_score(np.ones((10, 5)), splits=2)["mean"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 10"):
        inception_score(np.ones((9, 5)))


def prdc_loops(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Definitions of Kynkäänniemi et al. / Naeem et al. written as plain loops."""
    def dist(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.sqrt(((x - y) ** 2).sum()))

    def radius(s: np.ndarray, i: int) -> float:
        return sorted(dist(s[i], s[j]) for j in range(len(s)))[k]

    rr = [radius(real, i) for i in range(len(real))]
    fr = [radius(fake, j) for j in range(len(fake))]
    prec = np.mean([any(dist(f, r) <= rr[i] for i, r in enumerate(real)) for f in fake])
    rec = np.mean([any(dist(r, f) <= fr[j] for j, f in enumerate(fake)) for r in real])
    dens = sum(dist(f, r) <= rr[i] for f in fake for i, r in enumerate(real)) / (k * len(fake))
    cov = np.mean([min(dist(r, f) for f in fake) <= rr[i] for i, r in enumerate(real)])
    return {"precision": prec, "recall": rec, "density": dens, "coverage": cov}


def test_prdc_matches_the_definitions() -> None:
    rng = np.random.default_rng(4)
    real = rng.normal(size=(30, 5))
    fake = rng.normal(0.7, 1.3, size=(25, 5))
    ours = prdc(real, fake, k=3)
    ref = prdc_loops(real, fake, 3)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    # hand case, k = 1 on a line: real {0, 1, 10}, fake {0.5, 20}
    # real radii 1, 1, 9; fake radii 19.5, 19.5
    hand = prdc(np.array([[0.0], [1.0], [10.0]]), np.array([[0.5], [20.0]]), k=1)
    assert hand == {"precision": 0.5, "recall": 1.0, "density": 1.0, "coverage": 2 / 3, "k": 1}
