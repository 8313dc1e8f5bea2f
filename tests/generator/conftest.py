"""Fixtures of the generator tests: a tiny trained checkpoint and a store that knows it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from gen_helpers import toy_lesions
from sonoaudit.context import AppContext, build_context
from sonoaudit.settings import Settings
from sonoaudit_generator.config import profile
from sonoaudit_generator.training import train_loop


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny_model")
    data = toy_lesions()
    res = train_loop(data, data[:2], profile("tiny"), out, seed=0, class_label="benign",
                     progress=False)
    return res.checkpoint


@pytest.fixture
def sqlite_ctx(tmp_path: Path, sqlite_url: str) -> Iterator[AppContext]:
    ctx = build_context(Settings(home=tmp_path / "home", database_url=sqlite_url))
    yield ctx
    ctx.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SONOAUDIT_HOME for CLI tests: an embedded SQLite store of the test's own."""
    for var in ("SONOAUDIT_DATABASE_URL", "SONOAUDIT_NATS_URL", "SONOAUDIT_STORE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SONOAUDIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
