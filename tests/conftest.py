"""Shared fixtures: a fresh Postgres database per test session, a real nats-server per test
session, the real BUS-BRA sample from ../shared, and a small phantom dataset.

Postgres: the server already running on 127.0.0.1:5432 (trust auth; ``.ci/run`` starts it when it
is down); a database ``sonoaudit_test_<random>`` is created for the session and dropped after.
NATS: a private ``nats-server -js`` on a free port with a temporary store dir (like nats.py's
own tests), so tests never see another run's streams.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUSBRA_SAMPLE = REPO.parent / "shared" / "data" / "bus_sample" / "BUSBRA"
PG_ADMIN_URL = os.environ.get(
    "SONOAUDIT_TEST_POSTGRES_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


@pytest.fixture(scope="session")
def busbra_sample() -> Path:
    if not BUSBRA_SAMPLE.is_dir():
        pytest.fail(f"BUS-BRA sample missing at {BUSBRA_SAMPLE} "
                    "(../shared must sit beside the repo)")
    return BUSBRA_SAMPLE


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a brand-new Postgres database, dropped at the end of the session."""
    from sqlalchemy import create_engine, text

    name = f"sonoaudit_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - environment problem, say so clearly
        pytest.fail(f"Postgres at {PG_ADMIN_URL} unusable ({exc}); start it (see .ci/run)")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private nats-server with JetStream; yields its URL."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        pytest.fail("nats-server not installed (apt-get install nats-server; .ci/run does this)")
    port = free_port()
    store = tmp_path_factory.mktemp("nats")
    proc = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sonoaudit.db'}"
