"""Routes of this part of the raters service (filled in by its area)."""

from __future__ import annotations

from fastapi import APIRouter

from sonoaudit.runtime import ServiceRuntime


def build_router(runtime: ServiceRuntime) -> APIRouter:
    return APIRouter()
