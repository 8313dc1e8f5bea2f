"""Build the denoiser selected by :class:`ModelConfig`: the RSU U-Net (D-DDPM) or the diffusers
``UNet2DModel`` baseline, both called as ``net(x, t, class_labels) -> prediction``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sonoaudit_generator.config import ModelConfig
from sonoaudit_generator.rsu_unet import RSUUNet


class DiffusersUNet(nn.Module):
    """diffusers ``UNet2DModel(in_channels=2, out_channels=2)`` behind our call signature."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.config = config
        n = len(config.widths)
        self.unet = UNet2DModel(
            sample_size=config.sample_size,
            in_channels=config.in_channels,
            out_channels=config.in_channels,
            block_out_channels=tuple(config.widths),
            layers_per_block=config.layers_per_block,
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            norm_num_groups=config.groups,
            num_class_embeds=config.num_classes or None,
        )

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        out: Tensor = self.unet(x, t, class_labels=class_labels, return_dict=False)[0]  # type: ignore[operator]
        return out


def build_denoiser(config: ModelConfig) -> nn.Module:
    if config.backbone == "rsu_unet":
        return RSUUNet(config)
    if config.backbone == "unet2d":
        return DiffusersUNet(config)
    raise ValueError(f"unknown backbone {config.backbone!r}; expected rsu_unet or unet2d")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def seeded_denoiser(config: ModelConfig, seed: int) -> nn.Module:
    """A denoiser with deterministic initial weights (tests, benchmarks)."""
    state: Any = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build_denoiser(config)
    finally:
        torch.random.set_rng_state(state)
