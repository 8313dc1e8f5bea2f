"""Datasets, images (real and synthetic), generic async jobs and dead letters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sonoaudit.db.base import Base, new_id, utcnow


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(32))  # busbra | udiat | busi
    root_path: Mapped[str] = mapped_column(Text)
    is_phantom: Mapped[bool] = mapped_column(default=False)
    classes: Mapped[list[Any]] = mapped_column(default=list)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    n_cases: Mapped[int] = mapped_column(default=0)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 over file hashes
    provenance: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Image(Base):
    """One image (real or synthetic) with its mask; bytes live in the file store."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "name"),
        UniqueConstraint("generation_run_id", "sample_index"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    mask_sha256: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # real | synthetic
    class_label: Mapped[str] = mapped_column(String(32))
    split: Mapped[str | None] = mapped_column(String(16))
    case_id: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)  # relative to the file store
    mask_path: Mapped[str | None] = mapped_column(Text)
    width: Mapped[int] = mapped_column()
    height: Mapped[int] = mapped_column()
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), index=True)
    generation_run_id: Mapped[str | None] = mapped_column(
        ForeignKey("generation_runs.id"), index=True
    )
    sample_index: Mapped[int | None] = mapped_column()
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """Any long-running piece of work (generate, classify, metrics, ...) and its progress."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued|running|done|failed
    total: Mapped[int] = mapped_column(default=0)
    done: Mapped[int] = mapped_column(default=0)
    failed: Mapped[int] = mapped_column(default=0)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    correlation_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DeadLetter(Base):
    """A message given up on (poison or past max_deliver), kept so an operator can see it."""

    __tablename__ = "dead_letters"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    subject: Mapped[str] = mapped_column(String(200), index=True)
    message_id: Mapped[str | None] = mapped_column(String(64))
    deliveries: Mapped[int] = mapped_column(default=0)
    error: Mapped[str] = mapped_column(Text)
    data: Mapped[str] = mapped_column(Text)  # raw message body as received
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
