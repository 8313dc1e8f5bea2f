"""HTTP API: ``POST /classify``, ``POST /classify/batch``, ``GET /jobs/{id}`` (+ results)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from sonoaudit.context import AppContext
from sonoaudit.db.models import Image, Job, LLMClassification
from sonoaudit.filestore import sha256_bytes
from sonoaudit.messages.payloads import ClassifyRequest
from sonoaudit.runtime import ServiceRuntime
from sonoaudit.service import correlation_id
from sqlalchemy import select

from sonoaudit_classifier.batch import (
    BackendFailed,
    Item,
    MissingMasks,
    UnknownImages,
    aclassify_items,
    items_from_images,
)
from sonoaudit_classifier.conditions import BadImage, image_mime, mask_region
from sonoaudit_classifier.engine import Classifier
from sonoaudit_classifier.jobs import create_job, job_view, publish_job, run_job
from sonoaudit_classifier.pool import ClassifierPool
from sonoaudit_classifier.prompts import CONDITIONS, PromptChanged, UnknownPrompt, load_prompt
from sonoaudit_classifier.settings import BackendNotConfigured, ClassifierSettings, UnknownBackend

log = logging.getLogger(__name__)
ConditionName = Literal["image", "outline", "side_by_side"]
MAX_REPLICATES = 20
MAX_BATCH = 100_000


class Answer(BaseModel):
    id: str
    replicate: int
    status: str
    label: str | None
    confidence: float | None
    rationale: str | None
    findings: dict[str, Any]
    reason: str | None
    backend: str
    model: str
    model_version: str | None
    prompt_version: str
    prompt_hash: str
    condition: str
    attempts: int
    image_id: str | None
    image_sha256: str
    source_name: str | None

    @classmethod
    def of(cls, row: LLMClassification) -> Answer:
        return cls(**{name: getattr(row, name) for name in cls.model_fields})


class ClassifyResponse(BaseModel):
    image_sha256: str
    results: list[Answer]


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_ids: list[str] = Field(min_length=1, max_length=MAX_BATCH)
    backend: str | None = None
    condition: ConditionName = "image"
    replicates: int = Field(default=1, ge=1, le=MAX_REPLICATES)
    prompt_version: str | None = Field(default=None, description="Default: the configured one.")


class BatchAccepted(BaseModel):
    job_id: str
    status: str
    total: int
    status_url: str


def _state(request: Request) -> tuple[ServiceRuntime, ClassifierSettings, ClassifierPool]:
    app = request.app
    return app.state.runtime, app.state.classifier_settings, app.state.classifier_pool


async def _classifier(pool: ClassifierPool, backend: str | None) -> Classifier:
    try:
        return await pool.get(backend)
    except UnknownBackend as exc:
        raise HTTPException(422, detail=str(exc)) from exc
    except BackendNotConfigured as exc:
        raise HTTPException(503, detail=f"LLM backend not configured: {exc}") from exc


def _check_prompt(settings: ClassifierSettings, version: str | None, condition: str) -> str:
    """The prompt version to use; 422 when it does not exist (before anything is queued)."""
    name = version or settings.prompt_version
    try:
        load_prompt(name, condition, settings.prompt_dir)
    except UnknownPrompt as exc:
        raise HTTPException(422, detail=f"prompt_version: {exc}") from exc
    return name


async def _read_limited(upload: UploadFile, limit: int, field: str) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, detail=f"{field}: larger than the {limit} byte limit")
    if not data:
        raise HTTPException(422, detail=f"{field}: empty file")
    return data


def _field_file(field: str, filename: str | None) -> str:
    """How an error names an upload: the form field, and the file name when one was sent."""
    return f"{field} ({filename})" if filename else field


def router() -> APIRouter:
    r = APIRouter(tags=["classify"])

    @r.post("/classify", response_model=ClassifyResponse,
            responses={404: {"description": "unknown image id"}, 413: {"description": "too large"},
                       409: {"description": "prompt version edited after answers were stored"},
                       503: {"description": "backend not configured"}})
    async def classify(
        request: Request,
        image: UploadFile | None = File(None, description="An image file (PNG/JPEG/WebP)."),
        mask: UploadFile | None = File(None, description="Its mask (outline/side_by_side)."),
        image_id: str | None = Form(None, description="Or: an image id from the store."),
        condition: ConditionName = Form("image"),
        replicates: int = Form(1, ge=1, le=MAX_REPLICATES),
        backend: str | None = Form(None, description="gemini | openai (default: settings)"),
        prompt_version: str | None = Form(None, description="Default: the configured one."),
    ) -> ClassifyResponse:
        """Classify one image; returns one answer per replicate (stored, idempotent)."""
        runtime, settings, pool = _state(request)
        ctx = runtime.require()
        if (image is None) == (image_id is None):
            raise HTTPException(422, detail="give exactly one of 'image' (file) or 'image_id'")
        version = _check_prompt(settings, prompt_version, condition)
        clf = await _classifier(pool, backend)
        item: Item
        if image_id is not None:
            try:
                item = (await asyncio.to_thread(items_from_images, ctx, [image_id]))[0]
            except UnknownImages as exc:
                raise HTTPException(404, detail=f"image_id: {exc}") from exc
        else:
            assert image is not None
            data = await _read_limited(image, settings.max_image_bytes, "image")
            mask_data = (await _read_limited(mask, settings.max_image_bytes, "mask")
                         if mask is not None else None)
            image_what = _field_file("image", image.filename)
            try:
                if not image_mime(data, image_what):
                    raise BadImage(f"{image_what}: unsupported format (expected PNG, JPEG or "
                                   "WebP)")
                if mask_data is not None:  # binary by the dataset reader's rule, or 422
                    mask_region(mask_data, _field_file("mask", mask.filename if mask else None))
            except BadImage as exc:
                raise HTTPException(422, detail=str(exc)) from exc
            # Keep what was classified: the store is content-addressed, so this is idempotent.
            await asyncio.to_thread(ctx.store.put, data)
            item = Item(image.filename or "upload", sha256_bytes(data), None,
                        mask_data is not None, lambda: (data, mask_data))
        try:
            rows = await aclassify_items(
                ctx, [item], settings=settings, condition=condition, replicates=replicates,
                classifier=clf, progress=False, prompt_version=version)
        except MissingMasks as exc:
            raise HTTPException(422, detail=str(exc)) from exc
        except PromptChanged as exc:
            raise HTTPException(409, detail=str(exc)) from exc
        except BackendFailed as exc:
            raise HTTPException(502, detail=str(exc)) from exc
        bad = [row for row in rows if row.status == "error" and
               (row.reason or "").startswith("bad input")]
        if bad:
            raise HTTPException(422, detail=bad[0].reason)
        return ClassifyResponse(image_sha256=item.image_sha256,
                                results=[Answer.of(row) for row in rows])

    @r.post("/classify/batch", status_code=202, response_model=BatchAccepted,
            responses={404: {"description": "unknown image ids"},
                       503: {"description": "backend not configured"}})
    async def classify_batch(request: Request, body: BatchBody) -> BatchAccepted:
        """Queue a classify job (JetStream when a bus is configured, in-process otherwise)."""
        runtime, settings, pool = _state(request)
        ctx = runtime.require()
        version = _check_prompt(settings, body.prompt_version, body.condition)
        clf = await _classifier(pool, body.backend)  # no key: one clear error, now
        try:
            items = await asyncio.to_thread(items_from_images, ctx, body.image_ids)
        except UnknownImages as exc:
            raise HTTPException(404, detail=f"image_ids: {exc}") from exc
        if body.condition != "image":
            unmasked = [it.name for it in items if not it.has_mask]
            if unmasked:
                raise HTTPException(422, detail=str(MissingMasks(body.condition, unmasked)))
        total = len(body.image_ids) * body.replicates
        params = {**body.model_dump(), "backend": clf.name, "prompt_version": version}
        job_id = await asyncio.to_thread(create_job, ctx, params, total, correlation_id.get())
        req = ClassifyRequest(job_id=job_id, image_ids=body.image_ids, backend=clf.name,
                              condition=body.condition, replicates=body.replicates,
                              prompt_version=version)
        if runtime.bus is not None:
            await publish_job(runtime.bus, req, correlation_id.get())
        else:
            _spawn_local(request, ctx, req, settings, pool)
        return BatchAccepted(job_id=job_id, status="queued", total=total,
                             status_url=f"/jobs/{job_id}")

    @r.get("/jobs/{job_id}", tags=["jobs"], responses={404: {"description": "unknown job"}})
    async def get_job(request: Request, job_id: str) -> dict[str, Any]:
        """Progress of a job: status, total, done, failed, result."""
        ctx = request.app.state.runtime.require()
        with ctx.sessions() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise HTTPException(404, detail=f"unknown job id {job_id!r}")
            return job_view(job)

    @r.get("/jobs/{job_id}/results", tags=["jobs"], response_model=list[Answer])
    async def job_results(request: Request, job_id: str) -> list[Answer]:
        """Every stored answer written by a classify job."""
        ctx = request.app.state.runtime.require()
        with ctx.sessions() as s:
            if s.get(Job, job_id) is None:
                raise HTTPException(404, detail=f"unknown job id {job_id!r}")
            rows = s.scalars(select(LLMClassification).where(
                LLMClassification.job_id == job_id).order_by(LLMClassification.created_at))
            return [Answer.of(row) for row in rows]

    @r.get("/images/{image_id}/classifications", response_model=list[Answer])
    async def image_results(request: Request, image_id: str) -> list[Answer]:
        """Every stored answer for one image (all backends, prompts, conditions, replicates)."""
        ctx = request.app.state.runtime.require()
        with ctx.sessions() as s:
            img = s.get(Image, image_id)
            if img is None:
                raise HTTPException(404, detail=f"unknown image id {image_id!r}")
            rows = s.scalars(select(LLMClassification).where(
                LLMClassification.image_sha256 == img.sha256))
            return [Answer.of(row) for row in rows]

    @r.get("/classify/conditions")
    async def conditions() -> list[str]:
        return list(CONDITIONS)

    return r


def _spawn_local(request: Request, ctx: AppContext, req: ClassifyRequest,
                 settings: ClassifierSettings, pool: ClassifierPool) -> None:
    """Embedded mode (no bus): run the job in this process, in the background."""
    tasks: set[asyncio.Task[Any]] = request.app.state.classifier_tasks

    async def run() -> None:
        try:
            await run_job(ctx, req, settings, classifiers=pool.classifiers)
        except Exception:
            log.exception("classify job %s failed", req.job_id)

    task = asyncio.create_task(run())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
