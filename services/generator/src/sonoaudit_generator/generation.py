"""Generation wired to the store: a model id in, PNG pairs + manifest + ``Image`` rows out.

Idempotent: sample ``i`` of a run is drawn from its own seed, rows are unique on
``(generation_run_id, sample_index)``, and samples already stored are skipped, so a redelivered
job (same ``job_id`` → same run) only fills in what is missing and never duplicates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from sonoaudit.context import AppContext
from sonoaudit.datasets.imageio import png_bytes
from sonoaudit.db.models import GenerationRun, Image, Model
from sonoaudit.db.session import session_scope
from sonoaudit.filestore import atomic_write_bytes
from sonoaudit.provenance import provenance
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from sonoaudit_generator.checkpoint import Checkpoint, load_checkpoint, load_weights
from sonoaudit_generator.config import SAMPLERS
from sonoaudit_generator.denoiser import build_denoiser
from sonoaudit_generator.qc import mask_qc, summarise
from sonoaudit_generator.sampling import Backend, TorchBackend, sample_batch, sample_seed
from sonoaudit_generator.schedules import check_steps, sampler_scheduler

log = logging.getLogger(__name__)

DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpmpp": 25}  # None = T (the study's ancestral DDPM)
BACKENDS = ("torch", "onnx")


class GenerationError(ValueError):
    """Bad generation request (unknown model, sampler, step count…)."""


def default_steps(sampler: str, num_train_timesteps: int) -> int:
    return DEFAULT_STEPS.get(sampler) or num_train_timesteps


def get_model(ctx: AppContext, model_id: str) -> Model:
    with session_scope(ctx.sessions) as s:
        m = s.get(Model, model_id)
        if m is None:
            raise GenerationError(f"unknown model id {model_id!r} (see `sonoaudit models`)")
        return m


def find_model_for_class(ctx: AppContext, class_label: str) -> Model:
    """The newest model trained for ``class_label``."""
    with session_scope(ctx.sessions) as s:
        m = s.scalars(select(Model).where(Model.class_label == class_label)
                      .order_by(Model.created_at.desc())).first()
        if m is None:
            raise GenerationError(f"no trained model for class {class_label!r}")
        return m


def resolve_class(ckpt: Checkpoint, model_id: str, model_class: str | None,
                  class_label: str | None) -> tuple[str | None, int | None]:
    """The class a run samples and, for a class-conditional model, its label index.

    A conditional model needs the class (one of its classes); a per-class model samples its
    own class only, so naming another one is an error rather than a silent mislabel."""
    if ckpt.conditional:
        names = ckpt.class_names_or_indices()
        if class_label is None:
            raise GenerationError(
                f"model {model_id} is class-conditional (classes {', '.join(names)}): give the "
                "class to sample (--class; class_label over HTTP and in a generate job)")
        if class_label not in names:
            raise GenerationError(f"model {model_id} has no class {class_label!r}; its classes: "
                                  f"{', '.join(names)}")
        return class_label, names.index(class_label)
    own = model_class or ckpt.class_label
    if class_label is not None and class_label != own:
        raise GenerationError(
            f"model {model_id} was trained on class {own!r} only and cannot sample "
            f"{class_label!r}; use a {class_label} model or a class-conditional one "
            "(`sonoaudit train --class all`)")
    return own, None


def make_backend(ckpt: Checkpoint, backend: str = "torch", *, device: str | None = None,
                 bf16: bool = False, class_index: int | None = None) -> Backend:
    """The denoiser of ``ckpt`` on ``backend``; ``class_index``: the label every call passes
    to a class-conditional model (required for one, refused for a per-class model)."""
    if ckpt.conditional != (class_index is not None):
        raise GenerationError(
            f"{ckpt.path}: a class-conditional model needs a class index and only it takes one")
    if class_index is not None and not 0 <= class_index < ckpt.profile.model.num_classes:
        raise GenerationError(f"class index {class_index} outside "
                              f"0..{ckpt.profile.model.num_classes - 1}")
    if backend == "torch":
        net = build_denoiser(ckpt.profile.model)
        load_weights(net, ckpt.ema, ckpt.path, ckpt.profile.model)
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return TorchBackend(net.to(dev), bf16=bf16, class_label=class_index)
    if backend == "onnx":
        from sonoaudit_generator.onnx_backend import OrtBackend, ensure_onnx

        # re-exported when the checkpoint moved on (resumed or retrained) since the last export
        return OrtBackend(ensure_onnx(ckpt, ckpt.path / "denoiser.onnx"),
                          class_label=class_index)
    raise GenerationError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def default_out_dir(ctx: AppContext, run_id: str) -> Path:
    """Where a run writes without an ``out_dir``: a folder of its own, named by its id."""
    return ctx.settings.home / "generated" / run_id


def check_out_dir(out: Path, *, fresh: bool) -> None:
    """Refuse an output folder that is a file, and (``fresh``) one that already holds
    anything: a run writing there would overwrite some of another run's pairs and leave the rest,
    so the folder would mix runs while its manifest lists only this one's samples."""
    if out.exists() and not out.is_dir():
        raise GenerationError(f"--out {out}: exists and is not a folder")
    if fresh and out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries:
            raise GenerationError(
                f"--out {out} is not empty ({len(entries)} entries, e.g. {entries[0]}): a "
                "generation run writes into a folder of its own; give a new or empty folder, "
                "or no --out (default: a new folder per run, $SONOAUDIT_HOME/generated/<run id>)")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def validate_request(ckpt: Checkpoint, n: int, sampler: str, steps: int, max_n: int) -> None:
    if sampler not in SAMPLERS:
        raise GenerationError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if not 1 <= n <= max_n:
        raise GenerationError(f"n must be in 1..{max_n}, got {n}")
    try:
        check_steps(ckpt.profile.schedule, sampler, steps)
    except ValueError as exc:
        raise GenerationError(str(exc)) from exc


def generate(
    ctx: AppContext,
    model_id: str,
    n: int,
    sampler: str = "ddpm",
    steps: int | None = None,
    seed: int = 0,
    out_dir: Path | None = None,
    *,
    batch_size: int = 16,
    backend: str = "torch",
    job_id: str | None = None,
    max_n: int = 10_000,
    progress: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    class_label: str | None = None,
    fresh_out: bool = False,
) -> GenerationRun:
    """Sample ``n`` image/mask pairs; returns the finished ``GenerationRun`` (with ``qc_summary``).

    ``class_label``: the class to sample; required for a class-conditional model, optional
    (and only its own class) for a per-class model. Out of memory (GPU) halves the batch and
    retries; at batch 1 the error propagates.

    ``out_dir``: default a new folder per run (:func:`default_out_dir`). ``fresh_out`` (the
    CLI's ``--out``): refuse an ``out_dir`` that already holds files, before any row is
    written, unless this is a redelivered job (same ``job_id``) continuing its own folder.
    """
    from tqdm import tqdm

    model = get_model(ctx, model_id)
    ckpt = load_checkpoint(Path(model.checkpoint_path))
    steps = steps if steps is not None else default_steps(
        sampler, ckpt.profile.schedule.num_train_timesteps)
    validate_request(ckpt, n, sampler, steps, max_n)
    cls, cls_index = resolve_class(ckpt, model.id, model.class_label, class_label)
    size = ckpt.profile.model.sample_size
    channels = ckpt.profile.model.in_channels
    prov = provenance(model_id=model.id, model_name=model.name, class_label=cls,
                      conditional=ckpt.conditional, class_index=cls_index,
                      class_names=ckpt.class_names if ckpt.conditional else None,
                      checkpoint=model.checkpoint_path, checkpoint_step=ckpt.step,
                      seed=seed, sampler=sampler, steps=steps, backend=backend,
                      schedule=ckpt.profile.schedule.model_dump(mode="json"),
                      seed_rule="sample i uses SeedSequence([seed, i])",
                      mask_rule="mask channel > 0")
    if out_dir is not None:
        check_out_dir(Path(out_dir), fresh=False)
    with session_scope(ctx.sessions) as s:
        run = None
        if job_id is not None:
            run = s.scalars(select(GenerationRun).where(GenerationRun.job_id == job_id)).first()
        resumed = run is not None
        if out_dir is not None and not resumed:
            check_out_dir(Path(out_dir), fresh=fresh_out)
        if run is None:
            run = GenerationRun(model_id=model.id, job_id=job_id, class_label=cls,
                                n=n, sampler=sampler, steps=steps, seed=seed, provenance=prov)
            s.add(run)
        elif (run.n, run.sampler, run.steps, run.seed, run.class_label) != (n, sampler, steps,
                                                                             seed, cls):
            raise GenerationError(f"job {job_id} already ran with other parameters")
        run.status = "running"
        s.flush()
        run_id = run.id
        done = set(s.scalars(select(Image.sample_index)
                             .where(Image.generation_run_id == run_id)))
    out = Path(out_dir) if out_dir is not None else default_out_dir(ctx, run_id)
    out.mkdir(parents=True, exist_ok=True)
    if resumed:  # a redelivered job: an earlier delivery may have died mid-write
        _sweep_partial_writes(out)
    be = make_backend(ckpt, backend, class_index=cls_index)
    todo = [i for i in range(n) if i not in done]
    bar = tqdm(total=n, initial=n - len(todo), disable=not progress, unit="img",
               desc=f"generate {cls or ''} {sampler}×{steps}")
    bs = max(1, batch_size)
    pos = 0
    try:
        while pos < len(todo):
            idx = todo[pos:pos + bs]
            try:
                res = sample_batch(be, lambda: sampler_scheduler(ckpt.profile.schedule, sampler,
                                                                 steps),
                                   seed=seed, indices=idx, channels=channels, size=size)
            except Exception as exc:
                if _is_oom(exc) and bs > 1:
                    bs = max(1, bs // 2)
                    log.warning("out of memory; retrying with batch %d", bs)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                raise
            _store_batch(ctx, run_id, cls, idx, res.images, res.masks, seed, out)
            pos += len(idx)
            bar.update(len(idx))
            if on_progress is not None:
                on_progress(n - len(todo) + pos, n)
    except BaseException as exc:
        with session_scope(ctx.sessions) as s:
            r = s.get_one(GenerationRun, run_id)
            r.status = "failed"
            r.provenance = {**r.provenance, "error": repr(exc)[:2000]}
        raise
    finally:
        bar.close()
    return _finish(ctx, run_id, out)


def _sweep_partial_writes(out: Path) -> None:
    """Remove temporary files that a killed worker left half-written in this run's folder
    (``atomic_write_bytes`` names them ``.<name>.*.tmp``); the finished files are kept."""
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _store_batch(ctx: AppContext, run_id: str, class_label: str | None, indices: list[int],
                 images: Any, masks: Any, seed: int, out: Path) -> None:
    rows = []
    for k, i in enumerate(indices):
        img, msk = images[k], masks[k]
        ib, mb = png_bytes(img), png_bytes(msk)
        sha, rel = ctx.store.put(ib)
        msha, mrel = ctx.store.put(mb)
        stem = f"{class_label or 'sample'}_{i:05d}"
        atomic_write_bytes(out / f"{stem}_image.png", ib)
        atomic_write_bytes(out / f"{stem}_mask.png", mb)
        rows.append(Image(
            sha256=sha, mask_sha256=msha, source="synthetic",
            class_label=class_label or "unknown", name=f"{run_id}_{i:05d}", path=rel,
            mask_path=mrel, width=int(img.shape[1]), height=int(img.shape[0]),
            generation_run_id=run_id, sample_index=i,
            meta={"qc": mask_qc(img, msk), "sample_seed": sample_seed(seed, i),
                  "files": [f"{stem}_image.png", f"{stem}_mask.png"]},
        ))
    try:
        with session_scope(ctx.sessions) as s:
            s.add_all(rows)
    except IntegrityError:
        # another delivery of the same job stored some of these meanwhile: add only the rest
        with session_scope(ctx.sessions) as s:
            have = set(s.scalars(select(Image.sample_index)
                                 .where(Image.generation_run_id == run_id)))
            s.add_all([r for r in rows if r.sample_index not in have])


def _finish(ctx: AppContext, run_id: str, out: Path) -> GenerationRun:
    with session_scope(ctx.sessions) as s:
        run = s.get_one(GenerationRun, run_id)
        imgs = list(s.scalars(select(Image).where(Image.generation_run_id == run_id)
                              .order_by(Image.sample_index)))
        qcs = [im.meta["qc"] for im in imgs]
        run.qc_summary = summarise(qcs)
        run.status = "done"
        run.finished_at = datetime.now(UTC)
        manifest = {
            "generation_run_id": run.id, "model_id": run.model_id, "job_id": run.job_id,
            "class_label": run.class_label, "n": run.n, "sampler": run.sampler,
            "steps": run.steps, "seed": run.seed, "provenance": run.provenance,
            "qc_summary": run.qc_summary,
            "samples": [{"index": im.sample_index, "image_id": im.id,
                         "image": im.meta["files"][0], "mask": im.meta["files"][1],
                         "sha256": im.sha256, "mask_sha256": im.mask_sha256,
                         "qc": im.meta["qc"]} for im in imgs],
        }
        s.flush()
    atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=2).encode())
    return run
