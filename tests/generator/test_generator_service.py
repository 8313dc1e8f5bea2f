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
from gen_helpers import conditional_checkpoint, register_model
from PIL import Image as PILImage
from sonoaudit.context import build_context
from sonoaudit.db.migrate import upgrade
from sonoaudit.db.models import GenerationRun, Image, Job
from sonoaudit.db.session import session_scope
from sonoaudit.messages.payloads import GenerateRequest
from sonoaudit.settings import Settings
from sonoaudit_generator.checkpoint import load_checkpoint, load_weights
from sonoaudit_generator.denoiser import build_denoiser
from sonoaudit_generator.jobs import publish_job
from sonoaudit_generator.main import create_app
from sonoaudit_generator.sampling import TorchBackend, sample_batch
from sonoaudit_generator.schedules import sampler_scheduler
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
    ({"class": "normal", "n": 1}, "class_label", "no trained model for class 'normal'"),
    ({"model_id": "missing", "n": 1}, "model_id", "unknown model"),
    ({"class": "benign", "n": 0}, "n", ""),
    ({"class": "benign", "n": 21}, "n", "n must be in 1..20"),
    ({"class": "benign", "n": 1, "steps": 0, "sampler": "ddim"}, "steps", "1..100"),
    ({"class": "benign", "n": 1, "steps": 101}, "steps", "1..100"),
    ({"class": "benign", "n": 1, "sampler": "euler"}, "sampler", ""),
    ({"n": 1}, "class_label", "give 'model_id'"),
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


# --- a class-conditional model over HTTP and as a generate job: class_label --------------------

CLASSES = ["benign", "malignant"]


@pytest.fixture(scope="module")
def cond_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return conditional_checkpoint(tmp_path_factory.mktemp("cond_model"))


def expected_images(ckpt_dir: Path, label: int, n: int, seed: int, steps: int) -> np.ndarray:
    """What the conditional model samples for class index ``label`` (DDIM), computed here with
    the network and the sampling loop directly, not through the service."""
    ck = load_checkpoint(ckpt_dir)
    net = build_denoiser(ck.profile.model)
    load_weights(net, ck.ema, ck.path, ck.profile.model)
    return sample_batch(TorchBackend(net, class_label=label),
                        lambda: sampler_scheduler(ck.profile.schedule, "ddim", steps),
                        seed=seed, indices=list(range(n)), channels=2, size=16).images


def served_images(client: TestClient, images: list[dict[str, Any]]) -> np.ndarray:
    return np.stack([np.array(PILImage.open(io.BytesIO(client.get(im["url"]).content)))
                     for im in images])


def counts(settings: Settings) -> tuple[int, int, int]:
    ctx = build_context(settings)
    try:
        with session_scope(ctx.sessions) as s:
            return (s.scalar(select(func.count()).select_from(Image)
                             .where(Image.source == "synthetic")) or 0,
                    s.scalar(select(func.count()).select_from(GenerationRun)) or 0,
                    s.scalar(select(func.count()).select_from(Job)) or 0)
    finally:
        ctx.close()


def test_conditional_model_over_http_samples_the_class_given(
        tmp_path: Path, sqlite_url: str, cond_checkpoint: Path, tiny_checkpoint: Path) -> None:
    upgrade(sqlite_url)
    settings = Settings(home=tmp_path / "home", database_url=sqlite_url)
    ctx = build_context(settings)
    cond = register_model(ctx, cond_checkpoint, None, CLASSES)
    per = register_model(ctx, tiny_checkpoint, "benign")
    malignant = expected_images(cond_checkpoint, 1, 2, seed=4, steps=3)
    benign = expected_images(cond_checkpoint, 0, 2, seed=4, steps=3)
    assert not np.array_equal(malignant, benign)  # the label reaches the network
    with TestClient(create_app(settings, gsettings())) as client:
        wait_ready(client)
        # refused before anything is sampled, stored or queued (n=5 would be a job)
        for body, text in (
                ({"model_id": cond, "n": 1},
                 "class-conditional (classes benign, malignant): give the class"),
                ({"model_id": cond, "n": 5}, "class-conditional"),
                ({"model_id": cond, "class_label": "normal", "n": 1},
                 "has no class 'normal'; its classes: benign, malignant"),
                ({"model_id": cond, "class": "normal", "n": 5}, "has no class 'normal'"),
                ({"model_id": per, "class_label": "malignant", "n": 1},
                 "trained on class 'benign' only and cannot sample 'malignant'")):
            r = client.post("/generate", json={"sampler": "ddim", "steps": 3, **body})
            assert r.status_code == 422, (body, r.text)
            detail = r.json()["detail"]
            assert detail[0]["loc"] == ["body", "class_label"], detail
            assert text in detail[0]["msg"], detail
        assert counts(settings) == (0, 0, 0)

        r = client.post("/generate", json={"model_id": cond, "class_label": "malignant",
                                           "n": 2, "sampler": "ddim", "steps": 3, "seed": 4})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["class_label"] == "malignant"
        assert np.array_equal(served_images(client, body["images"]), malignant)
        with session_scope(ctx.sessions) as s:
            run = s.get_one(GenerationRun, body["generation_run_id"])
            assert (run.class_label, run.provenance["class_index"],
                    run.provenance["class_names"]) == ("malignant", 1, CLASSES)
            assert list(s.scalars(select(Image.class_label)
                                  .where(Image.generation_run_id == run.id))) == \
                ["malignant", "malignant"]
        # `class` is the same field; benign is label 0
        r = client.post("/generate", json={"model_id": cond, "class": "benign", "n": 2,
                                           "sampler": "ddim", "steps": 3, "seed": 4})
        assert r.status_code == 200, r.text
        assert r.json()["class_label"] == "benign"
        assert np.array_equal(served_images(client, r.json()["images"]), benign)
        # a per-class model may be given its own class
        r = client.post("/generate", json={"model_id": per, "class_label": "benign", "n": 1,
                                           "sampler": "ddim", "steps": 3})
        assert r.status_code == 200, r.text
        assert r.json()["class_label"] == "benign"
    assert counts(settings) == (5, 3, 0)
    ctx.close()


@pytest.mark.integration
def test_conditional_jetstream_job_samples_the_class_given(
        postgres_url: str, nats_server: str, cond_checkpoint: Path, tiny_checkpoint: Path,
        tmp_path: Path) -> None:
    upgrade(postgres_url)
    settings = Settings(home=tmp_path / "home", database_url=postgres_url, nats_url=nats_server,
                        nats_ack_wait_s=5.0)
    ctx = build_context(settings)
    cond = register_model(ctx, cond_checkpoint, None, CLASSES)
    per = register_model(ctx, tiny_checkpoint, "benign")
    with TestClient(create_app(settings, gsettings(heartbeat_s=0.2))) as client:
        wait_ready(client)
        r = client.post("/generate", json={"model_id": cond, "class_label": "malignant",
                                           "n": 3, "sampler": "ddim", "steps": 3, "seed": 4})
        assert r.status_code == 202, r.text
        assert r.json()["mode"] == "jetstream"
        view = wait_job(client, r.json()["job_id"])
        assert view["status"] == "done", view
        assert view["params"]["class_label"] == "malignant"
        assert view["result"]["class_label"] == "malignant"
        assert np.array_equal(served_images(client, view["images"]),
                              expected_images(cond_checkpoint, 1, 3, seed=4, steps=3))
        run_id = view["result"]["generation_run_id"]
        with session_scope(ctx.sessions) as s:
            assert s.get_one(GenerationRun, run_id).class_label == "malignant"
            assert list(s.scalars(select(Image.class_label)
                                  .where(Image.generation_run_id == run_id))) == \
                ["malignant"] * 3

        # jobs published without the API (no 422 in front): refused by the worker, job failed
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        bad = {"cond-no-class": (cond, None, "class-conditional (classes benign, malignant)"),
               "cond-normal": (cond, "normal", "has no class 'normal'"),
               "per-other": (per, "malignant", "trained on class 'benign' only")}
        for job_id, (mid, cls, _) in bad.items():
            req = GenerateRequest(job_id=job_id, model_id=mid, n=3, sampler="ddim", steps=3,
                                  class_label=cls)
            client.portal.call(publish_job, runtime.bus, req, None)  # type: ignore[union-attr]
        for job_id, (_, _, text) in bad.items():
            failed = wait_job(client, job_id)
            assert failed["status"] == "failed" and text in failed["error"], failed
        with session_scope(ctx.sessions) as s:
            assert s.scalar(select(func.count()).select_from(GenerationRun)
                            .where(GenerationRun.job_id.in_(list(bad)))) == 0
    ctx.close()
