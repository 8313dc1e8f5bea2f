"""The one retry layer: exponential backoff with jitter on retryable failures (408/429/5xx,
timeouts), honouring the server's retry delay, each attempt inside the model's limiter."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sonoaudit_classifier.backends.base import CallError
from sonoaudit_classifier.ratelimit import ModelLimiter

T = TypeVar("T")


@dataclass
class RetryPolicy:
    max_attempts: int = 5
    initial_s: float = 1.0
    max_s: float = 60.0
    max_server_delay_s: float = 300.0
    timeout_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def backoff(self, attempt: int) -> float:
        """Delay after failed attempt ``attempt`` (1-based): "equal jitter", i.e. half the
        exponential step fixed and half random, so retries spread out but never come at once."""
        step = min(self.max_s, self.initial_s * 2 ** (attempt - 1))
        return step / 2 + self.rng.uniform(0, step / 2)


class RetriesExhausted(Exception):
    def __init__(self, last: CallError, attempts: int) -> None:
        kind = "gave up" if last.retryable else "not retryable"
        super().__init__(f"{kind} after {attempts} attempt(s): {last}")
        self.last = last
        self.attempts = attempts


@dataclass
class CallStats:
    attempts: int = 0
    call_s: float = 0.0  # time inside HTTP calls (not waiting)
    errors: list[str] = field(default_factory=list)


async def call_with_retries(
    fn: Callable[[], Awaitable[T]], policy: RetryPolicy, limiter: ModelLimiter, stats: CallStats,
) -> T:
    """Run ``fn`` until it succeeds. Raises :class:`RetriesExhausted` (non-retryable error or out
    of attempts) or the :class:`CallError` itself when it is fatal for every call."""
    attempt = 0
    while True:
        attempt += 1
        stats.attempts += 1
        started = time.perf_counter()
        try:
            async with limiter.slot():
                started = time.perf_counter()
                try:
                    return await asyncio.wait_for(fn(), timeout=policy.timeout_s)
                except TimeoutError as exc:
                    raise CallError(f"no answer within {policy.timeout_s:g} s",
                                    retryable=True) from exc
                finally:
                    stats.call_s += time.perf_counter() - started
        except CallError as err:
            stats.errors.append(str(err)[:300])
            if err.fatal:
                raise
            if not err.retryable or attempt >= policy.max_attempts:
                raise RetriesExhausted(err, attempt) from err
            delay = policy.backoff(attempt)
            if err.retry_after_s is not None:
                if err.retry_after_s > policy.max_server_delay_s:
                    raise RetriesExhausted(
                        CallError(f"server asks to wait {err.retry_after_s:g} s (more than "
                                  f"{policy.max_server_delay_s:g} s allowed): {err}",
                                  status=err.status), attempt) from err
                # Wait at least what the server asked, plus a little jitter.
                delay = err.retry_after_s + policy.rng.uniform(0, 0.1 * err.retry_after_s + 0.05)
                limiter.pause(err.retry_after_s)
            await asyncio.sleep(delay)
