"""The LLM answer revealed for an item: the latest successful classification of its image
matching the study's filter."""

from __future__ import annotations

from collections.abc import Iterable

from sonoaudit.db.models import Image, LLMClassification
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from sonoaudit_raters.study.config import LLMFilter


def llm_answers(
    s: Session, image_ids: Iterable[str], flt: LLMFilter
) -> dict[str, LLMClassification]:
    """image id → the LLM answer to reveal (only images that have one)."""
    ids = sorted(set(image_ids))
    if not ids:
        return {}
    images = {i.id: i.sha256 for i in s.scalars(select(Image).where(Image.id.in_(ids)))}
    by_sha: dict[str, list[str]] = {}
    for iid, sha in images.items():
        by_sha.setdefault(sha, []).append(iid)
    q = select(LLMClassification).where(
        LLMClassification.status == "ok",
        or_(LLMClassification.image_id.in_(ids),
            LLMClassification.image_sha256.in_(list(by_sha))),
    )
    for col, want in (("backend", flt.backend), ("model", flt.model),
                      ("prompt_version", flt.prompt_version), ("condition", flt.condition)):
        if want is not None:
            q = q.where(getattr(LLMClassification, col) == want)
    out: dict[str, LLMClassification] = {}
    # Oldest first so the latest matching row wins.
    for row in s.scalars(q.order_by(LLMClassification.created_at, LLMClassification.id)):
        targets = set(by_sha.get(row.image_sha256, []))
        if row.image_id in images:
            targets.add(row.image_id)
        for iid in targets:
            out[iid] = row
    return out
