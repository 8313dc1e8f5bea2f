"""The metrics service over HTTP: inline POST /metrics on SQLite, 422s naming the bad reference,
and a background job through the JetStream worker on the real Postgres + NATS."""

from __future__ import annotations

import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from metrics_helpers import speckle_sample, truncated_dataset, write_pairs
from sonoaudit.context import build_context
from sonoaudit.db.migrate import upgrade
from sonoaudit.db.models import MetricRun
from sonoaudit.db.session import session_scope
from sonoaudit.settings import Settings
from sonoaudit_metrics.config import MetricsSettings
from sonoaudit_metrics.main import create_app
from sqlalchemy import select


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(client.get("/readyz").json())


def wait_job(client: TestClient, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.get(f"/metrics/jobs/{job_id}")
        view = r.json()
        if r.status_code == 200 and view["status"] in ("done", "failed"):
            return view
        time.sleep(0.3)
    raise TimeoutError(view)


@pytest.fixture
def sets(tmp_path: Path) -> tuple[str, str]:
    real = write_pairs(tmp_path / "real", [speckle_sample(f"r{i}", i) for i in range(5)])
    syn = write_pairs(tmp_path / "syn", [speckle_sample(f"s{i}", 50 + i) for i in range(4)])
    return str(real), str(syn)


def msettings(tmp_path: Path) -> MetricsSettings:
    return MetricsSettings(cache_dir=tmp_path / "cache", kid_subsets=10)


def test_inline_post_stores_a_run_with_provenance(tmp_path: Path, sqlite_url: str,
                                                  sets: tuple[str, str]) -> None:
    upgrade(sqlite_url)
    settings = Settings(home=tmp_path / "home", database_url=sqlite_url)
    real, syn = sets
    with TestClient(create_app(settings, msettings(tmp_path))) as client:
        wait_ready(client)
        r = client.post("/metrics", json={"real_ref": real, "synthetic_ref": syn})
        assert r.status_code == 200, r.text
        run = r.json()
        res = run["results"]
        assert run["status"] == "done" and (res["n_real"], res["n_synthetic"]) == (5, 4)
        assert res["kid"]["subset_size"] == 4 and res["kid"]["subsets"] == 10
        assert res["fid"]["value"] > 0 and "n < 2048" in res["fid"]["warning"]
        assert res["is"]["value"] is None and "logits" in res["is"]["reason"]
        assert res["alignment"]["real"]["hypoechoic_fraction"] == 1.0
        prov = run["provenance"]
        assert prov["weights_sha256"].startswith("7ff4a85c")
        assert prov["real_ref"] == real and prov["synthetic_kind"] == "pairs"
        assert prov["packages"]["torchmetrics"] == version("torchmetrics") and prov["seed"] == 0
        assert "antialias=True" in prov["resize"] and prov["n_real"] == 5
        assert client.get(f"/metrics/runs/{run['id']}").json()["results"] == res
        assert client.get("/metrics/runs/nope").status_code == 404

        bad = client.post("/metrics", json={"real_ref": str(tmp_path / "nope"),
                                            "synthetic_ref": syn})
        detail = bad.json()["detail"]
        assert bad.status_code == 422 and "nope' is neither a folder nor a dataset" in detail
        one = write_pairs(tmp_path / "one", [speckle_sample("only", 9)])
        few = client.post("/metrics", json={"real_ref": real, "synthetic_ref": str(one)})
        assert few.status_code == 422 and "synthetic set has 1 image" in few.json()["detail"]
        extra = client.post("/metrics", json={"real_ref": real, "synthetic_ref": syn, "x": 1})
        assert extra.status_code == 422
        queued = client.post("/metrics", json={"real_ref": real, "synthetic_ref": syn,
                                               "background": True})
        assert queued.status_code == 409 and "NATS" in queued.json()["detail"]
    with session_scope(build_context(settings).sessions) as s:
        runs = list(s.scalars(select(MetricRun)))
        # only the successful run has results; the refused inputs are recorded as failed
        assert sorted(r.status for r in runs) == ["done", "failed", "failed"]
        assert all(not r.results and r.error for r in runs if r.status == "failed")


def test_inline_post_real_dataset_failing_validation_is_422_naming_the_file(
        tmp_path: Path, sqlite_url: str, sets: tuple[str, str]) -> None:
    upgrade(sqlite_url)
    settings = Settings(home=tmp_path / "home", database_url=sqlite_url)
    real, bad = truncated_dataset(tmp_path / "ds")
    with TestClient(create_app(settings, msettings(tmp_path))) as client:
        wait_ready(client)
        r = client.post("/metrics", json={"real_ref": str(real), "synthetic_ref": sets[1]})
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith(
            f"{real}: the busbra dataset fails validation, 1 problem(s): "
            f"{bad}: unreadable image (")


@pytest.mark.integration
def test_background_job_on_postgres_and_nats(tmp_path: Path, postgres_url: str,
                                             nats_server: str, sets: tuple[str, str]) -> None:
    upgrade(postgres_url)
    settings = Settings(home=tmp_path / "home", database_url=postgres_url, nats_url=nats_server,
                        nats_ack_wait_s=5.0)
    real, syn = sets
    with TestClient(create_app(settings, msettings(tmp_path))) as client:
        wait_ready(client)
        r = client.post("/metrics", json={"real_ref": real, "synthetic_ref": syn,
                                          "background": True})
        assert r.status_code == 202, r.text
        view = wait_job(client, r.json()["job_id"])
        assert view["status"] == "done", view
        assert view["run"]["results"]["n_synthetic"] == 4
        assert view["run"]["job_id"] == r.json()["job_id"]
        bad = client.post("/metrics", json={"real_ref": real, "synthetic_ref": "no-such-run",
                                            "background": True})
        failed = wait_job(client, bad.json()["job_id"])
        assert failed["status"] == "failed" and "no-such-run" in failed["error"]
        assert client.get("/metrics/jobs/nope").status_code == 404


def nan_kid(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """KID that came out NaN (what the final NaN/complex guard exists for)."""
    return {"mean": float("nan"), "std": 0.0, "subset_size": 2, "subsets": 1}


def test_inline_post_weights_missing_is_503_and_nan_is_422(
        tmp_path: Path, sqlite_url: str, sets: tuple[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    upgrade(sqlite_url)
    settings = Settings(home=tmp_path / "home", database_url=sqlite_url)
    real, syn = sets
    missing = tmp_path / "no_weights.pt"
    no_weights = MetricsSettings(cache_dir=tmp_path / "cache", kid_subsets=10,
                                 inception_weights=missing)
    with TestClient(create_app(settings, no_weights)) as client:
        wait_ready(client)
        r = client.post("/metrics", json={"real_ref": real, "synthetic_ref": syn})
        assert r.status_code == 503, r.text
        assert r.json()["detail"] == (f"metrics weights unavailable: FID Inception weights "
                                      f"file {missing} does not exist")
    import sonoaudit_metrics.scoring as scoring

    monkeypatch.setattr(scoring, "kid", nan_kid)
    with TestClient(create_app(settings, msettings(tmp_path))) as client:
        wait_ready(client)
        r = client.post("/metrics", json={"real_ref": real, "synthetic_ref": syn})
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == ("the sets cannot be scored: results.kid.mean is not "
                                      "finite (nan)")
    with session_scope(build_context(settings).sessions) as s:
        runs = {r.error: r.status for r in s.scalars(select(MetricRun))}
    assert runs == {f"metrics weights unavailable: FID Inception weights file {missing} does "
                    "not exist": "failed",
                    "the sets cannot be scored: results.kid.mean is not finite (nan)": "failed"}


@pytest.mark.integration
def test_background_job_failures_end_the_job_with_the_reason(
        tmp_path: Path, postgres_url: str, nats_server: str, sets: tuple[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing weights and a NaN result fail the job at once (poison: no redelivery) with the
    reason; an unexpected error is retried, then dead-lettered, and the job ends failed too
    (it used to stay 'running')."""
    import sonoaudit_metrics.runs as runs_mod
    import sonoaudit_metrics.scoring as scoring
    from sonoaudit.db.models import Job

    upgrade(postgres_url)
    settings = Settings(home=tmp_path / "home", database_url=postgres_url, nats_url=nats_server,
                        nats_ack_wait_s=5.0)
    real, syn = sets
    missing = tmp_path / "no_weights.pt"
    calls: list[str] = []
    real_load = runs_mod.load_sets

    def counted(*a: Any, **k: Any) -> Any:
        calls.append(a[2])
        return real_load(*a, **k)

    monkeypatch.setattr(runs_mod, "load_sets", counted)
    body = {"real_ref": real, "synthetic_ref": syn, "background": True}
    no_weights = MetricsSettings(cache_dir=tmp_path / "cache", kid_subsets=10,
                                 inception_weights=missing)
    with TestClient(create_app(settings, no_weights)) as client:
        wait_ready(client)
        view = wait_job(client, client.post("/metrics", json=body).json()["job_id"])
        assert view["status"] == "failed", view
        assert view["error"] == (f"metrics weights unavailable: FID Inception weights file "
                                 f"{missing} does not exist")
        assert view["run"]["status"] == "failed" and view["run"]["error"] == view["error"]
        assert len(calls) == 1  # not redelivered

    monkeypatch.setattr(scoring, "kid", nan_kid)
    with TestClient(create_app(settings, msettings(tmp_path))) as client:
        wait_ready(client)
        view = wait_job(client, client.post("/metrics", json=body).json()["job_id"])
        assert view["status"] == "failed", view
        assert view["error"] == "the sets cannot be scored: results.kid.mean is not finite (nan)"
        assert len(calls) == 2

        def broken(*a: Any, **k: Any) -> Any:
            calls.append("broken")
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(runs_mod, "load_sets", broken)
        view = wait_job(client, client.post("/metrics", json=body).json()["job_id"])
        assert view["status"] == "failed", view
        assert "gave up after" in view["error"] and "disk on fire" in view["error"]
        assert calls.count("broken") == settings.nats_max_deliver
        with session_scope(build_context(settings).sessions) as s:
            assert s.get_one(Job, view["job_id"]).status == "failed"
