"""Benchmark of the metrics area against a plain torchmetrics FID loop, in one run.

Peer: ``torchmetrics.image.fid.FrechetInceptionDistance(feature=<the same Inception weights,
plain TorchScript graph>)``, fp32, updated in batches of 32, then ``compute()``.
Ours: ``compute_features`` (frozen/optimised graph, per-image resize, batch 32) + float64
statistics + ``frechet_distance`` (trace of the root by SVD / symmetric eigh).

Prints: images/s for each, the throughput ratio, both FID values and their relative difference
(tolerance 1e-3: the frozen graph changes float32 rounding only), and the time of FID from 2048-d
statistics (ours vs torchmetrics' eigvals of Σ1Σ2) on full-rank random statistics.

    .venv/bin/python bench/metrics.py --n 64 --size 256 [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="images per side")
    ap.add_argument("--size", type=int, default=256, help="grey image side (resized to 299)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--stats-n", type=int, default=2500, help="rows of the random statistics")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from sonoaudit_metrics.distances import GaussianStats, frechet_distance, gaussian_stats
    from sonoaudit_metrics.features import compute_features
    from sonoaudit_metrics.inception import FIDInceptionFeatures
    from sonoaudit_metrics.samples import ImageSample
    from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid

    rng = np.random.default_rng(0)

    def images(offset: int) -> list[np.ndarray]:
        return [np.clip(rng.gamma(2.0, 40.0 + offset, size=(args.size, args.size)), 0, 255)
                .astype(np.uint8) for _ in range(args.n)]

    real, fake = images(0), images(15)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"n={args.n} per side, {args.size}x{args.size} grey uint8")

    # peer: plain torchmetrics update loop (fp32, batch 32)
    peer_fid = FrechetInceptionDistance(feature=FIDInceptionFeatures(optimized=False))
    ours_ex = FIDInceptionFeatures(optimized=True)
    warm = torch.from_numpy(real[0])[None, None]
    peer_fid.inception(warm)
    ours_ex(warm)  # both graphs loaded and warmed before timing

    t0 = time.perf_counter()
    for side, imgs in ((True, real), (False, fake)):
        for j in range(0, len(imgs), 32):
            batch = torch.from_numpy(np.stack(imgs[j:j + 32]))[:, None]
            peer_fid.update(batch, real=side)
    peer_value = float(peer_fid.compute())
    t_peer = time.perf_counter() - t0

    t0 = time.perf_counter()
    fr = compute_features([ImageSample(f"r{i}", x) for i, x in enumerate(real)], ours_ex,
                          batch_size=32, progress=False)
    fs = compute_features([ImageSample(f"f{i}", x) for i, x in enumerate(fake)], ours_ex,
                          batch_size=32, progress=False)
    ours_value = frechet_distance(gaussian_stats(fr), gaussian_stats(fs))
    t_ours = time.perf_counter() - t0

    n_img = 2 * args.n
    rel = abs(ours_value - peer_value) / max(abs(peer_value), 1e-12)
    print(f"features+FID  torchmetrics loop: {n_img / t_peer:6.2f} img/s ({t_peer:.1f} s)")
    print(f"features+FID  sonoaudit        : {n_img / t_ours:6.2f} img/s ({t_ours:.1f} s)")
    print(f"throughput ratio (ours / torchmetrics): {t_peer / t_ours:.2f}x  (goal >= 1.5x)")
    print(f"FID torchmetrics {peer_value:.4f}  sonoaudit {ours_value:.4f}  rel diff {rel:.1e}  "
          f"({'OK' if rel < 1e-3 else 'ABOVE'} tolerance 1e-3)")

    # FID from cached 2048-d statistics (full rank: n > d)
    a = rng.normal(size=(args.stats_n, 2048))
    b = rng.normal(0.1, 1.1, size=(args.stats_n, 2048))
    sa, sb = gaussian_stats(a), gaussian_stats(b)
    sa, sb = GaussianStats(sa.mu, sa.sigma, sa.n), GaussianStats(sb.mu, sb.sigma, sb.n)
    t0 = time.perf_counter()
    ours_stats = frechet_distance(sa, sb)
    t_s_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    peer_stats = float(_compute_fid(torch.from_numpy(sa.mu), torch.from_numpy(sa.sigma),
                                    torch.from_numpy(sb.mu), torch.from_numpy(sb.sigma)))
    t_s_peer = time.perf_counter() - t0
    print(f"FID from 2048-d stats: torchmetrics eigvals {t_s_peer:.2f} s, sonoaudit eigh "
          f"{t_s_ours:.2f} s, ratio {t_s_peer / t_s_ours:.1f}x, values {peer_stats:.6f} vs "
          f"{ours_stats:.6f} (rel {abs(ours_stats - peer_stats) / peer_stats:.1e})")


if __name__ == "__main__":
    main()
