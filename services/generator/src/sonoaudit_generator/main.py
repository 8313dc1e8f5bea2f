"""App factory of the generator service."""

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

from sonoaudit_generator.api import router
from sonoaudit_generator.api_train import install as install_train
from sonoaudit_generator.jobs import consume_jobs
from sonoaudit_generator.settings import GeneratorSettings


def create_app(settings: Settings | None = None,
               generator_settings: GeneratorSettings | None = None) -> FastAPI:
    runtime = ServiceRuntime("generator", settings or Settings())
    gsettings = generator_settings or GeneratorSettings()

    async def worker(rt: ServiceRuntime, stop: asyncio.Event) -> None:
        assert rt.ctx is not None and rt.bus is not None
        await consume_jobs(rt.ctx, rt.bus, gsettings, stop)

    if runtime.uses_bus:
        runtime.add_worker(worker)
    inner = runtime.lifespan()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.generator_settings = gsettings
        app.state.generator_tasks = set()
        async with inner(app):
            try:
                yield
            finally:
                tasks: set[asyncio.Task[Any]] = app.state.generator_tasks
                for t in list(tasks):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t

    app = base_app("generator", lifespan, runtime.ready)
    app.include_router(router())
    install_train(app, runtime, gsettings)  # POST /train + the TRAIN worker
    return app
