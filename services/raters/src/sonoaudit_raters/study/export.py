"""Data out and in: every answer in long format (one row per study × item × reader × question,
the latest event, with the hidden columns), the full event history, and import of ratings
gathered elsewhere in the same long CSV."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sonoaudit.context import AppContext
from sonoaudit.db.models import Answer, Reader, Study, StudyItem
from sonoaudit.db.session import session_scope
from sqlalchemy import select

from sonoaudit_raters.study.errors import ImportProblems, NotFound
from sonoaudit_raters.study.setup import MAX_NAME_LEN, load_config, new_reader

# The first eight are the long format every consumer relies on; the rest add context.
COLUMNS = (
    "study", "item", "reader", "question", "answer", "time", "source", "ground_truth",
    "study_name", "reader_id", "time_on_item_ms", "n_events", "edited", "imported", "simulated",
    "image_id", "repeat_of", "dataset", "llm_label", "llm_classification_id",
    "study_has_simulated_readers",
)
IMPORT_REQUIRED = ("item", "reader", "question", "answer")


def export_answers(ctx: AppContext, study_id: str) -> list[dict[str, Any]]:
    """Long-format rows (latest event per reader × item × question), sorted by reader, item,
    question. Answers cleared later (an emptied optional field) are left out."""
    with ctx.sessions() as s:
        study = s.get(Study, study_id)
        if study is None:
            raise NotFound(f"study {study_id!r} not found", field="study_id")
        items = {i.id: i for i in s.scalars(
            select(StudyItem).where(StudyItem.study_id == study_id))}
        readers = {r.id: r for r in s.scalars(select(Reader).where(Reader.study_id == study_id))}
        events = s.scalars(select(Answer).where(Answer.study_id == study_id)
                           .order_by(Answer.id)).all()
    # ``simulated`` is per row (this reader); the study-level flag says whether any reader is.
    has_simulated = study.simulated or any(r.simulated for r in readers.values())
    grouped: dict[tuple[str, str, str], list[Answer]] = {}
    for a in events:
        grouped.setdefault((a.reader_id, a.item_id, a.question), []).append(a)
    rows: list[dict[str, Any]] = []
    for (reader_id, item_id, question), evs in grouped.items():
        last = evs[-1]
        if last.value == "":
            continue
        item, reader = items[item_id], readers[reader_id]
        rows.append({
            "study": study.id, "item": item.item_key, "reader": reader.name,
            "question": question, "answer": last.value, "time": last.created_at.isoformat(),
            "source": item.source, "ground_truth": item.ground_truth, "study_name": study.name,
            "reader_id": reader.id, "time_on_item_ms": last.time_on_item_ms,
            "n_events": len(evs), "edited": len(evs) > 1, "imported": last.imported,
            "simulated": reader.simulated, "image_id": item.image_id,
            "repeat_of": items[item.repeat_of].item_key if item.repeat_of else None,
            "dataset": item.dataset, "llm_label": last.meta.get("llm_label"),
            "llm_classification_id": last.meta.get("llm_classification_id"),
            "study_has_simulated_readers": has_simulated,
        })
    rows.sort(key=lambda r: (r["reader"], r["item"], r["question"]))
    return rows


def export_events(ctx: AppContext, study_id: str) -> list[dict[str, Any]]:
    """Every answer event in order (the audit trail), with reader and item keys."""
    with ctx.sessions() as s:
        keys = dict(s.execute(select(StudyItem.id, StudyItem.item_key)
                              .where(StudyItem.study_id == study_id)).all())
        names = dict(s.execute(select(Reader.id, Reader.name)
                               .where(Reader.study_id == study_id)).all())
        return [{"event_id": a.id, "item": keys[a.item_id], "reader": names[a.reader_id],
                 "question": a.question, "answer": a.value, "time": a.created_at.isoformat(),
                 "time_on_item_ms": a.time_on_item_ms, "imported": a.imported, "meta": a.meta}
                for a in s.scalars(select(Answer).where(Answer.study_id == study_id)
                                   .order_by(Answer.id))]


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    return buf.getvalue()


def export_json(ctx: AppContext, study_id: str) -> dict[str, Any]:
    with ctx.sessions() as s:
        study = s.get(Study, study_id)
        if study is None:
            raise NotFound(f"study {study_id!r} not found", field="study_id")
        meta = {"id": study.id, "name": study.name, "seed": study.seed,
                "simulated": study.simulated, "config": study.config,
                "provenance": study.provenance, "created_at": study.created_at.isoformat()}
    return {"study": meta, "columns": list(COLUMNS), "rows": export_answers(ctx, study_id),
            "events": export_events(ctx, study_id)}


def export_json_text(ctx: AppContext, study_id: str) -> str:
    return json.dumps(export_json(ctx, study_id), indent=1, default=str, allow_nan=False)


@dataclass
class ImportReport:
    rows: int
    recorded: int
    duplicates: int
    readers_created: list[str]


def _parse_time(raw: str) -> datetime:
    t = datetime.fromisoformat(raw)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def import_answers(ctx: AppContext, study_id: str, csv_path: Path | str, *,
                   name: str | None = None) -> ImportReport:
    """Import long-format ratings (columns item, reader, question, answer; optional time,
    time_on_item_ms, study, source, ground_truth). Every row is checked before anything is
    written; importing the same file again records nothing new. ``name`` is what messages and
    the answers' ``meta.source_file`` call the file (an upload's own name, not the server's
    temporary path); default: the path."""
    path = Path(csv_path)
    shown, short = (name, name) if name else (str(path), path.name)
    data = path.read_bytes()
    file_sha = hashlib.sha256(data).hexdigest()
    problems: list[str] = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportProblems(shown, [f"{shown}: not UTF-8 text"]) from None
    reader_csv = csv.DictReader(io.StringIO(text))
    try:
        header = list(reader_csv.fieldnames or [])
        rows = list(reader_csv)
    except csv.Error as exc:  # e.g. a field past csv.field_size_limit()
        raise ImportProblems(shown, [f"{short}:{reader_csv.reader.line_num}: not readable as CSV "
                                     f"({exc})"]) from None
    missing = [c for c in IMPORT_REQUIRED if c not in header]
    if missing:
        raise ImportProblems(
            shown, [f"{shown}: missing column(s) {missing}; header is {header}"])
    with ctx.sessions() as s:
        study = s.get(Study, study_id)
        if study is None:
            raise NotFound(f"study {study_id!r} not found", field="study_id")
        cfg = load_config(study)
        items = {i.item_key: i for i in s.scalars(select(StudyItem)
                                                  .where(StudyItem.study_id == study_id))}
        readers = {r.name: r.id for r in s.scalars(select(Reader)
                                                   .where(Reader.study_id == study_id))}
    parsed: list[tuple[int, StudyItem, str, str, str, datetime | None, int | None]] = []
    for line, row in enumerate(rows, start=2):
        where = f"{short}:{line}"
        if row.get("study") and row["study"] not in (study.id, study.name):
            problems.append(f"{where}: study {row['study']!r} is not this study "
                            f"({study.id} / {study.name!r})")
            continue
        item = items.get((row.get("item") or "").strip())
        if item is None:
            problems.append(f"{where}: item {row.get('item')!r} is not an item key of this study")
            continue
        for hidden in ("source", "ground_truth"):
            given = (row.get(hidden) or "").strip()
            if given and given != getattr(item, hidden):
                problems.append(f"{where}: {hidden} {given!r} does not match the study's "
                                f"{getattr(item, hidden)!r} for item {item.item_key}")
        name = (row.get("reader") or "").strip()
        if not name:
            problems.append(f"{where}: reader is empty")
        elif len(name) > MAX_NAME_LEN:
            problems.append(f"{where}: reader name is {len(name)} characters long; at most "
                            f"{MAX_NAME_LEN} allowed")
        q = cfg.question((row.get("question") or "").strip())
        if q is None:
            problems.append(f"{where}: question {row.get('question')!r} not in this study "
                            f"({[x.key for x in cfg.questions]})")
            continue
        try:
            value = q.clean(row.get("answer") if q.kind != "multi"
                            else (row.get("answer") or "").split(";"))
        except ValueError as exc:
            problems.append(f"{where}: answer: {exc}")
            continue
        if value is None:
            problems.append(f"{where}: answer is empty")
            continue
        when: datetime | None = None
        if row.get("time"):
            try:
                when = _parse_time(row["time"])
            except ValueError:
                problems.append(f"{where}: time {row['time']!r} is not an ISO 8601 timestamp")
        ms: int | None = None
        if row.get("time_on_item_ms"):
            try:
                ms = int(row["time_on_item_ms"])
            except ValueError:
                problems.append(f"{where}: time_on_item_ms {row['time_on_item_ms']!r} is not "
                                "an integer")
        parsed.append((line, item, name, q.key, value, when, ms))
    if problems:
        raise ImportProblems(shown, problems)
    created: list[str] = []
    recorded = duplicates = 0
    with session_scope(ctx.sessions) as s:
        study = s.get(Study, study_id)
        assert study is not None
        # Same transaction as the answers: a failure leaves no half-imported readers behind.
        for name in sorted({p[2] for p in parsed} - set(readers)):
            new_reader(s, study, name, imported=True)
            created.append(name)
        readers = {r.name: r.id for r in s.scalars(select(Reader)
                                                   .where(Reader.study_id == study_id))}
        seen = set(s.scalars(select(Answer.client_event_id).where(
            Answer.study_id == study_id, Answer.imported.is_(True))))
        for line, item, name, question, value, when, ms in parsed:
            # Deterministic per file and line: re-importing the same file is a no-op.
            cid = "imp-" + hashlib.sha256(f"{file_sha}:{line}".encode()).hexdigest()[:40]
            if cid in seen:
                duplicates += 1
                continue
            seen.add(cid)
            s.add(Answer(study_id=study_id, item_id=item.id, reader_id=readers[name],
                         question=question, value=value, client_event_id=cid,
                         time_on_item_ms=ms, imported=True,
                         meta={"source_file": short, "file_sha256": file_sha, "line": line},
                         **({"created_at": when} if when else {})))
            recorded += 1
    return ImportReport(len(parsed), recorded, duplicates, created)
