"""deploy/lint.sh (what `make lint-deploy` runs) passes on the repository and fails on a broken
manifest, so the script cannot be a silent no-op."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]



@pytest.fixture(autouse=True)
def _needs_kubectl() -> None:
    # Fail, not skip: a skipped check would let CI pass with the manifests never validated.
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl not installed (Debian: apt-get install kubernetes-client; "
                    ".ci/run installs it)")


def run_lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VENV_BIN": str(Path(sys.executable).parent)}
    return subprocess.run(["bash", str(root / "deploy" / "lint.sh")], capture_output=True,
                          text=True, env=env, timeout=600)


def test_lint_script_passes() -> None:
    result = run_lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("deploy lint: ok")


def test_lint_script_fails_on_an_invalid_manifest(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copytree(REPO / "deploy", copy / "deploy")
    shutil.copy(REPO / "docker-compose.yml", copy / "docker-compose.yml")
    hpa = copy / "deploy" / "k8s" / "base" / "hpa.yaml"
    hpa.write_text(hpa.read_text().replace("minReplicas: 1", 'minReplicas: "one"', 1))
    result = run_lint(copy)
    assert result.returncode != 0
    assert "minReplicas" in result.stdout + result.stderr
