"""Configuration objects: the denoiser, the noise schedule and training are configured separately
(like diffusers' model/scheduler split) and serialised as JSON next to the weights."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Backbone = Literal["rsu_unet", "unet2d"]
BetaSchedule = Literal["linear", "cosine"]
Prediction = Literal["epsilon", "v_prediction"]
SamplerName = Literal["ddpm", "ddim", "dpmpp"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpmpp")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Config):
    """The denoiser network. ``widths[i]`` is the output width of encoder stage ``i``;
    ``heights[i]`` the RSU height (levels inside the block) of that stage."""

    backbone: Backbone = "rsu_unet"
    in_channels: int = Field(default=2, ge=1)  # image + mask
    sample_size: int = Field(default=64, ge=8)
    widths: tuple[int, ...] = (32, 64, 128)
    heights: tuple[int, ...] = (5, 4, 3)
    time_dim: int = Field(default=128, ge=8)
    groups: int = Field(default=8, ge=1)
    num_classes: int = Field(default=0, ge=0)  # >0: class-conditional (class embedding)
    layers_per_block: int = Field(default=1, ge=1)  # unet2d only

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if len(self.widths) != len(self.heights):
            raise ValueError(
                f"widths {self.widths} and heights {self.heights} must have the same length"
            )
        if any(h < 2 for h in self.heights):
            raise ValueError(f"every RSU height must be >= 2, got {self.heights}")
        down = 2 ** (len(self.widths) - 1)
        if self.sample_size % down:
            raise ValueError(
                f"sample_size {self.sample_size} must be divisible by {down} for "
                f"{len(self.widths)} stages"
            )
        if any(w < 2 for w in self.widths):
            raise ValueError(f"every width must be >= 2, got {self.widths}")
        return self


class ScheduleConfig(_Config):
    """Forward process: T steps, β schedule, what the network predicts."""

    num_train_timesteps: int = Field(default=1000, ge=2)
    beta_schedule: BetaSchedule = "linear"
    beta_start: float = Field(default=1e-4, gt=0)
    beta_end: float = Field(default=0.02, gt=0, lt=1)
    prediction_type: Prediction = "epsilon"


class TrainConfig(_Config):
    image_size: int = Field(default=64, ge=8)
    batch_size: int = Field(default=16, ge=1)
    steps: int = Field(default=1500, ge=1)
    lr: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    ema_decay: float = Field(default=0.995, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, gt=0)
    checkpoint_every: int = Field(default=500, ge=1)
    amp: bool = True  # bf16 autocast on CUDA only
    flip: bool = True


class Profile(_Config):
    name: str
    model: ModelConfig
    schedule: ScheduleConfig
    train: TrainConfig


def profile(name: str) -> Profile:
    """Named presets. ``quick``: 64×64 on CPU in minutes; ``paper``: 128×128 on a GPU."""
    if name == "quick":
        return Profile(
            name="quick",
            model=ModelConfig(sample_size=64, widths=(16, 32, 64), heights=(4, 3, 2),
                              time_dim=64),
            schedule=ScheduleConfig(),
            train=TrainConfig(image_size=64, batch_size=8, steps=1500, lr=5e-4,
                              ema_decay=0.995, checkpoint_every=250),
        )
    if name == "paper":
        return Profile(
            name="paper",
            model=ModelConfig(sample_size=128, widths=(64, 128, 256, 256), heights=(6, 5, 4, 3),
                              time_dim=256, groups=16),
            schedule=ScheduleConfig(),
            train=TrainConfig(image_size=128, batch_size=32, steps=100_000, lr=1e-4,
                              ema_decay=0.9995, checkpoint_every=5000),
        )
    if name == "tiny":  # tests only
        return Profile(
            name="tiny",
            model=ModelConfig(sample_size=16, widths=(8, 16), heights=(3, 2), time_dim=16,
                              groups=4),
            schedule=ScheduleConfig(num_train_timesteps=100),
            train=TrainConfig(image_size=16, batch_size=4, steps=6, lr=1e-3,
                              checkpoint_every=3),
        )
    raise ValueError(f"unknown profile {name!r}; expected one of quick, paper, tiny")


PROFILES = ("quick", "paper", "tiny")

# What a user chooses on top of a profile (CLI ``--backbone/--schedule/--prediction``, the
# ``POST /train`` body, the TRAIN job payload), and the config value each choice sets.
BACKBONES: dict[str, Backbone] = {"rsu": "rsu_unet", "diffusers": "unet2d"}
SCHEDULES: dict[str, BetaSchedule] = {"linear": "linear", "cosine": "cosine"}
PREDICTIONS: dict[str, Prediction] = {"epsilon": "epsilon", "v": "v_prediction"}


def _choice(kind: str, value: str, table: dict[str, Any]) -> Any:
    if value not in table:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(table)}")
    return table[value]


def customise(prof: Profile, *, backbone: str | None = None, schedule: str | None = None,
              prediction: str | None = None, num_classes: int | None = None,
              steps: int | None = None) -> Profile:
    """``prof`` with the chosen backbone (``rsu`` | ``diffusers``), β schedule (``linear`` |
    ``cosine``), prediction target (``epsilon`` | ``v``), class count (> 0: one class-conditional
    model) and step count; ``None`` keeps the profile's value."""
    model: dict[str, Any] = {}
    sched: dict[str, Any] = {}
    if backbone is not None:
        model["backbone"] = _choice("backbone", backbone, BACKBONES)
    if num_classes is not None:
        model["num_classes"] = num_classes
    if schedule is not None:
        sched["beta_schedule"] = _choice("schedule", schedule, SCHEDULES)
    if prediction is not None:
        sched["prediction_type"] = _choice("prediction", prediction, PREDICTIONS)
    update: dict[str, Any] = {}
    if model:
        update["model"] = ModelConfig.model_validate({**prof.model.model_dump(), **model})
    if sched:
        update["schedule"] = ScheduleConfig.model_validate({**prof.schedule.model_dump(), **sched})
    if steps is not None:
        update["train"] = TrainConfig.model_validate({**prof.train.model_dump(), "steps": steps})
    return prof.model_copy(update=update) if update else prof


def variant_tag(prof: Profile) -> str:
    """What sets ``prof`` apart from its named preset, e.g. ``diffusers-cosine-v`` ('' when it
    is the preset's own model and schedule): part of default output folders and model names, so
    two variants trained on the same data do not overwrite each other."""
    base = profile(prof.name) if prof.name in PROFILES else None
    if base is None:
        return "custom"
    names = {v: k for k, v in BACKBONES.items()}
    preds = {v: k for k, v in PREDICTIONS.items()}
    parts = []
    if prof.model.backbone != base.model.backbone:
        parts.append(names[prof.model.backbone])
    if prof.schedule.beta_schedule != base.schedule.beta_schedule:
        parts.append(prof.schedule.beta_schedule)
    if prof.schedule.prediction_type != base.schedule.prediction_type:
        parts.append(preds[prof.schedule.prediction_type])
    return "-".join(parts)


def profile_diff(have: Profile, want: Profile) -> list[str]:
    """``field: have -> want`` for every setting where two profiles differ (``model.backbone:
    'rsu_unet' -> 'unet2d'``), for errors that say what does not match."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(have.model_dump(mode="json")), flat(want.model_dump(mode="json"))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]
