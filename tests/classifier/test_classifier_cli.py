"""``sonoaudit classify`` on the BUS-BRA sample folder against the fake server (real SDK)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from classifier_helpers import write_prompt_version  # type: ignore[import-not-found]
from sonoaudit.cli.main import app
from sonoaudit_classifier.testing.fake_servers import FakeGeminiServer, default_label
from statsmodels.stats.inter_rater import fleiss_kappa
from typer.testing import CliRunner


def test_cli_classifies_a_folder(tmp_path: Path, busbra_sample: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    chosen = sorted((busbra_sample / "Images").glob("*.png"))[:4]
    for p in chosen:
        shutil.copy(p, folder / p.name)
    monkeypatch.setenv("SONOAUDIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    monkeypatch.setenv("SONOAUDIT_RATE_LIMIT_RPM", "6000")
    with FakeGeminiServer() as server:
        monkeypatch.setenv("SONOAUDIT_GEMINI_BASE_URL", server.url)
        server.script_for(chosen[1].read_bytes(), "blocked")
        result = CliRunner().invoke(app, ["classify", "--images", str(folder), "--json"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout[result.stdout.index("{"):])
        assert out["self_agreement"] == []  # one replicate: nothing to agree with
        answers = out["answers"]
        by_name = {a["image"]: a for a in answers}
        assert set(by_name) == {p.name for p in chosen}
        for p in chosen:
            a = by_name[p.name]
            if p == chosen[1]:
                assert (a["status"], a["label"]) == ("abstain", None)
            else:
                assert (a["status"], a["label"]) == ("ok", default_label(p.read_bytes()))
        result = CliRunner().invoke(app, ["classify", "--images", str(folder)])
        assert result.exit_code == 0 and "4 answers" in result.output
        assert len(server.requests) == 4  # the rerun was answered from the store
        # Two replicates under another prompt version: 8 new calls; one replicate of the first
        # image answers another label.
        labels = ["benign", "malignant", "normal"]
        usual = [default_label(p.read_bytes()) for p in chosen]
        other = labels[(labels.index(usual[0]) + 1) % 3]
        server.script_for(chosen[0].read_bytes(), f"ok:{other}")
        table = [[2 * (lab == u) for lab in labels] for u in usual]
        table[0][labels.index(usual[0])] -= 1
        table[0][labels.index(other)] += 1
        prompts = write_prompt_version(tmp_path / "prompts", "mine", "You are a sonographer.")
        monkeypatch.setenv("SONOAUDIT_PROMPT_DIR", str(prompts))
        result = CliRunner().invoke(app, ["classify", "--images", str(folder), "--json",
                                          "--replicates", "2", "--prompt-version", "mine"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout[result.stdout.index("{"):])
        assert len(server.requests) == 12
        assert {a["prompt_version"] for a in out["answers"]} == {"mine"}
        [g] = out["self_agreement"]
        assert (g["n_images"], g["pairwise_agreement"]) == (4, pytest.approx(3 / 4))
        assert g["fleiss_kappa"] == pytest.approx(fleiss_kappa(table))
        result = CliRunner().invoke(app, ["classify", "--images", str(folder), "--replicates",
                                          "2", "--prompt-version", "mine"])
        assert "self-agreement over 2 replicates: Fleiss kappa" in result.output
        assert len(server.requests) == 12
        # Gemini Batch mode: a third replicate for each image in one batch job.
        monkeypatch.setenv("SONOAUDIT_GEMINI_BATCH_POLL_S", "0.01")
        result = CliRunner().invoke(app, ["classify", "--images", str(folder), "--json",
                                          "--replicates", "3", "--prompt-version", "mine",
                                          "--gemini-batch"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout[result.stdout.index("{"):])
        assert len(server.batch_jobs) == 1 and len(server.requests) == 16
        third = [a for a in out["answers"] if a["replicate"] == 2]
        assert [(a["status"], a["label"]) for a in third] == [("ok", u) for u in usual]
        result = CliRunner().invoke(app, ["classify", "--images", str(folder), "--backend",
                                          "openai", "--gemini-batch"])
        assert result.exit_code == 2 and "needs the gemini backend" in result.output
        result = CliRunner().invoke(app, ["classify", "--images", str(folder),
                                          "--prompt-version", "v7"])
        assert result.exit_code == 2 and "'v7' not found" in result.output
    result = CliRunner().invoke(app, ["classify", "--images", str(folder), "--backend", "x"])
    assert result.exit_code == 2 and "unknown LLM backend 'x'" in result.output
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["classify", "--images", str(folder)])
    assert result.exit_code == 2 and "no Gemini API key" in result.output


def test_cli_exits_1_when_an_answer_is_an_error_and_lists_skipped_files(
        tmp_path: Path, busbra_sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = sorted((busbra_sample / "Images").glob("*.png"))[0]
    shutil.copy(good, folder / good.name)
    (folder / "x.png").write_text("hello, not an image")
    (folder / "readme.txt").write_text("notes")
    shutil.copy(sorted((busbra_sample / "Masks").glob("*.png"))[0], folder / "a_mask.png")
    monkeypatch.setenv("SONOAUDIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    monkeypatch.setenv("SONOAUDIT_RATE_LIMIT_RPM", "6000")
    note = ("note: skipped 2 file(s) that are not images to classify: a_mask.png (a mask: "
            "'mask' in its name), readme.txt (not .png/.jpg/.jpeg/.webp)")
    reason = ("bad input x.png: image: not a readable image (not an image format Pillow "
              "recognises; expected PNG, JPEG or WebP)")
    last = ("error: 1 of 2 answer(s) ended in invalid or error: invalid 0, error 1 (reasons in "
            "the answers; a rerun retries the errors)")
    with FakeGeminiServer() as server:
        monkeypatch.setenv("SONOAUDIT_GEMINI_BASE_URL", server.url)
        result = CliRunner().invoke(app, ["classify", "--images", str(folder)])
        assert result.exit_code == 1, result.output
        lines = result.stdout.splitlines()
        assert f"  x.png r0: error: {reason}" in lines
        assert "status: ok 1, abstain 0, invalid 0, error 1" in lines
        assert note in result.stderr.splitlines()
        assert result.stderr.splitlines()[-1] == last
        result = CliRunner().invoke(app, ["classify", "--images", str(folder), "--json"])
        assert result.exit_code == 1
        out = json.loads(result.stdout)
        assert out["summary"] == {"ok": 1, "abstain": 0, "invalid": 0, "error": 1}
        assert out["skipped"] == ["a_mask.png (a mask: 'mask' in its name)",
                                  "readme.txt (not .png/.jpg/.jpeg/.webp)"]
        assert [a["reason"] for a in out["answers"] if a["status"] == "error"] == [reason]
        assert result.stderr.splitlines()[-1] == last
        # every answer an error: still exit 1, never a success
        (folder / good.name).unlink()
        result = CliRunner().invoke(app, ["classify", "--images", str(folder)])
        assert result.exit_code == 1
        assert result.stderr.splitlines()[-1].startswith("error: 1 of 1 answer(s) ended in")
        assert len(server.requests) == 1  # only the one readable image reached the model


def test_cli_refuses_a_dataset_folder_that_fails_validation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sonoaudit.datasets.phantom import write_phantom

    root = write_phantom(tmp_path / "ds", n_per_class=2, size=64)
    bad = sorted((root / "Images").glob("*.png"))[1]
    bad.write_bytes(bad.read_bytes()[:100])
    monkeypatch.setenv("SONOAUDIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    result = CliRunner().invoke(app, ["classify", "--images", str(root)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: --images {root}: the busbra dataset fails "
                                    f"validation, 1 problem(s): {bad}: unreadable image (")
