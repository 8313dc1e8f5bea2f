"""Prometheus metrics, correlation ids and JSON logs of every service, as served in production
(`sonoaudit serve`, uvicorn, settings from the environment; embedded SQLite is enough here)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from opshelpers import SERVICES, ServiceProcess, service_env, wait_until
from prometheus_client.parser import text_string_to_metric_families
from sonoaudit.db.migrate import upgrade

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    tmp = tmp_path_factory.mktemp("observability")
    url = f"sqlite:///{tmp / 'sonoaudit.db'}"
    upgrade(url)
    env = service_env(tmp, database_url=url)
    procs = {s: ServiceProcess(s, env, tmp) for s in SERVICES}
    try:
        for p in procs.values():
            p.wait_alive()
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def _sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@pytest.mark.parametrize("service", SERVICES)
def test_metrics_count_requests_exactly(services: dict[str, ServiceProcess], service: str) -> None:
    base = services[service].url
    # Routes nothing else touches, so the expected counts are exactly what this test sends.
    for _ in range(3):
        assert httpx.get(f"{base}/openapi.json", timeout=10).status_code == 200
    for _ in range(2):
        assert httpx.get(f"{base}/no-such-route-{uuid.uuid4().hex}", timeout=10).status_code == 404

    r = httpx.get(f"{base}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    ok = {"method": "GET", "route": "/openapi.json", "status": "200"}
    assert _sample(r.text, "http_requests_total", ok) == 3
    # Unknown paths share one label value, so probing random URLs cannot blow up cardinality.
    missing = {"method": "GET", "route": "unmatched", "status": "404"}
    assert _sample(r.text, "http_requests_total", missing) == 2
    latency = {"method": "GET", "route": "/openapi.json"}
    assert _sample(r.text, "http_request_seconds_count", latency) == 3


@pytest.mark.parametrize("service", SERVICES)
def test_correlation_id_echoed_and_logged_as_json(
    services: dict[str, ServiceProcess], service: str
) -> None:
    proc = services[service]
    cid = f"ops-test-{uuid.uuid4().hex}"
    r = httpx.get(f"{proc.url}/healthz", headers={"x-correlation-id": cid}, timeout=10)
    assert r.status_code == 200
    assert r.headers["x-correlation-id"] == cid

    # Without one, the service makes one up and returns it.
    generated = httpx.get(f"{proc.url}/healthz", timeout=10).headers["x-correlation-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)

    def logged(c: str) -> list[dict[str, object]]:
        return [rec for rec in proc.log_records() if rec.get("correlation_id") == c]

    wait_until(lambda: bool(logged(cid)) and bool(logged(generated)), 10, "access log lines")
    (line,) = logged(cid)
    assert line["level"] == "INFO"
    assert line["msg"].startswith("GET /healthz 200 ")  # type: ignore[union-attr]
    # Every line the process wrote is JSON, including uvicorn's own start-up lines.
    records = proc.log_records()
    assert any("Uvicorn running" in str(rec.get("msg")) for rec in records)
    assert all({"ts", "level", "logger", "msg", "correlation_id"} <= rec.keys() for rec in records)


def test_request_ids_do_not_leak_between_requests(services: dict[str, ServiceProcess]) -> None:
    proc = services["raters"]
    first = httpx.get(f"{proc.url}/healthz", headers={"x-correlation-id": "leak-a"}, timeout=10)
    second = httpx.get(f"{proc.url}/healthz", timeout=10)
    assert first.headers["x-correlation-id"] == "leak-a"
    assert second.headers["x-correlation-id"] != "leak-a"
    wait_until(lambda: any(r.get("correlation_id") == "leak-a" for r in proc.log_records()), 10,
               "log line of the first request")
    assert sum(r.get("correlation_id") == "leak-a" for r in proc.log_records()) == 1
