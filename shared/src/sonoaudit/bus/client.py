"""JetStream client used by every service.

Delivery is at-least-once: handlers must be idempotent (they write with unique keys) and the
message is acked only after the handler returned, i.e. after its results were committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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

from sonoaudit.correlation import correlation_id
from sonoaudit.messages.envelope import Envelope
from sonoaudit.messages.payloads import DeadLetterNotice
from sonoaudit.messages.registry import PREFIX, STREAMS, StreamSpec

# JetStream announces a message that ran out of deliveries without being settled (its worker was
# killed on every delivery) only as this advisory; nobody else would ever see that message again.
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"

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
        max_ack_pending: int = 16,
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

    @staticmethod
    def notice_for(subject: str, msg: Msg, error: str) -> DeadLetterNotice:
        return DeadLetterNotice(
            subject=subject,
            message_id=(msg.headers or {}).get("Nats-Msg-Id"),
            deliveries=msg.metadata.num_delivered,
            error=error,
            data=msg.data.decode("utf-8", errors="replace"),
        )

    async def dead_letter(self, subject: str, msg: Msg, error: str) -> None:
        await self._publish_dead_letter(self.notice_for(subject, msg, error))

    async def _publish_dead_letter(self, notice: DeadLetterNotice,
                                   msg_id: str | None = None) -> None:
        await self.js.publish(
            f"{PREFIX}.dlq.{capability_of(notice.subject)}", notice.model_dump_json().encode(),
            headers={"Nats-Msg-Id": msg_id} if msg_id else None,
        )

    async def _notify_sinks(
        self, notice: DeadLetterNotice,
        on_dead_letter: Callable[[DeadLetterNotice], Awaitable[None]] | None,
    ) -> None:
        for sink in (self.dead_letter_sink, on_dead_letter):
            if sink is not None:
                try:
                    await sink(notice)
                except Exception:  # the DLQ stream already holds it; never block the settle
                    log.exception("dead-letter callback failed for %s", notice.subject)

    async def watch_max_deliveries(
        self, streams: tuple[StreamSpec, ...],
        on_dead_letter: Callable[[DeadLetterNotice], Awaitable[None]] | None = None,
        queue: str = "sonoaudit-max-deliveries",
    ) -> None:
        """Dead-letter messages that ran out of deliveries unsettled (a worker killed on every
        delivery): JetStream stops redelivering them and says so only in an advisory. Every
        service subscribes in one queue group, so each advisory is handled once."""
        by_name = {spec.name: spec for spec in streams if spec.consumer}

        async def on_advisory(adv: Msg) -> None:
            try:
                await self._dead_letter_exhausted(json.loads(adv.data), by_name, on_dead_letter)
            except Exception:
                log.exception("could not dead-letter an exhausted message: %s", adv.data[:500])

        for spec in by_name.values():
            assert self._nc is not None
            await self._nc.subscribe(
                f"{MAX_DELIVERIES_ADVISORY}.{spec.name}.{spec.consumer}", queue=queue,
                cb=on_advisory)

    async def _dead_letter_exhausted(
        self, advisory: dict[str, Any], by_name: dict[str, StreamSpec],
        on_dead_letter: Callable[[DeadLetterNotice], Awaitable[None]] | None,
    ) -> None:
        spec = by_name.get(str(advisory.get("stream")))
        seq = int(advisory["stream_seq"])
        if spec is None:
            return
        try:
            stored = await self.js.get_msg(spec.name, seq)
        except NotFoundError:
            return  # settled after all (acked late, or purged)
        data = stored.data or b""
        notice = DeadLetterNotice(
            subject=stored.subject or spec.subjects[0],
            message_id=(stored.headers or {}).get("Nats-Msg-Id"),
            deliveries=int(advisory.get("deliveries", self.max_deliver)),
            error=(f"gave up after {advisory.get('deliveries')} deliveries with no answer from "
                   "the worker (killed or stuck on every delivery)"),
            data=data.decode("utf-8", errors="replace"),
        )
        log.error("dead-lettering exhausted message %s#%d", spec.name, seq)
        await self._publish_dead_letter(notice, msg_id=f"exhausted-{spec.name}-{seq}")
        await self._notify_sinks(notice, on_dead_letter)
        # a work-queue message nobody will ever deliver again would otherwise sit there forever
        with contextlib.suppress(NotFoundError):
            await self.js.delete_msg(spec.name, seq)

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
        token = correlation_id.set(envelope.correlation_id)  # worker logs carry the caller's id
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
        finally:
            correlation_id.reset(token)
        await msg.ack_sync()
        return "ack"

    async def _give_up(
        self, subject: str, msg: Msg, error: str,
        on_dead_letter: Callable[[DeadLetterNotice], Awaitable[None]] | None,
    ) -> None:
        log.error("dead-lettering message on %s: %s", subject, error)
        notice = self.notice_for(subject, msg, error)
        await self._publish_dead_letter(notice)
        await self._notify_sinks(notice, on_dead_letter)
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
                except Exception as exc:  # connection lost mid-fetch: the client reconnects
                    log.warning("fetch from %s failed: %r; retrying", spec.consumer, exc)
                    await asyncio.sleep(fetch_timeout_s)
                    continue
                for msg in msgs:
                    try:
                        await self.process_one(msg, payload_type, handler, on_dead_letter)
                    except Exception:
                        # Settling failed (ack/nak/term lost with the connection): the message is
                        # redelivered after ack_wait; the worker must keep consuming.
                        log.exception("could not settle a message from %s", spec.consumer)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
