"""The raters service gets SONOAUDIT_STUDY_CREATOR_TOKEN in every deployment, so `sonoaudit
run-study` in distributed mode can create its study over HTTP: docker compose passes it from the
host environment, the dev overlay's generated Secret carries it, and the documented
`kubectl create secret` for real clusters includes it. Each check feeds what the deployment would
set into the raters' own StudySettings."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sonoaudit_raters.study.settings import StudySettings

REPO = Path(__file__).resolve().parents[2]
KEY = "SONOAUDIT_STUDY_CREATOR_TOKEN"


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} against ``env``."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, value)


def _study_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> StudySettings:
    monkeypatch.delenv(KEY, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return StudySettings()


def test_compose_gives_the_raters_service_the_host_token(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    host = {"POSTGRES_PASSWORD": "pw", KEY: "host-creator-token"}
    env = {k: _interpolate(str(v), host) for k, v in services["raters"]["environment"].items()}
    assert env[KEY] == "host-creator-token"
    # the service keeps the shared settings too (the merge did not replace them)
    assert env["SONOAUDIT_NATS_URL"] == "nats://nats:4222"
    token = _study_settings(env, monkeypatch).creator_token
    assert token is not None and token.get_secret_value() == "host-creator-token"
    # unset on the host: empty, which the raters service treats as "no study over HTTP"
    env = {k: _interpolate(str(v), {"POSTGRES_PASSWORD": "pw"})
           for k, v in services["raters"]["environment"].items()}
    assert env[KEY] == ""
    # no other service is handed the token
    for name, svc in services.items():
        if name != "raters":
            assert KEY not in (svc.get("environment") or {}), name


def _dev_objects() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not installed (Debian: apt-get install kubernetes-client)")
    result = subprocess.run([kubectl, "kustomize", str(REPO / "deploy/k8s/overlays/dev")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_dev_overlay_secret_reaches_the_raters_deployment(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = _dev_objects()
    (secret,) = [o for o in objs if o["kind"] == "Secret"]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data[KEY], "the dev Secret needs a non-empty creator token"
    (raters,) = [o for o in objs if o["kind"] == "Deployment"
                 and o["metadata"]["name"] == "raters"]
    (container,) = raters["spec"]["template"]["spec"]["containers"]
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    token = _study_settings(data, monkeypatch).creator_token
    assert token is not None and token.get_secret_value() == data[KEY]


def test_documented_secret_and_compose_commands_set_the_token() -> None:
    docs = (REPO / "docs" / "deployment.md").read_text()
    create = re.search(r"kubectl -n sonoaudit create secret generic sonoaudit-secrets(.*?)\n(?!\s)",
                       docs, re.S)
    assert create is not None
    assert f"--from-literal={KEY}=" in create.group(1)
    compose = docs.split("## docker compose", 1)[1].split("```", 2)[1]
    assert f"export {KEY}=" in compose
