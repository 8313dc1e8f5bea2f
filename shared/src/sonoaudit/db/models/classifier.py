"""Every LLM answer and how it was obtained; idempotent by (image sha256, backend, model, prompt
version, condition, replicate). ``status``: ok | abstain | invalid | error — ``error`` rows (no
answer after retries) are the only ones a rerun replaces; the others are final."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sonoaudit.db.base import Base, new_id, utcnow


class LLMClassification(Base):
    __tablename__ = "llm_classifications"
    __table_args__ = (
        UniqueConstraint(
            "image_sha256", "backend", "model", "prompt_version", "condition", "replicate"
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    image_id: Mapped[str | None] = mapped_column(ForeignKey("images.id"), index=True)
    image_sha256: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(128))
    prompt_version: Mapped[str] = mapped_column(String(64))
    prompt_hash: Mapped[str] = mapped_column(String(64))
    condition: Mapped[str] = mapped_column(String(32))
    replicate: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), index=True)  # ok|abstain|invalid|error
    source_name: Mapped[str | None] = mapped_column(String(255))  # file name or image name
    label: Mapped[str | None] = mapped_column(String(32))
    confidence: Mapped[float | None] = mapped_column()
    rationale: Mapped[str | None] = mapped_column(Text)
    findings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    raw_response: Mapped[str | None] = mapped_column(Text)  # JSON list: every response body
    raw_text: Mapped[str | None] = mapped_column(Text)  # the model's text, as received
    repairs: Mapped[int] = mapped_column(default=0)  # 0 or 1 repair request
    finish_reason: Mapped[str | None] = mapped_column(String(64))
    response_id: Mapped[str | None] = mapped_column(String(128))
    usage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    latency_ms: Mapped[float | None] = mapped_column()
    wall_ms: Mapped[float | None] = mapped_column()  # including backoff and queueing
    attempts: Mapped[int] = mapped_column(default=1)  # HTTP calls, retries and repair included
    attempt_errors: Mapped[list[Any]] = mapped_column(default=list)
    seed: Mapped[int | None] = mapped_column()
    request_settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
