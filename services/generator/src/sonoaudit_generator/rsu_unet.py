"""The D-DDPM denoiser: a U-Net whose stages are Residual U-blocks (RSU-L, U²-Net, Qin et al. 2020)
with a sinusoidal timestep embedding (plus an optional class embedding) added in every block.

RSU-L: an input conv gives ``hx_in``; a small L-level encoder/decoder (max-pool down, bilinear up,
a dilated conv at the bottom) maps it to ``hx_u``; the block returns ``hx_in + hx_u`` (Eq. 1 of
U²-Net). Batch norm is replaced by group norm, which behaves with the small batches of diffusion
training; the time embedding is added to ``hx_in`` so every level of the block sees it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonoaudit_generator.config import ModelConfig


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ConvNormAct(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)
        self.norm = _norm(cout, groups)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(self.norm(self.conv(x)))


class RSUBlock(nn.Module):
    """RSU-L with time conditioning. ``height`` = L (levels, >= 2)."""

    def __init__(self, cin: int, cmid: int, cout: int, height: int, emb_dim: int,
                 groups: int) -> None:
        super().__init__()
        self.height = height
        self.conv_in = ConvNormAct(cin, cout, groups)
        self.emb = nn.Linear(emb_dim, cout)
        self.enc = nn.ModuleList(
            [ConvNormAct(cout, cmid, groups)]
            + [ConvNormAct(cmid, cmid, groups) for _ in range(height - 2)]
        )
        self.bottom = ConvNormAct(cmid, cmid, groups, dilation=2)
        self.dec = nn.ModuleList(
            [ConvNormAct(2 * cmid, cmid, groups) for _ in range(height - 2)]
            + [ConvNormAct(2 * cmid, cout, groups)]
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        hx_in = self.conv_in(x) + self.emb(emb)[:, :, None, None]
        skips: list[Tensor] = []
        h = hx_in
        for i, layer in enumerate(self.enc):
            h = layer(h)
            skips.append(h)
            # pool between levels only while the map can still halve
            if i < len(self.enc) - 1 and min(h.shape[-2:]) >= 2:
                h = F.max_pool2d(h, 2, ceil_mode=True)
        h = self.bottom(h)
        for layer, skip in zip(self.dec, reversed(skips), strict=True):
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = layer(torch.cat([h, skip], dim=1))
        return hx_in + h


class RSUUNet(nn.Module):
    """Outer U-Net over RSU stages: encoder stages at 1, 1/2, 1/4, … resolution, a decoder that
    mirrors them with skip connections, and a zero-initialised output conv (starts at ε̂ = 0)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c, g = config.widths, config.groups
        tdim = config.time_dim
        emb_dim = 4 * tdim
        self.time_mlp = nn.Sequential(nn.Linear(tdim, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.class_emb = (nn.Embedding(config.num_classes, emb_dim)
                          if config.num_classes > 0 else None)
        self.stem = nn.Conv2d(config.in_channels, c[0], 3, padding=1)
        self.down = nn.ModuleList()
        prev = c[0]
        for w, h in zip(c, config.heights, strict=True):
            self.down.append(RSUBlock(prev, max(w // 2, 1), w, h, emb_dim, g))
            prev = w
        self.up = nn.ModuleList()
        for i in range(len(c) - 2, -1, -1):
            self.up.append(RSUBlock(c[i + 1] + c[i], max(c[i] // 2, 1), c[i], config.heights[i],
                                    emb_dim, g))
        self.out_norm = _norm(c[0], g)
        self.out = nn.Conv2d(c[0], config.in_channels, 3, padding=1)
        # start at ε̂ = 0: the first steps do not fight a random output
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)  # type: ignore[arg-type]

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim).to(x.dtype))
        if self.class_emb is not None:
            if class_labels is None:
                raise ValueError("this model is class-conditional: pass class_labels")
            emb = emb + self.class_emb(class_labels)
        h = self.stem(x)
        skips: list[Tensor] = []
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            h = block(h, emb)
            skips.append(h)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))
