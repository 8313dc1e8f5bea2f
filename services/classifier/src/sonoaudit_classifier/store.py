"""Writing answers to the results store, idempotently.

Key: (image sha256, backend, model, prompt version, condition, replicate). A final row (ok,
abstain, invalid) is never replaced, so a rerun or a redelivered job costs nothing and writes no
duplicate; an ``error`` row (no answer) is replaced by the next attempt's outcome."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sonoaudit.db.models import LLMClassification
from sonoaudit.db.session import session_scope
from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from sonoaudit_classifier.engine import Outcome

FINAL = ("ok", "abstain", "invalid")


@dataclass(frozen=True)
class ResultKey:
    image_sha256: str
    backend: str
    model: str
    prompt_version: str
    condition: str
    replicate: int

    def as_tuple(self) -> tuple[str, str, str, str, str, int]:
        return (self.image_sha256, self.backend, self.model, self.prompt_version, self.condition,
                self.replicate)


_KEY_COLUMNS = (LLMClassification.image_sha256, LLMClassification.backend,
                LLMClassification.model, LLMClassification.prompt_version,
                LLMClassification.condition, LLMClassification.replicate)


def existing(sessions: sessionmaker[Session],
             keys: list[ResultKey]) -> dict[ResultKey, LLMClassification]:
    """Rows already stored for ``keys`` (any status)."""
    out: dict[ResultKey, LLMClassification] = {}
    if not keys:
        return out
    with sessions() as s:
        for i in range(0, len(keys), 500):
            chunk = [k.as_tuple() for k in keys[i:i + 500]]
            rows = s.scalars(select(LLMClassification).where(tuple_(*_KEY_COLUMNS).in_(chunk)))
            for row in rows:
                out[ResultKey(row.image_sha256, row.backend, row.model, row.prompt_version,
                              row.condition, row.replicate)] = row
    return out


@dataclass
class Pending:
    """An outcome waiting to be written, with what it is stored under."""

    key: ResultKey
    outcome: Outcome
    prompt_hash: str
    image_id: str | None
    source_name: str | None
    job_id: str | None
    request_settings: dict[str, Any]


def _values(p: Pending) -> dict[str, Any]:
    outcome, v = p.outcome, p.outcome.verdict
    return {
        "image_id": p.image_id, "source_name": p.source_name, "status": outcome.status,
        "label": v.label if v else None, "confidence": float(v.confidence) if v else None,
        "rationale": v.rationale if v else None,
        "findings": v.findings.model_dump() if v else {}, "reason": outcome.reason,
        "raw_response": json.dumps(outcome.raw_responses, default=str) if outcome.raw_responses
        else None,
        "raw_text": outcome.raw_text, "repairs": outcome.repairs,
        "finish_reason": outcome.finish_reason, "response_id": outcome.response_id,
        "model_version": outcome.model_version, "usage": outcome.usage,
        "latency_ms": outcome.latency_ms, "wall_ms": outcome.wall_ms, "attempts": outcome.attempts,
        "attempt_errors": outcome.errors, "seed": outcome.seed, "prompt_hash": p.prompt_hash,
        "request_settings": p.request_settings, "job_id": p.job_id,
    }


def save_many(sessions: sessionmaker[Session], pending: list[Pending]) -> None:
    """Write several outcomes in one transaction (the common path: far fewer commits). Falls
    back to one transaction per outcome when a concurrent writer took one of the keys."""
    if not pending:
        return
    try:
        with session_scope(sessions) as s:
            keys = [p.key.as_tuple() for p in pending]
            rows = {
                (r.image_sha256, r.backend, r.model, r.prompt_version, r.condition, r.replicate): r
                for r in s.scalars(select(LLMClassification)
                                   .where(tuple_(*_KEY_COLUMNS).in_(keys)).with_for_update())
            }
            for p in pending:
                row = rows.get(p.key.as_tuple())
                if row is None:
                    row = LLMClassification(
                        image_sha256=p.key.image_sha256, backend=p.key.backend,
                        model=p.key.model, prompt_version=p.key.prompt_version,
                        condition=p.key.condition, replicate=p.key.replicate, **_values(p))
                    s.add(row)
                    rows[p.key.as_tuple()] = row
                elif row.status not in FINAL:
                    for name, value in _values(p).items():
                        setattr(row, name, value)
    except IntegrityError:
        for p in pending:
            save_outcome(sessions, p.key, p.outcome, prompt_hash=p.prompt_hash,
                         image_id=p.image_id, source_name=p.source_name, job_id=p.job_id,
                         request_settings=p.request_settings)


def save_outcome(
    sessions: sessionmaker[Session], key: ResultKey, outcome: Outcome, *, prompt_hash: str,
    image_id: str | None, source_name: str | None, job_id: str | None,
    request_settings: dict[str, Any],
) -> LLMClassification:
    """Insert the outcome, or return the final row that is already there (a concurrent or earlier
    delivery got there first). Replaces an ``error`` row."""
    values = _values(Pending(key, outcome, prompt_hash, image_id, source_name, job_id,
                             request_settings))
    with session_scope(sessions) as s:
        row = s.scalars(select(LLMClassification).where(
            tuple_(*_KEY_COLUMNS) == key.as_tuple()).with_for_update()).first()
        if row is not None:
            if row.status in FINAL:
                return row
            for name, value in values.items():
                setattr(row, name, value)
            return row
        row = LLMClassification(
            image_sha256=key.image_sha256, backend=key.backend, model=key.model,
            prompt_version=key.prompt_version, condition=key.condition,
            replicate=key.replicate, **values)
        nested = s.begin_nested()
        s.add(row)
        try:
            s.flush()
            nested.commit()
        except Exception:
            # Unique key taken by a concurrent writer between our read and insert: keep theirs.
            nested.rollback()
            other = s.scalars(select(LLMClassification).where(
                tuple_(*_KEY_COLUMNS) == key.as_tuple())).first()
            if other is None:
                raise
            return other
        return row
