"""Bad numbers and a file as ``--out`` on ``sonoaudit train | generate``: a clean usage error
(exit 2) that names the option, never a traceback, and nothing trained or written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gen_helpers import register_model
from gen_helpers import row_count as _count
from sonoaudit.cli.main import app
from sonoaudit.context import build_context
from sonoaudit.db.models import GenerationRun, TrainingRun
from sonoaudit.settings import Settings
from typer.testing import CliRunner


def _refused(output: str, option: str) -> None:
    assert "Traceback" not in output, output
    assert f"Invalid value for '{option}'" in output, output
    assert "errors.pydantic.dev" not in output and "RuntimeError" not in output, output


@pytest.mark.parametrize(("option", "value"), [("--threads", "-3"), ("--threads", "0"),
                                               ("--steps", "0"), ("--steps", "-2"),
                                               ("--seed", "-1")])
def test_train_refuses_bad_numbers_naming_the_option(busbra_sample: Path, home: Path,
                                                     option: str, value: str) -> None:
    res = CliRunner().invoke(app, ["train", "--data", str(busbra_sample), "--class", "benign",
                                   "--profile", "tiny", option, value])
    assert res.exit_code == 2, res.output
    _refused(res.output, option)
    assert _count(home, TrainingRun) == 0


@pytest.mark.parametrize(("option", "value"), [("--batch-size", "0"), ("--batch-size", "-4"),
                                               ("--threads", "-3"), ("--threads", "0"),
                                               ("--n", "0"), ("--steps", "0"),
                                               ("--seed", "-1")])
def test_generate_refuses_bad_numbers_naming_the_option(tiny_checkpoint: Path, home: Path,
                                                        option: str, value: str) -> None:
    ctx = build_context(Settings(home=home))
    model_id = register_model(ctx, tiny_checkpoint)
    ctx.close()
    out = home.parent / "gen"
    res = CliRunner().invoke(app, ["generate", "--model", model_id, "--n", "1", "--sampler",
                                   "ddim", "--steps", "2", "--out", str(out), option, value])
    assert res.exit_code == 2, res.output
    _refused(res.output, option)
    assert _count(home, GenerationRun) == 0 and not out.exists()


def test_a_file_as_out_is_refused_naming_it(tiny_checkpoint: Path, busbra_sample: Path,
                                            home: Path, tmp_path: Path) -> None:
    ctx = build_context(Settings(home=home))
    model_id = register_model(ctx, tiny_checkpoint)
    ctx.close()
    taken = tmp_path / "t.txt"
    taken.write_text("keep me")
    for args in (["generate", "--model", model_id, "--n", "1", "--sampler", "ddim",
                  "--steps", "2"],
                 ["train", "--data", str(busbra_sample), "--class", "benign", "--profile",
                  "tiny"]):
        res = CliRunner().invoke(app, [*args, "--out", str(taken)])
        assert res.exit_code == 2, res.output
        assert f"--out {taken}: exists and is not a folder" in res.output
        assert "FileExistsError" not in res.output and "Traceback" not in res.output
        assert taken.read_text() == "keep me"
    assert _count(home, GenerationRun) == 0 and _count(home, TrainingRun) == 0


def _words(text: str) -> str:
    """Help text without rich's box and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_train_help_names_the_tiny_profile_and_the_default_folders() -> None:
    res = CliRunner().invoke(app, ["train", "--help"])
    assert res.exit_code == 0, res.output
    words = _words(res.output)
    assert ("quick (64px, CPU) | paper (128px, GPU) | tiny (16px, 6 steps, seconds on a CPU: "
            "for tests and smoke checks only)") in words
    assert ("a new folder per training run (named by class, profile, variant, seed, run id) "
            "in models/ under $SONOAUDIT_HOME") in words
    res = CliRunner().invoke(app, ["generate", "--help"])
    assert "Default: $SONOAUDIT_HOME/generated/<run id>" in _words(res.output)


def test_generator_docs_name_tiny_and_sonoaudit_home() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "generator.md").read_text()
    assert "[--profile quick|paper|tiny]" in doc
    assert "| `tiny` | 16 | 8,16 / 3,2 (T = 100) | 4 | 6 | tests and smoke checks" in doc
    assert "~/.sonoaudit/models" not in doc and "~/.sonoaudit/generated" not in doc
    assert "`$SONOAUDIT_HOME/models/<class>-<profile>[-<variant>]-seed<seed>-<run id>`" in doc
    assert "`$SONOAUDIT_HOME/generated/<run id>`" in doc
    assert "default `~/.sonoaudit`" in doc
