"""Setting a study up: pick images, create the blinded items, enrol readers (tokens, orders)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sonoaudit.context import AppContext
from sonoaudit.db.models import (
    Assignment,
    Dataset,
    GenerationRun,
    Image,
    Model,
    Reader,
    Study,
    StudyItem,
    TrainingRun,
)
from sonoaudit.db.session import session_scope
from sonoaudit.provenance import provenance
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sonoaudit_raters.study.config import StudyConfig
from sonoaudit_raters.study.errors import AccessDenied, EmptyStudy, NotFound, StudyError
from sonoaudit_raters.study.ordering import reader_order
from sonoaudit_raters.study.tokens import hash_token, new_item_key, new_token, token_matches

PROTOCOL_VERSION = "reader-study/1"
# Study and reader names: the length of their columns (studies.name, readers.name).
MAX_NAME_LEN = 200


def check_name(name: str, what: str, field: str = "name") -> str:
    """``name`` stripped; StudyError (naming ``field``) when empty or over MAX_NAME_LEN."""
    name = name.strip()
    if not name:
        raise StudyError(f"{what} name is empty", field=field)
    if len(name) > MAX_NAME_LEN:
        raise StudyError(f"{what} name is {len(name)} characters long; at most {MAX_NAME_LEN} "
                         "allowed", field=field)
    return name


def select_images(
    ctx: AppContext,
    *,
    dataset_id: str | None = None,
    generation_run_ids: Sequence[str] = (),
    per_class: dict[str, int] | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """(real ids, synthetic ids): ``per_class[c]`` images of class c drawn (seeded) from the
    dataset and, separately, from the generation runs. ``per_class=None`` takes every image."""
    rng = random.Random(seed)
    with ctx.sessions() as s:
        real: list[Image] = []
        if dataset_id is not None:
            if s.get(Dataset, dataset_id) is None:
                raise NotFound(f"dataset {dataset_id!r} not found", field="dataset_id")
            real = list(s.scalars(select(Image).where(Image.dataset_id == dataset_id)))
        synth: list[Image] = []
        if generation_run_ids:
            synth = list(s.scalars(
                select(Image).where(Image.generation_run_id.in_(list(generation_run_ids)))
            ))

    def draw(images: list[Image], group: str) -> list[str]:
        if per_class is None:
            return sorted(i.id for i in images)
        out: list[str] = []
        for cls, n in sorted(per_class.items()):
            pool = sorted((i for i in images if i.class_label == cls), key=lambda i: i.id)
            if len(pool) < n:
                raise StudyError(
                    f"{group} images: asked for {n} of class {cls!r}, only {len(pool)} available",
                    field="per_class",
                )
            out += [i.id for i in rng.sample(pool, n)]
        return out

    return (draw(real, "real") if dataset_id else [],
            draw(synth, "synthetic") if generation_run_ids else [])


def image_datasets(s: Session, images: Sequence[Image]) -> dict[str, str | None]:
    """image id → dataset id: a real image's own; a synthetic image's is the dataset its
    generator was trained on (GenerationRun → Model → TrainingRun.dataset_id), None when the
    model has no training run here (e.g. an imported checkpoint)."""
    run_ids = sorted({i.generation_run_id for i in images if i.generation_run_id})
    trained_on: dict[str, str | None] = {}
    if run_ids:
        trained_on = dict(s.execute(
            select(GenerationRun.id, TrainingRun.dataset_id)
            .join(Model, Model.id == GenerationRun.model_id)
            .join(TrainingRun, TrainingRun.id == Model.training_run_id)
            .where(GenerationRun.id.in_(run_ids))).all())
    return {i.id: i.dataset_id if i.dataset_id else
            trained_on.get(i.generation_run_id) if i.generation_run_id else None
            for i in images}


def create_study(
    ctx: AppContext,
    name: str,
    real_image_ids: Sequence[str],
    synthetic_image_ids: Sequence[str],
    *,
    config: StudyConfig | dict[str, Any] | None = None,
    n_repeats: int | None = None,
    seed: int = 0,
) -> tuple[Study, str]:
    """Create a study of the given images; returns (study, admin token — shown only now).

    Ground truth is each image's class label; source is checked against the group the id was
    given in. ``n_repeats`` items are shown twice (seeded pick) for intra-reader agreement."""
    cfg = config if isinstance(config, StudyConfig) else StudyConfig.model_validate(config or {})
    if n_repeats is not None:
        cfg = cfg.model_copy(update={"n_repeats": n_repeats})
    groups = {"real": list(real_image_ids), "synthetic": list(synthetic_image_ids)}
    name = check_name(name, "study")
    if not -(2**63) <= seed < 2**63:  # studies.seed is a 64-bit column
        raise StudyError(f"seed must fit in 64 bits (signed), got {seed}", field="seed")
    if not groups["real"] and not groups["synthetic"]:
        raise EmptyStudy(
            f"study {name!r} has no images: both real_image_ids and synthetic_image_ids are empty "
            "(import a dataset / generate samples first, or check the selection)",
            field="image_ids",
        )
    all_ids = groups["real"] + groups["synthetic"]
    dupes = sorted({i for i in all_ids if all_ids.count(i) > 1})
    if dupes:
        raise StudyError(f"image ids listed more than once: {dupes[:10]}", field="image_ids")
    if cfg.n_repeats > len(all_ids):
        raise StudyError(
            f"n_repeats={cfg.n_repeats} exceeds the {len(all_ids)} images in the study",
            field="n_repeats",
        )
    admin_token = new_token()
    with session_scope(ctx.sessions) as s:
        images = {i.id: i for i in s.scalars(select(Image).where(Image.id.in_(all_ids)))}
        missing = [i for i in all_ids if i not in images]
        if missing:
            raise NotFound(f"image ids not in the store: {missing[:10]}", field="image_ids")
        wrong = [f"{i} is {images[i].source}, listed as {group}"
                 for group, ids in groups.items() for i in ids if images[i].source != group]
        if wrong:
            raise StudyError(f"source mismatch: {wrong[:10]}", field="image_ids")
        datasets = {d.id: d.name for d in s.scalars(select(Dataset))}
        dataset_of = image_datasets(s, list(images.values()))
        study = Study(name=name.strip(), config=cfg.model_dump(mode="json"),
                      admin_token_hash=hash_token(admin_token), seed=seed,
                      provenance=provenance(kind="reader-study", protocol=PROTOCOL_VERSION,
                                            seed=seed, n_real=len(groups["real"]),
                                            n_synthetic=len(groups["synthetic"]),
                                            n_repeats=cfg.n_repeats))
        s.add(study)
        s.flush()
        items: list[StudyItem] = []
        for pos, image_id in enumerate(sorted(all_ids)):
            img = images[image_id]
            items.append(StudyItem(
                study_id=study.id, item_key=new_item_key(), position=pos, image_id=img.id,
                source=img.source, ground_truth=img.class_label,
                dataset=datasets.get(dataset_of[img.id] or ""),
            ))
        s.add_all(items)
        s.flush()
        rng = random.Random(seed)
        for k, original in enumerate(rng.sample(items, cfg.n_repeats)):
            s.add(StudyItem(
                study_id=study.id, item_key=new_item_key(), position=len(items) + k,
                image_id=original.image_id, repeat_of=original.id, source=original.source,
                ground_truth=original.ground_truth, dataset=original.dataset,
            ))
        s.flush()
    return study, admin_token


def load_config(study: Study) -> StudyConfig:
    return StudyConfig.model_validate(study.config)


def _enrol(s: Session, study: Study, reader: Reader) -> None:
    cfg = load_config(study)
    items = list(s.scalars(select(StudyItem).where(StudyItem.study_id == study.id)))
    repeat_of = {i.id: i.repeat_of for i in items if i.repeat_of}
    order = reader_order([i.id for i in items], repeat_of, study_seed=study.seed,
                         study_id=study.id, reader_id=reader.id, min_gap=cfg.min_repeat_gap)
    s.add_all(Assignment(study_id=study.id, reader_id=reader.id, item_id=item_id, position=pos)
              for pos, item_id in enumerate(order))


def new_reader(s: Session, study: Study, name: str, *, simulated: bool = False,
               imported: bool = False) -> tuple[Reader, str]:
    """Enrol a reader inside the caller's transaction; returns (reader, token)."""
    name = check_name(name, "reader")
    if s.scalar(select(Reader.id).where(Reader.study_id == study.id, Reader.name == name)):
        raise StudyError(f"study {study.id} already has a reader named {name!r}", field="name")
    token = new_token()
    # Imported readers rated elsewhere: they get no working link.
    reader = Reader(study_id=study.id, name=name, token_hash=hash_token(token),
                    simulated=simulated, imported=imported,
                    revoked_at=datetime.now(UTC) if imported else None)
    s.add(reader)
    s.flush()
    _enrol(s, study, reader)
    return reader, token


def add_reader(ctx: AppContext, study_id: str, name: str, *, simulated: bool = False) -> str:
    """Enrol a reader; returns their invitation token (shown only now, stored hashed)."""
    try:
        with session_scope(ctx.sessions) as s:
            study = s.get(Study, study_id)
            if study is None:
                raise NotFound(f"study {study_id!r} not found", field="study_id")
            _, token = new_reader(s, study, name, simulated=simulated)
    except IntegrityError as exc:  # a concurrent enrolment under the same name
        raise StudyError(f"study {study_id} already has a reader named {name.strip()!r}",
                         field="name") from exc
    return token


def reader_link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/study/r/{token}"


def revoke_reader(ctx: AppContext, study_id: str, reader_id: str) -> None:
    """The reader's link stops working; their answers stay."""
    with session_scope(ctx.sessions) as s:
        if s.get(Study, study_id) is None:
            raise NotFound(f"study {study_id!r} not found", field="study_id")
        reader = s.get(Reader, reader_id)
        if reader is None or reader.study_id != study_id:
            raise NotFound(f"reader {reader_id!r} not in study {study_id}", field="reader_id")
        if reader.revoked_at is None:
            reader.revoked_at = datetime.now(UTC)


def reader_for_token(s: Session, token: str) -> Reader:
    reader = s.scalar(select(Reader).where(Reader.token_hash == hash_token(token)))
    if reader is None or reader.revoked_at is not None:
        raise AccessDenied("this reading link is unknown or has been revoked")
    return reader


def check_admin(s: Session, study_id: str, token: str | None) -> Study:
    """The study, if ``token`` is its admin token; AccessDenied otherwise (also for an unknown
    study, so admin routes do not reveal which study ids exist)."""
    study = s.get(Study, study_id)
    if study is None or not token or not token_matches(token, study.admin_token_hash):
        raise AccessDenied("admin token required for this study")
    return study


def study_counts(s: Session, study_id: str) -> dict[str, int]:
    rows = s.execute(select(StudyItem.source, func.count()).where(StudyItem.study_id == study_id)
                     .group_by(StudyItem.source)).all()
    return {str(src): int(n) for src, n in rows}
