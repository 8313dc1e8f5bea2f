"""The generator service over HTTP: inline answers, in-process jobs, 422s (SQLite), and a
JetStream job on the real NATS + Postgres (integration)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from gen_helpers import register_model
from PIL import Image as PILImage
from sonoaudit.context import build_context
from sonoaudit.db.migrate import upgrade
from sonoaudit.db.models import Image
from sonoaudit.db.session import session_scope
from sonoaudit.settings import Settings
from sonoaudit_generator.main import create_app
from sonoaudit_generator.settings import GeneratorSettings
from sqlalchemy import func, select

torch.set_num_threads(1)


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(client.get("/readyz").json())


def wait_job(client: TestClient, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/jobs/{job_id}")
        view = r.json()
        if r.status_code == 200 and view["status"] in ("done", "failed"):
            return view
        time.sleep(0.2)
    raise TimeoutError(view)


@pytest.fixture
def embedded(tmp_path: Path, sqlite_url: str, tiny_checkpoint: Path) -> tuple[Settings, str]:
    upgrade(sqlite_url)
    settings = Settings(home=tmp_path / "home", database_url=sqlite_url)
    ctx = build_context(settings)
    mid = register_model(ctx, tiny_checkpoint)
    ctx.close()
    return settings, mid


def gsettings(**kw: Any) -> GeneratorSettings:
    return GeneratorSettings(**{"sync_max_n": 2, "max_n": 20, "batch_size": 4, **kw})


def test_small_request_is_answered_inline(embedded: tuple[Settings, str]) -> None:
    settings, mid = embedded
    with TestClient(create_app(settings, gsettings())) as client:
        wait_ready(client)
        models = client.get("/models").json()
        assert [m["id"] for m in models] == [mid] and models[0]["class"] == "benign"
        r = client.post("/generate", json={"class": "benign", "n": 2, "sampler": "ddim",
                                           "steps": 3, "seed": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "done" and len(body["images"]) == 2
        img = client.get(body["images"][0]["url"])
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert np.array(PILImage.open(io.BytesIO(img.content))).shape == (16, 16)
        mask = np.array(PILImage.open(io.BytesIO(client.get(body["images"][0]["mask_url"])
                                                 .content)))
        assert set(np.unique(mask)) <= {0, 255}
        assert int((mask > 0).sum()) == body["images"][0]["qc"]["lesion_area_px"]
        assert client.get("/images/nope").status_code == 404
        assert client.get("/jobs/nope").status_code == 404


@pytest.mark.parametrize(("body", "field", "text"), [
    ({"class": "normal", "n": 1}, "class", "no trained model for class 'normal'"),
    ({"model_id": "missing", "n": 1}, "model_id", "unknown model"),
    ({"class": "benign", "n": 0}, "n", ""),
    ({"class": "benign", "n": 21}, "n", "n must be in 1..20"),
    ({"class": "benign", "n": 1, "steps": 0, "sampler": "ddim"}, "steps", "1..100"),
    ({"class": "benign", "n": 1, "steps": 101}, "steps", "1..100"),
    ({"class": "benign", "n": 1, "sampler": "euler"}, "sampler", ""),
    ({"n": 1}, "class", "exactly one"),
])
def test_bad_input_is_422_with_the_reason(embedded: tuple[Settings, str], body: dict[str, Any],
                                          field: str, text: str) -> None:
    settings, _ = embedded
    with TestClient(create_app(settings, gsettings())) as client:
        wait_ready(client)
        r = client.post("/generate", json=body)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert any(field in d["loc"] for d in detail), detail
        assert text in str(detail)
        with session_scope(build_context(settings).sessions) as s:
            assert s.scalar(select(func.count()).select_from(Image)) == 0


def test_large_request_becomes_an_in_process_job(embedded: tuple[Settings, str]) -> None:
    settings, mid = embedded
    with TestClient(create_app(settings, gsettings())) as client:
        wait_ready(client)
        r = client.post("/generate", json={"model_id": mid, "n": 5, "sampler": "dpmpp",
                                           "steps": 3})
        assert r.status_code == 202, r.text
        assert r.json()["mode"] == "in-process"
        view = wait_job(client, r.json()["job_id"])
        assert view["status"] == "done" and view["done"] == 5, view
        assert len(view["images"]) == 5
        assert view["result"]["qc_summary"]["n"] == 5


@pytest.mark.integration
def test_jetstream_job_on_postgres_and_nats(postgres_url: str, nats_server: str,
                                            tiny_checkpoint: Path, tmp_path: Path) -> None:
    upgrade(postgres_url)
    settings = Settings(home=tmp_path / "home", database_url=postgres_url, nats_url=nats_server,
                        nats_ack_wait_s=5.0)
    ctx = build_context(settings)
    mid = register_model(ctx, tiny_checkpoint)
    with TestClient(create_app(settings, gsettings(heartbeat_s=0.2))) as client:
        wait_ready(client)
        r = client.post("/generate", json={"model_id": mid, "n": 6, "sampler": "ddim",
                                           "steps": 4, "seed": 3})
        assert r.status_code == 202, r.text
        assert r.json()["mode"] == "jetstream"
        job_id = r.json()["job_id"]
        view = wait_job(client, job_id)
        assert view["status"] == "done", view
        assert [im["index"] for im in view["images"]] == list(range(6))

        # a redelivered job (same job id, new message id) adds no duplicate images
        from sonoaudit.messages.payloads import GenerateRequest
        from sonoaudit_generator.jobs import publish_job

        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        req = GenerateRequest(job_id=job_id, model_id=mid, n=6, sampler="ddim", steps=4, seed=3)

        async def again() -> None:
            from sonoaudit.messages.envelope import make_envelope
            env = make_envelope("generate.request", req)  # fresh message id
            await runtime.bus.publish("sonoaudit.generate.request", env)

        client.portal.call(again)  # type: ignore[union-attr]
        bad = GenerateRequest(job_id="poison-job", model_id="no-such-model", n=6,
                              sampler="ddim", steps=4)
        client.portal.call(publish_job, runtime.bus, bad, None)  # type: ignore[union-attr]
        failed = wait_job(client, "poison-job")
        assert failed["status"] == "failed" and "unknown model" in failed["error"]
        # wait until the consumer has settled every message (the redelivered job included)
        async def settled() -> bool:
            info = await runtime.bus.js.consumer_info("GENERATE", "generator")
            return bool(info.num_pending == 0 and info.num_ack_pending == 0
                        and info.delivered.stream_seq >= 3)

        deadline = time.monotonic() + 60
        while not client.portal.call(settled):  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "redelivered job never settled"
            time.sleep(0.2)
        assert client.get(f"/jobs/{job_id}").json()["status"] == "done"
        with session_scope(ctx.sessions) as s:
            n = s.scalar(select(func.count()).select_from(Image)
                         .where(Image.source == "synthetic"))
        assert n == 6
    ctx.close()
