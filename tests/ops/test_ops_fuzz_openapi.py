"""Property-based fuzzing of every service's OpenAPI (schemathesis): valid and invalid requests
to every operation the running service publishes must never get a 5xx (the only exception: a 503
that the operation declares in its OpenAPI responses, like /readyz while a dependency is down).

The operations are read from each service's /openapi.json at run time, so routes added later are
covered without touching this test. Examples are bounded (SONOAUDIT_FUZZ_EXAMPLES per operation
and generation mode, default 8, fewer when a service has many operations) and derandomized, so a
run is repeatable and takes well under two minutes. The services run as in production
(`sonoaudit serve`) on a migrated SQLite store, with no LLM key in their environment, so nothing
leaves the machine.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator

import pytest
import requests
import schemathesis
import uvicorn
from fastapi import FastAPI, HTTPException
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from opshelpers import SERVICES, ServiceProcess, free_port, readyz, service_env, wait_until
from schemathesis import GenerationMode
from sonoaudit.db.migrate import upgrade

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("SONOAUDIT_FUZZ_EXAMPLES", "8"))
MIN_EXAMPLES = 3
CALL_BUDGET = 200
LLM_KEYS = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY")


@pytest.fixture(scope="module")
def fuzz_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{tmp / 'sonoaudit.db'}"
    upgrade(url)
    env = {k: v for k, v in service_env(tmp, database_url=url).items() if k not in LLM_KEYS}
    procs = {s: ServiceProcess(s, env, tmp) for s in SERVICES}
    try:
        for p in procs.values():
            p.wait_alive()
            wait_until(lambda p=p: readyz(p)[0] == 200, 60, f"{p.service} ready")
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def _server_error(case: schemathesis.Case, response: requests.Response) -> str | None:
    if response.status_code < 500:
        return None
    documented = case.operation.definition.raw.get("responses", {})
    if response.status_code == 503 and "503" in documented:
        return None  # "unavailable" declared in the contract, e.g. /readyz while not ready
    return (f"{case.method} {case.formatted_path} -> {response.status_code}: "
            f"{response.text[:300]}\n  reproduce: {case.as_curl_command()}")


def fuzz(base_url: str) -> tuple[int, list[str]]:
    """Fuzz every operation of the API at ``base_url``; return (calls made, failures)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # Keep the total bounded as services grow: about CALL_BUDGET calls per service, at least
    # MIN_EXAMPLES per operation and mode.
    examples = max(MIN_EXAMPLES, min(EXAMPLES, CALL_BUDGET // (2 * max(1, len(operations)))))
    failures: list[str] = []
    calls = 0
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def probe(case: schemathesis.Case) -> None:
                nonlocal calls
                calls += 1
                response = case.call(base_url=base_url, timeout=30)
                error = _server_error(case, response)
                assert error is None, error

            try:
                probe()
            except Unsatisfiable:
                continue  # nothing to negate (no parameters, or only free-form ones)
            except AssertionError as exc:
                failures.append(f"[{mode.value}] {exc}")
    return calls, failures


@pytest.mark.parametrize("service", SERVICES)
def test_openapi_fuzz_finds_no_server_error(
    fuzz_services: dict[str, ServiceProcess], service: str
) -> None:
    proc = fuzz_services[service]
    calls, failures = fuzz(proc.url)
    assert calls > 0
    assert not failures, (
        f"{service}: {len(failures)} operation(s) answered 5xx:\n" + "\n".join(failures)
        + f"\n--- service log (tail) ---\n{proc.log_text()[-4000:]}"
    )


def test_fuzz_catches_a_server_error() -> None:
    """The harness itself: a route that crashes on every even n (and one that answers an
    undeclared 503) must be reported; the healthy route must not."""
    app = FastAPI()

    @app.get("/divide/{n}")
    def divide(n: int) -> dict[str, float]:
        return {"inverse": 1 / (n % 2)}

    @app.get("/busy")
    def busy() -> None:
        raise HTTPException(503, "undeclared")

    @app.get("/fine")
    def fine() -> dict[str, str]:
        return {"ok": "yes"}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, "canary server")
        calls, failures = fuzz(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(10)
    assert calls > 0
    assert any(re.search(r"GET /divide/-?\d+ -> 500", f) for f in failures), failures
    assert any("GET /busy -> 503" in f for f in failures), failures
    assert not any("/fine" in f for f in failures), failures
