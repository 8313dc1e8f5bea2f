"""Real Postgres + real NATS JetStream: the classify job through the service's worker.

* a 200-image batch with injected faults ends with 200 stored results and the right abstains;
* a worker killed (SIGKILL) mid-batch and restarted loses nothing and writes no duplicate;
* a job whose calls take longer than the ack wait is not redelivered to a second replica."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from classifier_helpers import free_port, register_images, synthetic_pngs, wait_port  # type: ignore[import-not-found]
from fastapi.testclient import TestClient
from sonoaudit.context import AppContext, build_context
from sonoaudit.db.models import Job, LLMClassification
from sonoaudit.settings import Settings
from sonoaudit_classifier.main import create_app
from sonoaudit_classifier.testing.fake_servers import FakeGeminiServer, default_label
from sqlalchemy import func, select

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg_ctx(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppContext]:
    store = tmp_path_factory.mktemp("store")
    ctx = build_context(Settings(database_url=postgres_url, store_dir=store,
                                 home=store.parent))
    try:
        yield ctx
    finally:
        ctx.close()


def _rows(ctx: AppContext, job_id: str) -> list[LLMClassification]:
    with ctx.sessions() as s:
        return list(s.scalars(select(LLMClassification).where(LLMClassification.job_id == job_id)))


async def _reset_consumer(nats_url: str) -> None:
    """Drop the durable consumer so this test's ack_wait applies when the service re-declares."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().delete_consumer("CLASSIFY", "classifier")
    except Exception:
        pass
    await nc.close()


def test_200_image_job_with_faults(pg_ctx: AppContext, nats_server: str,
                                   make_settings: Any) -> None:
    images = synthetic_pngs(200, seed=11)
    ids = register_images(pg_ctx, images)
    asyncio.run(_reset_consumer(nats_server))
    with FakeGeminiServer(latency_s=0.005) as server:
        expected: dict[str, str] = {}
        for i, (_, data, _, _) in enumerate(images):
            kind = ("blocked", "max_tokens", "429:0.1", "500", "bad_json", "bad_schema", "ok",
                    "ok", "ok", "ok")[i % 10]
            script = ["bad_schema", "bad_schema"] if kind == "bad_schema" else [kind]
            server.script_for(data, *script)
            expected[ids[i]] = {"blocked": "abstain", "max_tokens": "abstain",
                                "bad_schema": "invalid"}.get(kind, "ok")
        settings = Settings(database_url=pg_ctx.settings.database_url, nats_url=nats_server,
                            store_dir=pg_ctx.settings.store_dir, home=pg_ctx.settings.home)
        app = create_app(settings, make_settings(gemini_base_url=server.url, concurrency=16))
        with TestClient(app) as client:
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, client.get("/readyz").text
                time.sleep(0.1)
            r = client.post("/classify/batch", json={"image_ids": ids})
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            deadline = time.monotonic() + 120
            while (job := client.get(f"/jobs/{job_id}").json())["status"] not in ("done",
                                                                                  "failed"):
                assert time.monotonic() < deadline, job
                time.sleep(0.2)
        assert job["status"] == "done", job
        rows = _rows(pg_ctx, job_id)
        assert len(rows) == 200 and len({r.image_id for r in rows}) == 200
        assert {r.image_id: r.status for r in rows} == expected
        assert Counter(r.status for r in rows) == {"ok": 140, "abstain": 40, "invalid": 20}
        assert job["done"] == 200 and job["failed"] == 0
        by_id = {i: d for i, (_, d, _, _) in zip(ids, images, strict=True)}
        for row in rows:
            if row.status == "ok":
                assert row.label == default_label(by_id[row.image_id or ""])
            else:
                assert row.label is None
            assert row.attempts in (1, 2)
        errs = Counter(e.split(":")[0] for r in rows for e in r.attempt_errors)
        # A dropped keep-alive connection is retried too and never reaches the server.
        transport = errs.pop("transport", 0)
        assert errs == {"HTTP 429": 20, "HTTP 500": 20}
        assert sum(r.repairs for r in rows) == 40  # bad_json + bad_schema images
        # 200 first calls + 20 after 429 + 20 after 500 + 40 repair requests
        assert len(server.requests) == 280
        assert sum(r.attempts for r in rows) == 280 + transport


async def _deliveries(nats_url: str) -> int:
    """Deliveries the classify consumer made since it was created (redeliveries included)."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().consumer_info("CLASSIFY", "classifier")
        assert info.delivered is not None
        return int(info.delivered.consumer_seq or 0)
    finally:
        await nc.close()


def test_slow_job_is_not_redelivered_to_another_replica(pg_ctx: AppContext, nats_server: str,
                                                        make_settings: Any) -> None:
    """Each call takes longer than the ack wait and no answer is written before the first call
    returns: only the job's own heartbeat keeps JetStream from handing the job to the second
    replica, which would ask every image again."""
    ack_wait = 4.0
    images = synthetic_pngs(2, seed=13)
    ids = register_images(pg_ctx, images)
    asyncio.run(_reset_consumer(nats_server))
    with FakeGeminiServer(latency_s=1.5 * ack_wait) as server:
        settings = Settings(database_url=pg_ctx.settings.database_url, nats_url=nats_server,
                            store_dir=pg_ctx.settings.store_dir, home=pg_ctx.settings.home,
                            nats_ack_wait_s=ack_wait)
        csettings = make_settings(gemini_base_url=server.url, concurrency=2,
                                  request_timeout_s=30.0)
        # Two replicas on the same durable consumer, both idle and fetching.
        with TestClient(create_app(settings, csettings)) as one, \
                TestClient(create_app(settings, csettings)) as two:
            for client in (one, two):
                deadline = time.monotonic() + 30
                while client.get("/readyz").status_code != 200:
                    assert time.monotonic() < deadline, client.get("/readyz").text
                    time.sleep(0.1)
            r = one.post("/classify/batch", json={"image_ids": ids})
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            deadline = time.monotonic() + 60
            while (job := one.get(f"/jobs/{job_id}").json())["status"] not in ("done",
                                                                               "failed"):
                assert time.monotonic() < deadline, job
                time.sleep(0.2)
            assert job["status"] == "done", job
            deliveries = asyncio.run(_deliveries(nats_server))
        assert deliveries == 1  # the one job message, delivered once
        # One call per image: nobody asked again.
        assert len(server.requests) == 2
        assert sorted(q["image_sha256"] for q in server.requests) == sorted(
            hashlib.sha256(d).hexdigest() for _, d, _, _ in images)
        rows = _rows(pg_ctx, job_id)
        assert len(rows) == 2 and all(r.status == "ok" for r in rows)


def _start_service(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "sonoaudit_classifier.main:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _count(ctx: AppContext, job_id: str) -> int:
    with ctx.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(LLMClassification).where(
            LLMClassification.job_id == job_id)) or 0)


def test_worker_killed_mid_batch_loses_nothing(pg_ctx: AppContext, nats_server: str,
                                              tmp_path: Path) -> None:
    images = synthetic_pngs(30, seed=12)
    ids = register_images(pg_ctx, images)
    asyncio.run(_reset_consumer(nats_server))
    with FakeGeminiServer(latency_s=0.1) as server:
        port = free_port()
        env = {**os.environ, "SONOAUDIT_DATABASE_URL": str(pg_ctx.settings.database_url),
               "SONOAUDIT_NATS_URL": nats_server,
               "SONOAUDIT_STORE_DIR": str(pg_ctx.settings.store_dir),
               "SONOAUDIT_NATS_ACK_WAIT_S": "5", "GEMINI_API_KEY": "k",
               "SONOAUDIT_GEMINI_BASE_URL": server.url, "SONOAUDIT_CONCURRENCY": "2",
               "SONOAUDIT_RATE_LIMIT_RPM": "60000", "SONOAUDIT_BACKOFF_INITIAL_S": "0.05"}
        log = tmp_path / "service.log"
        proc = _start_service(port, env, log)
        try:
            wait_port(port, 30)
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while httpx.get(base + "/readyz").status_code != 200:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            r = httpx.post(base + "/classify/batch", json={"image_ids": ids, "replicates": 2})
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            deadline = time.monotonic() + 60
            while _count(pg_ctx, job_id) < 15:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            proc.kill()  # SIGKILL: no cleanup, the message is neither acked nor nak'd
            proc.wait(10)
            before = _count(pg_ctx, job_id)
            assert 15 <= before < 60
            proc = _start_service(port, env, log)
            deadline = time.monotonic() + 90
            while True:
                with pg_ctx.sessions() as s:
                    job = s.get(Job, job_id)
                    assert job is not None
                    if job.status == "done":
                        break
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
        finally:
            proc.kill()
            proc.wait(10)
        rows = _rows(pg_ctx, job_id)
        assert len(rows) == 60
        assert Counter((r.image_id, r.replicate) for r in rows) == {
            (i, rep): 1 for i in ids for rep in (0, 1)}
        assert all(r.status == "ok" for r in rows)
        assert job.done == 60 and job.failed == 0
        # Answers finished before the kill were not asked again after the restart.
        assert len(server.requests) <= 60 + 2 * 2  # at most the in-flight calls repeated
