"""docker-compose.yml: valid against the Compose Specification (check-jsonschema), and the
properties the deployment relies on, read from the parsed file (no Docker engine needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sonoaudit.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
APP_SERVICES = ("generator", "metrics", "classifier", "raters")


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not installed (it is in requirements.txt; run make setup)")
    return found


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def test_compose_file_matches_the_compose_spec() -> None:
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    # The validator must bite: a misspelt key and a wrongly typed interval both fail.
    broken = COMPOSE.read_text().replace("    depends_on:\n      postgres:",
                                         "    depends_onn:\n      postgres:", 1)
    broken = broken.replace("interval: 5s", "interval: [5]", 1)
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(broken)
    result = check_compose_schema(bad)
    assert result.returncode != 0
    assert "depends_onn" in result.stdout + result.stderr


def _sonoaudit_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if n in APP_SERVICES or n == "generator-cpu"}


def test_every_service_is_defined(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"postgres", "nats", "migrate", "generator", "generator-cpu",
                             "metrics", "classifier", "raters"}


def test_generator_reserves_a_gpu_and_cpu_fallback_does_not(
    services: dict[str, dict[str, Any]]
) -> None:
    devices = services["generator"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "profiles" not in services["generator"]

    cpu = services["generator-cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu
    assert cpu["build"]["dockerfile"] == "services/generator/Dockerfile"
    assert cpu["build"]["args"]["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert cpu["build"]["args"]["BASE_IMAGE"].startswith("python:3.11-slim")


def test_services_start_after_migration_and_healthy_dependencies(
    services: dict[str, dict[str, Any]]
) -> None:
    for name, svc in _sonoaudit_services(services).items():
        assert svc["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "nats": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name

    migrate = services["migrate"]
    assert migrate["command"] == ["sonoaudit", "migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"  # a one-shot: never restarted after it exits 0


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in _sonoaudit_services(services).items():
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and "http://127.0.0.1:8000/readyz" in " ".join(test), name
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "js-enabled-only=true" in " ".join(services["nats"]["healthcheck"]["test"])


def test_healthcheck_command_fails_on_503_and_passes_on_200() -> None:
    """The probe one-liner, run for real against a local server answering 200, then 503."""
    import http.server
    import threading

    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    test = yaml.safe_load(COMPOSE.read_text())["x-readyz"]["test"]
    code = test[3].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    try:
        assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0
        status["code"] = 503
        assert subprocess.run([sys.executable, "-c", code], timeout=30,
                              capture_output=True).returncode != 0
    finally:
        server.shutdown()


def test_nats_runs_jetstream_on_a_persistent_volume(compose: dict[str, Any]) -> None:
    nats = compose["services"]["nats"]
    cmd = nats["command"]
    assert "-js" in cmd
    store = cmd[cmd.index("-sd") + 1]
    volume, mount = nats["volumes"][0].split(":")[:2]
    assert mount == store and volume in compose["volumes"]


def test_settings_come_from_env_and_name_real_settings(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    from sonoaudit_raters.study.settings import StudySettings

    # SONOAUDIT_<field> of the shared settings, SONOAUDIT_STUDY_<field> of the raters' study.
    fields = set(Settings.model_fields) | {f"study_{f}" for f in StudySettings.model_fields}
    for name, svc in _sonoaudit_services(services).items():
        env = svc["environment"]
        for key in env:
            if key.startswith("SONOAUDIT_"):
                # A typo here would be ignored silently (extra="ignore"): check the field exists.
                assert key.removeprefix("SONOAUDIT_").lower() in fields, (name, key)
        assert env["SONOAUDIT_NATS_URL"] == "nats://nats:4222"
        assert re.fullmatch(
            r"postgresql\+psycopg://sonoaudit:\$\{POSTGRES_PASSWORD:\?[^}]+\}@postgres:5432/sonoaudit",
            env["SONOAUDIT_DATABASE_URL"],
        )
        # The image store lives on the named volume mounted at SONOAUDIT_HOME.
        volume, mount = svc["volumes"][0].split(":")[:2]
        assert volume in compose["volumes"]
        assert env["SONOAUDIT_HOME"] == mount
        assert env["SONOAUDIT_STORE_DIR"].startswith(mount + "/")


def test_secrets_come_from_the_environment_only(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?")
    assert services["classifier"]["environment"]["GEMINI_API_KEY"] == "${GEMINI_API_KEY:-}"
    # No literal password or key anywhere: every secret-looking value is an interpolation.
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "API_KEY", "SECRET", "TOKEN")):
                assert str(value).startswith("${"), (name, key)


def test_each_service_builds_its_own_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert build["context"] == "."
        assert build["dockerfile"] == f"services/{name}/Dockerfile"
        assert (REPO / build["dockerfile"]).is_file()
