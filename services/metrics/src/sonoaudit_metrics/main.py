"""App factory of the metrics service."""

from __future__ import annotations

from fastapi import FastAPI

from sonoaudit.runtime import ServiceRuntime
from sonoaudit.service import base_app
from sonoaudit.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    runtime = ServiceRuntime("metrics", settings or Settings())
    app = base_app("metrics", runtime.lifespan(), runtime.ready)
    return app
