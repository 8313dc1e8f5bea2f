"""``GET /studies/{id}/report`` and ``GET /study/admin/{id}/report``: the study report as
self-contained HTML, JSON or CSV.

Admin only, checked by the study area's ``setup.check_admin`` with the same token sources as its
admin pages (``Authorization: Bearer <token>`` or the study's admin cookie). The admin cookie is
scoped to ``/study/admin/{id}``, so a browser signed in on the admin page opens the report at
the second path; scripts use either path with the bearer header."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sonoaudit.runtime import ServiceRuntime

from sonoaudit_raters.study import setup
from sonoaudit_raters.study.errors import StudyError


def _admin_token(request: Request, study_id: str) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(f"sonoaudit_admin_{study_id}")


def build_router(runtime: ServiceRuntime) -> APIRouter:
    router = APIRouter(tags=["report"])

    @router.get("/studies/{study_id}/report")
    @router.get("/study/admin/{study_id}/report")
    async def study_report(
        study_id: str,
        request: Request,
        format: Literal["html", "json", "csv"] = Query("html"),
        bootstrap: int = Query(2000, ge=0, le=20000, description="bootstrap replicates"),
        seed: int = Query(0),
        tie_policy: Literal["wrong", "exclude"] = Query("wrong"),
    ) -> Response:
        from sonoaudit_raters.report.render import build_report

        ctx = runtime.require()
        try:
            with ctx.sessions() as s:
                setup.check_admin(s, study_id, _admin_token(request, study_id))
            report = await asyncio.to_thread(build_report, ctx, study_id, n_boot=bootstrap,
                                             seed=seed, tie_policy=tie_policy)
        except StudyError as exc:
            return JSONResponse({"detail": exc.message, "field": exc.field},
                                status_code=exc.status)
        if format == "json":
            return JSONResponse(report.json)
        if format == "csv":
            return Response(report.csv, media_type="text/csv", headers={
                "content-disposition": f'attachment; filename="report-{study_id}.csv"'})
        return HTMLResponse(report.html)

    return router
