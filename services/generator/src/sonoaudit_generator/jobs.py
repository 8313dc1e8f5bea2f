"""Generate jobs: the ``Job`` row (progress for ``GET /jobs/{id}``), the in-process runner and the
JetStream worker. The worker heartbeats (``in_progress``) while sampling runs in a thread."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sonoaudit.bus import Bus, PoisonMessage
from sonoaudit.bus.client import Heartbeat
from sonoaudit.context import AppContext
from sonoaudit.db.models import Job
from sonoaudit.db.session import session_scope
from sonoaudit.messages.envelope import Envelope, make_envelope
from sonoaudit.messages.payloads import DeadLetterNotice, GenerateRequest, JobResult
from sonoaudit.messages.registry import stream_for, subject

from sonoaudit_generator.checkpoint import CheckpointError
from sonoaudit_generator.generation import GenerationError, generate
from sonoaudit_generator.settings import GeneratorSettings

log = logging.getLogger(__name__)
JOB_KIND = "generate"
GENERATE_SUBJECT = subject("generate", "request")


def create_job(ctx: AppContext, params: dict[str, Any], total: int,
               correlation_id: str | None = None) -> str:
    with session_scope(ctx.sessions) as s:
        job = Job(kind=JOB_KIND, status="queued", total=total, params=params,
                  correlation_id=correlation_id)
        s.add(job)
        s.flush()
        return job.id


def update_job(ctx: AppContext, job_id: str, **fields: Any) -> None:
    with session_scope(ctx.sessions) as s:
        job = s.get(Job, job_id)
        if job is not None:
            for k, v in fields.items():
                setattr(job, k, v)


def job_view(job: Job) -> dict[str, Any]:
    return {"id": job.id, "kind": job.kind, "status": job.status, "total": job.total,
            "done": job.done, "failed": job.failed, "params": job.params,
            "result": job.result, "error": job.error,
            "created_at": job.created_at, "updated_at": job.updated_at}


def run_job(ctx: AppContext, req: GenerateRequest, gsettings: GeneratorSettings) -> dict[str, Any]:
    """Run one generate job to completion (blocking); the Job row follows its progress."""
    with session_scope(ctx.sessions) as s:
        if s.get(Job, req.job_id) is None:  # published without the API: still track it
            s.add(Job(id=req.job_id, kind=JOB_KIND, status="queued", total=req.n,
                      params=req.model_dump()))
    update_job(ctx, req.job_id, status="running")
    gsettings.apply_threads()

    def progress(done: int, total: int) -> None:
        update_job(ctx, req.job_id, done=done, total=total)

    run = generate(ctx, req.model_id, req.n, req.sampler, req.steps, req.seed,
                   batch_size=gsettings.batch_size, backend=gsettings.backend,
                   job_id=req.job_id, max_n=gsettings.max_n, progress=False,
                   on_progress=progress, class_label=req.class_label)
    result = {"generation_run_id": run.id, "class_label": run.class_label,
              "qc_summary": run.qc_summary}
    update_job(ctx, req.job_id, status="done", done=req.n, result=result, error=None)
    return result


async def _with_heartbeat(coro_thread: asyncio.Future[Any], hb: Heartbeat,
                          interval_s: float) -> Any:
    while True:
        done, _ = await asyncio.wait({coro_thread}, timeout=interval_s)
        if done:
            return coro_thread.result()
        await hb.beat()


async def handle(ctx: AppContext, bus: Bus | None, env: Envelope[GenerateRequest], hb: Heartbeat,
                 gsettings: GeneratorSettings) -> None:
    """Handler for one JetStream message. Bad requests are poison (no retry, job failed);
    anything else is retried by JetStream, and redelivery resumes the same run."""
    req = env.payload
    fut = asyncio.ensure_future(asyncio.to_thread(run_job, ctx, req, gsettings))
    try:
        result = await _with_heartbeat(fut, hb, gsettings.heartbeat_s)
    except (GenerationError, CheckpointError) as exc:
        update_job(ctx, req.job_id, status="failed", error=str(exc))
        await _announce(bus, req.job_id, "failed", str(exc), env.correlation_id)
        raise PoisonMessage(str(exc)) from exc
    except Exception as exc:
        if "out of memory" in str(exc).lower():
            reason = f"out of memory even at batch size 1: {exc}"
            update_job(ctx, req.job_id, status="failed", error=reason)
            await _announce(bus, req.job_id, "failed", reason, env.correlation_id)
            raise PoisonMessage(reason) from exc
        update_job(ctx, req.job_id, status="queued", error=f"retrying after: {exc!r}")
        raise
    await _announce(bus, req.job_id, "done", None, env.correlation_id)
    log.info("generate job %s done: %s", req.job_id, result)


async def _announce(bus: Bus | None, job_id: str, status: str, detail: str | None,
                    correlation_id: str) -> None:
    if bus is None:
        return
    try:
        env = make_envelope("job.result", JobResult(job_id=job_id, status=status,  # type: ignore[arg-type]
                                                    detail=detail),
                            correlation_id=correlation_id)
        await bus.publish(subject("jobs", "result"), env)
    except Exception as exc:  # the job row is authoritative; the event is a convenience
        log.warning("could not publish job.result for %s: %s", job_id, exc)


async def consume_jobs(ctx: AppContext, bus: Bus, gsettings: GeneratorSettings,
                       stop: asyncio.Event) -> None:
    spec = stream_for(GENERATE_SUBJECT)

    async def handler(env: Envelope[Any], hb: Heartbeat) -> None:
        await handle(ctx, bus, env, hb, gsettings)

    async def dead(notice: DeadLetterNotice) -> None:
        try:
            env = Envelope[GenerateRequest].model_validate_json(notice.data)
        except Exception:
            return
        await asyncio.to_thread(update_job, ctx, env.payload.job_id, status="failed",
                                error=notice.error)

    await bus.consume(spec, GenerateRequest, handler, stop=stop, on_dead_letter=dead)


async def publish_job(bus: Bus, req: GenerateRequest, correlation_id: str | None) -> bool:
    env = make_envelope("generate.request", req, message_id=req.job_id,
                        correlation_id=correlation_id)
    return await bus.publish(GENERATE_SUBJECT, env)
