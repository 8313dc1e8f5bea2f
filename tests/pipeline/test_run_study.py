"""The main job end to end in embedded mode (SQLite, in-process calls) on a tiny phantom study:
every step runs and is recorded, a re-run skips all of them, ``--from`` forces a step and the
ones after it, and the report says what was simulated, phantom or not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sonoaudit.cli.main import app
from sonoaudit.pipeline.config import load_config
from sonoaudit.pipeline.runner import STEPS

TINY = """
name: tiny
data: {phantom: {n_per_class: 6, size: 64, seed: 0}}
train: {profile: quick, steps: 2}
generate: {n: 3, sampler: ddim, steps: 3}
study: {n_real_per_class: 3, n_synthetic_per_class: 3, readers: [dr-a],
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
        assert f"[{i}/{len(STEPS)}] {step}: done in" in output
    state = json.loads((out / "pipeline.json").read_text())
    assert set(state["steps"]) == set(STEPS)
    assert set(state["steps"]["train"]["models"]) == {"benign", "malignant"}
    assert state["steps"]["import"]["phantom"] is True
    assert state["steps"]["study"]["n_real"] == 6 and state["steps"]["study"]["n_synthetic"] == 6
    assert "GEMINI_API_KEY" in state["steps"]["classify"]["not_run"]
    html = Path(state["steps"]["report"]["report_html"]).read_text()
    assert "SIMULATED" in html and "PHANTOM" in html
    assert "GEMINI_API_KEY" in html  # the LLM section says why it did not run
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
    assert res.output.count("skipped") == len(STEPS)
    res = CliRunner().invoke(app, ["run-study", str(cfg), "--out", str(out), "--from",
                                   "agreement"], env=env)
    assert res.exit_code == 0, res.output
    assert res.output.count("skipped") == len(STEPS) - 2
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
