"""Training wired to the results store: dataset rows in, ``TrainingRun`` + ``Model`` rows out.

This is what the CLI (``sonoaudit train``) and the embedded pipeline call in-process.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from sonoaudit.context import AppContext
from sonoaudit.db.base import new_id
from sonoaudit.db.models import Dataset, Image, Model, TrainingRun
from sonoaudit.db.session import session_scope
from sonoaudit.filestore import atomic_write_bytes
from sonoaudit.provenance import provenance
from sqlalchemy import select

from sonoaudit_generator.checkpoint import CheckpointError, has_checkpoint
from sonoaudit_generator.config import (
    BACKBONES,
    PREDICTIONS,
    Profile,
    customise,
    profile,
    variant_tag,
)
from sonoaudit_generator.training import (
    DistInfo,
    TrainResult,
    dist_info,
    plot_loss_curve,
    resume_checkpoint,
    to_training_tensor,
    train_loop,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    ds = get_dataset(ctx, str(data))
    if ds is None:
        raise ValueError(
            f"--data {data!r} is neither an existing folder nor the id of an imported dataset"
        )
    return ds


def get_dataset(ctx: AppContext, dataset_id: str) -> Dataset | None:
    with session_scope(ctx.sessions) as s:
        ds = s.get(Dataset, dataset_id)
        if ds is not None:
            s.expunge(ds)
        return ds


def on_rank0(dist: DistInfo, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only; the other ranks wait for it (the broadcast is the barrier) and
    get its result, or raise rank 0's error, so no rank is left waiting when rank 0 fails. One
    process (no torchrun): just ``fn()``. Used for what must happen once under DDP: importing
    the dataset, creating or reopening the ``TrainingRun`` row."""
    if dist.world_size <= 1:
        return fn()
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()):
        raise RuntimeError(
            f"WORLD_SIZE={dist.world_size} but no torch.distributed process group: call "
            "init_process_group first (`sonoaudit train` does under torchrun)")
    box: list[Any] = [None, None]
    failure: BaseException | None = None
    if dist.main:
        try:
            box[0] = fn()
        except BaseException as exc:
            failure = exc
            box[1] = (type(exc).__name__, str(exc))
    # nccl broadcasts through each rank's own GPU (the CLI does not set a current device)
    device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
              if tdist.get_backend() == "nccl" else torch.device("cpu"))
    tdist.broadcast_object_list(box, src=0, device=device)
    if failure is not None:
        raise failure
    if box[1] is not None:
        kind, msg = box[1]
        err = {"CheckpointError": CheckpointError, "ValueError": ValueError}.get(kind)
        raise err(msg) if err is not None else RuntimeError(f"rank 0 failed: {kind}: {msg}")
    return box[0]  # type: ignore[no-any-return]


ALL_CLASSES = "all"


def dataset_classes(ctx: AppContext, dataset_id: str) -> list[str]:
    """The classes a dataset has images of, sorted."""
    with session_scope(ctx.sessions) as s:
        return sorted(c for c in s.scalars(select(Image.class_label).where(
            Image.dataset_id == dataset_id).distinct()) if c)


def conditional_classes(spec: str, have: list[str]) -> list[str] | None:
    """The classes one class-conditional model is trained on: ``all`` (every class of the
    dataset) or a comma list (``benign,malignant``); ``None`` for one class (a per-class model).
    Label ``i`` of the model is class ``i`` of the returned (sorted) list."""
    if spec != ALL_CLASSES and "," not in spec:
        return None
    names = sorted(have) if spec == ALL_CLASSES else sorted(
        {c.strip() for c in spec.split(",") if c.strip()})
    missing = [c for c in names if c not in have]
    if missing:
        raise ValueError(f"class {missing[0]!r} has no images in the dataset; it has: "
                         f"{', '.join(have) or 'none'}")
    if len(names) < 2:
        raise ValueError(f"a class-conditional model needs at least two classes, got "
                         f"{', '.join(names) or 'none'} from {spec!r}")
    if len(",".join(names)) > 32:
        raise ValueError(f"too many classes for one model: {', '.join(names)}")
    return names


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


def output_folder(ctx: AppContext, out_dir: Path | None, stem: str, *,
                  resume: bool) -> tuple[str, Path]:
    """(id for a new ``TrainingRun``, the folder it trains in). No two models share a
    checkpoint folder: the default is a new folder per run, ``<stem>-<run id[:8]>`` under
    ``$SONOAUDIT_HOME/models`` (``--resume`` without ``--out``: the newest of them that holds a
    checkpoint), and a folder that already holds a checkpoint is refused unless resumed."""
    run_id = new_id()
    if out_dir is not None:
        out = Path(out_dir)
    elif resume:
        out = latest_default_folder(ctx, stem)
    else:
        out = ctx.settings.home / "models" / f"{stem}-{run_id[:8]}"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if not resume:
        refuse_occupied(ctx, out)
    return run_id, out


def latest_default_folder(ctx: AppContext, stem: str) -> Path:
    """The default folder (``<stem>-<run id[:8]>``) of the newest run that left a checkpoint;
    also ``<stem>`` itself, the default before folders were per run."""
    base = ctx.settings.home / "models"
    name = re.compile(re.escape(stem) + r"(-[0-9a-f]{8})?")
    with session_scope(ctx.sessions) as s:
        outs = list(s.scalars(select(TrainingRun.out_dir).where(
            TrainingRun.out_dir.startswith(str(base / stem), autoescape=True))
            .order_by(TrainingRun.started_at.desc())))
    for o in [*(o for o in outs if o), str(base / stem)]:
        folder = Path(o)
        if (folder.parent == base and name.fullmatch(folder.name)
                and has_checkpoint(folder / "checkpoint")):
            return folder
    raise CheckpointError(f"--resume: no checkpoint of an earlier run in {base / stem}-<run id>; "
                          "give --out FOLDER of the run to continue")


def refuse_occupied(ctx: AppContext, out: Path) -> None:
    """Refuse to train afresh in a folder that holds a checkpoint: the new weights would
    replace the ones a ``Model`` row (or an interrupted run) points at."""
    ckpt = out / "checkpoint"
    if not has_checkpoint(ckpt):
        return
    with session_scope(ctx.sessions) as s:
        model = s.scalars(select(Model).where(Model.checkpoint_path == str(ckpt.resolve()))
                          .order_by(Model.created_at.desc())).first()
        run = s.scalars(select(TrainingRun).where(TrainingRun.out_dir == str(out))
                        .order_by(TrainingRun.started_at.desc())).first()
        holder = (f"model {model.id} ({model.name})" if model is not None
                  else f"training run {run.id} ({run.status})" if run is not None
                  else "a model not in this store")
    raise CheckpointError(
        f"--out {out} already holds the checkpoint of {holder}; training afresh there would "
        "replace its weights. Use --resume to continue that run, another --out, or no --out "
        "(a new folder per training run)")


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
    """Train one per-class D-DDPM (``class_label`` = one class) or one class-conditional model
    (``class_label`` = ``all`` or a comma list such as ``benign,malignant``). Returns the
    ``Model`` row (None on non-zero DDP ranks, and when ``stop_after`` interrupts the run before
    its last step).

    ``backbone`` (rsu | diffusers), ``schedule`` (linear | cosine), ``prediction`` (epsilon |
    v), ``steps``: override the profile's; the checkpoint, ``TrainingRun`` and ``Model`` record
    the result."""
    p = profile(prof) if isinstance(prof, str) else prof
    p = customise(p, backbone=backbone, schedule=schedule, prediction=prediction, steps=steps)
    tag = variant_tag(p)
    variant = f"{p.name}-{tag}" if tag else p.name
    dist = dist_info()
    # under torchrun rank 0 imports (a folder is imported on first use) while the other ranks
    # wait, then they look the same dataset up by id: no concurrent imports of one folder
    ds_id = on_rank0(dist, lambda: resolve_dataset(ctx, data, p.model.sample_size).id)
    ds = get_dataset(ctx, ds_id)
    if ds is None:  # rank 0 committed it before the broadcast
        raise RuntimeError(f"dataset {ds_id} imported by rank 0 is not in the store")
    names = conditional_classes(class_label, dataset_classes(ctx, ds.id))
    labels: tuple[torch.Tensor, torch.Tensor] | None = None
    if names is None:
        ti, tm, vi, vm = load_class_split(ctx, ds, class_label, p.model.sample_size)
        per_class = {class_label: (len(ti), len(vi))}
    else:
        # one class-conditional model: every class's images with its label index; each class
        # keeps the dataset's patient-level split
        parts = [load_class_split(ctx, ds, c, p.model.sample_size) for c in names]
        ti, tm, vi, vm = (np.concatenate([part[k] for part in parts]) for k in range(4))
        labels = (torch.cat([torch.full((len(part[0]),), i, dtype=torch.long)
                             for i, part in enumerate(parts)]),
                  torch.cat([torch.full((len(part[2]),), i, dtype=torch.long)
                             for i, part in enumerate(parts)]))
        per_class = {c: (len(part[0]), len(part[2])) for c, part in zip(names, parts,
                                                                       strict=True)}
        p = customise(p, num_classes=len(names))
        class_label = ",".join(names)
    folder = class_label.replace(",", "+")
    # rank 0 chooses the folder (new per run by default; one holding a checkpoint is refused
    # unless resumed) and the new run's id, which the default folder names
    new_run_id, out = on_rank0(dist, lambda: output_folder(
        ctx, out_dir, f"{folder}-{variant}-seed{seed}", resume=resume))
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)

    def open_run() -> str:
        """Rank 0: refuse a resume that does not fit the checkpoint before any row is touched
        (the refusal is about this request, not the run that wrote the checkpoint; train_loop
        checks the same again when it loads the weights), then create or reopen the run."""
        if resume:
            resume_checkpoint(out / "checkpoint", p, class_label=None if names else class_label,
                              class_names=names, seed=seed, dataset_id=ds.id)
        with session_scope(ctx.sessions) as s:
            run = None
            if resume:
                run = s.scalars(select(TrainingRun).where(TrainingRun.out_dir == str(out))
                                .order_by(TrainingRun.started_at.desc())).first()
            if run is None:
                run = TrainingRun(
                    id=new_run_id, dataset_id=ds.id, class_label=class_label, profile=p.name,
                    seed=seed,
                    config=p.model_dump(mode="json"), out_dir=str(out),
                    provenance=provenance(seed=seed, model=p.model.backbone,
                                          n_train=int(len(ti)), n_val=int(len(vi)),
                                          world_size=dist.world_size, **choices(p),
                                          conditional=names is not None, class_names=names,
                                          per_class={c: {"n_train": a, "n_val": b}
                                                     for c, (a, b) in per_class.items()}),
                )
                s.add(run)
            run.status = "running"
            s.flush()
            return run.id

    # rank 0 writes the row; every rank knows its id (the checkpoint meta names it)
    run_id = on_rank0(dist, open_run)

    def on_checkpoint(step: int, curve: list[dict[str, float]]) -> None:
        with session_scope(ctx.sessions) as s:
            r = s.get_one(TrainingRun, run_id)
            r.loss_curve = [dict(c) for c in curve]

    try:
        result: TrainResult = train_loop(
            to_training_tensor(ti, tm), to_training_tensor(vi, vm), p, out, seed=seed,
            class_label=None if names else class_label, resume=resume, stop_after=stop_after,
            progress=progress, on_checkpoint=on_checkpoint if dist.main else None,
            meta={"dataset_id": ds.id, "training_run_id": run_id, **choices(p)},
            labels=None if labels is None else labels[0],
            val_labels=None if labels is None else labels[1], class_names=names,
        )
    except BaseException as exc:
        if dist.main:  # only rank 0 writes rows (and checkpoints, the loss curve)
            with session_scope(ctx.sessions) as s:
                r = s.get_one(TrainingRun, run_id)
                r.status = "failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted"
                r.provenance = {**r.provenance, "error": repr(exc)[:2000]}
        raise
    if not dist.main:
        return None
    plot_loss_curve(result.loss_curve, out / "loss_curve.png",
                    f"D-DDPM {class_label} ({variant}), seed {seed}")
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
                name=f"d-ddpm-{folder}-{variant}-{run_id[:8]}",
                # None = class-conditional (the classes are in the checkpoint and the config)
                class_label=None if names else class_label,
                backbone=p.model.backbone,
                config={**p.model_dump(mode="json"), **({"class_names": names} if names else {})},
                checkpoint_path=str(result.checkpoint.resolve()), training_run_id=run_id,
            )
            s.add(model)
        s.flush()
        s.expunge(model)
    log.info("trained %s in %.0f s (%d steps): model %s", class_label, result.seconds,
             result.step, model.id)
    return model
