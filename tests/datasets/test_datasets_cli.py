"""`sonoaudit datasets inspect|import|phantom`, run through typer's CliRunner and, once, as the
installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dataset_builders import small_busbra
from sonoaudit.cli.main import app
from typer.testing import CliRunner


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_inspect_json_real_sample_subprocess(busbra_sample: Path) -> None:
    exe = Path(sys.executable).with_name("sonoaudit")
    proc = subprocess.run([str(exe), "datasets", "inspect", str(busbra_sample), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["format"] == "busbra"
    assert out["counts"] == {"benign": 40, "malignant": 40}
    assert out["n_cases"] == 80
    assert out["problems"] == []
    assert out["is_phantom"] is False


def test_inspect_reports_problems_with_nonzero_exit(runner: CliRunner, tmp_path: Path) -> None:
    root = small_busbra(tmp_path / "bb")
    (root / "Masks" / "mask_0002-s.png").unlink()
    result = runner.invoke(app, ["datasets", "inspect", str(root), "--json"])
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["problems"] == [{"path": str(root / "Masks" / "mask_0002-s.png"),
                                "problem": "missing mask for image bus_0002-s.png"}]
    human = runner.invoke(app, ["datasets", "inspect", str(root)])
    assert human.exit_code == 1
    assert "1 problem(s):" in human.stdout and "mask_0002-s.png" in human.stdout


def test_phantom_then_inspect_then_import(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "ph"
    made = runner.invoke(app, ["datasets", "phantom", str(out), "--n-per-class", "5",
                               "--seed", "2", "--size", "64"])
    assert made.exit_code == 0, made.output
    assert "not patient data" in made.stdout
    inspected = runner.invoke(app, ["datasets", "inspect", str(out)])
    assert inspected.exit_code == 0
    assert "PHANTOM DATA" in inspected.stdout
    env = {"SONOAUDIT_HOME": str(tmp_path / "home"), "SONOAUDIT_DATABASE_URL": ""}
    imported = runner.invoke(app, ["datasets", "import", str(out), "--json"], env=env)
    assert imported.exit_code == 0, imported.output
    body = json.loads(imported.stdout)
    assert body["imported"] is True and body["is_phantom"] is True
    assert body["counts"] == {"benign": 5, "malignant": 5}
    assert (tmp_path / "home" / "sonoaudit.db").is_file()
    again = runner.invoke(app, ["datasets", "import", str(out), "--json"], env=env)
    assert json.loads(again.stdout)["id"] == body["id"]
    refused = runner.invoke(app, ["datasets", "phantom", str(out)])
    assert refused.exit_code != 0  # never writes into a non-empty folder


def test_import_bad_dataset_fails(runner: CliRunner, tmp_path: Path) -> None:
    root = small_busbra(tmp_path / "bb")
    (root / "Images" / "bus_0001-s.png").write_text("junk")
    env = {"SONOAUDIT_HOME": str(tmp_path / "home"), "SONOAUDIT_DATABASE_URL": ""}
    result = runner.invoke(app, ["datasets", "import", str(root), "--json"], env=env)
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["imported"] is False
    assert body["problems"][0]["path"] == str(root / "Images" / "bus_0001-s.png")
