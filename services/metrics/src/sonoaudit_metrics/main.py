"""App factory of the metrics service: ``POST /metrics`` (inline, or queued as a JetStream job)
and a worker consuming the METRICS stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from sonoaudit.bus import Bus, PoisonMessage
from sonoaudit.db.models import Job, MetricRun
from sonoaudit.messages import make_envelope
from sonoaudit.messages.envelope import Envelope
from sonoaudit.messages.payloads import DeadLetterNotice, JobResult, MetricsRequest
from sonoaudit.messages.registry import message_spec, stream_for
from sonoaudit.runtime import ServiceRuntime
from sonoaudit.service import base_app
from sonoaudit.settings import Settings

from sonoaudit_metrics.config import MetricsSettings
from sonoaudit_metrics.runs import known_failure, run_as_dict, run_metrics

log = logging.getLogger(__name__)


class MetricsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    real_ref: str = Field(min_length=1, description="Dataset folder or dataset id (real images)")
    synthetic_ref: str = Field(min_length=1, description="Pairs folder or generation run id")
    class_label: str | None = Field(default=None, description="Score only this class")
    background: bool = Field(default=False, description="Queue as a JetStream job (needs NATS) "
                             "and answer 202 with the job id instead of waiting")


async def _beat_while(task: asyncio.Future[Any], beat: Any) -> Any:
    """Keep the JetStream message alive while the scoring thread works."""
    while True:
        done, _ = await asyncio.wait({task}, timeout=2.0)
        if done:
            return task.result()
        await beat()


def make_worker(ms: MetricsSettings) -> Any:
    spec = stream_for(message_spec("metrics.request").subject)

    async def worker(runtime: ServiceRuntime, stop: asyncio.Event) -> None:
        assert runtime.bus is not None
        bus: Bus = runtime.bus

        async def handle(env: Envelope[Any], hb: Any) -> None:
            req: MetricsRequest = env.payload
            ctx = runtime.require()
            _set_job(ctx, req.job_id, "running")
            fut = asyncio.ensure_future(asyncio.to_thread(
                run_metrics, ctx, req.real_ref, req.synthetic_ref, req.class_label,
                ms.options(progress=False), req.job_id, ms))
            try:
                run = await _beat_while(fut, hb.beat)
            except Exception as exc:
                known = known_failure(exc)
                if known is None:  # maybe transient: redelivered until max_deliver, then dead
                    _set_job(ctx, req.job_id, "queued", error=f"retrying after: {exc!r}")
                    raise
                # bad input, NaN result or missing weights: retrying cannot help
                _set_job(ctx, req.job_id, "failed", error=known[1])
                await _publish_result(bus, req.job_id, "failed", known[1], env.correlation_id)
                raise PoisonMessage(known[1]) from exc
            _set_job(ctx, req.job_id, "done", result={"metric_run_id": run.id})
            await _publish_result(bus, req.job_id, "done", run.id, env.correlation_id)

        async def dead(notice: DeadLetterNotice) -> None:
            """A message given up on (retries exhausted): its Job must not stay 'running'."""
            try:
                req = Envelope[MetricsRequest].model_validate_json(notice.data).payload
            except Exception:
                return
            ctx = runtime.require()
            with ctx.sessions() as s:
                job = s.get(Job, req.job_id)
                if job is not None and job.status == "failed":
                    return  # a known failure already recorded its reason
            await asyncio.to_thread(_set_job, ctx, req.job_id, "failed", error=notice.error)

        await bus.consume(spec, MetricsRequest, handle, stop=stop, on_dead_letter=dead)

    return worker


async def _publish_result(bus: Bus, job_id: str, status: str, detail: str,
                          correlation_id: str) -> None:
    payload = JobResult(job_id=job_id, status=status, detail=detail)  # type: ignore[arg-type]
    env = make_envelope("job.result", payload, correlation_id=correlation_id,
                        message_id=f"metrics-{job_id}-{status}")
    with contextlib.suppress(Exception):  # the job row already holds the outcome
        await bus.publish(message_spec("job.result").subject, env)


def _set_job(ctx: Any, job_id: str, status: str, *, error: str | None = None,
             result: dict[str, Any] | None = None) -> None:
    with ctx.sessions() as s:
        job = s.get(Job, job_id)
        if job is None:
            job = Job(id=job_id, kind="metrics", total=1)
            s.add(job)
        job.status = status
        if error is not None:
            job.error = error
        if result is not None:
            job.result = result
            job.done = 1
        s.commit()


def create_app(settings: Settings | None = None,
               metrics_settings: MetricsSettings | None = None) -> FastAPI:
    ms = metrics_settings or MetricsSettings()
    runtime = ServiceRuntime("metrics", settings or Settings())
    if runtime.uses_bus:
        runtime.add_worker(make_worker(ms))
    app = base_app("metrics", runtime.lifespan(), runtime.ready)

    @app.post("/metrics", tags=["metrics"], status_code=200,
              responses={202: {"description": "queued as a job"},
                         422: {"description": "unusable input (names the file or reference), "
                               "or results that came out NaN/infinite"},
                         503: {"description": "Inception weights missing or foreign"}})
    async def post_metrics(body: MetricsBody) -> Any:
        """Score a synthetic set against a real set. Inline by default (the MetricRun is
        returned); ``background: true`` queues a JetStream job and answers 202 with its id."""
        ctx = runtime.require()
        if body.background:
            if runtime.bus is None:
                raise HTTPException(409, detail="background jobs need NATS (SONOAUDIT_NATS_URL)")
            with ctx.sessions() as s:
                job = Job(kind="metrics", total=1, params=body.model_dump())
                s.add(job)
                s.commit()
                job_id = job.id
            req = MetricsRequest(job_id=job_id, real_ref=body.real_ref,
                                 synthetic_ref=body.synthetic_ref, class_label=body.class_label)
            env = make_envelope("metrics.request", req, message_id=f"metrics-{job_id}")
            await runtime.bus.publish(message_spec("metrics.request").subject, env)
            from fastapi.responses import JSONResponse
            return JSONResponse({"job_id": job_id, "status": "queued"}, status_code=202)
        try:
            run = await asyncio.to_thread(run_metrics, ctx, body.real_ref, body.synthetic_ref,
                                          body.class_label, ms.options(progress=False), None, ms)
        except Exception as exc:
            known = known_failure(exc)
            if known is None:
                raise
            raise HTTPException(known[0], detail=known[1]) from exc
        return run_as_dict(run)

    @app.get("/metrics/runs/{run_id}", tags=["metrics"])
    async def get_run(run_id: str) -> dict[str, Any]:
        ctx = runtime.require()
        with ctx.sessions() as s:
            run = s.get(MetricRun, run_id)
            if run is None:
                raise HTTPException(404, detail=f"no metric run {run_id!r}")
            return run_as_dict(run)

    @app.get("/metrics/jobs/{job_id}", tags=["metrics"])
    async def get_job(job_id: str) -> dict[str, Any]:
        from sqlalchemy import select

        ctx = runtime.require()
        with ctx.sessions() as s:
            job = s.get(Job, job_id)
            if job is None or job.kind != "metrics":
                raise HTTPException(404, detail=f"no metrics job {job_id!r}")
            run = s.scalars(select(MetricRun).where(MetricRun.job_id == job_id)).first()
            return {"job_id": job.id, "status": job.status, "error": job.error,
                    "run": run_as_dict(run) if run is not None else None}

    return app
