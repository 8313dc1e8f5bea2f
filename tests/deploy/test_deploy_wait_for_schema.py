"""deploy/k8s/base/wait_for_schema.py, the init container of every Deployment, run for real:
it waits while the store is unreachable or not migrated and exits 0 once it is at head."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sonoaudit.db.migrate import upgrade

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "wait_for_schema.py"


def run(url: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SONOAUDIT_")},
           "SONOAUDIT_DATABASE_URL": url, "WAIT_TIMEOUT_S": str(timeout_s),
           "WAIT_INTERVAL_S": "0.2"}
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=120)


def test_waits_on_an_unmigrated_store_then_gives_up(tmp_path: Path) -> None:
    result = run(f"sqlite:///{tmp_path / 'empty.db'}", timeout_s=1)
    assert result.returncode == 1
    assert "waiting for the migration Job" in result.stderr
    assert "at no revision, want " in result.stderr


def test_passes_once_migrated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    result = run(url, timeout_s=30)
    assert result.returncode == 0, result.stderr
    assert "is at " in result.stderr


@pytest.mark.integration
def test_unreachable_postgres_is_waited_for_and_the_password_never_printed() -> None:
    result = run("postgresql+psycopg://sonoaudit:s3cret-pw@127.0.0.1:9/sonoaudit", timeout_s=1)
    assert result.returncode == 1
    assert "unreachable (OperationalError)" in result.stderr
    assert "s3cret-pw" not in result.stderr


@pytest.mark.integration
def test_passes_on_migrated_postgres(postgres_url: str) -> None:
    upgrade(postgres_url)
    result = run(postgres_url, timeout_s=30)
    assert result.returncode == 0, result.stderr
