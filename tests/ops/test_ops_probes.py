"""Liveness and readiness of every service against the real Postgres and NATS.

Each service runs as in its container (`sonoaudit serve`). A dependency that is down at start
must leave the process alive (/healthz 200) but not ready (/readyz 503 naming the failing
check); once the dependency answers, readiness turns 200 without a restart; when it goes away
again, readiness drops back to 503.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from opshelpers import (
    NatsProcess,
    ServiceProcess,
    TcpProxy,
    free_port,
    readyz,
    service_env,
    wait_until,
)
from sonoaudit.db.migrate import upgrade

pytestmark = [pytest.mark.integration, pytest.mark.slow]

StartServices = Callable[[dict[str, str]], list[ServiceProcess]]


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


@pytest.fixture(scope="module")
def migrated_postgres(postgres_url: str) -> str:
    upgrade(postgres_url)
    return postgres_url


def test_readiness_follows_postgres(
    migrated_postgres: str, start_services: StartServices, tmp_path: Path
) -> None:
    # The services reach Postgres only through a proxy port that is closed at start.
    proxy_port = free_port()
    host, name = migrated_postgres.rsplit("/", 1)
    via_proxy = f"{host.rsplit(':', 1)[0]}:{proxy_port}/{name}"
    procs = start_services(service_env(tmp_path, database_url=via_proxy))

    for p in procs:
        status, body = readyz(p)
        assert (status, body) == (503, {"ready": False, "checks": {"database": False}}), p.service
        assert httpx.get(f"{p.url}/healthz", timeout=5).status_code == 200

    proxy = TcpProxy(proxy_port, _port_of(host + "/"))
    try:
        proxy.start()
        for p in procs:
            wait_until(lambda p=p: readyz(p)[0] == 200, 60, f"{p.service} ready with Postgres")
            assert readyz(p) == (200, {"ready": True, "checks": {"database": True}})

        proxy.stop()  # Postgres goes away: readiness drops, liveness stays
        for p in procs:
            wait_until(lambda p=p: readyz(p)[0] == 503, 30, f"{p.service} unready without Postgres")
            assert httpx.get(f"{p.url}/healthz", timeout=5).status_code == 200
    finally:
        proxy.close()


def test_readiness_follows_nats(
    migrated_postgres: str, start_services: StartServices, tmp_path: Path
) -> None:
    nats_port = free_port()
    nats = NatsProcess(nats_port, tmp_path / "jetstream")
    env = service_env(tmp_path, database_url=migrated_postgres,
                      nats_url=f"nats://127.0.0.1:{nats_port}")
    procs = start_services(env)
    try:
        for p in procs:
            # The database connects first; the bus is still missing.
            wait_until(lambda p=p: readyz(p)[1]["checks"].get("database") is True, 60,
                       f"{p.service} database check")
            assert readyz(p) == (503, {"ready": False,
                                       "checks": {"database": True, "nats": False}}), p.service

        nats.start()
        for p in procs:
            wait_until(lambda p=p: readyz(p)[0] == 200, 60, f"{p.service} ready with NATS")
            assert readyz(p)[1] == {"ready": True, "checks": {"database": True, "nats": True}}

        nats.stop()  # the bus dies: not ready, still alive
        for p in procs:
            wait_until(lambda p=p: readyz(p)[0] == 503, 30, f"{p.service} unready without NATS")
            assert httpx.get(f"{p.url}/healthz", timeout=5).status_code == 200

        nats.start()  # same port, same JetStream store: the client reconnects by itself
        for p in procs:
            wait_until(lambda p=p: readyz(p)[0] == 200, 60, f"{p.service} ready after reconnect")
    finally:
        nats.stop()


class BlackHole:
    """Accepts TCP connections on a port and never answers: a half-dead database host."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.conns.append(self.sock.accept()[0])

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone leaves the port bound.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self.conns:
            c.close()


def test_readiness_is_bounded_when_postgres_hangs_then_recovers(
    migrated_postgres: str, start_services: StartServices, tmp_path: Path
) -> None:
    """A host that accepts TCP but never answers must not hang /readyz or the start-up retry
    loop (libpq would wait forever without a connect timeout)."""
    port = free_port()
    host, name = migrated_postgres.rsplit("/", 1)
    hole = BlackHole(port)
    proxy = TcpProxy(port, _port_of(host + "/"))
    try:
        (proc,) = [p for p in start_services(service_env(
            tmp_path, database_url=f"{host.rsplit(':', 1)[0]}:{port}/{name}")) if
            p.service == "raters"]
        for _ in range(3):
            started = time.monotonic()
            assert readyz(proc)[0] == 503
            assert time.monotonic() - started < 9  # one 5 s connect timeout at most
        hole.close()  # the host comes back: the retry loop must not be stuck in the old attempt
        proxy.start()
        wait_until(lambda: readyz(proc)[0] == 200, 60, "ready after Postgres recovered")
    finally:
        hole.close()
        proxy.close()


def _sigterm_and_check(procs: list[ServiceProcess], grace_s: float = 25.0) -> None:
    started = time.monotonic()
    for p in procs:
        p.proc.send_signal(signal.SIGTERM)
    for p in procs:
        code = p.proc.wait(timeout=max(1.0, grace_s - (time.monotonic() - started)))
        # uvicorn (>= 0.29) re-raises the signal it caught once shutdown is done, so a clean
        # stop ends "killed by SIGTERM" (143 in a container); anything else is a crash.
        assert code in (0, -signal.SIGTERM), f"{p.service} exited {code}:\n{p.log_text()}"
        records = p.log_records()
        msgs = [str(r.get("msg")) for r in records]
        # The lifespan ran to its end (workers cancelled, bus and database closed) ...
        assert "Application shutdown complete." in msgs, f"{p.service}:\n{p.log_text()}"
        # ... and nothing failed on the way out.
        after = records[msgs.index("Shutting down"):]
        assert not [r for r in after if r.get("level") in ("ERROR", "CRITICAL")], p.log_text()


def test_sigterm_stops_every_service_promptly(
    migrated_postgres: str, start_services: StartServices, tmp_path: Path
) -> None:
    """Kubernetes and compose stop a container with SIGTERM, then SIGKILL after the grace period
    (30 s, the shortest we configure): each service must exit cleanly well before, with the bus
    up (two services) and after the bus has gone away (the other two: closing the NATS client
    must not wait for a server that is not there). One start of the four keeps this short."""
    nats = NatsProcess(free_port(), tmp_path / "jetstream")
    nats.start()
    try:
        procs = start_services(service_env(tmp_path, database_url=migrated_postgres,
                                           nats_url=f"nats://127.0.0.1:{nats.port}"))
        for p in procs:
            wait_until(lambda p=p: readyz(p)[0] == 200, 60, f"{p.service} ready")
        _sigterm_and_check(procs[:2])
        nats.stop()
        for p in procs[2:]:
            wait_until(lambda p=p: readyz(p)[0] == 503, 30, f"{p.service} sees NATS gone")
            # The outage is logged as a warning, not as an error with a traceback per retry.
            errors = [r for r in p.log_records() if r.get("level") in ("ERROR", "CRITICAL")]
            assert not errors, p.log_text()
        _sigterm_and_check(procs[2:])
    finally:
        nats.stop()
