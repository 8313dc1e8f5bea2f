"""JetStream client used by every service.

Delivery is at-least-once: handlers must be idempotent (they write with unique keys) and the
message is acked only after the handler returned, i.e. after its results were committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoServersError, StaleConnectionError, UnexpectedEOF
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from pydantic import BaseModel, ValidationError

from sonoaudit.messages.envelope import Envelope
from sonoaudit.messages.payloads import DeadLetterNotice
from sonoaudit.messages.registry import PREFIX, STREAMS, StreamSpec

log = logging.getLogger(__name__)


class TransientError(Exception):
    """Retry later (nak with delay): database down, GPU out of memory, upstream 5xx."""

    def __init__(self, message: str, delay_s: float = 1.0) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class PoisonMessage(Exception):
    """Never retry: the message itself is bad (schema, unknown ids, unsupported version)."""


Handler = Callable[[Envelope[Any], "Heartbeat"], Awaitable[None]]


class Heartbeat:
    """Tells JetStream the message is still being worked on (``in_progress``), at most every
    ``min_interval_s`` so a hot loop can call it freely."""

    def __init__(self, msg: Msg | None, min_interval_s: float = 2.0) -> None:
        self._msg = msg
        self._min = min_interval_s
        self._last = 0.0

    async def beat(self) -> None:
        if self._msg is None:
            return
        now = asyncio.get_running_loop().time()
        if now - self._last >= self._min:
            self._last = now
            await self._msg.in_progress()


def capability_of(subject: str) -> str:
    parts = subject.split(".")
    return parts[1] if len(parts) > 1 else subject


class Bus:
    def __init__(
        self,
        url: str,
        *,
        duplicate_window_s: float = 600.0,
        max_deliver: int = 5,
        ack_wait_s: float = 30.0,
        max_ack_pending: int = 4,
        name: str = "sonoaudit",
    ) -> None:
        self.url = url
        self.duplicate_window_s = duplicate_window_s
        self.max_deliver = max_deliver
        self.ack_wait_s = ack_wait_s
        self.max_ack_pending = max_ack_pending
        self.name = name
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        # Called for every dead letter, whoever consumes (the runtime stores them in the DB).
        self.dead_letter_sink: Callable[[DeadLetterNotice], Awaitable[None]] | None = None

    # -- connection -------------------------------------------------------------------------
    async def connect(self, attempts: int = 30, wait_s: float = 1.0) -> None:
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            try:
                # nats-py retries an initial connect forever when reconnects are unbounded, so
                # bound each attempt here; once connected, reconnects stay unbounded.
                self._nc = await asyncio.wait_for(
                    nats.connect(
                        self.url, name=self.name, connect_timeout=2,
                        max_reconnect_attempts=-1, allow_reconnect=True,
                        error_cb=self._on_error, disconnected_cb=self._on_disconnect,
                        reconnected_cb=self._on_reconnect,
                    ),
                    timeout=5,
                )
                self._js = self._nc.jetstream()
                return
            except (TimeoutError, NoServersError, OSError, NatsTimeout) as exc:
                last = exc
                log.warning("NATS %s not reachable (attempt %d/%d)", self.url, attempt, attempts)
                await asyncio.sleep(wait_s)
        raise ConnectionError(f"NATS {self.url} not reachable after {attempts} attempts: {last}")

    # nats-py's default error callback logs every failed reconnect attempt at ERROR with a
    # traceback; a server that is away is an expected, transient state (readiness reports it),
    # so connection errors are warnings of one line. Anything else stays an error.
    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, (OSError, UnexpectedEOF, StaleConnectionError, NatsTimeout,
                            TimeoutError, NoServersError)):
            log.warning("NATS %s: connection problem: %r", self.url, exc)
        else:
            log.error("NATS %s: error", self.url, exc_info=exc)

    async def _on_disconnect(self) -> None:
        log.warning("NATS %s: disconnected; reconnecting", self.url)

    async def _on_reconnect(self) -> None:
        log.info("NATS %s: reconnected", self.url)

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("Bus.connect() was not called")
        return self._js

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
            self._nc = None
            self._js = None

    # -- declaration ------------------------------------------------------------------------
    def stream_config(self, spec: StreamSpec) -> StreamConfig:
        return StreamConfig(
            name=spec.name,
            subjects=list(spec.subjects),
            retention=RetentionPolicy.WORK_QUEUE if spec.retention == "workqueue"
            else RetentionPolicy.LIMITS,
            duplicate_window=self.duplicate_window_s,
            max_age=None if spec.retention == "workqueue" else 30 * 24 * 3600,
        )

    def consumer_config(self, spec: StreamSpec) -> ConsumerConfig:
        assert spec.consumer is not None
        return ConsumerConfig(
            durable_name=spec.consumer,
            ack_policy=AckPolicy.EXPLICIT,
            max_deliver=self.max_deliver,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
        )

    async def declare(self, streams: tuple[StreamSpec, ...] = STREAMS) -> None:
        """Create or update every stream and durable consumer; safe to call at every start."""
        for spec in streams:
            cfg = self.stream_config(spec)
            try:
                await self.js.add_stream(cfg)
            except BadRequestError:
                await self.js.update_stream(cfg)
            if spec.consumer:
                await self.js.add_consumer(spec.name, self.consumer_config(spec))

    # -- publish ----------------------------------------------------------------------------
    async def publish(self, subject: str, envelope: Envelope[Any], timeout: float = 5.0) -> bool:
        """Publish with ``Nats-Msg-Id`` = envelope.message_id. Returns False for a duplicate."""
        ack = await self.js.publish(
            subject,
            envelope.model_dump_json().encode(),
            timeout=timeout,
            headers={"Nats-Msg-Id": envelope.message_id},
        )
        return not ack.duplicate

    async def dead_letter(self, subject: str, msg: Msg, error: str) -> None:
        notice = DeadLetterNotice(
            subject=subject,
            message_id=(msg.headers or {}).get("Nats-Msg-Id"),
            deliveries=msg.metadata.num_delivered,
            error=error,
            data=msg.data.decode("utf-8", errors="replace"),
        )
        await self.js.publish(
            f"{PREFIX}.dlq.{capability_of(subject)}", notice.model_dump_json().encode()
        )

    # -- consume ----------------------------------------------------------------------------
    async def process_one(
        self, msg: Msg, payload_type: type[BaseModel], handler: Handler,
        on_dead_letter: Callable[[DeadLetterNotice], Awaitable[None]] | None = None,
    ) -> str:
        """Run the handler on one message and settle it. Returns 'ack', 'nak' or 'term'."""
        subject = msg.subject
        try:
            envelope = Envelope[payload_type].model_validate_json(msg.data)  # type: ignore[valid-type]
        except ValidationError as exc:
            await self._give_up(subject, msg, f"invalid message: {exc}", on_dead_letter)
            return "term"
        try:
            await handler(envelope, Heartbeat(msg))
        except PoisonMessage as exc:
            await self._give_up(subject, msg, f"poison: {exc}", on_dead_letter)
            return "term"
        except Exception as exc:  # transient by default: retry, bounded by max_deliver
            delay = exc.delay_s if isinstance(exc, TransientError) else 1.0
            if msg.metadata.num_delivered >= self.max_deliver:
                await self._give_up(
                    subject, msg,
                    f"gave up after {msg.metadata.num_delivered} deliveries: {exc!r}",
                    on_dead_letter,
                )
                return "term"
            log.warning("transient failure on %s (delivery %d): %r", subject,
                        msg.metadata.num_delivered, exc)
            await msg.nak(delay=delay)
            return "nak"
        await msg.ack_sync()
        return "ack"

    async def _give_up(
        self, subject: str, msg: Msg, error: str,
        on_dead_letter: Callable[[DeadLetterNotice], Awaitable[None]] | None,
    ) -> None:
        log.error("dead-lettering message on %s: %s", subject, error)
        await self.dead_letter(subject, msg, error)
        notice = DeadLetterNotice(
            subject=subject, message_id=(msg.headers or {}).get("Nats-Msg-Id"),
            deliveries=msg.metadata.num_delivered, error=error,
            data=msg.data.decode("utf-8", errors="replace"),
        )
        for sink in (self.dead_letter_sink, on_dead_letter):
            if sink is not None:
                try:
                    await sink(notice)
                except Exception:  # the DLQ stream already holds it; never block the term
                    log.exception("dead-letter callback failed for %s", subject)
        await msg.term()

    async def consume(
        self,
        spec: StreamSpec,
        payload_type: type[BaseModel],
        handler: Handler,
        *,
        stop: asyncio.Event,
        batch: int = 1,
        fetch_timeout_s: float = 1.0,
        on_dead_letter: Callable[[DeadLetterNotice], Awaitable[None]] | None = None,
    ) -> None:
        """Pull messages from the stream's durable consumer until ``stop`` is set."""
        assert spec.consumer is not None
        sub = await self.js.pull_subscribe_bind(spec.consumer, stream=spec.name)
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(batch, timeout=fetch_timeout_s)
                except (TimeoutError, NatsTimeout):
                    continue
                except NotFoundError:
                    await asyncio.sleep(fetch_timeout_s)
                    continue
                for msg in msgs:
                    await self.process_one(msg, payload_type, handler, on_dead_letter)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
