"""Reader studies: items (blinded), readers (hashed tokens), each reader's stored reading order
and append-only answer events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sonoaudit.db.base import Base, new_id, utcnow


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # questions, display, llm filter
    admin_token_hash: Mapped[str] = mapped_column(String(128))
    seed: Mapped[int] = mapped_column(default=0)
    simulated: Mapped[bool] = mapped_column(default=False)
    provenance: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StudyItem(Base):
    __tablename__ = "study_items"
    __table_args__ = (UniqueConstraint("study_id", "item_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    item_key: Mapped[str] = mapped_column(String(64))  # opaque id shown to readers
    position: Mapped[int] = mapped_column(default=0)  # canonical order before per-reader shuffle
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"))
    repeat_of: Mapped[str | None] = mapped_column(ForeignKey("study_items.id"))
    # Hidden from readers: never rendered on reader pages.
    source: Mapped[str] = mapped_column(String(16))
    ground_truth: Mapped[str] = mapped_column(String(32))
    dataset: Mapped[str | None] = mapped_column(String(200))


class Reader(Base):
    __tablename__ = "readers"
    __table_args__ = (UniqueConstraint("study_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(128), unique=True)
    simulated: Mapped[bool] = mapped_column(default=False)
    imported: Mapped[bool] = mapped_column(default=False)  # ratings gathered elsewhere; no login
    revoked_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Assignment(Base):
    """One reader's stored reading order: resume and back-navigation need the whole list."""

    __tablename__ = "study_assignments"
    __table_args__ = (
        UniqueConstraint("reader_id", "position"),
        UniqueConstraint("reader_id", "item_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    reader_id: Mapped[str] = mapped_column(ForeignKey("readers.id"), index=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("study_items.id"))
    position: Mapped[int] = mapped_column()  # 0-based


class Answer(Base):
    """An answer event. Never updated or deleted: an edit is a new event."""

    __tablename__ = "answers"
    __table_args__ = (UniqueConstraint("reader_id", "client_event_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("study_items.id"), index=True)
    reader_id: Mapped[str] = mapped_column(ForeignKey("readers.id"), index=True)
    question: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(Text)
    client_event_id: Mapped[str] = mapped_column(String(64))  # makes a double submit one event
    time_on_item_ms: Mapped[int | None] = mapped_column()
    imported: Mapped[bool] = mapped_column(default=False)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
