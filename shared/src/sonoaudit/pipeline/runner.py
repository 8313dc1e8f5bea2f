"""Runs the steps in order, records each in the store, skips the ones already done with the same
inputs, and forces a step and all after it with ``from_step``.

A step's inputs are its config section, the outputs of the steps it depends on (without their
timings) and, for agreement and report, a fingerprint of the study's answers and readers (readers
answer between runs). A step that returns ``{"not_run": why}`` is recorded as ``not_run``, never as
done, so it is tried again on the next run (e.g. once GEMINI_API_KEY is set)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from sonoaudit.context import AppContext
from sonoaudit.db.base import utcnow
from sonoaudit.db.models import Answer, Image, PipelineRun, PipelineStep, Reader, Study, StudyItem
from sonoaudit.db.session import session_scope
from sonoaudit.pipeline.config import RunConfig
from sonoaudit.pipeline.transport import StudyHandle, Transport
from sonoaudit.provenance import provenance

log = logging.getLogger(__name__)

STEPS = ("import", "train", "generate", "metrics", "classify", "study", "agreement", "report")
# What each step's inputs include besides its own config section.
DEPENDS: dict[str, tuple[str, ...]] = {
    "import": (),
    "train": ("import",),
    "generate": ("train",),
    "metrics": ("import", "generate"),
    "classify": ("import", "generate"),
    "study": ("import", "generate", "classify"),
    # the analysis also reads the study images' LLM answers and metric runs from the store
    "agreement": ("study", "metrics", "classify"),
    "report": ("study", "metrics", "classify", "agreement"),
}

Echo = Callable[[str], None]


@dataclass
class RunResult:
    run_id: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _without_timing(output: dict[str, Any] | None) -> dict[str, Any] | None:
    """A step's output as an input of later steps: its run time is no input of theirs."""
    return None if output is None else {k: v for k, v in output.items() if k != "seconds"}


# Where `sonoaudit serve raters` answers by default (embedded mode's reader links).
EMBEDDED_BASE_URL = "http://127.0.0.1:8000"

# Steps whose result depends on what readers did since the last run, not only on the pipeline.
READS_ANSWERS = ("agreement", "report")


class Pipeline:
    def __init__(self, ctx: AppContext, transport: Transport, config: RunConfig,
                 out_dir: Path, echo: Echo = print) -> None:
        self.ctx = ctx
        self.t = transport
        self.cfg = config
        self.out = out_dir
        self.echo = echo
        self._previous: dict[str, PipelineStep] = {}

    # -- state ------------------------------------------------------------------------------
    def _run_row(self) -> str:
        with session_scope(self.ctx.sessions) as s:
            run = s.scalar(select(PipelineRun).where(PipelineRun.name == self.cfg.name))
            if run is None:
                run = PipelineRun(name=self.cfg.name, config=self.cfg.model_dump(),
                                  transport=self.t.name)
                s.add(run)
                s.flush()
            else:
                run.config = self.cfg.model_dump()
                run.transport = self.t.name
            return run.id

    def _load_steps(self, run_id: str) -> dict[str, PipelineStep]:
        with self.ctx.sessions() as s:
            rows = s.scalars(select(PipelineStep).where(PipelineStep.run_id == run_id)).all()
            for r in rows:
                s.expunge(r)
            return {r.step: r for r in rows}

    def _record(self, run_id: str, step: str, status: str, inputs_hash: str,
                output: dict[str, Any] | None = None, error: str | None = None) -> None:
        with session_scope(self.ctx.sessions) as s:
            row = s.scalar(select(PipelineStep).where(PipelineStep.run_id == run_id,
                                                      PipelineStep.step == step))
            if row is None:
                row = PipelineStep(run_id=run_id, step=step, status=status,
                                   inputs_hash=inputs_hash)
                s.add(row)
            row.status = status
            row.inputs_hash = inputs_hash
            row.output = output or {}
            row.error = error
            row.provenance = provenance(step=step, transport=self.t.name,
                                        config=self.cfg.section(step))
            if status == "running":
                row.started_at = utcnow()
                row.finished_at = None
            else:
                row.finished_at = utcnow()

    def _base_url(self) -> str:
        """Where the reader links point: the config's study.base_url, else the raters service
        the pipeline talks to (distributed), else a local `sonoaudit serve raters`."""
        if self.cfg.study.base_url:
            return self.cfg.study.base_url
        if self.t.name == "distributed":
            return self.ctx.settings.raters_url
        return EMBEDDED_BASE_URL

    def _answers_fingerprint(self, study_id: str | None) -> dict[str, Any]:
        """What readers changed since the last run: answers are append-only events (an edit is a
        new row), so their count and latest id/time change with every answer; readers added or
        revoked change the reader counts."""
        if not study_id:
            return {}
        with self.ctx.sessions() as s:
            n, last_id, last_at = s.execute(
                select(func.count(Answer.id), func.max(Answer.id), func.max(Answer.created_at))
                .where(Answer.study_id == study_id)).one()
            readers, revoked = s.execute(
                select(func.count(Reader.id), func.count(Reader.revoked_at))
                .where(Reader.study_id == study_id)).one()
        return {"answers": int(n), "last_answer_id": last_id, "last_answer_at": str(last_at),
                "readers": int(readers), "revoked": int(revoked)}

    # -- run --------------------------------------------------------------------------------
    def run(self, from_step: str | None = None, only: str | None = None) -> RunResult:
        if from_step is not None and from_step not in STEPS:
            raise ValueError(f"--from {from_step!r}: expected one of {', '.join(STEPS)}")
        self.out.mkdir(parents=True, exist_ok=True)
        run_id = self._run_row()
        done = self._load_steps(run_id)
        self._previous = done
        result = RunResult(run_id)
        forced = False
        for i, step in enumerate(STEPS, 1):
            forced = forced or step == from_step
            inputs: dict[str, Any] = {
                "config": self.cfg.section(step),
                "after": {d: _without_timing(result.outputs.get(d)) for d in DEPENDS[step]}}
            if step in READS_ANSWERS:
                inputs["answers"] = self._answers_fingerprint(
                    result.outputs.get("study", {}).get("study_id"))
            h = _hash(inputs)
            prev = done.get(step)
            if not forced and prev is not None and prev.status == "done" and prev.inputs_hash == h:
                result.outputs[step] = prev.output
                result.skipped.append(step)
                self.echo(f"[{i}/{len(STEPS)}] {step}: done before, skipped "
                          f"(use --from {step} to force)")
                continue
            self.echo(f"[{i}/{len(STEPS)}] {step} …")
            self._record(run_id, step, "running", h)
            start = time.perf_counter()
            try:
                output = getattr(self, f"step_{step}")(result.outputs)
            except Exception as exc:
                self._record(run_id, step, "failed", h, error="".join(
                    traceback.format_exception(exc)))
                self.echo(f"[{i}/{len(STEPS)}] {step}: FAILED: {exc}")
                raise
            output["seconds"] = round(time.perf_counter() - start, 1)
            not_run = bool(output.get("not_run"))
            self._record(run_id, step, "not_run" if not_run else "done", h, output)
            result.outputs[step] = output
            result.ran.append(step)
            if not_run:
                self.echo(f"[{i}/{len(STEPS)}] {step}: not run (tried again on the next run)")
            else:
                self.echo(f"[{i}/{len(STEPS)}] {step}: done in {output['seconds']} s")
        (self.out / "pipeline.json").write_text(json.dumps(
            {"run_id": run_id, "name": self.cfg.name, "transport": self.t.name,
             "steps": result.outputs}, indent=2, default=str))
        return result

    # -- steps ------------------------------------------------------------------------------
    def step_import(self, _: dict[str, Any]) -> dict[str, Any]:
        data = self.cfg.data
        if data.path:
            path = Path(data.path).expanduser().resolve()
            phantom = False
        else:
            from sonoaudit.datasets import write_phantom

            path = self.out / "phantom-dataset"
            ph = data.phantom
            write_phantom(path, n_per_class=ph.n_per_class, seed=ph.seed, size=ph.size)
            phantom = True
            self.echo(f"    built-in PHANTOM dataset written to {path}")
        dataset_id = self.t.import_dataset(path)
        counts = self._class_counts(dataset_id)
        missing = [c for c in self.cfg.classes if not counts.get(c)]
        if missing:
            raise ValueError(f"dataset {path} has no images of class {', '.join(missing)} "
                             f"(has {counts}); set `classes:` in the config")
        self.echo(f"    dataset {dataset_id}: {counts}{' (PHANTOM)' if phantom else ''}")
        return {"dataset_id": dataset_id, "path": str(path), "phantom": phantom,
                "counts": counts}

    def _class_counts(self, dataset_id: str) -> dict[str, int]:
        with self.ctx.sessions() as s:
            rows = s.execute(select(Image.class_label).where(Image.dataset_id == dataset_id)).all()
        counts: dict[str, int] = {}
        for (label,) in rows:
            counts[label] = counts.get(label, 0) + 1
        return counts

    def step_train(self, outs: dict[str, Any]) -> dict[str, Any]:
        tc = self.cfg.train
        dataset_id = outs["import"]["dataset_id"]
        models = {}
        for cls in self.cfg.classes:
            self.echo(f"    training the {cls} model ({tc.profile} profile)")
            models[cls] = self.t.train(dataset_id, cls, tc.profile, tc.seed, tc.steps,
                                       self._model_dir(dataset_id, cls), tc.options())
        return {"models": models}

    def _model_dir(self, dataset_id: str, cls: str) -> Path:
        """One folder per training inputs: an interrupted run resumes its own checkpoint, and a
        run with other data, profile, steps or seed trains afresh instead of reusing (or failing
        on) a checkpoint made from other inputs."""
        tc = self.cfg.train
        key = _hash({"dataset_id": dataset_id, "class": cls, "profile": tc.profile,
                     "steps": tc.steps, "seed": tc.seed, **tc.options()})[:16]
        return self.out / "models" / cls / key

    def step_generate(self, outs: dict[str, Any]) -> dict[str, Any]:
        g = self.cfg.generate
        runs = {}
        for cls, model_id in outs["train"]["models"].items():
            self.echo(f"    generating {g.n} {cls} pairs ({g.sampler}, {g.steps} steps)")
            # a folder per generation inputs: a forced re-run with other settings (fewer
            # samples) never leaves an earlier run's pairs beside its own
            key = _hash({"model_id": model_id, "n": g.n, "sampler": g.sampler,
                         "steps": g.steps, "seed": g.seed})[:16]
            runs[cls] = self.t.generate(model_id, g.n, g.sampler, g.steps, g.seed,
                                        self.out / "synthetic" / cls / key)
        return {"runs": runs}

    def step_metrics(self, outs: dict[str, Any]) -> dict[str, Any]:
        if not self.cfg.metrics.enabled:
            return {"not_run": "metrics disabled in the config (metrics.enabled: false)"}
        dataset_id = outs["import"]["dataset_id"]
        runs = {}
        for cls, gen_id in outs["generate"]["runs"].items():
            self.echo(f"    scoring {cls}: real vs synthetic")
            runs[cls] = self.t.metrics(dataset_id, gen_id, cls)
        return {"metric_runs": runs}

    def _study_images(self, outs: dict[str, Any]) -> tuple[list[str], list[str]]:
        sc = self.cfg.study
        real: list[str] = []
        synthetic: list[str] = []
        with self.ctx.sessions() as s:
            for cls in self.cfg.classes:
                # held-out (validation) images first: they were not used to train the models
                rows = s.execute(select(Image.id, Image.split).where(
                    Image.dataset_id == outs["import"]["dataset_id"],
                    Image.class_label == cls).order_by(Image.name)).all()
                ordered = [r.id for r in rows if r.split == "val"] + \
                    [r.id for r in rows if r.split != "val"]
                real += ordered[: sc.n_real_per_class]
                gen = outs["generate"]["runs"].get(cls)
                if gen:
                    ids = s.scalars(select(Image.id).where(Image.generation_run_id == gen)
                                    .order_by(Image.sample_index)).all()
                    synthetic += list(ids)[: sc.n_synthetic_per_class]
        return real, synthetic

    def step_classify(self, outs: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg.classify
        if not c.enabled:
            return {"not_run": "LLM classification disabled in the config (classify.enabled)"}
        problem = self.t.llm_problem(c.backend)
        if problem:
            self.echo(f"    LLM classification not run: {problem}")
            return {"not_run": problem}
        real, synthetic = self._study_images(outs)
        self.echo(f"    classifying {len(real) + len(synthetic)} images × {c.replicates}")
        return self.t.classify(real + synthetic, c.backend, c.condition, c.replicates)

    def step_study(self, outs: dict[str, Any]) -> dict[str, Any]:
        sc = self.cfg.study
        real, synthetic = self._study_images(outs)
        panel = sc.simulate_panel.model_dump() if sc.simulate_panel is not None else None
        links_file = self.out / "reader-links.txt"
        earlier = self._reusable_study(real, synthetic, panel)
        old_lines: list[str] = []
        if earlier is not None:
            # Same items, seed and panel: keep the study, its readers' links and their answers.
            # The LLM answer shown to readers is looked up when they read, so answers of a newer
            # classify step appear without a new study.
            old_lines = links_file.read_text().splitlines()[1:] if links_file.is_file() else []
            admin = next((ln.removeprefix("admin token: ") for ln in old_lines
                          if ln.startswith("admin token: ")), None)
            handle = StudyHandle(earlier, admin)
            self.t.attach_study(handle)
            have = self._reader_names(earlier)
            self.echo(f"    study {earlier} has the same items: reused, with its readers and "
                      "answers (change study.seed or the run name for a new study)")
            if have and not old_lines:
                self.echo(f"    {links_file} is missing: earlier readers keep the links they "
                          "were sent")
        else:
            handle = self.t.create_study(self.cfg.name, real, synthetic, sc.seed,
                                         n_repeats=sc.n_repeats)
            have = set()
        links = []
        for reader in sc.readers:
            if reader in have:
                continue
            token = self.t.add_reader(handle.study_id, reader)
            links.append(f"{reader}: {self.t.reader_link(self._base_url(), token)}")
        simulated: list[str] = []
        if sc.simulate_panel is not None and earlier is None:
            p = sc.simulate_panel
            simulated = self.t.simulate_panel(handle.study_id, p.n_readers, p.accuracy, p.seed)
            self.echo(f"    SIMULATED reader panel: {len(simulated)} readers answered every item")
        elif sc.simulate_panel is not None:
            simulated = sorted(self._reader_names(handle.study_id, simulated=True))
        # Tokens are stored hashed; this file is the only place the links exist.
        lines = [f"study {handle.study_id} ({len(real)} real + {len(synthetic)} synthetic items)"]
        if old_lines:
            lines += old_lines
        elif handle.admin_token:
            lines.append(f"admin token: {handle.admin_token}")
        lines += links
        links_file.write_text("\n".join(lines) + "\n")
        links_file.chmod(0o600)
        for line in links:
            self.echo(f"    reader link — {line}")
        return {"study_id": handle.study_id, "n_real": len(real), "n_synthetic": len(synthetic),
                "n_repeats": sc.n_repeats,
                "readers": sc.readers, "simulated_readers": len(simulated), "panel": panel,
                "links_file": str(links_file)}

    def _reusable_study(self, real: list[str], synthetic: list[str],
                        panel: dict[str, Any] | None) -> str | None:
        """The study this run made before, when it has exactly these items, seed and panel."""
        prev = self._previous.get("study")
        before = (prev.output or {}) if prev is not None else {}
        study_id = before.get("study_id")
        if not study_id or before.get("panel") != panel or \
                before.get("n_repeats", 0) != self.cfg.study.n_repeats:
            return None
        with self.ctx.sessions() as s:
            study = s.get(Study, study_id)
            if study is None or study.seed != self.cfg.study.seed or \
                    study.simulated != (panel is not None):
                return None
            items = s.execute(select(StudyItem.image_id, StudyItem.source).where(
                StudyItem.study_id == study_id, StudyItem.repeat_of.is_(None))).all()
        want = {(i, "real") for i in real} | {(i, "synthetic") for i in synthetic}
        have = {(r.image_id, r.source) for r in items}
        return str(study_id) if have == want and len(items) == len(want) else None

    def _reader_names(self, study_id: str, simulated: bool = False) -> set[str]:
        with self.ctx.sessions() as s:
            return set(s.scalars(select(Reader.name).where(
                Reader.study_id == study_id, Reader.simulated.is_(simulated))))

    def step_agreement(self, outs: dict[str, Any]) -> dict[str, Any]:
        from sonoaudit_raters.report.analysis import analyse_study
        from sonoaudit_raters.report.study_data import load_study
        from sonoaudit_raters.stats import public

        rc = self.cfg.report
        data = load_study(self.ctx, outs["study"]["study_id"])
        analysis = public(analyse_study(data, n_boot=rc.bootstrap, seed=rc.seed))
        path = self.out / "agreement.json"
        path.write_text(json.dumps(analysis, indent=2, default=str, allow_nan=False))
        return {"agreement_json": str(path)}

    def step_report(self, outs: dict[str, Any]) -> dict[str, Any]:
        from sonoaudit_raters.report.render import build_report

        rc = self.cfg.report
        not_run = []
        for step in ("metrics", "classify"):
            why = outs.get(step, {}).get("not_run")
            if why:
                not_run.append({"section": {"classify": "LLM classification",
                                            "metrics": "metrics"}[step], "why": why})
        report = build_report(self.ctx, outs["study"]["study_id"], n_boot=rc.bootstrap,
                              seed=rc.seed, not_run=not_run)
        report_dir = self.out / "report"
        paths = report.write(report_dir)
        html = next(p for p in paths if p.suffix == ".html")
        return {"report_html": str(html), "files": [str(p) for p in paths]}
