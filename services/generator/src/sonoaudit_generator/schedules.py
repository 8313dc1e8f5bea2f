"""Noise schedules and samplers, all diffusers schedulers built from one :class:`ScheduleConfig`.

Training uses ``DDPMScheduler.add_noise`` (q(x_t | x_0), Ho et al. Eq. 4); sampling uses
ancestral DDPM (Ho et al. Alg. 2), DDIM (Song et al., η = 0) or DPM-Solver++ (2M, Lu et al.).
Data lives in [-1, 1], so x̂₀ is clipped to that range where the scheduler supports it.
"""

from __future__ import annotations

from typing import Any

from sonoaudit_generator.config import SAMPLERS, ScheduleConfig

_BETA = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def _common(cfg: ScheduleConfig) -> dict[str, Any]:
    return {
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
        "beta_schedule": _BETA[cfg.beta_schedule],
        "prediction_type": cfg.prediction_type,
    }


def training_scheduler(cfg: ScheduleConfig) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**_common(cfg), clip_sample=True, clip_sample_range=1.0)


def check_steps(cfg: ScheduleConfig, sampler: str, steps: int) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if not 1 <= steps <= cfg.num_train_timesteps:
        raise ValueError(
            f"steps must be in 1..{cfg.num_train_timesteps} (T of this model), got {steps}"
        )


def sampler_scheduler(cfg: ScheduleConfig, sampler: str, steps: int) -> Any:
    """A scheduler ready to sample with ``steps`` denoising steps."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    check_steps(cfg, sampler, steps)
    sched: Any
    if sampler == "ddpm":
        sched = DDPMScheduler(**_common(cfg), clip_sample=True, clip_sample_range=1.0)
    elif sampler == "ddim":
        sched = DDIMScheduler(**_common(cfg), clip_sample=True, clip_sample_range=1.0,
                              set_alpha_to_one=False, timestep_spacing="trailing")
    else:
        sched = DPMSolverMultistepScheduler(
            **_common(cfg), algorithm_type="dpmsolver++", solver_order=2,
            thresholding=False, timestep_spacing="trailing",
            lower_order_final=True,
        )
    sched.set_timesteps(steps)
    return sched
