"""The JetStream client against a real nats-server: declaration, dedup by Nats-Msg-Id,
nak -> redelivery, poison -> term + dead letter, max_deliver bound, heartbeats."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from sonoaudit.bus import Bus, PoisonMessage, TransientError
from sonoaudit.bus.client import Heartbeat
from sonoaudit.messages import STREAMS, Envelope, make_envelope
from sonoaudit.messages.payloads import GenerateRequest
from sonoaudit.messages.registry import stream_for, subject

pytestmark = pytest.mark.integration

SUBJECT = subject("generate", "request")
SPEC = stream_for(SUBJECT)


def _req(job: str = "j1") -> Any:
    return make_envelope("generate.request",
                         GenerateRequest(job_id=job, model_id="m", n=2, steps=10))


async def _bus(url: str, **kw: Any) -> Bus:
    bus = Bus(url, **kw)
    await bus.connect(attempts=5, wait_s=0.2)
    await bus.declare()
    # each test starts from empty work queues
    for spec in STREAMS:
        await bus.js.purge_stream(spec.name)
    return bus


async def _dlq(bus: Bus) -> list[dict[str, Any]]:
    sub = await bus.js.subscribe("sonoaudit.dlq.>", stream="DLQ", ordered_consumer=True)
    out: list[dict[str, Any]] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            out.append(json.loads(msg.data))
    except Exception:  # timeout: no more messages
        pass
    await sub.unsubscribe()
    return out


async def _run_until(bus: Bus, handler: Any, n_calls: int, calls: list[Any], timeout: float = 15,
                     **kw: Any) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(bus.consume(SPEC, GenerateRequest, handler, stop=stop,
                                           fetch_timeout_s=0.2, **kw))
    deadline = asyncio.get_running_loop().time() + timeout
    while len(calls) < n_calls and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # let the last settle reach the server
    stop.set()
    await task


async def test_declare_is_idempotent(nats_server: str) -> None:
    bus = await _bus(nats_server)
    await bus.declare()
    info = await bus.js.stream_info("GENERATE")
    assert info.config.duplicate_window == pytest.approx(600.0)
    cinfo = await bus.js.consumer_info("GENERATE", "generator")
    assert cinfo.config.max_deliver == 5
    await bus.close()


async def test_duplicate_message_id_is_suppressed(nats_server: str) -> None:
    bus = await _bus(nats_server)
    env = _req()
    assert await bus.publish(SUBJECT, env) is True
    assert await bus.publish(SUBJECT, env) is False  # same Nats-Msg-Id within the window
    assert await bus.publish(SUBJECT, _req()) is True  # new id -> new message
    info = await bus.js.stream_info("GENERATE")
    assert info.state.messages == 2
    await bus.close()


async def test_transient_error_naks_and_redelivers(nats_server: str) -> None:
    bus = await _bus(nats_server)
    await bus.publish(SUBJECT, _req("retry"))
    calls: list[int] = []

    async def handler(env: Envelope[Any], hb: Heartbeat) -> None:
        calls.append(1)
        await hb.beat()
        if len(calls) == 1:
            raise TransientError("database down", delay_s=0.1)

    await _run_until(bus, handler, 2, calls)
    assert len(calls) == 2  # failed once, redelivered, then acked
    info = await bus.js.stream_info("GENERATE")
    assert info.state.messages == 0  # acked work-queue message is removed
    assert await _dlq(bus) == []
    await bus.close()


async def test_poison_message_is_terminated_and_dead_lettered(nats_server: str) -> None:
    bus = await _bus(nats_server)
    await bus.publish(SUBJECT, _req("poison"))
    calls: list[int] = []

    async def handler(env: Envelope[Any], hb: Heartbeat) -> None:
        calls.append(1)
        raise PoisonMessage("model m does not exist")

    await _run_until(bus, handler, 1, calls)
    await asyncio.sleep(0.5)
    assert len(calls) == 1  # never retried
    dead = await _dlq(bus)
    assert len(dead) == 1
    assert dead[0]["subject"] == SUBJECT
    assert "model m does not exist" in dead[0]["error"]
    assert json.loads(dead[0]["data"])["payload"]["job_id"] == "poison"
    await bus.close()


async def test_invalid_body_is_dead_lettered(nats_server: str) -> None:
    bus = await _bus(nats_server)
    await bus.js.publish(SUBJECT, b'{"not": "an envelope"}')
    calls: list[int] = []
    seen: list[Any] = []

    async def handler(env: Envelope[Any], hb: Heartbeat) -> None:
        calls.append(1)

    async def on_dead(notice: Any) -> None:
        seen.append(notice)

    stop = asyncio.Event()
    task = asyncio.create_task(bus.consume(SPEC, GenerateRequest, handler, stop=stop,
                                           fetch_timeout_s=0.2, on_dead_letter=on_dead))
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await task
    assert calls == []
    assert len(seen) == 1 and "invalid message" in seen[0].error
    await bus.close()


async def test_max_deliver_bounds_retries(nats_server: str) -> None:
    bus = await _bus(nats_server, max_deliver=3)
    await bus.declare()  # apply max_deliver=3 to the durable consumer
    await bus.publish(SUBJECT, _req("always-fails"))
    calls: list[int] = []

    async def handler(env: Envelope[Any], hb: Heartbeat) -> None:
        calls.append(1)
        raise TransientError("still down", delay_s=0.05)

    await _run_until(bus, handler, 3, calls)
    await asyncio.sleep(0.5)
    assert len(calls) == 3
    dead = await _dlq(bus)
    assert len(dead) == 1 and dead[0]["deliveries"] == 3
    assert "gave up after 3 deliveries" in dead[0]["error"]
    await bus.close()
    # restore the default for other tests
    bus2 = await _bus(nats_server)
    await bus2.close()


async def test_connect_retry_gives_clear_error() -> None:
    bus = Bus("nats://127.0.0.1:1")
    with pytest.raises(ConnectionError, match="not reachable after 2 attempts"):
        await bus.connect(attempts=2, wait_s=0.05)


async def test_message_exhausted_unsettled_is_dead_lettered(nats_server: str) -> None:
    """A worker killed on every delivery never settles the message; JetStream stops after
    max_deliver and only emits an advisory. The watcher dead-letters it (DLQ stream and sink)
    and removes it from the work queue, where nobody would deliver it again."""
    bus = await _bus(nats_server, max_deliver=2, ack_wait_s=0.5)
    await bus.declare()
    seen: list[Any] = []

    async def sink(notice: Any) -> None:
        seen.append(notice)

    await bus.watch_max_deliveries(STREAMS, on_dead_letter=sink)
    await bus.publish(SUBJECT, _req("killed-every-time"))
    sub = await bus.js.pull_subscribe_bind(SPEC.consumer, stream=SPEC.name)
    for _ in range(2):  # two deliveries, never acked: the "worker" died each time
        msgs = await sub.fetch(1, timeout=5)
        assert len(msgs) == 1
        await asyncio.sleep(0.7)  # past ack_wait
    # the server notices the exhausted message when it next looks for one to deliver, i.e. when
    # a live worker pulls; that worker gets nothing
    with pytest.raises(NatsTimeout):
        await sub.fetch(1, timeout=1)
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.1)
    assert len(seen) == 1 and seen[0].deliveries == 2
    assert "no answer from the worker" in seen[0].error
    assert json.loads(seen[0].data)["payload"]["job_id"] == "killed-every-time"
    dead = await _dlq(bus)
    assert [d["message_id"] for d in dead] == [seen[0].message_id]
    assert (await bus.js.stream_info(SPEC.name)).state.messages == 0
    await sub.unsubscribe()
    await bus.close()
    await (await _bus(nats_server)).close()  # restore the default consumer settings


async def test_consume_survives_a_failed_settle_and_sets_the_correlation_id(
        nats_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sonoaudit.correlation import correlation_id

    bus = await _bus(nats_server)
    env1, env2 = _req("first"), _req("second")
    await bus.publish(SUBJECT, env1)
    await bus.publish(SUBJECT, env2)
    calls: list[str | None] = []
    real_ack = Msg.ack_sync
    failed: list[int] = []

    async def flaky_ack(self: Msg, timeout: float = 1.0) -> Any:
        if not failed:  # the first ack is lost with the connection
            failed.append(1)
            raise ConnectionError("connection closed")
        return await real_ack(self, timeout=timeout)

    monkeypatch.setattr(Msg, "ack_sync", flaky_ack)

    async def handler(env: Envelope[Any], hb: Heartbeat) -> None:
        calls.append(correlation_id.get())

    await _run_until(bus, handler, 2, calls)
    # the consumer went on after the failed settle and handled the second message
    assert calls[:2] == [env1.correlation_id, env2.correlation_id]
    assert correlation_id.get() is None  # reset after each message
    await bus.close()
