"""The service endpoints the distributed pipeline added, on a migrated SQLite store without NATS:
``POST /train`` (generator), ``POST /study/admin/{id}/simulate-panel`` (raters) and
``GET /classify/backend-status`` (classifier). Bad input is a 4xx naming the field; nothing is
queued or written for it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sonoaudit.context import AppContext, build_context
from sonoaudit.datasets import import_dataset, write_phantom
from sonoaudit.db.models import Answer, Image, Job, Model, Reader, StudyItem
from sonoaudit.settings import Settings
from sqlalchemy import func, select


def _ready(client: TestClient) -> TestClient:
    """Wait for /readyz: the service connects to its database in the background, and a request
    before that answers 503 (not ready), not the status under test."""
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.05)
    return client


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Settings, AppContext, str]]:
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    ctx = build_context(settings)
    ds = import_dataset(ctx, write_phantom(tmp_path / "phantom", n_per_class=4, size=64))
    yield settings, ctx, ds.id
    ctx.close()


def test_train_rejects_bad_input_and_trains_in_process(
        store: tuple[Settings, AppContext, str]) -> None:
    from sonoaudit_generator.main import create_app

    settings, ctx, ds = store
    with TestClient(create_app(settings)) as client:
        _ready(client)
        for body, field in (({"dataset_id": "nope", "class_label": "benign"}, "dataset_id"),
                            ({"dataset_id": ds, "class_label": "normal"}, "class_label"),
                            ({"dataset_id": ds, "class_label": "benign", "profile": "huge"},
                             "profile")):
            r = client.post("/train", json=body)
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["loc"] == ["body", field]
        with ctx.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Job)) == 0  # nothing queued
        assert client.get("/train/jobs/unknown").status_code == 404

        r = client.post("/train", json={"dataset_id": ds, "class_label": "malignant",
                                        "steps": 1})
        assert r.status_code == 202 and r.json()["mode"] == "in-process"
        url = r.json()["url"]
        deadline = time.monotonic() + 120
        while (view := client.get(url).json())["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, view
            time.sleep(0.2)
    assert view["status"] == "done", view
    assert view["training"]["status"] == "done"
    with ctx.sessions() as s:
        model = s.get(Model, view["result"]["model_id"])
        assert model is not None and model.class_label == "malignant"
        # trained into the job's own folder, so no other job overwrites its checkpoint
        assert f"train-{r.json()['job_id']}" in model.checkpoint_path


def test_simulate_panel_needs_the_admin_token(store: tuple[Settings, AppContext, str]) -> None:
    from sonoaudit_raters.main import create_app
    from sonoaudit_raters.study.setup import create_study

    settings, ctx, ds = store
    with ctx.sessions() as s:
        real = list(s.scalars(select(Image.id).where(Image.dataset_id == ds)))
    study, admin = create_study(ctx, "panel", real, [], seed=0)
    url = f"/study/admin/{study.id}/simulate-panel"
    with TestClient(create_app(settings)) as client:
        _ready(client)
        assert client.post(url, json={"n_readers": 2}).status_code == 403
        assert client.post(url, json={"n_readers": 2},
                           headers={"Authorization": "Bearer wrong"}).status_code == 403
        auth = {"Authorization": f"Bearer {admin}"}
        r = client.post(url, json={"n_readers": 2, "accuracy": 1.5}, headers=auth)
        assert r.status_code == 422 and "accuracy" in r.text
        r = client.post(url, json={"n_readers": 2, "accuracy": 0.8, "seed": 1}, headers=auth)
        assert r.status_code == 201, r.text
        ids = r.json()["reader_ids"]
    assert len(ids) == 2 and r.json()["simulated"] is True
    with ctx.sessions() as s:
        readers = s.scalars(select(Reader).where(Reader.study_id == study.id)).all()
        assert {x.id for x in readers} == set(ids) and all(x.simulated for x in readers)
        n_items = s.scalar(select(func.count()).select_from(StudyItem)
                           .where(StudyItem.study_id == study.id))
        answered = s.execute(select(Answer.reader_id, func.count(func.distinct(Answer.item_id)))
                             .where(Answer.study_id == study.id).group_by(Answer.reader_id)).all()
    assert n_items == len(real) == 8
    assert sorted(n for _, n in answered) == [8, 8]  # every simulated reader answered every item


def test_backend_status_says_why(store: tuple[Settings, AppContext, str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from sonoaudit_classifier.main import create_app
    from sonoaudit_classifier.settings import ClassifierSettings

    for key in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "SONOAUDIT_OPENAI_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    settings, _, _ = store
    with TestClient(create_app(settings, ClassifierSettings())) as client:
        _ready(client)
        body = client.get("/classify/backend-status").json()
        assert body == {"backend": "gemini", "ready": False,
                        "problem": "no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY)"}
        body = client.get("/classify/backend-status", params={"backend": "openai"}).json()
        assert body["ready"] is False and "SONOAUDIT_OPENAI_BASE_URL" in body["problem"]
        body = client.get("/classify/backend-status", params={"backend": "nope"}).json()
        assert body["ready"] is False and "nope" in body["problem"]
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    with TestClient(create_app(settings, ClassifierSettings())) as client:
        _ready(client)
        assert client.get("/classify/backend-status").json()["ready"] is True
