"""``sonoaudit classify`` on the BUS-BRA sample folder against the fake server (real SDK)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sonoaudit.cli.main import app
from sonoaudit_classifier.testing.fake_servers import FakeGeminiServer, default_label
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
        answers = json.loads(result.stdout[result.stdout.index("["):])
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
    result = CliRunner().invoke(app, ["classify", "--images", str(folder), "--backend", "x"])
    assert result.exit_code == 2 and "unknown LLM backend 'x'" in result.output
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["classify", "--images", str(folder)])
    assert result.exit_code == 2 and "no Gemini API key" in result.output
