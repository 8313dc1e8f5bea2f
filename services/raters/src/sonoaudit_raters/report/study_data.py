"""Everything a study report needs, read once from the results store: the study and its items,
the latest answer per (item, reader, question) (the study area's own export), every LLM
classification of the study's images, the datasets (phantom?) and the metric runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sonoaudit.context import AppContext
from sonoaudit.db.models import (
    Dataset,
    GenerationRun,
    Image,
    LLMClassification,
    MetricRun,
    Reader,
    Study,
    StudyItem,
)
from sqlalchemy import or_, select

from sonoaudit_raters.study.errors import NotFound
from sonoaudit_raters.study.export import export_answers


@dataclass
class StudyData:
    study: dict[str, Any]
    items: list[dict[str, Any]]  # item_key, image_id, source, ground_truth, dataset, repeat_of
    readers: list[dict[str, Any]]
    answers: list[dict[str, Any]]  # long format from the study export
    llm: list[dict[str, Any]]  # one row per classification of a study image
    images: dict[str, dict[str, Any]]  # image id → sha, paths, class, source, dataset
    datasets: list[dict[str, Any]]
    generation_runs: list[dict[str, Any]]
    metric_runs: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def simulated(self) -> bool:
        return bool(self.study.get("simulated")) or any(r["simulated"] for r in self.readers)

    @property
    def phantom(self) -> bool:
        return any(d["is_phantom"] for d in self.datasets)


def load_study(ctx: AppContext, study_id: str) -> StudyData:
    with ctx.sessions() as s:
        study = s.get(Study, study_id)
        if study is None:
            raise NotFound(f"study {study_id!r} not found", field="study_id")
        items = list(s.scalars(select(StudyItem).where(StudyItem.study_id == study_id)
                               .order_by(StudyItem.position)))
        readers = list(s.scalars(select(Reader).where(Reader.study_id == study_id)
                                 .order_by(Reader.name)))
        image_ids = sorted({i.image_id for i in items})
        images = list(s.scalars(select(Image).where(Image.id.in_(image_ids)))) if image_ids else []
        shas = sorted({i.sha256 for i in images})
        llm_rows = list(s.scalars(select(LLMClassification).where(or_(
            LLMClassification.image_id.in_(image_ids),
            LLMClassification.image_sha256.in_(shas))).order_by(
            LLMClassification.created_at, LLMClassification.id))) if images else []
        ds_ids = sorted({i.dataset_id for i in images if i.dataset_id})
        datasets = list(s.scalars(select(Dataset).where(Dataset.id.in_(ds_ids)))) if ds_ids else []
        gen_ids = sorted({i.generation_run_id for i in images if i.generation_run_id})
        gens = list(s.scalars(select(GenerationRun).where(GenerationRun.id.in_(gen_ids)))) \
            if gen_ids else []
        # A metric run belongs to this study when its refs name one of the study's datasets
        # or generation runs (refs are free text written by the metrics area).
        keys = ds_ids + gen_ids
        runs = list(s.scalars(select(MetricRun).where(or_(*[
            MetricRun.real_ref.contains(k) | MetricRun.synthetic_ref.contains(k) for k in keys
        ])).order_by(MetricRun.created_at))) if keys else []
        study_d = {"id": study.id, "name": study.name, "simulated": study.simulated,
                   "seed": study.seed, "config": study.config, "provenance": study.provenance,
                   "created_at": study.created_at.isoformat()}
        key_of = {i.id: i.item_key for i in items}
        ds_name = {d.id: d.name for d in datasets}
        item_d = [{"item": i.item_key, "item_id": i.id, "image_id": i.image_id,
                   "source": i.source, "ground_truth": i.ground_truth, "dataset": i.dataset,
                   "repeat_of": key_of.get(i.repeat_of or "")} for i in items]
        reader_d = [{"name": r.name, "id": r.id, "simulated": r.simulated,
                     "imported": getattr(r, "imported", False),
                     "revoked": r.revoked_at is not None} for r in readers]
        img_d = {i.id: {"id": i.id, "sha256": i.sha256, "path": i.path, "mask_path": i.mask_path,
                        "class_label": i.class_label, "source": i.source, "name": i.name,
                        "dataset": ds_name.get(i.dataset_id or ""),
                        "generation_run_id": i.generation_run_id} for i in images}
        by_sha: dict[str, list[str]] = {}
        for i in images:
            by_sha.setdefault(i.sha256, []).append(i.id)
        llm_d = []
        for c in llm_rows:
            targets = set(by_sha.get(c.image_sha256, []))
            if c.image_id in img_d:
                targets.add(c.image_id)
            for iid in sorted(targets):
                llm_d.append({"id": c.id, "image_id": iid, "backend": c.backend,
                              "model": c.model, "model_version": c.model_version,
                              "prompt_version": c.prompt_version, "condition": c.condition,
                              "replicate": c.replicate, "status": c.status, "label": c.label,
                              "confidence": c.confidence, "reason": c.reason})
        ds_d = [{"id": d.id, "name": d.name, "format": d.format, "is_phantom": d.is_phantom,
                 "n_cases": d.n_cases, "fingerprint": d.fingerprint} for d in datasets]
        gen_d = [{"id": g.id, "model_id": g.model_id, "class_label": g.class_label, "n": g.n,
                  "sampler": g.sampler, "steps": g.steps, "seed": g.seed, "status": g.status,
                  "provenance": g.provenance} for g in gens]
        run_d = [{"id": m.id, "class_label": m.class_label, "status": m.status,
                  "real_ref": m.real_ref, "synthetic_ref": m.synthetic_ref,
                  "results": m.results, "provenance": m.provenance,
                  "created_at": m.created_at.isoformat()} for m in runs]
    answers = export_answers(ctx, study_id)
    return StudyData(study_d, item_d, reader_d, answers, llm_d, img_d, ds_d, gen_d, run_d)
