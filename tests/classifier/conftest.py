"""Fixtures for the classifier tests: fake LLM servers on 127.0.0.1 (the real SDKs talk to them),
settings pointed at them, and BUS-BRA / synthetic images registered in a results store."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sonoaudit.context import AppContext, build_context
from sonoaudit.settings import Settings
from sonoaudit_classifier.settings import ClassifierSettings
from sonoaudit_classifier.testing.fake_servers import FakeGeminiServer, FakeOpenAIServer


def fast_settings(**overrides: object) -> ClassifierSettings:
    """Settings for tests: tiny backoff, no rate limit, a dummy key."""
    base: dict[str, object] = {
        "GEMINI_API_KEY": "test-key", "backoff_initial_s": 0.02, "backoff_max_s": 0.1,
        "rate_limit_rpm": None, "concurrency": 8, "request_timeout_s": 5.0,
    }
    base.update(overrides)
    return ClassifierSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def make_settings() -> object:
    return fast_settings


@pytest.fixture
def fake_gemini() -> Iterator[FakeGeminiServer]:
    with FakeGeminiServer() as server:
        yield server


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def busbra_truth(busbra_sample: Path) -> dict[str, tuple[Path, Path, str]]:
    """sha256 of each image file -> (image path, mask path, pathology from bus_data.csv)."""
    out = {}
    with (busbra_sample / "bus_data.csv").open() as fh:
        for row in csv.DictReader(fh):
            img = busbra_sample / "Images" / f"{row['ID']}.png"
            mask = busbra_sample / "Masks" / f"mask_{row['ID'].split('_', 1)[1]}.png"
            out[hashlib.sha256(img.read_bytes()).hexdigest()] = (img, mask, row["Pathology"])
    return out


@pytest.fixture
def sqlite_ctx(tmp_path: Path, sqlite_url: str) -> Iterator[AppContext]:
    ctx = build_context(Settings(database_url=sqlite_url, store_dir=tmp_path / "store",
                                 home=tmp_path))
    try:
        yield ctx
    finally:
        ctx.close()
