"""A service's runtime: connects to the database and the bus in the background, with retry, so the
process starts (liveness true) while dependencies are down and readiness turns true once they
answer. Workers registered with :meth:`ServiceRuntime.add_worker` start when the bus is ready."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from sqlalchemy import select

from sonoaudit.bus import Bus
from sonoaudit.context import AppContext, build_context
from sonoaudit.db.models import DeadLetter
from sonoaudit.db.session import ping, session_scope
from sonoaudit.messages.payloads import DeadLetterNotice
from sonoaudit.messages.registry import STREAMS
from sonoaudit.settings import Settings

log = logging.getLogger(__name__)

Worker = Callable[["ServiceRuntime", asyncio.Event], Coroutine[Any, Any, None]]


class ServiceRuntime:
    def __init__(self, name: str, settings: Settings, *, migrate: bool = False) -> None:
        self.name = name
        self.settings = settings
        self.migrate = migrate
        self.ctx: AppContext | None = None
        self.bus: Bus | None = None
        self.stop = asyncio.Event()
        self._workers: list[Worker] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.started = asyncio.Event()
        self.worker_restarts = 0

    def add_worker(self, worker: Worker) -> None:
        self._workers.append(worker)

    @property
    def uses_bus(self) -> bool:
        return bool(self.settings.nats_url)

    async def _connect_db(self) -> None:
        delay = 0.5
        while not self.stop.is_set():
            try:
                self.ctx = await asyncio.to_thread(
                    build_context, self.settings, migrate=self.migrate, wait=False
                )
                if await asyncio.to_thread(ping, self.ctx.engine):
                    return
                self.ctx.close()
                self.ctx = None
            except Exception as exc:  # database down or not migrated yet: keep trying
                log.warning("%s: database not ready: %s", self.name, exc)
                self.ctx = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _connect_bus(self) -> None:
        assert self.settings.nats_url
        bus = Bus(self.settings.nats_url, duplicate_window_s=self.settings.nats_duplicate_window_s,
                  max_deliver=self.settings.nats_max_deliver,
                  ack_wait_s=self.settings.nats_ack_wait_s,
                  max_ack_pending=self.settings.nats_max_ack_pending, name=self.name)
        while not self.stop.is_set():
            try:
                await bus.connect(attempts=1)
                await bus.declare()
                bus.dead_letter_sink = self._store_dead_letter
                if self._workers:  # only services that consume watch for exhausted messages
                    await bus.watch_max_deliveries(STREAMS)
                self.bus = bus
                return
            except Exception as exc:
                log.warning("%s: NATS not ready: %s", self.name, exc)
                await bus.close()
                await asyncio.sleep(1.0)

    async def _store_dead_letter(self, notice: DeadLetterNotice) -> None:
        ctx = self.ctx
        if ctx is None:  # the DLQ stream still holds it; say so rather than drop it quietly
            raise RuntimeError("database not connected: dead letter kept only in the DLQ stream")

        def write() -> None:
            with session_scope(ctx.sessions) as s:
                s.add(DeadLetter(subject=notice.subject, message_id=notice.message_id,
                                 deliveries=notice.deliveries, error=notice.error,
                                 data=notice.data))

        await asyncio.to_thread(write)

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        ctx = self.require()
        with ctx.sessions() as s:
            rows = s.scalars(select(DeadLetter).order_by(DeadLetter.created_at.desc())
                             .limit(limit)).all()
            return [{"id": r.id, "subject": r.subject, "message_id": r.message_id,
                     "deliveries": r.deliveries, "error": r.error, "data": r.data,
                     "created_at": r.created_at.isoformat()} for r in rows]

    async def _start(self) -> None:
        await self._connect_db()
        if self.uses_bus:
            await self._connect_bus()
            if self.ctx is not None:
                self.ctx.bus = self.bus
        self.started.set()
        for worker in self._workers:
            self._tasks.append(asyncio.create_task(self._supervise(worker)))

    async def _supervise(self, worker: Worker) -> None:
        """Run a worker until stop; one that crashes is restarted, so a service never stays up
        (and ready) with nobody consuming its queue."""
        delay = 1.0
        while not self.stop.is_set():
            try:
                await worker(self, self.stop)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.worker_restarts += 1
                log.exception("%s: worker %s crashed; restarting in %.0f s", self.name,
                              getattr(worker, "__name__", worker), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def ready(self) -> dict[str, bool]:
        ctx = self.ctx
        checks = {"database": ctx is not None and await asyncio.to_thread(ping, ctx.engine)}
        if self.uses_bus:
            checks["nats"] = self.bus is not None and self.bus.connected
        return checks

    def require(self) -> AppContext:
        """The context for a request; 503 while dependencies are not up yet."""
        if self.ctx is None:
            raise HTTPException(503, detail=f"{self.name} is not ready: database not connected")
        return self.ctx

    async def aclose(self) -> None:
        self.stop.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.bus is not None:
            await self.bus.close()
        if self.ctx is not None:
            self.ctx.close()

    def lifespan(self) -> Callable[[FastAPI], Any]:
        @asynccontextmanager
        async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
            starter = asyncio.create_task(self._start())
            app.state.runtime = self
            try:
                yield
            finally:
                starter.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starter
                await self.aclose()

        return _lifespan
