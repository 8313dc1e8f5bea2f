"""Denoiser, schedules and samplers: values checked against hand calculations and diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sonoaudit_generator.config import ModelConfig, ScheduleConfig, profile
from sonoaudit_generator.denoiser import seeded_denoiser
from sonoaudit_generator.rsu_unet import RSUBlock, timestep_embedding
from sonoaudit_generator.sampling import (
    TorchBackend,
    generators,
    initial_noise,
    run_reverse,
    sample_batch,
    to_pairs,
)
from sonoaudit_generator.schedules import check_steps, sampler_scheduler, training_scheduler

torch.set_num_threads(1)
TINY = profile("tiny")


def randomised(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """A seeded net whose zero-initialised output conv is given random weights, so the output
    depends on every block (a zero output would hide bugs)."""
    net = seeded_denoiser(cfg, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net.eval()


def test_timestep_embedding_matches_hand_values() -> None:
    emb = timestep_embedding(torch.tensor([0, 1]), 4)
    # freqs = exp(-ln(1e4) * [0, 1] / 2) = [1, 0.01]
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0],
                             [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)]])
    torch.testing.assert_close(emb, expected, atol=1e-6, rtol=0)


def test_rsu_unet_zero_init_output_and_shapes() -> None:
    cfg = TINY.model
    net = seeded_denoiser(cfg, 0)
    out = net(torch.randn(3, 2, 16, 16), torch.tensor([1, 50, 99]))
    assert out.shape == (3, 2, 16, 16)
    # the output conv starts at zero, so ε̂ = 0 before training (a stable start)
    assert torch.count_nonzero(out) == 0


def test_rsu_unet_golden_slice() -> None:
    net = randomised(TINY.model, seed=0)
    x = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net(x, torch.tensor([10]))
    got = out[0, 0, -3:, -3:].flatten()
    # golden values from this implementation at commit time (regression guard, like diffusers)
    expected = torch.tensor(GOLDEN_RSU)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


GOLDEN_RSU = [-1.1488, 0.0466, 0.1916, 0.5066, 0.1143, 0.0019, 0.1454, 0.201, -0.0485]


def test_time_embedding_reaches_every_block() -> None:
    net = randomised(TINY.model)
    x = torch.randn(2, 2, 16, 16)
    net(x, torch.tensor([3, 70])).square().mean().backward()
    blocks = [m for m in net.modules() if isinstance(m, RSUBlock)]
    assert len(blocks) == 2 * len(TINY.model.widths) - 1
    for b in blocks:
        assert b.emb.weight.grad is not None and b.emb.weight.grad.abs().sum() > 0
    with torch.no_grad():
        a = net(x, torch.tensor([3, 3]))
        b2 = net(x, torch.tensor([70, 70]))
    assert (a - b2).abs().max() > 1e-4


def test_class_conditional_model_needs_labels() -> None:
    cfg = TINY.model.model_copy(update={"num_classes": 2})
    net = randomised(cfg)
    x = torch.randn(2, 2, 16, 16)
    with pytest.raises(ValueError, match="class_labels"):
        net(x, torch.tensor([1, 1]))
    with torch.no_grad():
        a = net(x, torch.tensor([1, 1]), torch.tensor([0, 0]))
        b = net(x, torch.tensor([1, 1]), torch.tensor([1, 1]))
    assert (a - b).abs().max() > 1e-5


@pytest.mark.parametrize(
    ("update", "match"),
    [({"widths": (8, 16), "heights": (3,)}, "same length"),
     ({"sample_size": 17}, "divisible"),
     ({"heights": (1, 2)}, "height")],
)
def test_model_config_rejects_bad_values(update: dict[str, object], match: str) -> None:
    base = TINY.model.model_dump()
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**base, **update})


def test_linear_and_cosine_betas_match_formulas() -> None:
    lin = training_scheduler(ScheduleConfig())
    np.testing.assert_allclose(lin.betas.numpy(), np.linspace(1e-4, 0.02, 1000), atol=1e-9)
    cos = training_scheduler(ScheduleConfig(beta_schedule="cosine"))
    T = 1000

    def abar(t: float) -> float:  # Nichol & Dhariwal 2021, Eq. 17, s = 0.008
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - abar(i + 1) / abar(i), 0.999) for i in range(T)])
    np.testing.assert_allclose(cos.betas.numpy(), betas, rtol=1e-5, atol=1e-7)


def test_v_target_is_sqrt_abar_eps_minus_sqrt_one_minus_abar_x0() -> None:
    s = training_scheduler(ScheduleConfig(prediction_type="v_prediction"))
    x0, eps, t = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4), torch.tensor([10, 900])
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t].float()
    v = ab.sqrt()[:, None, None, None] * eps - (1 - ab).sqrt()[:, None, None, None] * x0
    torch.testing.assert_close(s.get_velocity(x0, eps, t), v, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("sampler", "steps", "match"),
                         [("ddpm", 0, "steps"), ("ddim", 101, "1..100"), ("euler", 5, "sampler")])
def test_bad_sampler_arguments(sampler: str, steps: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_steps(TINY.schedule, sampler, steps)


def test_ddim_with_zero_network_matches_hand_calculation() -> None:
    """With ε̂ ≡ 0, DDIM (η = 0) maps x_t to √ᾱ_prev · clip(x_t / √ᾱ_t) at each step."""
    sched_cfg = ScheduleConfig(num_train_timesteps=100)
    steps = 4
    sched = sampler_scheduler(sched_cfg, "ddim", steps)
    noise = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(3))

    def zero(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    got = run_reverse(zero, sched, noise, None)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 100))
    ts = [99, 74, 49, 24]  # "trailing" spacing: round(100 - k * 25) - 1
    assert [int(t) for t in sched.timesteps] == ts
    x = noise.double().numpy()
    for i, t in enumerate(ts):
        prev = abar[ts[i + 1]] if i + 1 < len(ts) else abar[0]
        x = math.sqrt(prev) * np.clip(x / math.sqrt(abar[t]), -1, 1)
    np.testing.assert_allclose(got.numpy(), x, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_sample_does_not_depend_on_batch(sampler: str) -> None:
    net = randomised(TINY.model)
    backend = TorchBackend(net)

    def factory() -> object:
        return sampler_scheduler(TINY.schedule, sampler, 5)

    both = sample_batch(backend, factory, seed=7, indices=[0, 1, 2], channels=2, size=16)
    alone = sample_batch(backend, factory, seed=7, indices=[2], channels=2, size=16)
    torch.testing.assert_close(both.raw[2], alone.raw[0], atol=1e-5, rtol=0)
    other_seed = sample_batch(backend, factory, seed=8, indices=[2], channels=2, size=16)
    assert (other_seed.raw[0] - alone.raw[0]).abs().max() > 1e-3


def test_pairs_quantise_image_and_threshold_mask_at_zero() -> None:
    x = torch.tensor([[[[-1.0, 0.0, 1.0]], [[-0.2, 0.0, 0.3]]]])  # (1, 2, 1, 3)
    r = to_pairs(x)
    assert r.images.tolist() == [[[0, 128, 255]]]  # (v + 1) * 127.5 rounded half to even
    assert r.masks.tolist() == [[[False, False, True]]]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_loop_equals_diffusers_pipeline_on_same_unet(sampler: str) -> None:
    """Our reverse loop on diffusers' UNet2DModel gives what DDPMPipeline/DDIMPipeline give."""
    from diffusers import DDIMPipeline, DDPMPipeline

    cfg = ModelConfig(backbone="unet2d", sample_size=16, widths=(8, 16), heights=(2, 2), groups=4)
    net = randomised(cfg)
    sched_cfg = ScheduleConfig(num_train_timesteps=50)
    steps = 4 if sampler == "ddim" else 50
    ours_sched = sampler_scheduler(sched_cfg, sampler, steps)
    gens = generators(5, [0, 1])
    ours = run_reverse(TorchBackend(net), ours_sched, initial_noise((2, 2, 16, 16), gens), gens)

    sched = sampler_scheduler(sched_cfg, sampler, steps)
    pipe_cls = DDPMPipeline if sampler == "ddpm" else DDIMPipeline
    pipe = pipe_cls(unet=net.unet, scheduler=sched)  # type: ignore[attr-defined]
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"eta": 0.0} if sampler == "ddim" else {}
    ref = pipe(batch_size=2, generator=generators(5, [0, 1]), num_inference_steps=steps,
               output_type="np", **kwargs).images  # (B, H, W, C) in [0, 1]
    ours_np = (ours.clamp(-1, 1) / 2 + 0.5).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours_np, ref, atol=1e-5)


class _DeviceBackend:
    """A denoiser stand-in computing on ``device``; records where its inputs arrive."""

    name = "probe"

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.seen: list[tuple[str, str]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.device.type, t.device.type))
        return torch.zeros_like(x)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_reverse_loop_runs_on_the_backend_device(sampler: str) -> None:
    """x_t and t go to the backend's device and the scheduler steps there (no CPU/GPU mix).

    The "meta" device stands in for CUDA on a machine without one: every op runs (shapes only),
    but any tensor left on the CPU that meets a meta tensor of full size would raise.
    """
    be = _DeviceBackend("meta")
    gens = generators(1, [0, 1])
    steps = 3
    out = run_reverse(be, sampler_scheduler(TINY.schedule, sampler, steps),
                      initial_noise((2, 2, 16, 16), gens), gens)
    assert out.device.type == "meta" and out.shape == (2, 2, 16, 16)
    assert be.seen == [("meta", "meta")] * steps



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_sampling_on_cuda_matches_cpu(sampler: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The net on CUDA: the loop runs there (no device mix) and gives the CPU samples.

    Both use the same per-sample CPU noise, so only float32 rounding differs; TF32 is switched
    off for the comparison (its 10-bit mantissa would dominate it).
    """
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    steps = 100 if sampler == "ddpm" else 6

    def factory() -> object:
        return sampler_scheduler(TINY.schedule, sampler, steps)

    ref = sample_batch(TorchBackend(randomised(TINY.model)), factory, seed=3, indices=[0, 1, 2],
                       channels=2, size=16)
    gpu = TorchBackend(randomised(TINY.model).to("cuda"))
    x = torch.randn(2, 2, 16, 16)
    assert gpu(x, torch.tensor([1, 2])).device.type == "cpu"  # answers on the input's device
    gens = generators(3, [0, 1, 2])
    raw = run_reverse(gpu, factory(), initial_noise((3, 2, 16, 16), gens), gens)
    assert raw.device.type == "cuda"
    got = sample_batch(gpu, factory, seed=3, indices=[0, 1, 2], channels=2, size=16)
    torch.testing.assert_close(got.raw, raw.cpu().clamp(-1, 1), atol=0, rtol=0)
    assert (got.raw - ref.raw).abs().max().item() < 1e-3
