"""A poison message consumed by a service worker is terminated, kept in the DLQ stream and in the
store, and visible through the service API at /dead-letters."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sonoaudit.bus import Bus, PoisonMessage
from sonoaudit.db.migrate import upgrade
from sonoaudit.messages import make_envelope
from sonoaudit.messages.payloads import GenerateRequest
from sonoaudit.messages.registry import stream_for, subject
from sonoaudit.runtime import ServiceRuntime
from sonoaudit.service import base_app
from sonoaudit.settings import Settings

pytestmark = pytest.mark.integration


async def _publish(nats_server: str, job_id: str, model_id: str) -> None:
    bus = Bus(nats_server)
    await bus.connect(attempts=3, wait_s=0.2)
    await bus.publish(subject("generate", "request"), make_envelope(
        "generate.request", GenerateRequest(job_id=job_id, model_id=model_id, n=1, steps=1)))
    await bus.close()


def test_poison_message_visible_through_api(nats_server: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    settings = Settings(home=tmp_path, database_url=url, nats_url=nats_server)
    runtime = ServiceRuntime("test", settings)
    handled: list[str] = []

    async def worker(rt: ServiceRuntime, stop: asyncio.Event) -> None:
        assert rt.bus is not None

        async def handler(env: Any, hb: Any) -> None:
            handled.append(env.payload.job_id)
            raise PoisonMessage(f"model {env.payload.model_id} does not exist")

        await rt.bus.js.purge_stream("GENERATE")
        await rt.bus.consume(stream_for(subject("generate", "request")), GenerateRequest,
                             handler, stop=stop, fetch_timeout_s=0.2)

    runtime.add_worker(worker)
    app = base_app("test", runtime.lifespan(), runtime.ready)

    with TestClient(app) as client:
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/readyz").json()["checks"] == {"database": True, "nats": True}
        asyncio.run(_publish(nats_server, "poison-1", "nope"))
        letters: list[dict[str, Any]] = []
        while not letters and time.monotonic() < deadline:
            time.sleep(0.2)
            letters = client.get("/dead-letters").json()
    assert handled == ["poison-1"]  # terminated on the first delivery, never retried
    assert len(letters) == 1
    assert letters[0]["subject"] == "sonoaudit.generate.request"
    assert "model nope does not exist" in letters[0]["error"]
    assert '"job_id":"poison-1"' in letters[0]["data"]


def test_crashed_worker_is_restarted_and_consumes(nats_server: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    runtime = ServiceRuntime("test", Settings(home=tmp_path, database_url=url,
                                              nats_url=nats_server))
    starts: list[int] = []
    handled: list[str] = []

    async def worker(rt: ServiceRuntime, stop: asyncio.Event) -> None:
        assert rt.bus is not None
        starts.append(1)
        if len(starts) == 1:
            await rt.bus.js.purge_stream("GENERATE")
            raise RuntimeError("bug in the worker's first start")

        async def handler(env: Any, hb: Any) -> None:
            handled.append(env.payload.job_id)

        await rt.bus.consume(stream_for(subject("generate", "request")), GenerateRequest,
                             handler, stop=stop, fetch_timeout_s=0.2)

    runtime.add_worker(worker)
    app = base_app("test", runtime.lifespan(), runtime.ready)

    with TestClient(app) as client:
        deadline = time.monotonic() + 20
        while not starts and time.monotonic() < deadline:
            time.sleep(0.1)
        asyncio.run(_publish(nats_server, "after-crash", "m"))
        while not handled and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/readyz").status_code == 200
    assert handled == ["after-crash"] and len(starts) == 2 and runtime.worker_restarts == 1
