"""Trained models, training runs and generation runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sonoaudit.db.base import Base, new_id, utcnow


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), index=True)
    class_label: Mapped[str] = mapped_column(String(32))
    profile: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="running")
    seed: Mapped[int] = mapped_column(default=0)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    loss_curve: Mapped[list[Any]] = mapped_column(default=list)
    out_dir: Mapped[str | None] = mapped_column(Text)
    provenance: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class Model(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    class_label: Mapped[str | None] = mapped_column(String(32))  # None = class-conditional
    backbone: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    checkpoint_path: Mapped[str] = mapped_column(Text)
    training_run_id: Mapped[str | None] = mapped_column(ForeignKey("training_runs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GenerationRun(Base):
    __tablename__ = "generation_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), unique=True)
    class_label: Mapped[str | None] = mapped_column(String(32))
    n: Mapped[int] = mapped_column()
    sampler: Mapped[str] = mapped_column(String(16))
    steps: Mapped[int] = mapped_column()
    seed: Mapped[int] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="running")
    qc_summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    provenance: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
