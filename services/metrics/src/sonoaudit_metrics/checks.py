"""Medical checks on a synthetic set: memorisation (near-copies of training images) and
diversity (pairwise MS-SSIM among synthetic vs among real images)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sonoaudit_metrics.pixels import (
    common_size,
    ms_ssim_pairs,
    ms_ssim_params,
    ssim_pairs,
    to_square,
)
from sonoaudit_metrics.samples import ImageSample

# Defaults chosen above the nearest-neighbour similarities seen between different real BUS-BRA
# patients (see docs/metrics.md), so a flag means "as close as the same image".
SSIM_THRESHOLD = 0.90
FEATURE_THRESHOLD = 0.995
CANDIDATES = 5


def _summary(v: np.ndarray) -> dict[str, float]:
    return {"mean": float(v.mean()), "max": float(v.max()), "min": float(v.min())}


def _zscore_rows(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def memorisation(real: Sequence[ImageSample], synthetic: Sequence[ImageSample],
                 real_features: np.ndarray, synthetic_features: np.ndarray, *,
                 ssim_threshold: float = SSIM_THRESHOLD,
                 feature_threshold: float = FEATURE_THRESHOLD,
                 pixel_cap: int = 128, top: int = 10) -> dict[str, Any]:
    """For each synthetic image its nearest real image by Inception-feature cosine and by SSIM.

    SSIM against every real image would cost n_syn × n_real windowed comparisons, so SSIM is
    computed on candidates: the ``CANDIDATES`` nearest reals by feature cosine plus the
    ``CANDIDATES`` nearest by pixel correlation at 32×32 — an exact or shifted-intensity copy is
    top-1 on both. A synthetic image is flagged when its best SSIM ≥ ``ssim_threshold`` or its
    best feature cosine ≥ ``feature_threshold``.
    """
    fr = real_features / np.maximum(np.linalg.norm(real_features, axis=1, keepdims=True), 1e-12)
    fs = synthetic_features / np.maximum(
        np.linalg.norm(synthetic_features, axis=1, keepdims=True), 1e-12)
    cos = fs.astype(np.float64) @ fr.astype(np.float64).T  # (n_syn, n_real)
    size = common_size([real, synthetic], pixel_cap)
    real_px = to_square(real, size)
    syn_px = to_square(synthetic, size)
    small_r = torch.nn.functional.adaptive_avg_pool2d(real_px, 32).flatten(1).double().numpy()
    small_s = torch.nn.functional.adaptive_avg_pool2d(syn_px, 32).flatten(1).double().numpy()
    corr = _zscore_rows(small_s) @ _zscore_rows(small_r).T
    k = min(CANDIDATES, len(real))
    cand = np.concatenate([np.argsort(-cos, axis=1)[:, :k], np.argsort(-corr, axis=1)[:, :k]],
                          axis=1)
    pairs_s = np.repeat(np.arange(len(synthetic)), cand.shape[1])
    pairs_r = cand.reshape(-1)
    ssim = ssim_pairs(syn_px[pairs_s], real_px[pairs_r]).reshape(len(synthetic), -1)
    best = ssim.argmax(axis=1)
    best_ssim = ssim[np.arange(len(synthetic)), best]
    best_real = cand[np.arange(len(synthetic)), best]
    best_cos = cos.max(axis=1)
    flagged = (best_ssim >= ssim_threshold) | (best_cos >= feature_threshold)
    order = np.argsort(-best_ssim, kind="stable")[:top]
    top_pairs = []
    for i in order:
        r = real[int(best_real[i])]
        s = synthetic[int(i)]
        top_pairs.append({
            "synthetic_id": s.image_id, "synthetic_name": s.name,
            "real_id": r.image_id, "real_name": r.name,
            "ssim": float(best_ssim[i]),
            "feature_cosine": float(cos[i, best_real[i]]),
            "nearest_feature_cosine": float(best_cos[i]),
            "flagged": bool(flagged[i]),
        })
    return {
        "ssim_threshold": ssim_threshold, "feature_threshold": feature_threshold,
        "pixel_size": size, "candidates_per_image": int(cand.shape[1]),
        "n_flagged": int(flagged.sum()), "fraction_flagged": float(flagged.mean()),
        "nearest_ssim": _summary(best_ssim), "nearest_feature_cosine": _summary(best_cos),
        "top_pairs": top_pairs,
        "reference": "the real set scored against (should be the model's training images)",
    }


def _pairs(n: int, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n, k=1)
    if i.size > max_pairs:
        pick = rng.choice(i.size, size=max_pairs, replace=False)
        i, j = i[pick], j[pick]
    return i, j


def diversity(real: Sequence[ImageSample], synthetic: Sequence[ImageSample], *,
              pixel_cap: int = 256, max_pairs: int = 300, seed: int = 0) -> dict[str, Any]:
    """Mean pairwise MS-SSIM within each set (lower = more diverse). A synthetic mean well above
    the real one suggests mode collapse; both sets use the same size and parameters."""
    size = common_size([real, synthetic], pixel_cap)
    params = ms_ssim_params(size)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for name, group in (("synthetic", synthetic), ("real", real)):
        px = to_square(group, size)
        i, j = _pairs(len(group), max_pairs, rng)
        v = ms_ssim_pairs(px[i], px[j], params)
        if not np.isfinite(v).all():
            raise ArithmeticError(f"MS-SSIM of the {name} set is not finite")
        out[name] = {"mean": float(v.mean()), "std": float(v.std()), "n_pairs": int(v.size)}
    real_mean = out["real"]["mean"]
    out["ratio"] = (out["synthetic"]["mean"] / real_mean) if real_mean > 0 else None
    out["params"] = {**params.as_dict(), "max_pairs": max_pairs, "seed": seed,
                     "resize": "bilinear antialiased to size x size, aspect not kept",
                     "normalize": "relu (torchmetrics; avoids NaN from negative contrast terms)"}
    return out
