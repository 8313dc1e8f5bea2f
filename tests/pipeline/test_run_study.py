"""The main job end to end in embedded mode (SQLite, in-process calls) on a tiny phantom study:
every step runs and is recorded, a re-run skips all of them (but tries a not-run step again),
``--from`` forces a step and the ones after it, new answers re-run agreement and report, the LLM
step runs once a key is set, the study (with its answers) is kept when its items did not change,
and the report says what was simulated, phantom or not run."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from sonoaudit.cli.main import app
from sonoaudit.context import build_context
from sonoaudit.db.models import Answer, Study, StudyItem
from sonoaudit.pipeline.config import load_config
from sonoaudit.pipeline.runner import STEPS
from sonoaudit.settings import Settings
from sqlalchemy import func, select
from typer.testing import CliRunner

REPORT_TEMPLATE = (Path(__file__).resolve().parents[2] / "services" / "raters" / "src" /
                   "sonoaudit_raters" / "templates" / "report" / "report.html.j2")


class _IdParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids += [v for k, v in attrs if k == "id" and v]


def _ids(html: str) -> list[str]:
    parser = _IdParser()
    parser.feed(html)
    return parser.ids


def _sections(html: str) -> dict[str, str]:
    """Section id -> its HTML up to the next element with an id."""
    marks = [(m.start(), m.group(1)) for m in re.finditer(r'<[a-z0-9]+[^>]*\bid="([^"]+)"', html)]
    ends = [start for start, _ in marks[1:]] + [len(html)]
    return {name: html[start:end] for (start, name), end in zip(marks, ends, strict=True)}


TINY = """
name: tiny
data: {phantom: {n_per_class: 6, size: 64, seed: 0}}
train: {profile: quick, steps: 2, prediction: v}
generate: {n: 3, sampler: ddim, steps: 3}
study: {n_real_per_class: 3, n_synthetic_per_class: 3, readers: [dr-a], n_repeats: 4,
        simulate_panel: {n_readers: 3, accuracy: 0.8}}
report: {bootstrap: 200}
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("runstudy")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY)
    out = root / "out"
    env = {"SONOAUDIT_HOME": str(root / "home"), "GEMINI_API_KEY": "", "GOOGLE_API_KEY": ""}
    res = CliRunner().invoke(app, ["run-study", str(cfg), "--out", str(out)], env=env)
    assert res.exit_code == 0, res.output
    return cfg, out, res.output


@pytest.mark.slow
def test_every_step_runs_and_report_is_labelled(tiny_run: tuple[Path, Path, str]) -> None:
    _, out, output = tiny_run
    for i, step in enumerate(STEPS, 1):
        if step == "classify":  # no key: not run, and not recorded as done
            assert f"[{i}/{len(STEPS)}] {step}: not run (tried again on the next run)" in output
        else:
            assert f"[{i}/{len(STEPS)}] {step}: done in" in output
    state = json.loads((out / "pipeline.json").read_text())
    assert set(state["steps"]) == set(STEPS)
    assert set(state["steps"]["train"]["models"]) == {"benign", "malignant"}
    for cls in ("benign", "malignant"):  # train.prediction reached the trained models
        (cfg_json,) = (out / "models" / cls).glob("*/checkpoint/config.json")
        assert json.loads(cfg_json.read_text())["profile"]["schedule"]["prediction_type"] == \
            "v_prediction"
    assert state["steps"]["import"]["phantom"] is True
    assert state["steps"]["study"]["n_real"] == 6 and state["steps"]["study"]["n_synthetic"] == 6
    assert "GEMINI_API_KEY" in state["steps"]["classify"]["not_run"]
    html = Path(state["steps"]["report"]["report_html"]).read_text()
    assert "SIMULATED" in html and "PHANTOM" in html
    # Every section of the report template is in the page, once, in the template's order.
    sections = re.findall(r'\bid="([a-z-]+)"', REPORT_TEMPLATE.read_text())
    assert {"banner", "not-run", "metrics", "agreement", "confidence", "accuracy", "llm",
            "intra", "memorisation", "images", "provenance"} <= set(sections)
    assert _ids(html) == sections
    body = _sections(html)
    assert "SIMULATED" in body["banner"]
    assert "GEMINI_API_KEY" in body["not-run"]  # the LLM step says why it did not run
    assert "No LLM classifications stored" in body["llm"]
    for computed in ("metrics", "agreement", "confidence", "accuracy"):
        assert "<table" in body[computed], computed  # a simulated panel answered every item
    for pictured in ("memorisation", "images"):
        assert "<img" in body[pictured], pictured
    # n_repeats: 4 -> every simulated reader read 4 items twice; the section has its table
    assert state["steps"]["study"]["n_repeats"] == 4
    assert "<table" in body["intra"] and "pooled" in body["intra"]
    assert "<pre>" in body["provenance"]
    assert f"report: {out / 'report'}" in output
    links = (out / "reader-links.txt").read_text()
    assert "dr-a: http://127.0.0.1:8000/study/r/" in links
    assert (out / "reader-links.txt").stat().st_mode & 0o077 == 0  # tokens: owner-only file


@pytest.mark.slow
def test_rerun_skips_and_from_forces(tiny_run: tuple[Path, Path, str]) -> None:
    cfg, out, _ = tiny_run
    env = {"SONOAUDIT_HOME": str(out.parent / "home"), "GEMINI_API_KEY": "", "GOOGLE_API_KEY": ""}
    res = CliRunner().invoke(app, ["run-study", str(cfg), "--out", str(out)], env=env)
    assert res.exit_code == 0, res.output
    # every step but classify, which did not run and is tried again
    assert res.output.count("skipped") == len(STEPS) - 1
    assert "[5/8] classify: not run" in res.output
    res = CliRunner().invoke(app, ["run-study", str(cfg), "--out", str(out), "--from",
                                   "agreement"], env=env)
    assert res.exit_code == 0, res.output
    assert res.output.count("skipped") == len(STEPS) - 3
    assert "[7/8] agreement: done in" in res.output and "[8/8] report: done in" in res.output


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngenerate: {n: 0, sampler: magic}\n")
    with pytest.raises(ValueError) as err:
        load_config(bad)
    msg = str(err.value)
    assert "generate.n" in msg and "generate.sampler" in msg and str(bad) in msg
    res = CliRunner().invoke(app, ["run-study", str(bad)])
    assert res.exit_code == 2 and "generate.n" in res.output
    res = CliRunner().invoke(app, ["run-study", "demo", "--from", "nonsense"])
    assert res.exit_code == 2 and "expected one of import, train" in res.output


def test_bundled_demo_config_loads() -> None:
    cfg = load_config("demo")
    assert cfg.data.path is None and cfg.study.simulate_panel is not None
    cfg = load_config("demo", **{"data.path": "/data/BUSBRA"})
    assert cfg.data.path == "/data/BUSBRA"


def _rerun(cfg: Path, out: Path, *extra: str, **env: str) -> str:
    env = {"SONOAUDIT_HOME": str(out.parent / "home"), "GEMINI_API_KEY": "",
           "GOOGLE_API_KEY": "", **env}
    res = CliRunner().invoke(app, ["run-study", str(cfg), "--out", str(out), *extra], env=env)
    assert res.exit_code == 0, res.output
    return res.output


def _ran(output: str) -> list[str]:
    return [step for i, step in enumerate(STEPS, 1)
            if f"[{i}/{len(STEPS)}] {step}: done in" in output]


@pytest.mark.slow
def test_rerun_follows_answers_and_llm_and_keeps_the_study(
    tiny_run: tuple[Path, Path, str]
) -> None:
    from sonoaudit_classifier.testing.fake_servers import FakeGeminiServer
    from sonoaudit_raters.study.reading import reader_view, reveal_llm, submit
    from sonoaudit_raters.study.setup import reader_for_token

    cfg, out, _ = tiny_run
    ctx = build_context(Settings(home=out.parent / "home"))
    try:
        state = json.loads((out / "pipeline.json").read_text())
        study_id = state["steps"]["study"]["study_id"]
        links = (out / "reader-links.txt").read_text()
        token = links.split("dr-a: ")[1].split()[0].rsplit("/", 1)[1]
        with ctx.sessions() as s:
            # a first reading (the study repeats some items; a repeat's answer counts for
            # intra-reader agreement, not accuracy), wherever the reader's order puts it
            first = next(i for i in reader_view(s, reader_for_token(s, token)).items
                         if s.get_one(StudyItem, i.item_id).repeat_of is None)
            truth = s.get_one(StudyItem, first.item_id).ground_truth

        def agreement() -> dict[str, Any]:
            return dict(json.loads((out / "agreement.json").read_text()))

        assert "dr-a" not in agreement()["reader_accuracy"]["strata"]["all"]["raters"]
        n_ratings = agreement()["class_agreement"]["strata"]["all"]["n_ratings"]

        # (a) a reader answers between runs: a plain re-run redoes agreement and report
        submit(ctx, token, first.item_key, "read", {"class": truth, "confidence": "60"},
               client_event_id="answer-one-0001")
        output = _rerun(cfg, out)
        assert _ran(output) == ["agreement", "report"], output
        dr_a = agreement()["reader_accuracy"]["strata"]["all"]["raters"]["dr-a"]
        assert (dr_a["n"], dr_a["n_correct"]) == (1, 1)
        assert agreement()["class_agreement"]["strata"]["all"]["n_ratings"] == n_ratings + 1
        # nothing changed since: both are skipped again
        assert _ran(_rerun(cfg, out)) == []

        with FakeGeminiServer() as gemini:
            llm_env = {"GEMINI_API_KEY": "fake-key", "SONOAUDIT_GEMINI_BASE_URL": gemini.url}
            # (b) a key is set now: the not-run classify step runs on a plain re-run
            output = _rerun(cfg, out, **llm_env)
            assert "[5/8] classify: done in" in output
            # (c) the study has the same items: reused, dr-a's link and answer kept
            assert f"study {study_id} has the same items: reused" in output
            state = json.loads((out / "pipeline.json").read_text())
            assert state["steps"]["study"]["study_id"] == study_id
            assert state["steps"]["classify"]["n_results"] == 12
            assert len(agreement()["llm"]) > 0
            html = Path(state["steps"]["report"]["report_html"]).read_text()
            assert "GEMINI_API_KEY" not in html
            # the reused study shows the new LLM answers to its readers
            assert reveal_llm(ctx, token, first.item_key).label in ("benign", "malignant", "normal")
            # --from classify: still the same study, nothing lost
            output = _rerun(cfg, out, "--from", "classify", **llm_env)
            assert _ran(output) == ["classify", "study", "agreement", "report"], output
        state = json.loads((out / "pipeline.json").read_text())
        assert state["steps"]["study"]["study_id"] == study_id
        assert (out / "reader-links.txt").read_text() == links
        with ctx.sessions() as s:
            assert s.scalar(select(func.count(Study.id)).where(Study.name == "tiny")) == 1
            answers = s.scalars(select(Answer).where(
                Answer.study_id == study_id,
                Answer.client_event_id.startswith("answer-one-0001"))).all()
            assert {a.question: a.value for a in answers} == {"class": truth,
                                                               "confidence": "60"}
    finally:
        ctx.close()


@pytest.mark.slow
def test_regenerating_with_other_settings_never_mixes_pairs(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    _rerun(cfg, out)
    first = json.loads((out / "pipeline.json").read_text())["steps"]["generate"]
    cfg.write_text(TINY.replace("generate: {n: 3,", "generate: {n: 2,"))
    _rerun(cfg, out, "--from", "generate")
    second = json.loads((out / "pipeline.json").read_text())["steps"]["generate"]
    for cls in ("benign", "malignant"):
        folders = sorted((out / "synthetic" / cls).iterdir())
        assert len(folders) == 2  # one per generation settings, each holding only its own pairs
        counts = sorted(len(list(f.glob("*_image.png"))) for f in folders)
        assert counts == [2, 3]
        for f in folders:
            manifest = json.loads((f / "manifest.json").read_text())
            assert len(manifest["samples"]) == len(list(f.glob("*_image.png")))
    assert first != second
