"""Per backend+model limits: at most ``concurrency`` calls in flight and at most ``rpm`` call
starts per minute (evenly spaced). A server-requested pause (429 + retry delay) pauses every call
to that model, because quotas are per project, not per request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ModelLimiter:
    def __init__(self, concurrency: int, rpm: float | None) -> None:
        self.concurrency = concurrency
        self.rpm = rpm
        self._sem = asyncio.Semaphore(concurrency)
        self._interval = 60.0 / rpm if rpm else 0.0
        self._next_start = 0.0
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        """No call starts for ``seconds`` from now (honours a server's retry delay)."""
        now = asyncio.get_running_loop().time()
        self._paused_until = max(self._paused_until, now + seconds)

    async def _wait_turn(self) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            now = loop.time()
            start = max(now, self._next_start, self._paused_until)
            self._next_start = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)
        # A pause may have been requested while we waited.
        while (delay := self._paused_until - loop.time()) > 0:
            await asyncio.sleep(delay)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._sem:
            await self._wait_turn()
            yield
