"""Fault tolerance of the generator worker (issue 8): the service runs as a real process
(`sonoaudit serve generator`) on the real Postgres and NATS; it is SIGKILLed in the middle of a
batch job and a new process is started. The job must complete with every sample present exactly
once (rows and files), and the samples must equal those of an uninterrupted in-process run."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gen_helpers import register_model
from PIL import Image as PILImage
from sonoaudit.context import AppContext, build_context
from sonoaudit.db.migrate import upgrade
from sonoaudit.db.models import GenerationRun, Image, Job
from sonoaudit.settings import Settings
from sonoaudit_generator.checkpoint import load_checkpoint
from sonoaudit_generator.generation import make_backend
from sonoaudit_generator.sampling import sample_batch
from sonoaudit_generator.schedules import sampler_scheduler
from sqlalchemy import func, select

# The process helpers of the ops tests, reused (not copied): tests/ops is not a package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))
from opshelpers import ServiceProcess, service_env, wait_until  # noqa: E402

pytestmark = pytest.mark.integration

N, BATCH, SAMPLER, STEPS, SEED = 16, 2, "ddpm", 100, 11


async def _reset_consumer(nats_url: str) -> None:
    """Drop the durable consumer so this test's short ack_wait applies when the worker
    re-declares it (another test of the session may have declared it with other settings)."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().delete_consumer("GENERATE", "generator")
    except Exception:
        pass
    await nc.close()


def _count(ctx: AppContext, job_id: str) -> int:
    with ctx.sessions() as s:
        run_id = s.scalar(select(GenerationRun.id).where(GenerationRun.job_id == job_id))
        if run_id is None:
            return 0
        return int(s.scalar(select(func.count()).select_from(Image)
                            .where(Image.generation_run_id == run_id)) or 0)


def _job_status(ctx: AppContext, job_id: str) -> str | None:
    with ctx.sessions() as s:
        job = s.get(Job, job_id)
        return None if job is None else job.status


def test_generator_worker_killed_mid_batch_loses_and_duplicates_nothing(
        postgres_url: str, nats_server: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    upgrade(postgres_url)
    settings = Settings(home=tmp_path / "home", store_dir=tmp_path / "store",
                        database_url=postgres_url)
    ctx = build_context(settings)
    mid = register_model(ctx, tiny_checkpoint, class_label="malignant")
    asyncio.run(_reset_consumer(nats_server))
    env = service_env(tmp_path, database_url=postgres_url, nats_url=nats_server,
                      store_dir=str(tmp_path / "store"), nats_ack_wait_s="3",
                      generator_batch_size=str(BATCH), generator_sync_max_n="0",
                      generator_heartbeat_s="0.5", generator_threads="1")
    proc = ServiceProcess("generator", env, tmp_path)
    try:
        proc.wait_alive()
        wait_until(lambda: httpx.get(f"{proc.url}/readyz", timeout=5).status_code == 200, 60,
                   "generator ready")
        r = httpx.post(f"{proc.url}/generate", timeout=30,
                       json={"model_id": mid, "n": N, "sampler": SAMPLER, "steps": STEPS,
                             "seed": SEED})
        assert r.status_code == 202, r.text
        assert r.json()["mode"] == "jetstream"
        job_id = r.json()["job_id"]
        # kill once two batches are committed and the job is still running
        wait_until(lambda: _count(ctx, job_id) >= 2 * BATCH, 120, "two committed batches")
        proc.proc.kill()  # SIGKILL: no cleanup; the message is neither acked nor nak'd
        proc.proc.wait(10)
        proc.stop()
        before = _count(ctx, job_id)
        assert 2 * BATCH <= before < N, f"killed too late: {before} of {N} already stored"
        assert _job_status(ctx, job_id) == "running"

        proc = ServiceProcess("generator", env, tmp_path)
        proc.wait_alive()
        wait_until(lambda: _job_status(ctx, job_id) in ("done", "failed"), 180,
                   "job finished after the restart")
        view = httpx.get(f"{proc.url}/jobs/{job_id}", timeout=10).json()
    finally:
        proc.stop()

    assert view["status"] == "done", view
    assert view["done"] == N and view["failed"] == 0
    with ctx.sessions() as s:
        runs = list(s.scalars(select(GenerationRun).where(GenerationRun.job_id == job_id)))
        assert len(runs) == 1 and runs[0].status == "done"
        run = runs[0]
        rows = list(s.scalars(select(Image).where(Image.generation_run_id == run.id)))
    # no sample lost, none duplicated
    assert Counter(r.sample_index for r in rows) == dict.fromkeys(range(N), 1)
    assert run.qc_summary["n"] == N

    # files: exactly one image and one mask per sample plus the manifest, no half-written debris
    out = tmp_path / "home" / "generated" / run.id
    stems = [f"malignant_{i:05d}" for i in range(N)]
    expected_files = {f"{s}_{k}.png" for s in stems for k in ("image", "mask")} | {
        "manifest.json"}
    assert {p.name for p in out.iterdir()} == expected_files
    manifest = json.loads((out / "manifest.json").read_text())
    assert [x["index"] for x in manifest["samples"]] == list(range(N))
    referenced = {r.path for r in rows} | {r.mask_path for r in rows}
    stored = {str(p.relative_to(tmp_path / "store")) for p in (tmp_path / "store").rglob("*.png")}
    assert stored == referenced

    # the pixels equal an uninterrupted run, computed here in-process from the same checkpoint
    ckpt = load_checkpoint(tiny_checkpoint)
    torch.set_num_threads(1)
    ref = sample_batch(make_backend(ckpt, "torch"),
                       lambda: sampler_scheduler(ckpt.profile.schedule, SAMPLER, STEPS),
                       seed=SEED, indices=list(range(N)), channels=2, size=16)
    by_index = {r.sample_index: r for r in rows}
    for i in range(N):
        img = np.array(PILImage.open(io.BytesIO(ctx.store.get(by_index[i].path))))
        msk = np.array(PILImage.open(io.BytesIO(ctx.store.get(by_index[i].mask_path or ""))))
        # another thread count may reorder float sums: a grey level may round the other way
        assert np.abs(img.astype(int) - ref.images[i].astype(int)).max() <= 1, i
        assert ((msk > 0) != ref.masks[i]).mean() <= 0.01, i
    ctx.close()
