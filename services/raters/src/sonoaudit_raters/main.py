"""App factory of the raters service: the reader study (study_api) and statistics/report
(report_api) are separate routers owned by separate modules."""

from __future__ import annotations

from fastapi import FastAPI
from sonoaudit.runtime import ServiceRuntime
from sonoaudit.service import base_app
from sonoaudit.settings import Settings

from sonoaudit_raters import api_pipeline, report_api, study_api


def create_app(settings: Settings | None = None) -> FastAPI:
    runtime = ServiceRuntime("raters", settings or Settings())
    app = base_app("raters", runtime.lifespan(), runtime.ready)
    app.include_router(study_api.build_router(runtime))
    app.include_router(report_api.build_router(runtime))
    app.include_router(api_pipeline.build_router(runtime))
    return app
