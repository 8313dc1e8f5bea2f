"""Operational test helpers (imported as ``opshelpers``; fixtures live in conftest.py): run
services exactly as the containers do (`sonoaudit serve SERVICE` in a subprocess, settings from
SONOAUDIT_* environment variables), a TCP proxy that makes Postgres appear and disappear on a
chosen port, and a nats-server started on demand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

SERVICES = ("generator", "metrics", "classifier", "raters")


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


def service_env(tmp: Path, **settings: str | None) -> dict[str, str]:
    """The process environment with every SONOAUDIT_ variable replaced by ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONOAUDIT_")}
    env.update({"SONOAUDIT_HOME": str(tmp / "home"), "SONOAUDIT_STORE_DIR": str(tmp / "store"),
                "SONOAUDIT_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
    for key, value in settings.items():
        if value is not None:
            env[f"SONOAUDIT_{key.upper()}"] = value
    return env


class ServiceProcess:
    """One service served by uvicorn in a child process; its log (stdout+stderr) goes to a file."""

    def __init__(self, service: str, env: dict[str, str], log_dir: Path) -> None:
        self.service = service
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{service}-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sonoaudit.cli.main", "serve", service,
             "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """Every log line parsed as JSON; a line that is not JSON fails the calling test."""
        records = []
        for line in self.log_text().splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pytest.fail(f"{self.service}: log line is not JSON: {line!r}")
        return records

    def wait_alive(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.service} exited ({self.proc.returncode}):\n{self.log_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"{self.service} did not answer /healthz within {timeout}s:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def readyz(proc: ServiceProcess) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{proc.url}/readyz", timeout=10)
    return r.status_code, r.json()


class TcpProxy:
    """Forwards ``listen_port`` to ``target_port`` on 127.0.0.1 while started; stop() closes the
    listener and cuts every open connection, like a database host going away."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, up_writer})
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers.difference_update({writer, up_writer})

    def start(self) -> None:
        async def _start() -> asyncio.Server:
            return await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)

        self._server = asyncio.run_coroutine_threadsafe(_start(), self._loop).result(10)

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for w in list(self._writers):
                w.close()

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class NatsProcess:
    """A nats-server -js on a fixed port that a test starts and kills when it wants."""

    def __init__(self, port: int, store: Path) -> None:
        self.port = port
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(binary).exists():
            pytest.fail("nats-server not installed (apt-get install nats-server, as .ci/run does)")
        self.proc = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
