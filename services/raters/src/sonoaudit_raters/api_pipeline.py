"""What the distributed pipeline needs from the raters service beyond the study API:
``POST /study/admin/{study_id}/simulate-panel`` adds a SIMULATED reader panel (demo and tests
only; the study and its readers are marked simulated, so every export and report says so). It
needs the study's admin token as bearer, like every other admin route."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sonoaudit.runtime import ServiceRuntime
from starlette.concurrency import run_in_threadpool

from sonoaudit_raters.openapi_bodies import body as openapi_body
from sonoaudit_raters.study import setup
from sonoaudit_raters.study.errors import AccessDenied, StudyError
from sonoaudit_raters.study.simulate import simulate_panel


class PanelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_readers: int = Field(default=3, ge=1, le=50)
    accuracy: float = Field(default=0.8, ge=0.0, le=1.0)
    seed: int = Field(default=0, ge=-(2**63), lt=2**63)


def _error(exc: StudyError) -> JSONResponse:
    body: dict[str, Any] = {"detail": exc.message}
    if exc.field:
        body["field"] = exc.field
    return JSONResponse(body, status_code=exc.status)


def build_router(runtime: ServiceRuntime) -> APIRouter:
    router = APIRouter(prefix="/study", tags=["study"])

    @router.post("/admin/{study_id}/simulate-panel", status_code=201,
                 openapi_extra=openapi_body(json=PanelIn))
    async def admin_simulate_panel(study_id: str, request: Request) -> JSONResponse:
        """Add ``n_readers`` simulated readers who answer every item; returns their ids."""
        ctx = runtime.require()
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None

        def check() -> None:
            with ctx.sessions() as s:
                setup.check_admin(s, study_id, token)

        try:
            await run_in_threadpool(check)
        except AccessDenied as exc:
            return _error(exc)
        try:
            body = PanelIn.model_validate(await request.json())
        except (ValidationError, ValueError) as exc:
            return JSONResponse({"detail": f"body: {exc}"}, status_code=422)
        try:
            ids = await run_in_threadpool(simulate_panel, ctx, study_id, body.n_readers,
                                          body.accuracy, body.seed)
        except StudyError as exc:
            return _error(exc)
        return JSONResponse({"study_id": study_id, "simulated": True, "reader_ids": ids},
                            status_code=201)

    return router
