"""The reverse process: one loop for every sampler and backend (torch or ONNX Runtime).

Each sample ``i`` draws all its noise from its own generator seeded from ``(seed, i)``, so a sample
does not depend on the batch it was drawn in: retrying with a smaller batch (GPU out of memory) or
redelivering a job reproduces the same images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor


class Backend(Protocol):
    """Evaluates the denoiser: ``(x (B,C,H,W) float32, t (B,) int64) -> prediction``.

    The prediction comes back on ``x``'s device. ``device`` (optional) is where the backend
    computes; the reverse loop keeps x_t there, so the scheduler never mixes devices.
    """

    name: str

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


class TorchBackend:
    """The torch module in inference mode; optional channels-last memory and bf16 autocast."""

    name = "torch"

    def __init__(self, net: torch.nn.Module, *, bf16: bool = False, channels_last: bool = False,
                 class_label: int | None = None) -> None:
        self.net = net.eval()
        self.bf16 = bf16
        self.channels_last = channels_last
        self.class_label = class_label
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.device = next(net.parameters()).device

    @torch.inference_mode()
    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        where = x.device
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = None
        if self.class_label is not None:
            labels = torch.full((x.shape[0],), self.class_label, dtype=torch.long,
                                device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.net(x, t.to(self.device), labels)
        return out.float().contiguous().to(where)


def backend_device(backend: Callable[[Tensor, Tensor], Tensor]) -> torch.device:
    """Where ``backend`` computes (its ``device`` attribute; CPU for backends without one)."""
    return torch.device(getattr(backend, "device", "cpu"))


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index`` in a run seeded ``seed`` (independent streams, no overlap)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def generators(seed: int, indices: range | list[int], device: str = "cpu") -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(sample_seed(seed, i)) for i in indices]


@dataclass
class SampleResult:
    images: np.ndarray  # uint8 (N, H, W)
    masks: np.ndarray  # bool (N, H, W)
    raw: Tensor  # float32 (N, C, H, W) in [-1, 1] before quantisation


def run_reverse(
    backend: Callable[[Tensor, Tensor], Tensor],
    scheduler: Any,
    noise: Tensor,
    gens: list[torch.Generator] | torch.Generator | None,
    on_step: Callable[[int], None] | None = None,
) -> Tensor:
    """x_T → x_0 with the scheduler's timesteps; ``noise`` is x_T.

    The whole loop runs on the backend's device (x_T is moved there, the prediction is kept
    there), so on a GPU the scheduler step sees one device. The noise of ancestral steps is
    still drawn from the per-sample CPU generators (diffusers draws on their device, then
    moves), so a GPU run uses the same noise as a CPU run; on the CPU nothing moves at all.
    Returns x_0 on that device.
    """
    dev = backend_device(backend)
    x = noise.to(dev) * scheduler.init_noise_sigma
    b = x.shape[0]
    for k, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(x, t)
        pred = backend(model_in, torch.full((b,), int(t), dtype=torch.long, device=dev))
        x = scheduler.step(pred.to(x.device), t, x, generator=gens, return_dict=False)[0]
        if on_step is not None:
            on_step(k)
    return x


def initial_noise(shape: tuple[int, ...], gens: list[torch.Generator]) -> Tensor:
    return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in gens])


def to_pairs(x: Tensor) -> SampleResult:
    """Channel 0 → uint8 image; channel 1 thresholded at 0 → binary mask."""
    x = x.float().clamp(-1, 1)
    img = ((x[:, 0] + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    mask = (x[:, 1] > 0).cpu().numpy()
    return SampleResult(images=img, masks=mask, raw=x.cpu())


def sample_batch(
    backend: Callable[[Tensor, Tensor], Tensor],
    scheduler_factory: Callable[[], Any],
    *,
    seed: int,
    indices: list[int],
    channels: int,
    size: int,
    on_step: Callable[[int], None] | None = None,
) -> SampleResult:
    """Sample the given indices of a run as one batch."""
    gens = generators(seed, indices)
    noise = initial_noise((len(indices), channels, size, size), gens)
    x = run_reverse(backend, scheduler_factory(), noise, gens, on_step)
    return to_pairs(x)
