"""App factory of the classifier service."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sonoaudit.runtime import ServiceRuntime
from sonoaudit.service import base_app
from sonoaudit.settings import Settings

from sonoaudit_classifier.api import router
from sonoaudit_classifier.api_status import router as status_router
from sonoaudit_classifier.jobs import consume_jobs
from sonoaudit_classifier.pool import ClassifierPool
from sonoaudit_classifier.settings import ClassifierSettings, backend_problem


def create_app(settings: Settings | None = None,
               classifier_settings: ClassifierSettings | None = None) -> FastAPI:
    runtime = ServiceRuntime("classifier", settings or Settings())
    csettings = classifier_settings or ClassifierSettings()
    pool = ClassifierPool(csettings)

    async def worker(rt: ServiceRuntime, stop: asyncio.Event) -> None:
        assert rt.ctx is not None and rt.bus is not None
        # Build the default backend's classifier now so the worker shares its limits with the
        # API; a missing key is reported per job (the job fails with the reason).
        if backend_problem(csettings) is None:
            await pool.get()
        await consume_jobs(rt.ctx, rt.bus, csettings, stop, pool.classifiers)

    if runtime.uses_bus:
        runtime.add_worker(worker)
    inner = runtime.lifespan()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.classifier_settings = csettings
        app.state.classifier_pool = pool
        app.state.classifier_tasks = set()
        async with inner(app):
            try:
                yield
            finally:
                tasks: set[asyncio.Task[Any]] = app.state.classifier_tasks
                for t in list(tasks):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
                await pool.aclose()

    app = base_app("classifier", lifespan, runtime.ready)
    app.include_router(router())
    app.include_router(status_router())
    return app
