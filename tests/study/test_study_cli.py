"""``sonoaudit study …`` against a real store: create → invite → simulate → export → import."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from sonoaudit.cli.main import app
from typer.testing import CliRunner


@pytest.fixture
def cli_env(store: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SONOAUDIT_DATABASE_URL", store.settings.database_url)
    monkeypatch.setenv("SONOAUDIT_STORE_DIR", str(store.settings.store_dir))
    monkeypatch.setenv("SONOAUDIT_HOME", str(store.settings.home))
    return store


def test_cli_round_trip(cli_env: Any, tmp_path: Path) -> None:
    runner = CliRunner()
    runs = [a for r in cli_env.runs.values() for a in ("--generation-run", r)]
    res = runner.invoke(app, ["study", "create", "CLI study", "--dataset", cli_env.dataset_id,
                              *runs, "--per-class", "benign=2,malignant=1", "--repeats", "1",
                              "--reader", "Dr X", "--base-url", "http://h:9"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["n_real"], out["n_synthetic"], out["n_repeats"]) == (3, 3, 1)
    assert out["reader_links"]["Dr X"].startswith("http://h:9/study/r/")
    sid = out["study_id"]
    res = runner.invoke(app, ["study", "simulate", sid, "--readers", "2", "--accuracy", "1"])
    assert res.exit_code == 0, res.output
    prog = json.loads(runner.invoke(app, ["study", "progress", sid]).output)
    assert sorted((p["name"], p["done"], p["total"]) for p in prog) == [
        ("Dr X", 0, 7), ("simulated-1", 7, 7), ("simulated-2", 7, 7)]
    csv_path = tmp_path / "answers.csv"
    res = runner.invoke(app, ["study", "export", sid, "--out", str(csv_path)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 7 * 2 * 2  # no LLM answers in this store: class + confidence only
    assert all(r["simulated"] == r["study_has_simulated_readers"] == "True" for r in rows)
    assert all(r["answer"] == r["ground_truth"] for r in rows if r["question"] == "class")
    ext = tmp_path / "ext.csv"
    with ext.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["item", "reader", "question", "answer"])
        w.writeheader()
        w.writerows({"item": r["item"], "reader": "outside", "question": r["question"],
                     "answer": r["answer"]} for r in rows if r["reader"] == "simulated-1")
    res = runner.invoke(app, ["study", "import", sid, str(ext)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["recorded"] == 14
    res = runner.invoke(app, ["study", "export", sid, "--out", str(tmp_path / "all.json")])
    assert res.exit_code == 0
    data = json.loads((tmp_path / "all.json").read_text())
    assert data["study"]["simulated"] is True and len(data["rows"]) == 28 + 14
    # the imported reader is no simulated reader; the study has simulated readers
    assert {(r["reader"], r["simulated"], r["study_has_simulated_readers"])
            for r in data["rows"]} == {("simulated-1", True, True), ("simulated-2", True, True),
                                       ("outside", False, True)}


def test_cli_errors_are_clear(cli_env: Any, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["study", "create", "x"])
    assert res.exit_code == 2 and "needs images" in res.output
    res = runner.invoke(app, ["study", "create", "x", "--dataset", cli_env.dataset_id,
                              "--per-class", "benign=100"])
    assert res.exit_code == 2 and "only 40 available" in res.output
    res = runner.invoke(app, ["study", "create", "x", "--dataset", cli_env.dataset_id,
                              "--per-class", "benign"])
    assert res.exit_code == 2 and "CLASS=N" in res.output
    res = runner.invoke(app, ["study", "export", "nope", "--out", str(tmp_path / "a.csv")])
    assert res.exit_code == 2 and "not found" in res.output
    bad = tmp_path / "cfg.json"
    bad.write_text('{"display": {"size": 256,}}')
    res = runner.invoke(app, ["study", "create", "x", "--dataset", cli_env.dataset_id,
                              "--config", str(bad)])
    assert res.exit_code == 2 and "cfg.json: not valid JSON" in res.output
    assert "line 1" in res.output
    bad_yaml = tmp_path / "cfg.yaml"
    bad_yaml.write_text("display: [size: 256\n")
    res = runner.invoke(app, ["study", "create", "x", "--dataset", cli_env.dataset_id,
                              "--config", str(bad_yaml)])
    assert res.exit_code == 2 and "cfg.yaml: not valid YAML" in res.output
    bad_cond = tmp_path / "cond.yaml"
    bad_cond.write_text("llm: {condition: image+mask}\n")
    res = runner.invoke(app, ["study", "create", "x", "--dataset", cli_env.dataset_id,
                              "--config", str(bad_cond)])
    assert res.exit_code == 2 and "llm.condition" in res.output and "side_by_side" in res.output


def test_unknown_study_fails_every_subcommand(cli_env: Any, tmp_path: Path) -> None:
    runner = CliRunner()
    ratings = tmp_path / "r.csv"
    ratings.write_text("item,reader,question,answer\n")
    for args in (["progress", "nope"], ["add-reader", "nope", "X"], ["revoke", "nope", "r1"],
                 ["export", "nope", "--out", str(tmp_path / "a.csv")],
                 ["export", "nope", "--out", str(tmp_path / "a.json")],
                 ["import", "nope", str(ratings)], ["simulate", "nope"]):
        res = runner.invoke(app, ["study", *args])
        assert res.exit_code == 2, (args, res.output)
        assert "error: study 'nope' not found" in res.output, (args, res.output)
        assert "[]" not in res.output
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "a.json").exists()
