"""Done-when of issue 8: the distributed mode runs the same config through the four services on
the real Postgres and NATS. The four services run as real uvicorn processes (`sonoaudit serve`),
`sonoaudit run-study` runs as a separate process with SONOAUDIT_NATS_URL and
SONOAUDIT_DATABASE_URL set, and the rows it leaves are compared with an embedded run of the same
config (SQLite, in-process) and with the counts the config implies."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))  # reuse the ops helpers
from opshelpers import SERVICES, ServiceProcess, service_env  # noqa: E402
from sonoaudit.cli.main import app  # noqa: E402
from sonoaudit.db.migrate import upgrade  # noqa: E402
from sonoaudit.db.models import (  # noqa: E402
    Answer,
    GenerationRun,
    Image,
    Job,
    MetricRun,
    Model,
    PipelineStep,
    Reader,
    StudyItem,
)
from sonoaudit.pipeline.runner import STEPS  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = """
name: tiny-dist
data: {phantom: {n_per_class: 6, size: 64, seed: 0}}
train: {profile: quick, steps: 2}
generate: {n: 3, sampler: ddim, steps: 3}
study: {n_real_per_class: 3, n_synthetic_per_class: 3, readers: [dr-a],
        simulate_panel: {n_readers: 3, accuracy: 0.8}}
report: {bootstrap: 200}
"""
CREATOR = "creator-token-for-the-test"
NO_LLM = {"GEMINI_API_KEY": "", "GOOGLE_API_KEY": ""}


def counts(db_url: str, state: dict[str, Any]) -> dict[str, Any]:
    """Rows of one run, found through the ids its pipeline.json recorded (the Postgres database
    may hold other tests' rows)."""
    steps = state["steps"]
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            def n(stmt: Any) -> int:
                return int(c.execute(stmt).scalar_one())

            ds = steps["import"]["dataset_id"]
            gens = list(steps["generate"]["runs"].values())
            study = steps["study"]["study_id"]
            metric_ids = list(steps["metrics"]["metric_runs"].values())
            return {
                "real_images": n(select(func.count()).select_from(Image)
                                 .where(Image.dataset_id == ds)),
                "models": n(select(func.count()).select_from(Model).where(
                    Model.id.in_(list(steps["train"]["models"].values())))),
                "generation_runs_done": n(select(func.count()).select_from(GenerationRun).where(
                    GenerationRun.id.in_(gens), GenerationRun.status == "done")),
                "synthetic_images": n(select(func.count()).select_from(Image)
                                      .where(Image.generation_run_id.in_(gens))),
                "metric_runs_done": n(select(func.count()).select_from(MetricRun).where(
                    MetricRun.id.in_(metric_ids), MetricRun.status == "done")),
                "study_items": n(select(func.count()).select_from(StudyItem)
                                 .where(StudyItem.study_id == study)),
                "readers": n(select(func.count()).select_from(Reader)
                             .where(Reader.study_id == study, Reader.simulated.is_(False))),
                "simulated_readers": n(select(func.count()).select_from(Reader)
                                       .where(Reader.study_id == study, Reader.simulated)),
                "answering_readers": n(select(func.count(func.distinct(Answer.reader_id)))
                                       .where(Answer.study_id == study)),
                "steps_done": n(select(func.count()).select_from(PipelineStep).where(
                    PipelineStep.run_id == state["run_id"], PipelineStep.status == "done")),
                "classify": steps["classify"].get("not_run", "ran"),
            }
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def services(postgres_url: str, nats_server: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    root = tmp_path_factory.mktemp("distributed")
    upgrade(postgres_url)  # the migration Job's work; services do not migrate themselves
    # One home and one store folder for every process: the shared volume of a deployment.
    env = service_env(root, database_url=postgres_url, nats_url=nats_server,
                      study_creator_token=CREATOR, generator_sync_max_n="0")
    env.update(NO_LLM)
    procs = [ServiceProcess(s, env, root) for s in SERVICES]
    try:
        for p in procs:
            p.wait_alive()
        env.update({f"SONOAUDIT_{p.service.upper()}_URL": p.url for p in procs})
        env["SONOAUDIT_JOB_POLL_S"] = "0.3"
        env["SONOAUDIT_JOB_TIMEOUT_S"] = "300"
        yield env, root
    finally:
        for p in procs:
            p.stop()


def test_distributed_run_matches_embedded(services: tuple[dict[str, str], Path],
                                          postgres_url: str, tmp_path: Path) -> None:
    env, root = services
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)

    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "sonoaudit.cli.main", "run-study", str(cfg), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in root.glob("*.log"))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n--- service logs ---\n{logs}"
    output = proc.stdout
    print(output)  # the progress lines, shown with -rP
    assert "distributed mode" in output
    for i, step in enumerate(STEPS, 1):
        if step == "classify":  # no LLM key: not run, tried again on the next run
            assert f"[{i}/{len(STEPS)}] {step}: not run" in output
        else:
            assert f"[{i}/{len(STEPS)}] {step}: done in" in output
    # Progress of the queued jobs is shown while the pipeline waits.
    assert "train benign (job " in output and "generate 3 (job " in output
    assert "metrics malignant (job " in output

    state = json.loads((out / "pipeline.json").read_text())
    assert state["transport"] == "distributed"
    html = Path(state["steps"]["report"]["report_html"]).read_text()
    assert "SIMULATED" in html and "PHANTOM" in html and "GEMINI_API_KEY" in html
    dist = counts(postgres_url, state)

    # The long work went through JetStream jobs that the services' workers finished.
    engine = create_engine(postgres_url)
    with engine.connect() as c:
        kinds = dict(c.execute(select(Job.kind, func.count()).where(Job.status == "done")
                               .group_by(Job.kind)).all())
        train_jobs = c.execute(select(Job.result).where(Job.kind == "train",
                                                        Job.status == "done")).scalars().all()
    engine.dispose()
    assert {r["model_id"] for r in train_jobs} >= set(state["steps"]["train"]["models"].values())
    assert kinds.get("generate", 0) >= 2 and kinds.get("metrics", 0) >= 2

    # Reader links point at the raters service (no study.base_url in the config) and open the
    # reader page there.
    links = (out / "reader-links.txt").read_text()
    link = links.split("dr-a: ")[1].split()[0]
    assert link.startswith(f"{env['SONOAUDIT_RATERS_URL'].rstrip('/')}/study/r/")
    assert f"reader link — dr-a: {link}" in output
    r = httpx.get(link, timeout=10, follow_redirects=True)
    assert r.status_code == 200

    # The same config, embedded: same rows.
    emb_out = tmp_path / "emb"
    res = CliRunner().invoke(app, ["run-study", str(cfg), "--out", str(emb_out)],
                             env={"SONOAUDIT_HOME": str(tmp_path / "emb-home"),
                                  "SONOAUDIT_DATABASE_URL": None, "SONOAUDIT_NATS_URL": None,
                                  "SONOAUDIT_STORE_DIR": None, **NO_LLM})
    assert res.exit_code == 0, res.output
    emb_state = json.loads((emb_out / "pipeline.json").read_text())
    emb = counts(f"sqlite:///{tmp_path / 'emb-home' / 'sonoaudit.db'}", emb_state)
    assert dist == emb
    # ... and what the config implies (2 classes × 6 phantom images, 3 samples per class,
    # 3 + 3 study items per class, one invited and three simulated readers; every step done
    # but classify, recorded as not_run).
    assert dist == {"real_images": 12, "models": 2, "generation_runs_done": 2,
                    "synthetic_images": 6, "metric_runs_done": 2, "study_items": 12,
                    "readers": 1, "simulated_readers": 3, "answering_readers": 3,
                    "steps_done": 7, "classify": dist["classify"]}
    assert "GEMINI_API_KEY" in str(dist["classify"])


def test_unreachable_service_is_named(tmp_path: Path, postgres_url: str,
                                      nats_server: str) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    env = service_env(tmp_path, database_url=postgres_url, nats_url=nats_server,
                      generator_url="http://127.0.0.1:9")  # nothing listens on port 9
    proc = subprocess.run(
        [sys.executable, "-m", "sonoaudit.cli.main", "run-study", str(cfg), "--out",
         str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "cannot reach the generator service at http://127.0.0.1:9/readyz" in proc.stderr
    assert "SONOAUDIT_GENERATOR_URL" in proc.stderr
