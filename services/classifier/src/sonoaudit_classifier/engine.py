"""One answer for one (image, condition, replicate): call, validate, repair once, decide.

Outcomes: ``ok`` (validated verdict), ``abstain`` (blocked, empty, safety-stopped, truncated,
refused: never mapped to a class), ``invalid`` (still not a valid answer after one repair retry;
raw text kept), ``error`` (no answer: retries exhausted or a non-retryable error; a rerun of the
batch tries it again)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sonoaudit_classifier.backends.base import COMPLETE, Backend, CallError, RawAnswer
from sonoaudit_classifier.conditions import ModelInput
from sonoaudit_classifier.prompts import Prompt
from sonoaudit_classifier.ratelimit import ModelLimiter
from sonoaudit_classifier.retry import CallStats, RetriesExhausted, RetryPolicy, call_with_retries
from sonoaudit_classifier.settings import ClassifierSettings
from sonoaudit_classifier.verdict import InvalidAnswer, Verdict, parse_verdict


@dataclass
class Outcome:
    status: str  # ok | abstain | invalid | error
    verdict: Verdict | None = None
    reason: str | None = None
    raw_text: str | None = None
    raw_responses: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    response_id: str | None = None
    model_version: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    latency_ms: float | None = None
    wall_ms: float | None = None
    attempts: int = 0
    repairs: int = 0
    seed: int | None = None
    errors: list[str] = field(default_factory=list)


def abstain_reason(ans: RawAnswer) -> str | None:
    if ans.block_reason:
        return f"prompt blocked: {ans.block_reason}"
    if ans.refusal:
        return f"model refused: {ans.refusal[:500]}"
    if ans.finish_reason is None:
        return "no candidate in the response"
    if ans.finish_reason != COMPLETE:
        if ans.finish_reason == "MAX_TOKENS":
            return "answer truncated (MAX_TOKENS)"
        return f"answer stopped: {ans.finish_reason}"
    if ans.text is None or not ans.text.strip():
        return "empty answer"
    return None


def policy_from(settings: ClassifierSettings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts, initial_s=settings.backoff_initial_s,
        max_s=settings.backoff_max_s, max_server_delay_s=settings.max_server_delay_s,
        timeout_s=settings.request_timeout_s,
    )


class Classifier:
    """A backend with its limiter and retry policy. One per backend+model per process, so the
    per-model limits hold across the API and the job worker."""

    def __init__(self, backend: Backend, settings: ClassifierSettings,
                 policy: RetryPolicy | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.policy = policy or policy_from(settings)
        self.limiter = ModelLimiter(settings.concurrency, settings.rate_limit_rpm)
        # Set by the first fatal error (rejected key, unknown model): later calls fail at once
        # instead of sending requests that cannot succeed. A new batch clears it.
        self.fatal: CallError | None = None

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def model(self) -> str:
        return self.backend.model

    def seed_for(self, replicate: int) -> int | None:
        return None if self.settings.seed is None else self.settings.seed + replicate

    async def answer(self, inp: ModelInput, prompt: Prompt, replicate: int) -> Outcome:
        seed = self.seed_for(replicate)
        stats = CallStats()
        began = time.perf_counter()
        out = await self._answer(inp, prompt, seed, stats)
        out.seed = seed
        out.attempts = stats.attempts
        out.errors = stats.errors
        out.latency_ms = round(stats.call_s * 1000, 3)
        out.wall_ms = round((time.perf_counter() - began) * 1000, 3)
        return out

    async def _call(self, inp: ModelInput, prompt: Prompt, seed: int | None, stats: CallStats,
                    repair: tuple[str, str] | None = None) -> RawAnswer:
        async def attempt() -> RawAnswer:
            if self.fatal is not None:
                raise self.fatal
            try:
                return await self.backend.generate(inp, prompt, seed=seed, repair=repair)
            except CallError as exc:
                if exc.fatal:
                    self.fatal = exc
                raise

        return await call_with_retries(attempt, self.policy, self.limiter, stats)

    async def finish(self, inp: ModelInput, prompt: Prompt, replicate: int,
                     first: RawAnswer) -> Outcome:
        """Decide on an answer obtained outside this engine (a Gemini batch job): the same
        validation, and the one repair request goes through a normal call."""
        seed = self.seed_for(replicate)
        stats = CallStats(attempts=1)
        began = time.perf_counter()
        out = await self._answer(inp, prompt, seed, stats, first=first)
        out.seed, out.attempts, out.errors = seed, stats.attempts, stats.errors
        out.latency_ms = round(stats.call_s * 1000, 3) if stats.call_s else None
        out.wall_ms = round((time.perf_counter() - began) * 1000, 3)
        return out

    async def _answer(self, inp: ModelInput, prompt: Prompt, seed: int | None,
                      stats: CallStats, first: RawAnswer | None = None) -> Outcome:
        if first is None:
            try:
                first = await self._call(inp, prompt, seed, stats)
            except RetriesExhausted as exc:
                return Outcome("error", reason=str(exc))
        out = _from_answer(first)
        if (why := abstain_reason(first)) is not None:
            out.status, out.reason = "abstain", why
            return out
        try:
            out.verdict = parse_verdict(first.text)
            out.status = "ok"
            return out
        except InvalidAnswer as exc:
            problem = str(exc)
        # One repair retry: show the model its answer and what was wrong with it.
        assert first.text is not None
        out.repairs = 1
        try:
            second = await self._call(inp, prompt, seed, stats, repair=(first.text, problem))
        except RetriesExhausted as exc:
            out.status, out.reason = "invalid", f"{problem}; repair call failed: {exc}"
            return out
        fixed = _from_answer(second)
        fixed.repairs = 1
        fixed.raw_responses = out.raw_responses + fixed.raw_responses
        fixed.usage = {"first": out.usage, "repair": fixed.usage}
        if (why := abstain_reason(second)) is not None:
            fixed.status, fixed.reason = "abstain", f"after repair request: {why}"
            return fixed
        try:
            fixed.verdict = parse_verdict(second.text)
            fixed.status = "ok"
            fixed.reason = f"repaired: first answer {problem}"
        except InvalidAnswer as exc:
            fixed.status = "invalid"
            fixed.reason = f"{problem}; after one repair retry: {exc}"
            fixed.raw_text = f"{first.text}\n---repair answer---\n{second.text}"
        return fixed


def _from_answer(ans: RawAnswer) -> Outcome:
    return Outcome(
        status="ok", raw_text=ans.text, raw_responses=[ans.raw],
        finish_reason=ans.block_reason and f"BLOCKED:{ans.block_reason}" or ans.finish_reason,
        response_id=ans.response_id, model_version=ans.model_version, usage=dict(ans.usage),
    )
