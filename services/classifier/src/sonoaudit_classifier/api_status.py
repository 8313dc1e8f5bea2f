"""``GET /classify/backend-status``: whether an LLM backend can run in this service, and if not,
why. The distributed pipeline asks here (the keys live in the classifier's environment, not the
pipeline's) and reports "LLM not run: <reason>" exactly as the embedded pipeline does."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from sonoaudit_classifier.settings import ClassifierSettings, backend_problem


class BackendStatus(BaseModel):
    backend: str
    ready: bool
    problem: str | None


def router() -> APIRouter:
    r = APIRouter(tags=["classify"])

    @r.get("/classify/backend-status", response_model=BackendStatus)
    async def backend_status(
        request: Request,
        backend: str | None = Query(None, description="gemini | openai (default: settings)"),
    ) -> BackendStatus:
        settings: ClassifierSettings = request.app.state.classifier_settings
        problem = backend_problem(settings, backend)
        return BackendStatus(backend=backend or settings.llm_backend, ready=problem is None,
                             problem=problem)

    return r
