"""Training over HTTP: ``POST /train`` queues one training (per-class, or class-conditional for
``all``) as a JetStream job (TRAIN stream, consumed by the generator's train worker) or, without
NATS, runs it in this process; ``GET /train/jobs/{id}`` follows it. The work itself is
``store_training.train_model``, the same function the CLI and the embedded pipeline call.

Each job trains into its own folder (``<home>/models/train-<job id>``): a model's checkpoint is
never overwritten by a later job, and a redelivered job resumes its own checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sonoaudit.bus import Bus, PoisonMessage
from sonoaudit.bus.client import Heartbeat
from sonoaudit.context import AppContext
from sonoaudit.db.models import Dataset, Image, Job, TrainingRun
from sonoaudit.db.session import session_scope
from sonoaudit.messages.envelope import Envelope, make_envelope
from sonoaudit.messages.payloads import (
    Backbone,
    BetaSchedule,
    DeadLetterNotice,
    Prediction,
    TrainRequest,
)
from sonoaudit.messages.registry import stream_for, subject
from sonoaudit.runtime import ServiceRuntime
from sonoaudit.service import correlation_id
from sqlalchemy import func, select

from sonoaudit_generator.config import PROFILES
from sonoaudit_generator.jobs import job_view, update_job
from sonoaudit_generator.settings import GeneratorSettings

log = logging.getLogger(__name__)
JOB_KIND = "train"
TRAIN_SUBJECT = subject("train", "request")


class TrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, description="Id of an imported dataset.")
    class_label: str = Field(
        min_length=1, description="Train on this class's images; `all` or a comma list "
        "(`benign,malignant`): one class-conditional model on those classes.")
    profile: str = Field(default="quick", description=f"One of {', '.join(PROFILES)}.")
    seed: int = 0
    steps: int | None = Field(default=None, ge=1, description="None = the profile's steps.")
    backbone: Backbone | None = Field(default=None,
                                      description="rsu | diffusers; None = the profile's.")
    schedule: BetaSchedule | None = Field(default=None,
                                          description="linear | cosine; None = the profile's.")
    prediction: Prediction | None = Field(default=None,
                                          description="epsilon | v; None = the profile's.")


class BadTrainRequest(ValueError):
    def __init__(self, field: str, msg: str) -> None:
        super().__init__(msg)
        self.field = field


def check_request(ctx: AppContext, req: TrainRequest | TrainBody) -> None:
    """Reject what can never train (unknown profile, dataset or class) before queueing it."""
    if req.profile not in PROFILES:
        raise BadTrainRequest("profile", f"unknown profile {req.profile!r}; expected one of "
                              f"{', '.join(PROFILES)}")
    from sonoaudit_generator.store_training import conditional_classes, dataset_classes

    with session_scope(ctx.sessions) as s:
        if s.get(Dataset, req.dataset_id) is None:
            raise BadTrainRequest("dataset_id", f"no imported dataset {req.dataset_id!r}")
    try:  # `all` or `a,b`: one class-conditional model
        if conditional_classes(req.class_label, dataset_classes(ctx, req.dataset_id)):
            return
    except ValueError as exc:
        raise BadTrainRequest("class_label", f"dataset {req.dataset_id}: {exc}") from exc
    with session_scope(ctx.sessions) as s:
        n = s.scalar(select(func.count()).select_from(Image).where(
            Image.dataset_id == req.dataset_id, Image.class_label == req.class_label))
        if not n:
            raise BadTrainRequest("class_label", f"dataset {req.dataset_id} has no images of "
                                  f"class {req.class_label!r}")


def out_dir_for(ctx: AppContext, job_id: str) -> Path:
    return ctx.settings.home / "models" / f"train-{job_id}"


def run_train_job(ctx: AppContext, req: TrainRequest) -> dict[str, Any]:
    """Run one training job to completion (blocking); the Job row follows it."""
    from sonoaudit_generator.checkpoint import has_checkpoint
    from sonoaudit_generator.store_training import train_model

    check_request(ctx, req)
    with session_scope(ctx.sessions) as s:
        if s.get(Job, req.job_id) is None:  # published without the API: still track it
            s.add(Job(id=req.job_id, kind=JOB_KIND, status="queued", total=req.steps or 0,
                      params=req.model_dump()))
    update_job(ctx, req.job_id, status="running")
    out = out_dir_for(ctx, req.job_id)
    # A redelivered job (worker died mid-run) continues its own checkpoint.
    resume = has_checkpoint(out / "checkpoint")
    model = train_model(ctx, req.dataset_id, req.class_label, req.profile, out, req.seed,
                        steps=req.steps, resume=resume, progress=False, backbone=req.backbone,
                        schedule=req.schedule, prediction=req.prediction)
    if model is None:
        raise RuntimeError(f"training job {req.job_id} stopped before its last step")
    result = {"model_id": model.id, "training_run_id": model.training_run_id,
              "checkpoint_path": model.checkpoint_path}
    update_job(ctx, req.job_id, status="done", done=req.steps or 0, result=result, error=None)
    return result


def _progress(ctx: AppContext, job_id: str) -> dict[str, Any] | None:
    """The job's training run: status and the last recorded step/loss (at checkpoints)."""
    with session_scope(ctx.sessions) as s:
        run = s.scalars(select(TrainingRun).where(
            TrainingRun.out_dir == str(out_dir_for(ctx, job_id)))
            .order_by(TrainingRun.started_at.desc())).first()
        if run is None:
            return None
        last = run.loss_curve[-1] if run.loss_curve else {}
        return {"training_run_id": run.id, "status": run.status, "step": last.get("step"),
                "loss": last.get("loss")}


async def _handle(ctx: AppContext, bus: Bus, env: Envelope[TrainRequest], hb: Heartbeat,
                  gs: GeneratorSettings) -> None:
    req = env.payload
    fut = asyncio.ensure_future(asyncio.to_thread(run_train_job, ctx, req))
    try:
        while True:  # keep the message alive while the thread trains
            done, _ = await asyncio.wait({fut}, timeout=gs.heartbeat_s)
            if done:
                fut.result()
                break
            await hb.beat()
    except BadTrainRequest as exc:
        await asyncio.to_thread(update_job, ctx, req.job_id, status="failed", error=str(exc))
        raise PoisonMessage(str(exc)) from exc
    except Exception as exc:
        await asyncio.to_thread(update_job, ctx, req.job_id, status="queued",
                                error=f"retrying after: {exc!r}")
        raise


async def consume_train_jobs(ctx: AppContext, bus: Bus, gs: GeneratorSettings,
                             stop: asyncio.Event) -> None:
    async def handler(env: Envelope[Any], hb: Heartbeat) -> None:
        await _handle(ctx, bus, env, hb, gs)

    async def dead(notice: DeadLetterNotice) -> None:
        try:
            env = Envelope[TrainRequest].model_validate_json(notice.data)
        except Exception:
            return
        await asyncio.to_thread(update_job, ctx, env.payload.job_id, status="failed",
                                error=notice.error)

    await bus.consume(stream_for(TRAIN_SUBJECT), TrainRequest, handler, stop=stop,
                      on_dead_letter=dead)


def router() -> APIRouter:
    r = APIRouter(tags=["train"])

    @r.post("/train", status_code=202,
            responses={202: {"description": "queued"}, 422: {"description": "bad input"}})
    async def post_train(body: TrainBody, request: Request) -> JSONResponse:
        """Train one model (one class, or ``all``: class-conditional); answers 202 with the
        job id (poll ``/train/jobs/{id}``)."""
        runtime: ServiceRuntime = request.app.state.runtime
        ctx = runtime.require()
        try:
            await asyncio.to_thread(check_request, ctx, body)
        except BadTrainRequest as exc:
            raise HTTPException(422, detail=[{"loc": ["body", exc.field], "msg": str(exc),
                                              "type": "value_error"}]) from exc

        def create() -> str:
            with session_scope(ctx.sessions) as s:
                job = Job(kind=JOB_KIND, status="queued", total=body.steps or 0,
                          params=body.model_dump(), correlation_id=correlation_id.get())
                s.add(job)
                s.flush()
                return job.id

        job_id = await asyncio.to_thread(create)
        req = TrainRequest(job_id=job_id, **body.model_dump())
        if runtime.bus is not None:
            env = make_envelope("train.request", req, message_id=f"train-{job_id}",
                                correlation_id=correlation_id.get())
            try:
                await runtime.bus.publish(TRAIN_SUBJECT, env)
            except Exception as exc:
                await asyncio.to_thread(update_job, ctx, job_id, status="failed",
                                        error=f"could not queue: {exc}")
                raise HTTPException(503, detail=f"job {job_id} could not be queued: {exc}") \
                    from exc
            mode = "jetstream"
        else:
            tasks: set[asyncio.Task[Any]] = request.app.state.generator_tasks
            task = asyncio.create_task(_run_local(ctx, req))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            mode = "in-process"
        return JSONResponse({"status": "queued", "job_id": job_id, "mode": mode,
                             "url": f"/train/jobs/{job_id}"}, status_code=202)

    @r.get("/train/jobs/{job_id}", responses={404: {"description": "unknown job"}})
    async def get_train_job(job_id: str, request: Request) -> dict[str, Any]:
        """Status of a training job; ``result.model_id`` once done; ``training`` = progress."""
        runtime: ServiceRuntime = request.app.state.runtime
        ctx = runtime.require()

        def load() -> dict[str, Any] | None:
            with session_scope(ctx.sessions) as s:
                job = s.get(Job, job_id)
                if job is None or job.kind != JOB_KIND:
                    return None
                view = job_view(job)
            view["training"] = _progress(ctx, job_id)
            return view

        view = await asyncio.to_thread(load)
        if view is None:
            raise HTTPException(404, detail=f"no train job {job_id!r}")
        return view

    return r


async def _run_local(ctx: AppContext, req: TrainRequest) -> None:
    """Without NATS the job runs in this process; the Job row records the outcome."""
    try:
        await asyncio.to_thread(run_train_job, ctx, req)
    except Exception as exc:
        log.exception("train job %s failed", req.job_id)
        await asyncio.to_thread(update_job, ctx, req.job_id, status="failed", error=str(exc))


def install(app: FastAPI, runtime: ServiceRuntime, gs: GeneratorSettings) -> None:
    """Routes, and the TRAIN worker when the service runs with NATS."""
    app.include_router(router())
    if runtime.uses_bus:
        async def worker(rt: ServiceRuntime, stop: asyncio.Event) -> None:
            assert rt.ctx is not None and rt.bus is not None
            await consume_train_jobs(rt.ctx, rt.bus, gs, stop)

        runtime.add_worker(worker)
