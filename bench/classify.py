"""Classify throughput: N images through the JetStream ``classify`` job against the fake Gemini
server (separate process, fixed latency per call), compared with

* the ideal: concurrency / latency calls per second (goal: job >= 80 % of it), and
* a named peer measured in the same run: the bare google-genai async client, same concurrency,
  no validation, no database, no bus ("bare SDK").

Needs Postgres (a scratch database is created and dropped) and ``nats-server`` (a private one is
started). Usage: ``.venv/bin/python bench/classify.py [--n 1000] [--latency 0.2]
[--concurrency 16]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sonoaudit.bus import Bus
from sonoaudit.context import build_context
from sonoaudit.db.models import Image, Job, LLMClassification
from sonoaudit.db.session import session_scope
from sonoaudit.messages.payloads import ClassifyRequest
from sonoaudit.settings import Settings
from sonoaudit_classifier.jobs import consume_jobs, create_job, publish_job
from sonoaudit_classifier.pool import ClassifierPool
from sonoaudit_classifier.settings import ClassifierSettings
from sqlalchemy import create_engine, func, select, text

PG_ADMIN = os.environ.get("SONOAUDIT_TEST_POSTGRES_ADMIN_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def pngs(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        PILImage.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


async def bare_sdk(url: str, images: list[bytes], concurrency: int) -> float:
    """The peer: plain google-genai calls, same concurrency; returns seconds."""
    from google import genai
    from google.genai import types

    client = genai.Client(api_key="bench", http_options=types.HttpOptions(
        base_url=url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)))
    sem = asyncio.Semaphore(concurrency)

    async def one(data: bytes) -> None:
        async with sem:
            await client.aio.models.generate_content(
                model="gemini-2.5-flash",
                contents=[types.Part.from_bytes(data=data, mime_type="image/png"), "classify"],
                config=types.GenerateContentConfig(response_mime_type="application/json"))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(d) for d in images))
    dt = time.perf_counter() - t0
    await client.aio.aclose()
    return dt


async def job_run(settings: Settings, csettings: ClassifierSettings, ids: list[str]) -> float:
    ctx = build_context(settings, migrate=False)
    bus = Bus(settings.nats_url or "", max_deliver=3, ack_wait_s=30)
    await bus.connect()
    await bus.declare()
    pool = ClassifierPool(csettings)
    await pool.get("gemini")
    stop = asyncio.Event()
    worker = asyncio.create_task(consume_jobs(ctx, bus, csettings, stop, pool.classifiers))
    job_id = create_job(ctx, {"bench": True}, len(ids))
    t0 = time.perf_counter()
    await publish_job(bus, ClassifyRequest(job_id=job_id, image_ids=ids, backend="gemini"))
    while True:
        with ctx.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            if job.status in ("done", "failed"):
                break
        await asyncio.sleep(0.05)
    dt = time.perf_counter() - t0
    assert job.status == "done", job.error
    stop.set()
    await worker
    await pool.aclose()
    await bus.close()
    with ctx.sessions() as s:
        n = s.scalar(select(func.count()).select_from(LLMClassification)
                     .where(LLMClassification.job_id == job_id))
        lat = list(s.scalars(select(LLMClassification.latency_ms)
                             .where(LLMClassification.job_id == job_id)))
    assert n == len(ids), f"{n} results for {len(ids)} images"
    ctx.close()
    job_run.latencies = [x for x in lat if x is not None]  # type: ignore[attr-defined]
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    n, lat, conc = args.n, args.latency, args.concurrency

    tmp = Path(tempfile.mkdtemp(prefix="bench-classify-"))
    fake_port, nats_port = free_port(), free_port()
    fake = subprocess.Popen([sys.executable, "-m", "sonoaudit_classifier.testing.fake_servers",
                             "gemini", str(fake_port), str(lat)], stdout=subprocess.DEVNULL)
    nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
    nats_proc = subprocess.Popen([nats_bin, "-a", "127.0.0.1", "-p", str(nats_port), "-js",
                                  "-sd", str(tmp / "nats")], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    db = f"sonoaudit_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{db}"'))
    try:
        wait_port(fake_port)
        wait_port(nats_port)
        url = f"http://127.0.0.1:{fake_port}"
        settings = Settings(database_url=PG_ADMIN.rsplit("/", 1)[0] + f"/{db}",
                            nats_url=f"nats://127.0.0.1:{nats_port}", store_dir=tmp / "store",
                            home=tmp)
        csettings = ClassifierSettings(GEMINI_API_KEY="bench", gemini_base_url=url,
                                       concurrency=conc, rate_limit_rpm=None,
                                       request_timeout_s=30)  # type: ignore[call-arg]
        ctx = build_context(settings)
        images = pngs(n)
        with session_scope(ctx.sessions) as s:
            objs = []
            for i, data in enumerate(images):
                sha, rel = ctx.store.put(data)
                objs.append(Image(sha256=sha, source="synthetic", class_label="benign",
                                  name=f"b{i:05d}", path=rel, width=32, height=32))
            s.add_all(objs)
            s.flush()
            ids = [o.id for o in objs]
        ctx.close()

        c0 = time.process_time()
        peer_s = asyncio.run(bare_sdk(url, images, conc))
        c1 = time.process_time()
        job_s = asyncio.run(job_run(settings, csettings, ids))
        c2 = time.process_time()
        peer_cpu_ms, job_cpu_ms = (c1 - c0) / n * 1000, (c2 - c1) / n * 1000
        ideal_rate = conc / lat
        job_rate, peer_rate = n / job_s, n / peer_s
        lats = job_run.latencies  # type: ignore[attr-defined]
        overhead_ms = (conc * job_s / n - lat) * 1000
        print(f"classify bench: {n} images, latency {lat * 1000:.0f} ms, concurrency {conc}")
        print(f"  ideal (concurrency/latency): {ideal_rate:8.1f} calls/s")
        print(f"  bare SDK (peer):             {peer_rate:8.1f} calls/s  "
              f"= {peer_rate / ideal_rate:6.1%} of ideal")
        print(f"  JetStream job (sonoaudit):   {job_rate:8.1f} calls/s  "
              f"= {job_rate / ideal_rate:6.1%} of ideal, {job_rate / peer_rate:6.1%} of bare SDK"
              f"  [goal >= 80% of ideal: {'PASS' if job_rate / ideal_rate >= 0.8 else 'FAIL'}]")
        print(f"  overhead per call (job): {overhead_ms:6.1f} ms per call slot beyond the "
              f"server latency; HTTP call median {statistics.median(lats):.1f} ms "
              f"(server {lat * 1000:.0f} ms)")
        print(f"  CPU per call in this process: job {job_cpu_ms:.2f} ms, bare SDK "
              f"{peer_cpu_ms:.2f} ms -> one free core sustains {1000 / job_cpu_ms:.0f} calls/s "
              f"through the job (ideal needs {ideal_rate:.0f}); load average now "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        fake.terminate()
        nats_proc.terminate()
        fake.wait(10)
        nats_proc.wait(10)
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
