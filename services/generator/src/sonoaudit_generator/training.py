"""Training of the joint image+mask DDPM: seeded, resumable, checkpointed.

Randomness per step (batch indices, flips, timesteps, noise) comes from a generator seeded from
``(seed, step)``, so a run resumed at step k draws exactly what the uninterrupted run drew at step
k: the resumed loss curve equals the uninterrupted one (up to float non-associativity when the
thread count differs).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sonoaudit_generator.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from sonoaudit_generator.config import Profile, profile_diff
from sonoaudit_generator.denoiser import build_denoiser
from sonoaudit_generator.sampling import sample_seed
from sonoaudit_generator.schedules import training_scheduler

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    loss_curve: list[dict[str, float]]
    seconds: float
    n_train: int
    n_val: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank/world size from torchrun's environment (1 process when not launched by torchrun)."""
    return DistInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def to_training_tensor(images: np.ndarray, masks: np.ndarray) -> Tensor:
    """uint8 (N,H,W) images and bool (N,H,W) masks → float32 (N,2,H,W) in [-1, 1]."""
    if images.shape != masks.shape or images.ndim != 3:
        raise ValueError(f"images {images.shape} and masks {masks.shape} must both be (N, H, W)")
    img = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)
    msk = torch.from_numpy(masks.astype(np.float32) * 2.0 - 1.0)
    return torch.stack([img, msk], dim=1).contiguous()


def _batch(data: Tensor, batch_size: int, gen: torch.Generator, flip: bool) -> Tensor:
    return _batch_with_index(data, batch_size, gen, flip)[0]


def _batch_with_index(data: Tensor, batch_size: int, gen: torch.Generator,
                      flip: bool) -> tuple[Tensor, Tensor]:
    """A random batch (with replacement) and the indices it was drawn from."""
    idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen)
    x = data[idx]
    if flip:
        # one flip decision per sample, applied to image and mask together (they stay aligned)
        do = torch.rand(batch_size, generator=gen) < 0.5
        x = torch.where(do[:, None, None, None], x.flip(-1), x)
    return x, idx


@torch.no_grad()
def _ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), net.buffers(), strict=True):
        be.copy_(b)


def draw_noise(scheduler: Any, shape: torch.Size | tuple[int, ...],
               gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Uniform timesteps and Gaussian ε for a batch of ``shape`` (drawn on the CPU generator)."""
    t = torch.randint(0, scheduler.config.num_train_timesteps, (shape[0],), generator=gen)
    return t, torch.randn(shape, generator=gen)


def diffusion_loss(net: nn.Module, scheduler: Any, x0: Tensor, gen: torch.Generator | None,
                   prediction_type: str, autocast: bool = False,
                   drawn: tuple[Tensor, Tensor] | None = None,
                   class_labels: Tensor | None = None) -> Tensor:
    """MSE between the network output and ε (or v) at a uniformly drawn timestep; ``drawn``
    gives (t, ε) already drawn (a DDP rank's slice of the global draw) instead of ``gen``."""
    if drawn is None:
        assert gen is not None
        drawn = draw_noise(scheduler, x0.shape, gen)
    t, noise = drawn[0].to(x0.device), drawn[1].to(x0.device)
    xt = scheduler.add_noise(x0, noise, t)
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=autocast):
        pred = net(xt, t, class_labels)
    return F.mse_loss(pred.float(), target)


@torch.no_grad()
def validation_loss(net: nn.Module, scheduler: Any, val: Tensor, seed: int,
                    prediction_type: str, labels: Tensor | None = None) -> float:
    """Loss on the held-out patients with fixed timesteps and noise (comparable across steps)."""
    if val.shape[0] == 0:
        return float("nan")
    gen = torch.Generator().manual_seed(sample_seed(seed, 10**9))
    was = net.training
    net.eval()
    loss = diffusion_loss(net, scheduler, val, gen, prediction_type,
                          class_labels=labels).item()
    net.train(was)
    return float(loss)


def resume_checkpoint(ckpt_dir: Path, prof: Profile, *, class_label: str | None,
                      class_names: list[str] | None, seed: int,
                      dataset_id: str | None = None) -> Checkpoint:
    """The checkpoint a ``resume`` continues from (with its training state), or
    ``CheckpointError`` naming what differs from this run: the profile (backbone, schedule,
    prediction, widths, steps…), class, class list, dataset or seed. Reads only, so a caller
    can refuse a resume before it writes anything (``store_training`` does)."""
    ck = load_checkpoint(ckpt_dir, with_state=True)
    if ck.profile != prof:
        raise CheckpointError(
            f"{ckpt_dir}: trained with profile {ck.profile.name!r} settings other than this "
            f"run's (checkpoint -> this run: {'; '.join(profile_diff(ck.profile, prof))}); "
            "resume with the checkpoint's --profile/--backbone/--schedule/--prediction/"
            "--steps, or use a fresh --out"
        )
    if ck.class_label != class_label:
        raise CheckpointError(
            f"{ckpt_dir}: checkpoint is for class {ck.class_label!r}, not {class_label!r}"
        )
    if ck.class_names != class_names:
        raise CheckpointError(
            f"{ckpt_dir}: checkpoint's classes are {ck.class_names}, not {class_names}"
        )
    have_ds = ck.meta.get("dataset_id")
    if dataset_id is not None and have_ds is not None and dataset_id != have_ds:
        raise CheckpointError(
            f"{ckpt_dir}: checkpoint was trained on dataset {have_ds}, not {dataset_id}; "
            "use a fresh --out or the same dataset"
        )
    if ck.state.get("seed") != seed:
        raise CheckpointError(
            f"{ckpt_dir}: checkpoint was trained with seed {ck.state.get('seed')}, not {seed}"
        )
    return ck


def train_loop(
    train: Tensor,
    val: Tensor,
    prof: Profile,
    out_dir: Path,
    *,
    seed: int,
    class_label: str | None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[int, list[dict[str, float]]], None] | None = None,
    device: str | None = None,
    meta: dict[str, Any] | None = None,
    labels: Tensor | None = None,
    val_labels: Tensor | None = None,
    class_names: list[str] | None = None,
) -> TrainResult:
    """Train ``prof`` on ``train`` (N,2,H,W in [-1,1]); checkpoints go to ``out_dir/checkpoint``.

    ``resume``: continue from the checkpoint in ``out_dir`` (its config must equal ``prof``).
    ``stop_after``: stop at this global step (simulates an interruption in tests).
    ``labels``/``val_labels``: class index of each image, required when the profile's model is
    class-conditional (``num_classes > 0``): one model for all classes, the option on top of the
    study's one-model-per-class. ``class_names[i]``: the class of label ``i`` (kept in the
    checkpoint, so the model can be sampled by class name).
    """
    from tqdm import tqdm

    dist = dist_info()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dist.world_size > 1 and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    tc = prof.train
    if train.shape[0] == 0:
        raise ValueError("no training images (check the class label and the dataset)")
    if train.shape[-1] != prof.model.sample_size:
        raise ValueError(
            f"training images are {train.shape[-1]}px but the model expects "
            f"{prof.model.sample_size}px (profile {prof.name})"
        )
    conditional = prof.model.num_classes > 0
    if conditional != (labels is not None):
        raise ValueError(
            "a class-conditional model (num_classes > 0) needs labels, and only it accepts them"
        )
    if labels is not None:
        if labels.shape != (train.shape[0],):
            raise ValueError(f"labels {tuple(labels.shape)} must have one entry per training "
                             f"image ({train.shape[0]})")
        if int(labels.min()) < 0 or int(labels.max()) >= prof.model.num_classes:
            raise ValueError(f"labels must be in 0..{prof.model.num_classes - 1}")
        if val_labels is None or val_labels.shape != (val.shape[0],):
            raise ValueError("val_labels must give one label per validation image")
    if class_names is not None and (not conditional
                                    or len(class_names) != prof.model.num_classes):
        raise ValueError(f"class_names {class_names} must name each class of a "
                         "class-conditional model")
    torch.manual_seed(seed)
    net = build_denoiser(prof.model).to(dev)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = training_scheduler(prof.schedule)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(dev)
    ckpt_dir = out_dir / "checkpoint"
    curve: list[dict[str, float]] = []
    start = 0
    if resume:
        ck = resume_checkpoint(ckpt_dir, prof, class_label=class_label, class_names=class_names,
                               seed=seed, dataset_id=(meta or {}).get("dataset_id"))
        load_weights(net, ck.weights, ckpt_dir, prof.model)
        load_weights(ema, ck.ema, ckpt_dir, prof.model)
        opt.load_state_dict(ck.state["optimizer"])
        curve = list(ck.state["loss_curve"])
        start = ck.step
    model: nn.Module = net
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    data = train.to(dev)
    val = val.to(dev)
    amp = tc.amp and dev.type == "cuda"
    end = tc.steps if stop_after is None else min(stop_after, tc.steps)
    t0 = time.perf_counter()
    net.train()
    bar = tqdm(range(start, end), initial=start, total=tc.steps,
               disable=not (progress and dist.main), desc=f"train {class_label or 'all'}",
               unit="step", dynamic_ncols=True)

    def checkpoint(step: int) -> None:
        if not dist.main:
            return
        vl = validation_loss(ema, scheduler, val, seed, prof.schedule.prediction_type,
                             None if val_labels is None else val_labels.to(dev))
        if curve:
            curve[-1]["val_loss"] = vl
        save_checkpoint(
            ckpt_dir, profile=prof, class_label=class_label, step=step,
            weights=net.state_dict(), ema=ema.state_dict(),
            state={"optimizer": opt.state_dict(), "loss_curve": curve, "seed": seed},
            meta={**(meta or {}), "seed": seed, "n_train": int(train.shape[0]),
                  "n_val": int(val.shape[0])},
            class_names=class_names,
        )
        if on_checkpoint is not None:
            on_checkpoint(step, curve)

    step = start
    for step in bar:
        gen = torch.Generator().manual_seed(sample_seed(seed, step))
        # every rank draws the same global batch, timesteps and noise and keeps its own slice,
        # so N ranks × batch b train exactly like one process with batch N·b (and one process
        # draws in the same order as before DDP existed)
        xb, ib = _batch_with_index(data.cpu() if dev.type != "cpu" else data,
                                   tc.batch_size * dist.world_size, gen, tc.flip)
        tb, nb = draw_noise(scheduler, xb.shape, gen)
        mine = slice(dist.rank * tc.batch_size, (dist.rank + 1) * tc.batch_size)
        yb = None if labels is None else labels[ib[mine]].to(dev)
        loss = diffusion_loss(model, scheduler, xb[mine].to(dev), None,
                              prof.schedule.prediction_type, amp, drawn=(tb[mine], nb[mine]),
                              class_labels=yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(net.parameters(), tc.grad_clip)
        opt.step()
        _ema_update(ema, net, tc.ema_decay)
        logged = loss.detach()
        if dist.world_size > 1:  # the curve records the global batch's loss, not rank 0's slice
            import torch.distributed as tdist

            tdist.all_reduce(logged)
            logged = logged / dist.world_size
        lv = float(logged)
        if not np.isfinite(lv):
            raise FloatingPointError(f"loss became {lv} at step {step}; lower the learning rate")
        curve.append({"step": step + 1, "loss": lv})
        bar.set_postfix(loss=f"{lv:.4f}")
        if (step + 1) % tc.checkpoint_every == 0 or step + 1 == end:
            checkpoint(step + 1)
    bar.close()
    final = end if end > start else start
    return TrainResult(checkpoint=ckpt_dir, step=final, loss_curve=curve,
                       seconds=time.perf_counter() - t0, n_train=int(train.shape[0]),
                       n_val=int(val.shape[0]), meta=meta or {})


def plot_loss_curve(curve: list[dict[str, float]], path: Path, title: str) -> Path:
    """Training loss (raw and smoothed) and validation loss as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([c["step"] for c in curve])
    loss = np.array([c["loss"] for c in curve])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(steps, loss, lw=0.5, alpha=0.4, label="train loss")
    if len(loss) >= 20:
        k = max(len(loss) // 50, 5)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"train (mean of {k})")
    val = [(c["step"], c["val_loss"]) for c in curve if "val_loss" in c and
           np.isfinite(c["val_loss"])]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation (EMA)")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
