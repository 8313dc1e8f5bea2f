"""Training wired to the results store: dataset rows in, ``TrainingRun`` + ``Model`` rows out.

This is what the CLI (``sonoaudit train``) and the embedded pipeline call in-process.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sonoaudit.context import AppContext
from sonoaudit.db.models import Dataset, Image, Model, TrainingRun
from sonoaudit.db.session import session_scope
from sonoaudit.filestore import atomic_write_bytes
from sonoaudit.provenance import provenance
from sqlalchemy import select

from sonoaudit_generator.config import (
    BACKBONES,
    PREDICTIONS,
    Profile,
    customise,
    profile,
    variant_tag,
)
from sonoaudit_generator.training import (
    TrainResult,
    dist_info,
    plot_loss_curve,
    to_training_tensor,
    train_loop,
)

log = logging.getLogger(__name__)


def choices(p: Profile) -> dict[str, str]:
    """The user's choices of a profile, in the CLI's words (``backbone='diffusers'``…), plus
    the config values they set; recorded in provenance and the checkpoint's meta."""
    backbone = {v: k for k, v in BACKBONES.items()}[p.model.backbone]
    prediction = {v: k for k, v in PREDICTIONS.items()}[p.schedule.prediction_type]
    return {"backbone": backbone, "schedule": p.schedule.beta_schedule, "prediction": prediction,
            "backbone_config": p.model.backbone, "prediction_type": p.schedule.prediction_type}


def resolve_dataset(ctx: AppContext, data: str | Path, size: int) -> Dataset:
    """A dataset folder (imported on first use, idempotent) or the id of an imported dataset."""
    from sonoaudit.datasets import import_dataset

    path = Path(data)
    if path.exists():
        return import_dataset(ctx, path, size=size)
    with session_scope(ctx.sessions) as s:
        ds = s.get(Dataset, str(data))
        if ds is None:
            raise ValueError(
                f"--data {data!r} is neither an existing folder nor the id of an imported dataset"
            )
        s.expunge(ds)
        return ds


def load_class_split(ctx: AppContext, dataset: Dataset, class_label: str,
                     size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train masks, val images, val masks) of one class at ``size``; the split is
    the patient-level split recorded when the dataset was imported."""
    from sonoaudit.datasets import load_stored_preprocessed

    with session_scope(ctx.sessions) as s:
        rows = list(s.scalars(select(Image).where(Image.dataset_id == dataset.id)
                              .order_by(Image.name)))
        for r in rows:
            s.expunge(r)
    have = sorted({r.class_label for r in rows})
    mine = [r for r in rows if r.class_label == class_label]
    if not mine:
        raise ValueError(
            f"class {class_label!r} has no images in dataset {dataset.name} ({dataset.id}); "
            f"it has: {', '.join(have) or 'none'}"
        )
    out: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {"train": ([], []),
                                                                 "val": ([], [])}
    for r in mine:
        img, msk = load_stored_preprocessed(ctx.store, r, size)
        side = "val" if r.split == "val" else "train"
        out[side][0].append(img)
        out[side][1].append(msk)

    def stack(xs: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.stack(xs).astype(dtype) if xs else np.zeros((0, size, size), dtype=dtype)

    return (stack(out["train"][0], np.uint8), stack(out["train"][1], bool),
            stack(out["val"][0], np.uint8), stack(out["val"][1], bool))


def train_model(
    ctx: AppContext,
    data: str | Path,
    class_label: str,
    prof: str | Profile = "quick",
    out_dir: Path | None = None,
    seed: int = 0,
    *,
    resume: bool = False,
    steps: int | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    backbone: str | None = None,
    schedule: str | None = None,
    prediction: str | None = None,
) -> Model | None:
    """Train one per-class D-DDPM. Returns the ``Model`` row (None on non-zero DDP ranks, and
    when ``stop_after`` interrupts the run before its last step).

    ``backbone`` (rsu | diffusers), ``schedule`` (linear | cosine), ``prediction`` (epsilon |
    v), ``steps``: override the profile's; the checkpoint, ``TrainingRun`` and ``Model`` record
    the result."""
    p = profile(prof) if isinstance(prof, str) else prof
    p = customise(p, backbone=backbone, schedule=schedule, prediction=prediction, steps=steps)
    tag = variant_tag(p)
    variant = f"{p.name}-{tag}" if tag else p.name
    dist = dist_info()
    ds = resolve_dataset(ctx, data, p.model.sample_size)
    ti, tm, vi, vm = load_class_split(ctx, ds, class_label, p.model.sample_size)
    out = Path(out_dir) if out_dir is not None else (
        ctx.settings.home / "models" / f"{class_label}-{variant}-seed{seed}")
    out.mkdir(parents=True, exist_ok=True)
    run_id: str | None = None
    if dist.main:
        with session_scope(ctx.sessions) as s:
            run = None
            if resume:
                run = s.scalars(select(TrainingRun).where(TrainingRun.out_dir == str(out))
                                .order_by(TrainingRun.started_at.desc())).first()
            if run is None:
                run = TrainingRun(
                    dataset_id=ds.id, class_label=class_label, profile=p.name, seed=seed,
                    config=p.model_dump(mode="json"), out_dir=str(out),
                    provenance=provenance(seed=seed, model=p.model.backbone,
                                          n_train=int(len(ti)), n_val=int(len(vi)),
                                          world_size=dist.world_size, **choices(p)),
                )
                s.add(run)
            run.status = "running"
            s.flush()
            run_id = run.id

    def on_checkpoint(step: int, curve: list[dict[str, float]]) -> None:
        with session_scope(ctx.sessions) as s:
            r = s.get_one(TrainingRun, run_id)
            r.loss_curve = [dict(c) for c in curve]

    try:
        result: TrainResult = train_loop(
            to_training_tensor(ti, tm), to_training_tensor(vi, vm), p, out, seed=seed,
            class_label=class_label, resume=resume, stop_after=stop_after, progress=progress,
            on_checkpoint=on_checkpoint if run_id else None,
            meta={"dataset_id": ds.id, "training_run_id": run_id, **choices(p)},
        )
    except BaseException as exc:
        if run_id:
            with session_scope(ctx.sessions) as s:
                r = s.get_one(TrainingRun, run_id)
                r.status = "failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted"
                r.provenance = {**r.provenance, "error": repr(exc)[:2000]}
        raise
    if not dist.main or run_id is None:
        return None
    plot_loss_curve(result.loss_curve, out / "loss_curve.png",
                    f"D-DDPM {class_label} ({p.name}), seed {seed}")
    atomic_write_bytes(out / "loss_curve.json", json.dumps(result.loss_curve).encode())
    finished = result.step >= p.train.steps
    with session_scope(ctx.sessions) as s:
        r = s.get_one(TrainingRun, run_id)
        r.loss_curve = [dict(c) for c in result.loss_curve]
        r.status = "done" if finished else "interrupted"
        if not finished:
            return None
        r.finished_at = datetime.now(UTC)
        model = s.scalars(select(Model).where(Model.training_run_id == run_id)).first()
        if model is None:
            model = Model(
                name=f"d-ddpm-{class_label}-{variant}-{run_id[:8]}", class_label=class_label,
                backbone=p.model.backbone, config=p.model_dump(mode="json"),
                checkpoint_path=str(result.checkpoint.resolve()), training_run_id=run_id,
            )
            s.add(model)
        s.flush()
        s.expunge(model)
    log.info("trained %s in %.0f s (%d steps): model %s", class_label, result.seconds,
             result.step, model.id)
    return model
