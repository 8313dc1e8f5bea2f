"""App factory of the raters service: the reader study (study_api) and statistics/report
(report_api) are separate routers owned by separate modules."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from sonoaudit.runtime import ServiceRuntime
from sonoaudit.service import OpsGuard, base_app
from sonoaudit.settings import Settings

from sonoaudit_raters import api_pipeline, report_api, study_api
from sonoaudit_raters.study.settings import StudySettings


def creator_guard() -> OpsGuard:
    """The raters app faces readers outside the cluster: its /dead-letters (message payloads of
    every service) opens only with the study creator token as bearer."""
    creator = StudySettings().creator_token

    def guard(request: Request) -> str | None:
        if creator is None:
            return ("/dead-letters on the raters service needs the creator token "
                    "(SONOAUDIT_STUDY_CREATOR_TOKEN), which is not set")
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(),
                                                creator.get_secret_value().encode()):
            return ("/dead-letters on the raters service needs "
                    "'Authorization: Bearer <SONOAUDIT_STUDY_CREATOR_TOKEN>'")
        return None

    return guard


def create_app(settings: Settings | None = None) -> FastAPI:
    runtime = ServiceRuntime("raters", settings or Settings())
    app = base_app("raters", runtime.lifespan(), runtime.ready,
                   dead_letters_guard=creator_guard())
    app.include_router(study_api.build_router(runtime))
    app.include_router(report_api.build_router(runtime))
    app.include_router(api_pipeline.build_router(runtime))
    return app
