"""Pixel-space comparisons: images brought to one square size, SSIM and MS-SSIM.

Images of different sizes and aspect ratios are resized to ``size``×``size`` (bilinear,
antialias=True, aspect not kept) so any two can be compared; the size is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

from sonoaudit_metrics.samples import ImageSample

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def common_size(sets: Sequence[Sequence[ImageSample]], cap: int) -> int:
    """The largest square side ≤ ``cap`` that no image has to be upsampled to."""
    smallest = min(min(s.image.shape) for group in sets for s in group)
    return int(min(cap, smallest))


def to_square(samples: Sequence[ImageSample], size: int) -> torch.Tensor:
    """(N, 1, size, size) float32 in [0, 255]."""
    out = torch.empty((len(samples), 1, size, size), dtype=torch.float32)
    for i, s in enumerate(samples):
        x = torch.from_numpy(s.image).to(torch.float32)[None, None]
        if x.shape[-2:] != (size, size):
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                                align_corners=False, antialias=True)
        out[i] = x[0].clamp_(0, 255)
    return out


def ssim_kernel(size: int) -> int:
    """Gaussian window 11 (the standard), smaller and odd for tiny images."""
    k = min(11, size if size % 2 == 1 else size - 1)
    return max(3, k)


def ssim_pairs(a: torch.Tensor, b: torch.Tensor, batch: int = 256) -> np.ndarray:
    """SSIM of a[i] vs b[i] (data range 255, Gaussian σ 1.5)."""
    k = ssim_kernel(a.shape[-1])
    out = []
    for j in range(0, a.shape[0], batch):
        v = structural_similarity_index_measure(
            a[j:j + batch], b[j:j + batch], data_range=255.0, kernel_size=k, reduction="none")
        out.append(torch.as_tensor(v).reshape(-1))
    return torch.cat(out).double().numpy() if out else np.zeros(0)


@dataclass(frozen=True)
class MsSsimParams:
    size: int
    kernel_size: int
    scales: int
    betas: tuple[float, ...]
    note: str

    def as_dict(self) -> dict[str, object]:
        return {"size": self.size, "kernel_size": self.kernel_size, "scales": self.scales,
                "betas": list(self.betas), "note": self.note}


def _fits(size: int, kernel: int, scales: int) -> bool:
    # The same two checks torchmetrics applies before computing MS-SSIM.
    div = max(1, scales - 1) ** 2
    return size >= 2 ** scales and size // div > kernel - 1


def ms_ssim_params(size: int) -> MsSsimParams:
    """Standard MS-SSIM (5 scales, window 11) when the images are large enough; otherwise fewer
    scales, then a smaller window, with the leading betas renormalised to sum to 1."""
    for kernel in (11, 9, 7, 5, 3):
        for scales in (5, 4, 3, 2):
            if _fits(size, kernel, scales):
                betas = MS_SSIM_BETAS[:scales]
                total = sum(betas)
                betas = tuple(round(b / total, 6) for b in betas)
                if (kernel, scales) == (11, 5):
                    note = "standard MS-SSIM: 5 scales, Gaussian window 11"
                else:
                    note = (f"images of {size}px are too small for standard MS-SSIM (5 scales, "
                            f"window 11): used {scales} scales, window {kernel}, the first "
                            f"{scales} standard betas renormalised; not comparable with 5-scale "
                            "values")
                return MsSsimParams(size, kernel, scales, betas, note)
    raise ValueError(f"images of {size}px are too small for MS-SSIM (need at least 4 px)")


def ms_ssim_pairs(a: torch.Tensor, b: torch.Tensor, params: MsSsimParams,
                  batch: int = 64) -> np.ndarray:
    out = []
    for j in range(0, a.shape[0], batch):
        v = multiscale_structural_similarity_index_measure(
            a[j:j + batch], b[j:j + batch], data_range=255.0, kernel_size=params.kernel_size,
            betas=params.betas, reduction="none", normalize="relu")
        out.append(torch.as_tensor(v).reshape(-1))
    return torch.cat(out).double().numpy() if out else np.zeros(0)
