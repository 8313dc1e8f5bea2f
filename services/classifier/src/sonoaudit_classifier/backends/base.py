"""What every backend returns for one HTTP call, and how a failed call is described.

A backend makes exactly ONE attempt per call: retries, backoff and rate limits live in
:mod:`sonoaudit_classifier.retry` and :mod:`sonoaudit_classifier.ratelimit` only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from sonoaudit_classifier.conditions import ModelInput
from sonoaudit_classifier.prompts import Prompt

# Finish reasons that mean "a complete answer"; anything else is an abstention.
COMPLETE = "STOP"


@dataclass
class RawAnswer:
    text: str | None
    finish_reason: str | None  # normalised upper case: STOP, MAX_TOKENS, SAFETY, ...
    block_reason: str | None = None  # prompt blocked before any candidate was produced
    refusal: str | None = None
    response_id: str | None = None
    model_version: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    raw: Any = None  # the response body as JSON-able data


class CallError(Exception):
    """One failed HTTP call. ``retryable``: worth another attempt (408/429/5xx, timeouts).
    ``fatal``: no call can succeed with this configuration (bad key, unknown model): the whole
    batch stops instead of failing image by image."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 fatal: bool = False, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.fatal = fatal
        self.retry_after_s = retry_after_s


RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})


def classify_status(status: int, message: str, retry_after_s: float | None) -> CallError:
    # Google answers a wrong key with 400 INVALID_ARGUMENT "API key not valid", not 401.
    bad_key = status == 400 and "api key not valid" in message.lower()
    return CallError(
        f"HTTP {status}: {message}"[:2000], status=status,
        retryable=status in RETRYABLE_STATUS, fatal=status in FATAL_STATUS or bad_key,
        retry_after_s=retry_after_s,
    )


class Backend(Protocol):
    name: str
    model: str

    async def generate(self, inp: ModelInput, prompt: Prompt, *, seed: int | None,
                       repair: tuple[str, str] | None = None) -> RawAnswer:
        """One attempt. ``repair`` = (previous answer text, what was wrong with it)."""
        ...

    def request_settings(self) -> dict[str, Any]:
        """Everything that shapes the answer, stored with each result (never the key)."""
        ...

    async def aclose(self) -> None: ...


def parse_duration_s(value: Any) -> float | None:
    """'1s', '47.17s', '1.5' or 3 -> seconds."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if text.endswith("s"):
        text = text[:-1]
    try:
        return float(text)
    except ValueError:
        return None
