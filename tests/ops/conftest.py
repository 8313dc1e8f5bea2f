"""Fixtures of the operational tests; the helpers are in opshelpers.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opshelpers import SERVICES, ServiceProcess


@pytest.fixture
def start_services(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], list[ServiceProcess]]]:
    """Start all four services (in parallel) with one environment; stopped after the test."""
    started: list[ServiceProcess] = []

    def start(env: dict[str, str]) -> list[ServiceProcess]:
        procs = [ServiceProcess(s, env, tmp_path) for s in SERVICES]
        started.extend(procs)
        for p in procs:
            p.wait_alive()
        return procs

    yield start
    for p in started:
        p.stop()
