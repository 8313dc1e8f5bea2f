"""App factory of the generator service."""

from __future__ import annotations

from fastapi import FastAPI
from sonoaudit.runtime import ServiceRuntime
from sonoaudit.service import base_app
from sonoaudit.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    runtime = ServiceRuntime("generator", settings or Settings())
    app = base_app("generator", runtime.lifespan(), runtime.ready)
    return app
