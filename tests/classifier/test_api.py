"""The classifier service in embedded mode (SQLite, no bus): POST /classify on a real BUS-BRA image
through the real SDK and the fake server, bad input answered with 4xx and a reason."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from classifier_helpers import (  # type: ignore[import-not-found]
    register_images,
    synthetic_pngs,
    write_prompt_version,
)
from fastapi.testclient import TestClient
from sonoaudit.settings import Settings
from sonoaudit_classifier.main import create_app
from sonoaudit_classifier.settings import ClassifierSettings
from sonoaudit_classifier.testing.fake_servers import FakeGeminiServer, default_label


@pytest.fixture
def client(tmp_path: Path, fake_gemini: FakeGeminiServer,
           make_settings: Any) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                        store_dir=tmp_path / "store", home=tmp_path)
    prompts = write_prompt_version(tmp_path / "prompts", "v2", "You are a sonographer.")
    app = create_app(settings, make_settings(gemini_base_url=fake_gemini.url,
                                             max_image_bytes=200_000, prompt_dir=prompts))
    # The runtime does not migrate; the embedded CLI does. Migrate here like `sonoaudit migrate`.
    from sonoaudit.db.migrate import upgrade

    upgrade(settings.resolved_database_url)
    with TestClient(app) as c:
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service never became ready"
            time.sleep(0.05)
        yield c


def test_classify_busbra_upload(client: TestClient, busbra_sample: Path,
                                fake_gemini: FakeGeminiServer) -> None:
    data = (busbra_sample / "Images" / "bus_0011-r.png").read_bytes()
    r = client.post("/classify", files={"image": ("bus_0011-r.png", data, "image/png")},
                    data={"replicates": "2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [a["replicate"] for a in body["results"]] == [0, 1]
    for a in body["results"]:
        assert a["status"] == "ok" and a["label"] == default_label(data)
        assert a["model"] == "gemini-2.5-flash" and a["prompt_version"] == "v1"
        assert set(a["findings"]) == {"shape", "orientation", "margin", "echo_pattern",
                                      "posterior_features"}
        assert 0 <= a["confidence"] <= 100 and a["rationale"]
    # Same request again: answered from the store, no new call.
    assert client.post("/classify", files={"image": ("x.png", data, "image/png")},
                       data={"replicates": "2"}).json() == body
    assert len(fake_gemini.requests) == 2


def test_classify_with_mask_outline(client: TestClient, busbra_sample: Path) -> None:
    img = (busbra_sample / "Images" / "bus_0011-r.png").read_bytes()
    mask = (busbra_sample / "Masks" / "mask_0011-r.png").read_bytes()
    r = client.post("/classify", files={"image": ("i.png", img, "image/png"),
                                        "mask": ("m.png", mask, "image/png")},
                    data={"condition": "outline"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["condition"] == "outline"
    r = client.post("/classify", files={"image": ("i.png", img, "image/png")},
                    data={"condition": "outline"})
    assert r.status_code == 422 and "needs a mask" in r.json()["detail"]


def test_non_binary_mask_is_refused_like_the_dataset_reader(
        client: TestClient, busbra_sample: Path, fake_gemini: FakeGeminiServer) -> None:
    """A grey (soft) mask: the dataset reader refuses it, so must the service (422 naming the
    mask field), before any call; a binary mask with a thin anti-aliased rim still passes."""
    import io

    import numpy as np
    from PIL import Image as PILImage

    img = (busbra_sample / "Images" / "bus_0011-r.png").read_bytes()
    w, h = PILImage.open(io.BytesIO(img)).size

    def png(arr: np.ndarray) -> bytes:
        buf = io.BytesIO()
        PILImage.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    grey = np.full((h, w), 128, dtype=np.uint8)  # every pixel neither black nor white
    for condition in ("outline", "side_by_side"):
        r = client.post("/classify", files={"image": ("i.png", img, "image/png"),
                                            "mask": ("grey.png", png(grey), "image/png")},
                        data={"condition": condition})
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == (
            "mask (grey.png): mask is not binary: 100.0% of pixels are neither black nor white "
            "(tolerance 1%); re-export it as a black/white PNG")
    assert fake_gemini.requests == []
    # 0.5% of pixels grey (under the datasets' 1% tolerance): accepted
    rim = np.zeros((h, w), dtype=np.uint8)
    rim[h // 4: h // 2, w // 4: w // 2] = 255
    rim.reshape(-1)[: int(h * w * 0.005)] = 128
    r = client.post("/classify", files={"image": ("i.png", img, "image/png"),
                                        "mask": ("rim.png", png(rim), "image/png")},
                    data={"condition": "outline"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("files, data, status, fragment", [
    ({"image": ("a.png", b"hello, not an image", "image/png")}, {}, 422,
     '"image (a.png): not a readable image (not an image format Pillow recognises; expected '
     'PNG, JPEG or WebP)"'),
    ({"image": ("a.png", b"\x89PNG" + b"0" * 300_000, "image/png")}, {}, 413, "byte limit"),
    ({}, {"image_id": "does-not-exist"}, 404, "unknown image id"),
    ({}, {}, 422, "exactly one of"),
    ({}, {"image_id": "x", "backend": "claude"}, 422, "unknown LLM backend 'claude'"),
    ({}, {"image_id": "x", "condition": "with_report"}, 422, "condition"),
    ({}, {"image_id": "x", "replicates": "0"}, 422, "replicates"),
    ({}, {"image_id": "x", "prompt_version": "v9"}, 422, "prompt_version: prompt version 'v9'"),
])
def test_bad_input(client: TestClient, files: dict[str, Any], data: dict[str, str], status: int,
                   fragment: str) -> None:
    r = client.post("/classify", files=files or None, data=data)
    assert r.status_code == status, r.text
    assert fragment in r.text


def test_no_key_is_a_clear_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "SONOAUDIT_GEMINI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                        store_dir=tmp_path / "store", home=tmp_path)
    from sonoaudit.db.migrate import upgrade

    upgrade(settings.resolved_database_url)
    with TestClient(create_app(settings, ClassifierSettings())) as c:
        while c.get("/readyz").status_code != 200:
            time.sleep(0.05)
        r = c.post("/classify/batch", json={"image_ids": ["a"]})
        assert r.status_code == 503 and "GEMINI_API_KEY" in r.json()["detail"]


def test_batch_in_process_job(client: TestClient, fake_gemini: FakeGeminiServer) -> None:
    ctx = client.app.state.runtime.ctx  # type: ignore[attr-defined]
    images = synthetic_pngs(12, seed=3)
    ids = register_images(ctx, images)
    fake_gemini.script_for(images[0][1], "blocked")
    r = client.post("/classify/batch", json={"image_ids": ids, "replicates": 1})
    assert r.status_code == 202, r.text
    job_url = r.json()["status_url"]
    deadline = time.monotonic() + 20
    while (job := client.get(job_url).json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["status"] == "done" and job["total"] == 12 and job["done"] == 12
    assert job["result"]["counts"] == {"ok": 11, "abstain": 1}
    results = client.get(job_url + "/results").json()
    assert len(results) == 12
    blocked = [a for a in results if a["status"] == "abstain"]
    assert blocked[0]["image_id"] == ids[0] and blocked[0]["label"] is None
    assert client.get("/jobs/nope").status_code == 404
    r = client.post("/classify/batch", json={"image_ids": [*ids, "missing-id"]})
    assert r.status_code == 404 and "missing-id" in r.json()["detail"]


def test_batch_job_prompt_version_and_self_agreement(client: TestClient,
                                                    fake_gemini: FakeGeminiServer) -> None:
    from statsmodels.stats.inter_rater import fleiss_kappa

    ctx = client.app.state.runtime.ctx  # type: ignore[attr-defined]
    images = synthetic_pngs(9, seed=4)
    ids = register_images(ctx, images)
    labels = ["benign", "malignant", "normal"]
    # One replicate of three images answers another label than the other two replicates.
    table = []
    for i, (_, data, _, _) in enumerate(images):
        usual = default_label(data)
        row = [3 * (lab == usual) for lab in labels]
        if i < 3:
            other = labels[(labels.index(usual) + 1) % 3]
            fake_gemini.script_for(data, f"ok:{other}")
            row[labels.index(usual)] -= 1
            row[labels.index(other)] += 1
        table.append(row)
    r = client.post("/classify/batch", json={"image_ids": ids, "replicates": 3,
                                             "prompt_version": "v2"})
    assert r.status_code == 202, r.text
    job_url = r.json()["status_url"]
    deadline = time.monotonic() + 20
    while (job := client.get(job_url).json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["status"] == "done" and job["done"] == 27, job
    assert job["params"]["prompt_version"] == "v2" and job["result"]["prompt_version"] == "v2"
    assert {q["system"]["parts"][0]["text"] for q in fake_gemini.requests} == {
        "You are a sonographer."}
    [agreement] = job["result"]["self_agreement"]
    assert (agreement["replicates"], agreement["n_images"], agreement["excluded"]) == (3, 9, 0)
    assert agreement["fleiss_kappa"] == pytest.approx(fleiss_kappa(table))
    assert agreement["unanimous"] == pytest.approx(6 / 9)
    r = client.post("/classify/batch", json={"image_ids": ids, "prompt_version": "nope"})
    assert r.status_code == 422 and "'nope' not found" in r.json()["detail"]
