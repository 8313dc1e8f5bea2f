"""How the pipeline reaches each capability. The pipeline code is the same for both transports;
only these calls differ: in-process library calls (embedded) or the services over HTTP and
JetStream jobs (distributed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sonoaudit.context import AppContext


@dataclass(frozen=True)
class StudyHandle:
    study_id: str
    # known when the study was created in this call, or read back from reader-links.txt
    admin_token: str | None


class Transport(Protocol):
    name: str

    def import_dataset(self, path: Path) -> str: ...
    def train(self, dataset_id: str, class_label: str, profile: str, seed: int,
              steps: int | None, out_dir: Path,
              options: dict[str, str] | None = None) -> str: ...
    def generate(self, model_id: str, n: int, sampler: str, steps: int | None, seed: int,
                 out_dir: Path) -> str: ...
    def metrics(self, real_ref: str, synthetic_ref: str, class_label: str | None) -> str: ...
    def llm_problem(self, backend: str | None) -> str | None: ...
    def classify(self, image_ids: list[str], backend: str | None, condition: str,
                 replicates: int) -> dict[str, Any]: ...
    def create_study(self, name: str, real_ids: list[str], synthetic_ids: list[str],
                     seed: int, n_repeats: int = 0) -> StudyHandle: ...
    def attach_study(self, handle: StudyHandle) -> None: ...
    def add_reader(self, study_id: str, name: str, simulated: bool = False) -> str: ...
    def simulate_panel(self, study_id: str, n_readers: int, accuracy: float,
                       seed: int) -> list[str]: ...
    def reader_link(self, base_url: str, token: str) -> str: ...


class EmbeddedTransport:
    """Direct calls into the service libraries, sharing one SQLite (or any) database."""

    name = "embedded"

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def import_dataset(self, path: Path) -> str:
        from sonoaudit.datasets.importer import import_dataset

        return import_dataset(self.ctx, path).id

    def train(self, dataset_id: str, class_label: str, profile: str, seed: int,
              steps: int | None, out_dir: Path,
              options: dict[str, str] | None = None) -> str:
        from sonoaudit_generator.checkpoint import has_checkpoint
        from sonoaudit_generator.store_training import train_model

        # An interrupted earlier run left a checkpoint: continue it rather than start over.
        # out_dir is keyed by the training inputs (Pipeline._model_dir), so the checkpoint there
        # was made from the same dataset, class, profile, steps and seed.
        opts = options or {}
        # has_checkpoint also repairs a save interrupted between its two renames.
        resume = has_checkpoint(out_dir / "checkpoint")
        model = train_model(self.ctx, dataset_id, class_label, profile, out_dir, seed,
                            steps=steps, resume=resume, backbone=opts.get("backbone"),
                            schedule=opts.get("schedule"), prediction=opts.get("prediction"))
        if model is None:
            raise RuntimeError(f"training of the {class_label} model did not finish")
        return model.id

    def generate(self, model_id: str, n: int, sampler: str, steps: int | None, seed: int,
                 out_dir: Path) -> str:
        from sonoaudit_generator.generation import generate

        return generate(self.ctx, model_id, n, sampler, steps, seed, out_dir).id

    def metrics(self, real_ref: str, synthetic_ref: str, class_label: str | None) -> str:
        from sonoaudit_metrics.runs import run_metrics

        return run_metrics(self.ctx, real_ref, synthetic_ref, class_label).id

    def llm_problem(self, backend: str | None) -> str | None:
        from sonoaudit_classifier.batch import llm_status

        return llm_status(backend=backend)

    def classify(self, image_ids: list[str], backend: str | None, condition: str,
                 replicates: int) -> dict[str, Any]:
        from sonoaudit_classifier.batch import classify_images

        rows = classify_images(self.ctx, image_ids, backend, condition, replicates)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        return {"n_results": len(rows), "status_counts": counts}

    def create_study(self, name: str, real_ids: list[str], synthetic_ids: list[str],
                     seed: int, n_repeats: int = 0) -> StudyHandle:
        from sonoaudit_raters.study.setup import create_study

        study, token = create_study(self.ctx, name, real_ids, synthetic_ids, seed=seed,
                                    n_repeats=n_repeats)
        return StudyHandle(study.id, token)

    def attach_study(self, handle: StudyHandle) -> None:
        """An existing study is reused; in-process calls need no admin token."""

    def add_reader(self, study_id: str, name: str, simulated: bool = False) -> str:
        from sonoaudit_raters.study.setup import add_reader

        return add_reader(self.ctx, study_id, name, simulated=simulated)

    def simulate_panel(self, study_id: str, n_readers: int, accuracy: float,
                       seed: int) -> list[str]:
        from sonoaudit_raters.study.simulate import simulate_panel

        return simulate_panel(self.ctx, study_id, n_readers, accuracy, seed)

    def reader_link(self, base_url: str, token: str) -> str:
        from sonoaudit_raters.study.setup import reader_link

        return reader_link(base_url, token)
