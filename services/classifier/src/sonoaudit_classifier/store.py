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


def save_outcome(
    sessions: sessionmaker[Session], key: ResultKey, outcome: Outcome, *, prompt_hash: str,
    image_id: str | None, source_name: str | None, job_id: str | None,
    request_settings: dict[str, Any],
) -> LLMClassification:
    """Insert the outcome, or return the final row that is already there (a concurrent or earlier
    delivery got there first). Replaces an ``error`` row."""
    v = outcome.verdict
    values: dict[str, Any] = {
        "image_id": image_id, "source_name": source_name, "status": outcome.status,
        "label": v.label if v else None, "confidence": float(v.confidence) if v else None,
        "rationale": v.rationale if v else None,
        "findings": v.findings.model_dump() if v else {}, "reason": outcome.reason,
        "raw_response": json.dumps(outcome.raw_responses, default=str) if outcome.raw_responses
        else None,
        "raw_text": outcome.raw_text, "repairs": outcome.repairs,
        "finish_reason": outcome.finish_reason, "response_id": outcome.response_id,
        "model_version": outcome.model_version, "usage": outcome.usage,
        "latency_ms": outcome.latency_ms, "wall_ms": outcome.wall_ms, "attempts": outcome.attempts,
        "attempt_errors": outcome.errors, "seed": outcome.seed, "prompt_hash": prompt_hash,
        "request_settings": request_settings, "job_id": job_id,
    }
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
