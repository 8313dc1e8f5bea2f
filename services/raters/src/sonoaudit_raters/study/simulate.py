"""A simulated reader panel, for the demo pipeline and tests only. It marks the readers and the
study as simulated so every export and report can say so; real studies never call this."""

from __future__ import annotations

import math
import random

from sonoaudit.context import AppContext
from sonoaudit.db.models import Answer, Assignment, Reader, Study, StudyItem
from sonoaudit.db.session import session_scope
from sqlalchemy import select

from sonoaudit_raters.study.errors import NotFound, StudyError
from sonoaudit_raters.study.llm import llm_answers
from sonoaudit_raters.study.setup import load_config, new_reader


def simulate_panel(
    ctx: AppContext,
    study_id: str,
    n_readers: int = 3,
    accuracy: float = 0.8,
    seed: int = 0,
) -> list[str]:
    """Add ``n_readers`` simulated readers who answer every item; returns their reader ids.

    Each reader names the ground-truth class with probability ``accuracy`` (else another allowed
    class, uniformly), picks an annotation confidence skewed high, agrees with the LLM when its
    label matches their own (10 % "partly"), and spends a log-normal time per item."""
    if n_readers < 1:
        raise StudyError("n_readers must be at least 1", field="n_readers")
    if not 0.0 <= accuracy <= 1.0:
        raise StudyError(f"accuracy must be within [0, 1], got {accuracy}", field="accuracy")
    rng = random.Random(seed)
    ids: list[str] = []
    with session_scope(ctx.sessions) as s:
        study = s.get(Study, study_id)
        if study is None:
            raise NotFound(f"study {study_id!r} not found", field="study_id")
        cfg = load_config(study)
        study.simulated = True
        items = {i.id: i for i in s.scalars(
            select(StudyItem).where(StudyItem.study_id == study_id))}
        llm = llm_answers(s, (i.image_id for i in items.values()), cfg.llm)
        existing = len(s.scalars(select(Reader.id).where(
            Reader.study_id == study_id, Reader.simulated.is_(True))).all())
        for k in range(n_readers):
            reader, _ = new_reader(s, study, f"simulated-{existing + k + 1}", simulated=True)
            ids.append(reader.id)
            order = s.scalars(select(Assignment.item_id).where(Assignment.reader_id == reader.id)
                              .order_by(Assignment.position)).all()
            for n, item_id in enumerate(order):
                item = items[item_id]
                values: dict[str, str] = {}
                for q in cfg.stage("read") + (cfg.stage("llm") if item.image_id in llm else []):
                    if not q.required:
                        continue
                    if q.kind == "choice" and q.stage == "read":
                        others = [o for o in q.options if o != item.ground_truth]
                        right = item.ground_truth in q.options and rng.random() < accuracy
                        values[q.key] = item.ground_truth if right or not others \
                            else rng.choice(others)
                    elif q.kind == "scale":
                        allowed = q.allowed
                        weights = [1 + i for i in range(len(allowed))]  # skewed to high scores
                        values[q.key] = rng.choices(allowed, weights=weights)[0]
                    elif q.key == "llm_match" or q.stage == "llm":
                        mine = values.get("class")
                        if "partly" in q.options and rng.random() < 0.1:
                            values[q.key] = "partly"
                        elif mine == llm[item.image_id].label and "agree" in q.options:
                            values[q.key] = "agree"
                        elif "disagree" in q.options:
                            values[q.key] = "disagree"
                        else:
                            values[q.key] = rng.choice(q.options)
                    else:
                        values[q.key] = rng.choice(q.allowed)
                ms = int(math.exp(rng.gauss(math.log(20_000), 0.5)))
                for key, value in values.items():
                    meta: dict[str, object] = {"simulated": True, "edit": False}
                    if key in {q.key for q in cfg.stage("llm")}:
                        meta |= {"llm_classification_id": llm[item.image_id].id,
                                 "llm_label": llm[item.image_id].label}
                    s.add(Answer(study_id=study_id, item_id=item_id, reader_id=reader.id,
                                 question=key, value=value, client_event_id=f"sim-{n}-{key}",
                                 time_on_item_ms=ms, meta=meta))
    return ids
