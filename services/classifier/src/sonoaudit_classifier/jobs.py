"""Classify jobs: the ``Job`` row (progress for ``GET /jobs/{id}``) and the JetStream worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from sonoaudit.bus import Bus, PoisonMessage
from sonoaudit.bus.client import Heartbeat
from sonoaudit.context import AppContext
from sonoaudit.db.models import Job
from sonoaudit.db.session import session_scope
from sonoaudit.messages.envelope import Envelope, make_envelope
from sonoaudit.messages.payloads import ClassifyRequest, JobResult
from sonoaudit.messages.registry import stream_for, subject

from sonoaudit_classifier.batch import (
    BackendFailed,
    MissingMasks,
    UnknownImages,
    aclassify_images,
)
from sonoaudit_classifier.consistency import self_agreement
from sonoaudit_classifier.engine import Classifier
from sonoaudit_classifier.prompts import PromptChanged, UnknownPrompt
from sonoaudit_classifier.settings import BackendNotConfigured, ClassifierSettings, UnknownBackend

log = logging.getLogger(__name__)
JOB_KIND = "classify"
CLASSIFY_SUBJECT = subject("classify", "request")


def create_job(ctx: AppContext, request: dict[str, Any], total: int,
               correlation_id: str | None = None) -> str:
    with session_scope(ctx.sessions) as s:
        job = Job(kind=JOB_KIND, status="queued", total=total, params=request,
                  correlation_id=correlation_id)
        s.add(job)
        s.flush()
        return job.id


def ensure_job(ctx: AppContext, job_id: str, request: dict[str, Any], total: int) -> None:
    """A job published without going through the API still gets its progress row."""
    with session_scope(ctx.sessions) as s:
        if s.get(Job, job_id) is None:
            s.add(Job(id=job_id, kind=JOB_KIND, status="queued", total=total, params=request))


def update_job(ctx: AppContext, job_id: str, **fields: Any) -> None:
    with session_scope(ctx.sessions) as s:
        job = s.get(Job, job_id)
        if job is None:
            return
        for k, v in fields.items():
            setattr(job, k, v)


def job_view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "kind": job.kind, "status": job.status, "total": job.total,
        "done": job.done, "failed": job.failed, "params": job.params, "result": job.result,
        "error": job.error, "created_at": job.created_at, "updated_at": job.updated_at,
    }


async def _keep_alive(heartbeat: Heartbeat, interval_s: float) -> None:
    """Beat every ``interval_s`` until cancelled: a job can go longer than the ack wait without
    writing an answer (one slow call, a 429 pausing every call), and JetStream would then hand
    the job to another replica, which asks every unanswered image again."""
    while True:
        try:
            await heartbeat.beat()
        except Exception as exc:  # NATS away: the next beat tries again
            log.warning("classify job heartbeat failed: %r", exc)
        await asyncio.sleep(interval_s)


async def run_job(ctx: AppContext, req: ClassifyRequest, settings: ClassifierSettings, *,
                  classifiers: dict[str, Classifier] | None = None,
                  heartbeat: Heartbeat | None = None, heartbeat_interval_s: float | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """Run one classify job to the end and record it on its Job row. Raises PoisonMessage for
    problems a retry cannot fix (unknown ids, configuration), after marking the job failed.
    With ``heartbeat`` and ``heartbeat_interval_s`` (the worker passes a third of the ack wait)
    the message is kept in progress for as long as the job runs."""
    beating = (asyncio.create_task(_keep_alive(heartbeat, heartbeat_interval_s))
               if heartbeat is not None and heartbeat_interval_s else None)
    try:
        return await _run_job(ctx, req, settings, classifiers=classifiers, heartbeat=heartbeat,
                              progress=progress)
    finally:
        if beating is not None:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating


async def _run_job(ctx: AppContext, req: ClassifyRequest, settings: ClassifierSettings, *,
                   classifiers: dict[str, Classifier] | None,
                   heartbeat: Heartbeat | None, progress: bool) -> dict[str, Any]:
    total = len(req.image_ids) * req.replicates
    await asyncio.to_thread(ensure_job, ctx, req.job_id, req.model_dump(mode="json"), total)
    await asyncio.to_thread(update_job, ctx, req.job_id, status="running", total=total)
    last = [0.0]

    async def on_progress(done: int, failed: int, total: int) -> None:
        if heartbeat is not None:
            await heartbeat.beat()
        now = time.monotonic()
        if now - last[0] >= 0.5 or done + failed == total:
            last[0] = now
            await asyncio.to_thread(update_job, ctx, req.job_id, done=done, failed=failed)

    clf = (classifiers or {}).get(req.backend)
    try:
        rows = await aclassify_images(
            ctx, req.image_ids, settings=settings, backend=req.backend,
            condition=req.condition, replicates=req.replicates, job_id=req.job_id,
            classifier=clf, progress=progress, on_progress=on_progress,
            prompt_version=req.prompt_version)
    except (UnknownImages, MissingMasks, UnknownBackend, BackendNotConfigured, UnknownPrompt,
            PromptChanged, BackendFailed) as exc:
        await asyncio.to_thread(update_job, ctx, req.job_id, status="failed", error=str(exc))
        raise PoisonMessage(str(exc)) from exc
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    failed = counts.get("error", 0)
    result: dict[str, Any] = {"counts": counts, "stored": len(rows)}
    if rows:
        result["prompt_version"] = rows[0].prompt_version
    if req.replicates > 1:
        result["self_agreement"] = self_agreement(rows)
    await asyncio.to_thread(update_job, ctx, req.job_id, status="done", done=len(rows) - failed,
                            failed=failed, result=result)
    return result


async def publish_job(bus: Bus, req: ClassifyRequest, correlation_id: str | None = None) -> bool:
    # message_id = job id: publishing the same job twice is deduplicated by JetStream.
    env = make_envelope("classify.request", req, message_id=req.job_id,
                        correlation_id=correlation_id)
    return await bus.publish(CLASSIFY_SUBJECT, env)


async def consume_jobs(ctx: AppContext, bus: Bus, settings: ClassifierSettings,
                       stop: asyncio.Event,
                       classifiers: dict[str, Classifier] | None = None) -> None:
    # A third of the ack wait, so a late beat, or one skipped by Heartbeat's 2 s throttle,
    # still lands before JetStream gives the job to another replica.
    interval_s = bus.ack_wait_s / 3

    async def handler(env: Envelope[Any], hb: Heartbeat) -> None:
        req: ClassifyRequest = env.payload
        result = await run_job(ctx, req, settings, classifiers=classifiers, heartbeat=hb,
                               heartbeat_interval_s=interval_s)
        outcome = JobResult(job_id=req.job_id, status="done", detail=str(result["counts"]))
        await bus.publish(subject("jobs", "result"),
                          make_envelope("job.result", outcome, correlation_id=env.correlation_id,
                                        message_id=f"{req.job_id}-result"))

    async def on_dead(notice: Any) -> None:
        log.error("classify job dead-lettered: %s", notice.error)

    await bus.consume(stream_for(CLASSIFY_SUBJECT), ClassifyRequest, handler, stop=stop,
                      on_dead_letter=on_dead)
