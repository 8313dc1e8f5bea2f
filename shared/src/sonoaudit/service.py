"""What every FastAPI service shares: health/readiness probes, Prometheus metrics, correlation ids,
structured JSON logs. Each service builds its app with :func:`base_app` inside its own factory."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.routing import Match

from sonoaudit.correlation import correlation_id

access_log = logging.getLogger("sonoaudit.access")

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]
# Says why a request may not read /dead-letters (None: it may).
OpsGuard = Callable[[Request], str | None]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
            "msg": record.getMessage(), "correlation_id": correlation_id.get(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _route_label(request: Request) -> str:
    """The route template (bounded label values). FastAPI only records APIRoutes in the scope;
    plain routes (/openapi.json, /docs, mounts) are looked up; anything else is 'unmatched'."""
    route = request.scope.get("route")
    if route is None:
        for candidate in request.app.router.routes:
            if candidate.matches(request.scope)[0] == Match.FULL:
                route = candidate
                break
    return str(getattr(route, "path", "unmatched"))


def base_app(name: str, lifespan: Any, ready: ReadyCheck, *,
             dead_letters_guard: OpsGuard | None = None, **kwargs: Any) -> FastAPI:
    """A FastAPI app with /healthz, /readyz, /metrics, /dead-letters and correlation-id
    middleware. ``dead_letters_guard`` (e.g. a token check on a service reached by people
    outside the cluster) returns why a request may not read the dead letters → 403."""
    app = FastAPI(title=f"sonoaudit {name}", lifespan=lifespan, **kwargs)
    registry = CollectorRegistry()
    requests = Counter("http_requests_total", "HTTP requests", ["method", "route", "status"],
                       registry=registry)
    latency = Histogram("http_request_seconds", "HTTP latency", ["method", "route"],
                        registry=registry)
    app.state.metrics_registry = registry

    @app.middleware("http")
    async def _correlate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        cid = request.headers.get("x-correlation-id") or uuid.uuid4().hex
        token = correlation_id.set(cid)
        start = time.perf_counter()
        try:
            response = await call_next(request)
            path = _route_label(request)
            elapsed = time.perf_counter() - start
            # One access line per request, inside the correlation scope so it carries the id
            # (uvicorn's own access log runs after the scope ends; `serve` turns it off).
            access_log.info("%s %s %d %.1fms", request.method, request.url.path,
                            response.status_code, elapsed * 1000)
        finally:
            correlation_id.reset(token)
        requests.labels(request.method, path, str(response.status_code)).inc()
        latency.labels(request.method, path).observe(elapsed)
        response.headers["x-correlation-id"] = cid
        return response

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "service": name}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        """Readiness: every dependency (database, bus) answers."""
        checks = await ready()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    dl_responses: dict[int | str, dict[str, Any]] = {503: {"description": "not ready"}}
    if dead_letters_guard is not None:
        dl_responses[403] = {"description": "token missing or wrong"}

    @app.get("/dead-letters", tags=["ops"], responses=dl_responses)
    async def dead_letters(request: Request, limit: int = Query(100, ge=1, le=1000)) -> Any:
        """Messages given up on (poison, or past max_deliver), newest first."""
        if dead_letters_guard is not None:
            denied = dead_letters_guard(request)
            if denied is not None:
                return JSONResponse({"detail": denied}, status_code=403)
        runtime = getattr(request.app.state, "runtime", None)
        if runtime is None:
            return []
        return await asyncio.to_thread(runtime.dead_letters, limit)

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
