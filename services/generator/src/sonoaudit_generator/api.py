"""HTTP API: ``POST /generate``, ``GET /jobs/{id}``, ``GET /images/{id}``, ``GET /models``.

Small requests (n <= ``sync_max_n``) are answered inline with image ids and URLs; larger ones
become a JetStream job (distributed mode) or an in-process background job (embedded mode), and
the answer is 202 with the job URL.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from sonoaudit.context import AppContext
from sonoaudit.db.models import Image, Job, Model
from sonoaudit.db.session import session_scope
from sonoaudit.messages.payloads import GenerateRequest
from sonoaudit.runtime import ServiceRuntime
from sonoaudit.service import correlation_id
from sqlalchemy import select

from sonoaudit_generator.checkpoint import CheckpointError, load_checkpoint
from sonoaudit_generator.generation import (
    GenerationError,
    default_steps,
    find_model_for_class,
    generate,
    get_model,
    resolve_class,
    validate_request,
)
from sonoaudit_generator.jobs import create_job, job_view, publish_job, run_job, update_job
from sonoaudit_generator.settings import GeneratorSettings

log = logging.getLogger(__name__)


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_label: str | None = Field(
        default=None, validation_alias=AliasChoices("class_label", "class"),
        description="The class to sample (also accepted as `class`). Alone: the newest "
        "per-class model of this class. With model_id: required for a class-conditional model "
        "(one of its classes); a per-class model samples only its own class.")
    model_id: str | None = None
    n: int = Field(ge=1)
    sampler: Literal["ddpm", "ddim", "dpmpp"] = "ddpm"
    steps: int | None = Field(default=None, description="Default: T for ddpm, 50, 25.")
    seed: int = 0


def _unprocessable(msg: str, field: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", field], "msg": msg,
                                       "type": "value_error"}])


def router() -> APIRouter:
    r = APIRouter()

    def rt(request: Request) -> tuple[ServiceRuntime, AppContext, GeneratorSettings]:
        runtime: ServiceRuntime = request.app.state.runtime
        return runtime, runtime.require(), request.app.state.generator_settings

    def resolve(ctx: AppContext, body: GenerateBody, gs: GeneratorSettings) -> GenerateRequest:
        if body.class_label is None and body.model_id is None:
            raise _unprocessable("give 'model_id' (and 'class_label' for a class-conditional "
                                 "model) or 'class_label' alone (the newest model of that class)",
                                 "class_label")
        try:
            model = (get_model(ctx, body.model_id) if body.model_id is not None
                     else find_model_for_class(ctx, body.class_label or ""))
        except GenerationError as exc:
            raise _unprocessable(str(exc), "model_id" if body.model_id else "class_label") \
                from exc
        try:
            ckpt = load_checkpoint(Path(model.checkpoint_path))
        except CheckpointError as exc:
            raise HTTPException(409, detail=f"model {model.id}: {exc}") from exc
        try:  # the class sampled: required for a conditional model, its own for a per-class one
            cls, _ = resolve_class(ckpt, model.id, model.class_label, body.class_label)
        except GenerationError as exc:
            raise _unprocessable(str(exc), "class_label") from exc
        steps = body.steps if body.steps is not None else default_steps(
            body.sampler, ckpt.profile.schedule.num_train_timesteps)
        try:
            validate_request(ckpt, body.n, body.sampler, steps, gs.max_n)
        except GenerationError as exc:
            field = "n" if str(exc).startswith("n ") else "steps"
            raise _unprocessable(str(exc), field) from exc
        return GenerateRequest(job_id="pending", model_id=model.id, n=body.n,
                               sampler=body.sampler, steps=steps, seed=body.seed,
                               class_label=cls)

    @r.post("/generate", tags=["generate"],
            responses={202: {"description": "queued as a job"}, 422: {"description": "bad input"}})
    async def post_generate(body: GenerateBody, request: Request) -> JSONResponse:
        runtime, ctx, gs = rt(request)
        req = await asyncio.to_thread(resolve, ctx, body, gs)
        params = req.model_dump(exclude={"job_id"})
        if req.n <= gs.sync_max_n:
            gs.apply_threads()
            run = await asyncio.to_thread(
                generate, ctx, req.model_id, req.n, req.sampler, req.steps, req.seed,
                batch_size=gs.batch_size, backend=gs.backend, max_n=gs.max_n, progress=False,
                class_label=req.class_label)
            images = await asyncio.to_thread(_run_images, ctx, run.id)
            return JSONResponse({"status": "done", "generation_run_id": run.id,
                                 "model_id": req.model_id, "class_label": run.class_label,
                                 "qc_summary": run.qc_summary,
                                 "images": images})
        job_id = await asyncio.to_thread(create_job, ctx, params, req.n, correlation_id.get())
        req = req.model_copy(update={"job_id": job_id})
        if runtime.bus is not None:
            try:
                await publish_job(runtime.bus, req, correlation_id.get())
            except Exception as exc:
                await asyncio.to_thread(update_job, ctx, job_id, status="failed",
                                        error=f"could not queue: {exc}")
                raise HTTPException(503, detail=f"job {job_id} could not be queued: {exc}") \
                    from exc
            mode = "jetstream"
        else:
            tasks: set[asyncio.Task[Any]] = request.app.state.generator_tasks
            task = asyncio.create_task(_run_local(ctx, req, gs))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            mode = "in-process"
        return JSONResponse({"status": "queued", "job_id": job_id, "mode": mode,
                             "url": f"/jobs/{job_id}"}, status_code=202)

    @r.get("/jobs/{job_id}", tags=["generate"])
    async def get_job(job_id: str, request: Request) -> dict[str, Any]:
        _, ctx, _ = rt(request)

        def load() -> dict[str, Any] | None:
            with session_scope(ctx.sessions) as s:
                job = s.get(Job, job_id)
                if job is None or job.kind != "generate":
                    return None
                view = job_view(job)
            if view["status"] == "done" and view["result"].get("generation_run_id"):
                view["images"] = _run_images(ctx, view["result"]["generation_run_id"])
            return view

        view = await asyncio.to_thread(load)
        if view is None:
            raise HTTPException(404, detail=f"no generate job {job_id!r}")
        return view

    @r.get("/images/{image_id}", tags=["generate"],
           responses={200: {"content": {"image/png": {}}}})
    async def get_image(image_id: str, request: Request,
                        kind: Literal["image", "mask"] = "image") -> Response:
        _, ctx, _ = rt(request)

        def load() -> bytes | None:
            with session_scope(ctx.sessions) as s:
                im = s.get(Image, image_id)
                if im is None:
                    return None
                rel = im.path if kind == "image" else im.mask_path
            return ctx.store.get(rel) if rel else None

        data = await asyncio.to_thread(load)
        if data is None:
            raise HTTPException(404, detail=f"no {kind} for image id {image_id!r}")
        return Response(data, media_type="image/png")

    @r.get("/models", tags=["generate"])
    async def get_models(request: Request) -> list[dict[str, Any]]:
        _, ctx, _ = rt(request)

        def load() -> list[dict[str, Any]]:
            with session_scope(ctx.sessions) as s:
                return [{"id": m.id, "name": m.name, "class": m.class_label,
                         "class_names": m.config.get("class_names"),  # conditional models
                         "backbone": m.backbone, "config": m.config,
                         "created_at": m.created_at.isoformat()}
                        for m in s.scalars(select(Model).order_by(Model.created_at))]

        return await asyncio.to_thread(load)

    return r


def _run_images(ctx: AppContext, run_id: str) -> list[dict[str, Any]]:
    with session_scope(ctx.sessions) as s:
        rows = s.scalars(select(Image).where(Image.generation_run_id == run_id)
                         .order_by(Image.sample_index))
        return [{"id": im.id, "index": im.sample_index, "url": f"/images/{im.id}",
                 "mask_url": f"/images/{im.id}?kind=mask", "qc": im.meta.get("qc")}
                for im in rows]


async def _run_local(ctx: AppContext, req: GenerateRequest, gs: GeneratorSettings) -> None:
    """Embedded mode (no NATS): the job runs in this process; the Job row records the outcome."""
    try:
        await asyncio.to_thread(run_job, ctx, req, gs)
    except Exception as exc:
        log.exception("generate job %s failed", req.job_id)
        await asyncio.to_thread(update_job, ctx, req.job_id, status="failed", error=str(exc))
