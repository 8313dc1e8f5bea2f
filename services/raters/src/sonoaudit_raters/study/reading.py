"""What a reader sees and submits: their ordered items, where to resume, answer validation and
the append-only answer events. Every function works on one reader; nothing here can read another
reader's answers or an item's hidden columns into a reader-facing value."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sonoaudit.context import AppContext
from sonoaudit.db.models import Answer, Assignment, LLMClassification, Reader, Study, StudyItem
from sonoaudit.db.session import session_scope
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sonoaudit_raters.study.config import StudyConfig
from sonoaudit_raters.study.errors import InvalidAnswer, Locked, NotAssigned, NotFound
from sonoaudit_raters.study.llm import llm_answers
from sonoaudit_raters.study.setup import load_config, reader_for_token

CLIENT_EVENT_RE = re.compile(r"^[A-Za-z0-9_-]{8,32}$")
MAX_TIME_ON_ITEM_MS = 24 * 3600 * 1000


@dataclass
class ItemState:
    """One item in one reader's list. Holds no source or ground truth."""

    position: int  # 0-based
    item_id: str
    item_key: str
    image_id: str
    answers: dict[str, str]  # latest value per question, this reader only
    read_locked: bool
    has_llm: bool
    complete: bool


@dataclass
class ReaderView:
    reader_id: str
    reader_name: str
    study_id: str
    study_name: str
    config: StudyConfig
    items: list[ItemState]
    llm: dict[str, LLMClassification] = field(default_factory=dict)  # by image id

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def done(self) -> int:
        return sum(1 for i in self.items if i.complete)

    @property
    def first_incomplete(self) -> int | None:
        return next((i.position for i in self.items if not i.complete), None)

    def by_key(self, item_key: str) -> ItemState:
        for state in self.items:
            if state.item_key == item_key:
                return state
        raise NotAssigned(f"item {item_key!r} is not assigned to this reader", field="item")


def latest_answers(s: Session, reader_id: str) -> dict[tuple[str, str], Answer]:
    """(item id, question) → latest event of this reader."""
    out: dict[tuple[str, str], Answer] = {}
    for a in s.scalars(select(Answer).where(Answer.reader_id == reader_id).order_by(Answer.id)):
        out[(a.item_id, a.question)] = a
    return out


def _is_complete(cfg: StudyConfig, answers: dict[str, str], has_llm: bool) -> tuple[bool, bool]:
    read_locked = all(answers.get(q.key) for q in cfg.stage("read") if q.required)
    llm_done = not has_llm or all(answers.get(q.key) for q in cfg.stage("llm") if q.required)
    return read_locked, read_locked and llm_done


def reader_view(s: Session, reader: Reader) -> ReaderView:
    study = s.get(Study, reader.study_id)
    if study is None:  # pragma: no cover - foreign keys prevent it
        raise NotFound("study not found")
    cfg = load_config(study)
    rows = s.execute(
        select(Assignment.position, StudyItem.id, StudyItem.item_key, StudyItem.image_id)
        .join(StudyItem, StudyItem.id == Assignment.item_id)
        .where(Assignment.reader_id == reader.id).order_by(Assignment.position)
    ).all()
    llm = llm_answers(s, (r[3] for r in rows), cfg.llm) if cfg.stage("llm") else {}
    latest = latest_answers(s, reader.id)
    items: list[ItemState] = []
    for pos, item_id, key, image_id in rows:
        answers = {q: a.value for (iid, q), a in latest.items() if iid == item_id and a.value}
        has_llm = image_id in llm
        read_locked, complete = _is_complete(cfg, answers, has_llm)
        items.append(ItemState(pos, item_id, key, image_id, answers, read_locked, has_llm,
                               complete))
    return ReaderView(reader.id, reader.name, study.id, study.name, cfg, items, llm)


def view_for_token(ctx: AppContext, token: str) -> ReaderView:
    with ctx.sessions() as s:
        return reader_view(s, reader_for_token(s, token))


@dataclass
class SubmitResult:
    recorded: int
    duplicate: bool
    complete: bool
    item_key: str


def _clean_step(cfg: StudyConfig, state: ItemState, step: str,
                values: Mapping[str, str | list[str] | None]) -> dict[str, str | None]:
    allowed_stages = {"read": ("read", "extra"), "llm": ("llm", "extra")}[step]
    unknown = [k for k in values if cfg.question(k) is None]
    if unknown:
        raise InvalidAnswer(f"unknown question(s) {unknown}; this study asks "
                            f"{[q.key for q in cfg.questions]}", field=unknown[0])
    out: dict[str, str | None] = {}
    for key, raw in values.items():
        q = cfg.question(key)
        assert q is not None
        if q.stage not in allowed_stages:
            raise InvalidAnswer(
                f"{key} is not asked at the {step!r} step (it belongs to {q.stage!r})", field=key)
        out[key] = q.clean(raw)
    for q in cfg.questions:
        if q.stage in allowed_stages and q.required and not out.get(q.key):
            raise InvalidAnswer(f"{q.key}: an answer is required ({q.prompt})", field=q.key)
    return out


def submit(
    ctx: AppContext,
    token: str,
    item_key: str,
    step: str,
    values: Mapping[str, str | list[str] | None],
    *,
    client_event_id: str,
    time_on_item_ms: int | None = None,
) -> SubmitResult:
    """Record one step of one item. ``step="read"`` locks the stage-1 answers; ``step="llm"``
    answers the questions shown next to the revealed LLM answer. A repeated ``client_event_id``
    (double submit, retry) records nothing."""
    if step not in ("read", "llm"):
        raise InvalidAnswer(f"step must be 'read' or 'llm', got {step!r}", field="step")
    if not CLIENT_EVENT_RE.match(client_event_id or ""):
        raise InvalidAnswer("client_event_id must be 8-32 characters of [A-Za-z0-9_-]",
                            field="client_event_id")
    if time_on_item_ms is not None and not 0 <= time_on_item_ms <= MAX_TIME_ON_ITEM_MS:
        raise InvalidAnswer(f"time_on_item_ms must be within 0..{MAX_TIME_ON_ITEM_MS}",
                            field="time_on_item_ms")
    try:
        with session_scope(ctx.sessions) as s:
            reader = reader_for_token(s, token)
            view = reader_view(s, reader)
            state = view.by_key(item_key)
            cfg = view.config
            # Exact ids, never LIKE: "_" is a LIKE wildcard and SQLite's LIKE ignores case, so
            # a prefix pattern would take a different event for a retry and drop its answers.
            own_ids = [f"{client_event_id}:{q.key}" for q in cfg.questions]
            seen = s.scalar(select(func.count()).select_from(Answer).where(
                Answer.reader_id == reader.id, Answer.client_event_id.in_(own_ids)))
            if seen:
                return SubmitResult(0, True, state.complete, item_key)
            clean = _clean_step(cfg, state, step, values)
            meta: dict[str, Any] = {"step": step}
            if step == "read" and state.read_locked:
                changed = [k for k, v in clean.items()
                           if cfg.question(k).stage == "read"  # type: ignore[union-attr]
                           and v != state.answers.get(k)]
                if changed and state.has_llm:
                    raise Locked(f"{', '.join(changed)} locked: answers given before the LLM "
                                 "answer was shown cannot change (add a comment instead)",
                                 field=changed[0])
            if step == "llm":
                if not state.read_locked:
                    raise Locked("answer and lock the first questions before the LLM step",
                                 field="step")
                if not state.has_llm:
                    raise InvalidAnswer("this item has no LLM answer to compare with",
                                        field="step")
                shown = view.llm[state.image_id]
                meta |= {"llm_classification_id": shown.id, "llm_label": shown.label}
            recorded = 0
            # Events in the study's question order, so the audit trail reads like the form.
            order = [q.key for q in cfg.questions]
            for key, value in sorted(clean.items(), key=lambda kv: order.index(kv[0])):
                previous = state.answers.get(key)
                if value == previous or (value is None and previous is None):
                    continue
                s.add(Answer(study_id=view.study_id, item_id=state.item_id,
                             reader_id=reader.id, question=key, value=value or "",
                             client_event_id=f"{client_event_id}:{key}",
                             time_on_item_ms=time_on_item_ms,
                             meta=meta | {"edit": previous is not None}))
                recorded += 1
                if value:
                    state.answers[key] = value
                else:
                    state.answers.pop(key, None)
            s.flush()
            _, complete = _is_complete(cfg, state.answers, state.has_llm)
            return SubmitResult(recorded, False, complete, item_key)
    except IntegrityError:
        # A concurrent identical submit won the race; its events stand, nothing was lost.
        view = view_for_token(ctx, token)
        return SubmitResult(0, True, view.by_key(item_key).complete, item_key)


@dataclass
class Reveal:
    label: str | None
    rationale: str | None
    confidence: float | None


def reveal_llm(ctx: AppContext, token: str, item_key: str) -> Reveal:
    """The LLM answer for an item — only once this reader has locked the stage-1 answers."""
    with ctx.sessions() as s:
        view = reader_view(s, reader_for_token(s, token))
        state = view.by_key(item_key)
        if not state.read_locked:
            raise Locked("the LLM answer is shown only after your first answers are locked",
                         field="item")
        row = view.llm.get(state.image_id)
        if row is None:
            raise NotFound("no LLM answer for this item", field="item")
        return Reveal(row.label, row.rationale, row.confidence)


def own_answers(ctx: AppContext, token: str) -> list[dict[str, Any]]:
    """This reader's own events (history included), keyed by opaque item keys only."""
    with ctx.sessions() as s:
        reader = reader_for_token(s, token)
        keys = dict(s.execute(select(StudyItem.id, StudyItem.item_key)
                              .where(StudyItem.study_id == reader.study_id)).all())
        return [{"item": keys[a.item_id], "question": a.question, "answer": a.value,
                 "time": _iso(a.created_at), "time_on_item_ms": a.time_on_item_ms}
                for a in s.scalars(select(Answer).where(Answer.reader_id == reader.id)
                                   .order_by(Answer.id))]


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def progress(ctx: AppContext, study_id: str) -> list[dict[str, Any]]:
    """Per reader: items complete / assigned (cases, not answers), last activity, status."""
    out: list[dict[str, Any]] = []
    with ctx.sessions() as s:
        if s.get(Study, study_id) is None:
            raise NotFound(f"study {study_id!r} not found", field="study_id")
        readers = s.scalars(select(Reader).where(Reader.study_id == study_id)
                            .order_by(Reader.created_at, Reader.name)).all()
        for reader in readers:
            view = reader_view(s, reader)
            last = s.scalar(select(func.max(Answer.created_at))
                            .where(Answer.reader_id == reader.id))
            n_answered = s.scalar(select(func.count(func.distinct(Answer.item_id)))
                                  .where(Answer.reader_id == reader.id)) or 0
            out.append({
                "reader_id": reader.id, "name": reader.name, "done": view.done,
                "total": view.total, "answered_items": int(n_answered),
                "revoked": reader.revoked_at is not None, "simulated": reader.simulated,
                "imported": reader.imported, "last_answer_at": _iso(last),
            })
    return out
