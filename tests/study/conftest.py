"""Fixtures of the reader-study tests: a results store holding the real BUS-BRA sample (imported
with the datasets importer) plus registered synthetic pairs from a generation run, a running
raters app (uvicorn in a thread) and a headless Chromium."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sonoaudit.context import AppContext, build_context
from sonoaudit.db.models import GenerationRun, Image, LLMClassification, Model
from sonoaudit.db.session import session_scope
from sonoaudit.settings import Settings
from sqlalchemy import select

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "study"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_pair(rng: np.random.Generator, size: int = 128) -> tuple[bytes, bytes]:
    """A speckled image with a dark ellipse and its mask: stands in for generator output."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    ry, rx = rng.uniform(0.1, 0.25, 2) * size
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img = rng.gamma(2.0, 40.0, (size, size)).clip(0, 255)
    img[mask] *= 0.3
    return _png(img.astype(np.uint8)), _png((mask * 255).astype(np.uint8))


def register_synthetic(ctx: AppContext, per_class: int, seed: int = 0) -> dict[str, str]:
    """One generation run per class with ``per_class`` synthetic pairs; class → run id."""
    rng = np.random.default_rng(seed)
    runs: dict[str, str] = {}
    with session_scope(ctx.sessions) as s:
        model = Model(name="test-ddpm", backbone="unet", checkpoint_path="/nonexistent")
        s.add(model)
        s.flush()
        for cls in ("benign", "malignant"):
            run = GenerationRun(model_id=model.id, class_label=cls, n=per_class, sampler="ddim",
                                steps=2, seed=seed, status="done")
            s.add(run)
            s.flush()
            runs[cls] = run.id
            for k in range(per_class):
                img, mask = synthetic_pair(rng)
                sha, rel = ctx.store.put(img)
                msha, mrel = ctx.store.put(mask)
                s.add(Image(sha256=sha, mask_sha256=msha, source="synthetic", class_label=cls,
                            name=f"{cls}-{k:03d}", path=rel, mask_path=mrel, width=128,
                            height=128, generation_run_id=run.id, sample_index=k))
    return runs


def add_llm_answers(ctx: AppContext, image_ids: list[str], label: str = "malignant") -> None:
    with session_scope(ctx.sessions) as s:
        for n, iid in enumerate(image_ids):
            img = s.get_one(Image, iid)
            s.add(LLMClassification(
                image_id=iid, image_sha256=img.sha256, backend="fake", model="fake-llm",
                prompt_version="v1", prompt_hash="0" * 64, condition="side_by_side", replicate=0,
                status="ok", label=label, confidence=0.7,
                rationale=f"LLM-RATIONALE-{n}: irregular margins and posterior shadowing"))


@dataclass
class Store:
    ctx: AppContext
    settings: Settings
    dataset_id: str
    runs: dict[str, str]

    def real_ids(self, per_class: int) -> list[str]:
        return self._pick(lambda i: i.dataset_id == self.dataset_id, per_class)

    def synthetic_ids(self, per_class: int) -> list[str]:
        return self._pick(lambda i: i.generation_run_id is not None, per_class)

    def _pick(self, keep: Any, per_class: int) -> list[str]:
        with self.ctx.sessions() as s:
            images = [i for i in s.scalars(select(Image).order_by(Image.name)) if keep(i)]
        out: list[str] = []
        for cls in ("benign", "malignant"):
            out += [i.id for i in images if i.class_label == cls][:per_class]
        return out


def _build_store(settings: Settings, sample: Path) -> Store:
    from sonoaudit.datasets import import_dataset

    ctx = build_context(settings)
    ds = import_dataset(ctx, sample)
    with ctx.sessions() as s:
        has_runs = s.scalars(select(GenerationRun)).first() is not None
        runs = ({r.class_label or "": r.id for r in s.scalars(select(GenerationRun))} if has_runs
                else {})
    if not runs:
        runs = register_synthetic(ctx, per_class=10)
    return Store(ctx, settings, ds.id, runs)


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory, busbra_sample: Path) -> Path:
    """A SQLite store built once per session; each test gets a copy of the database file."""
    root = tmp_path_factory.mktemp("study-template")
    settings = Settings(database_url=f"sqlite:///{root / 'db.sqlite'}", home=root,
                        store_dir=root / "store")
    store = _build_store(settings, busbra_sample)
    store.ctx.close()
    return root


@pytest.fixture
def store(_template_db: Path, tmp_path: Path) -> Iterator[Store]:
    db = tmp_path / "db.sqlite"
    shutil.copy(_template_db / "db.sqlite", db)
    settings = Settings(database_url=f"sqlite:///{db}", home=tmp_path,
                        store_dir=_template_db / "store")
    ctx = build_context(settings)
    with ctx.sessions() as s:
        from sonoaudit.db.models import Dataset

        ds = s.scalars(select(Dataset)).one()
        runs = {r.class_label or "": r.id for r in s.scalars(select(GenerationRun))}
    yield Store(ctx, settings, ds.id, runs)
    ctx.close()


@pytest.fixture(scope="session")
def pg_store(postgres_url: str, busbra_sample: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("study-pg")
    settings = Settings(database_url=postgres_url, home=root, store_dir=root / "store")
    st = _build_store(settings, busbra_sample)
    yield st
    st.ctx.close()


class LiveServer:
    def __init__(self, settings: Settings) -> None:
        import uvicorn
        from sonoaudit_raters.main import create_app

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("raters app did not become ready")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


CREATOR_TOKEN = "test-creator-token-0123456789"


@pytest.fixture
def live(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    monkeypatch.setenv("SONOAUDIT_STUDY_CREATOR_TOKEN", CREATOR_TOKEN)
    with LiveServer(store.settings) as server:
        yield server


@pytest.fixture
def creator_token() -> str:
    return CREATOR_TOKEN


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def add_llm() -> Any:
    return add_llm_answers


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> type[LiveServer]:
    monkeypatch.setenv("SONOAUDIT_STUDY_CREATOR_TOKEN", CREATOR_TOKEN)
    """``with serve(settings) as server:`` runs the raters app against any store."""
    return LiveServer
