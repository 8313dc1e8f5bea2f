"""Gemini Batch mode for large runs (half the price of online calls; Google targets 24 h).

The same requests as online (same prompt, schema, settings, seed per replicate) go to
``client.aio.batches.create`` as inline requests, each tagged with its result key; the job is
polled until it ends and every answer is decided exactly as online (own validation, abstain on
block/stop, one repair request through a normal call), then stored under the same idempotent key
as an online answer. Items a batch job did not answer (job failed, expired, item error) are
stored as ``error`` rows, which the next run asks again. Bulk runs only: the CLI waits for the
job; an interrupted run submits the missing items again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from google.genai import errors as genai_errors
from sonoaudit.context import AppContext
from sonoaudit.db.models import LLMClassification
from sonoaudit.provenance import provenance

from sonoaudit_classifier.backends.base import CallError, classify_status
from sonoaudit_classifier.backends.gemini import GeminiBackend, retry_delay_of
from sonoaudit_classifier.batch import (
    BackendFailed,
    Item,
    MissingMasks,
    _check_same_prompt,
    _keys,
)
from sonoaudit_classifier.conditions import BadImage, ModelInput, render
from sonoaudit_classifier.engine import Classifier, Outcome
from sonoaudit_classifier.prompts import load_prompt
from sonoaudit_classifier.retry import CallStats, RetriesExhausted, call_with_retries
from sonoaudit_classifier.settings import ClassifierSettings, require_backend
from sonoaudit_classifier.store import FINAL, Pending, ResultKey, existing, save_many

log = logging.getLogger(__name__)
T = TypeVar("T")

DONE = "JOB_STATE_SUCCEEDED"
ENDED = frozenset({DONE, "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"})
# Inline requests are limited to about 20 MB per batch job; larger runs use several jobs.
MAX_INLINE_BYTES = 15 * 1024 * 1024


class BatchTimeout(RuntimeError):
    """The batch job did not end in time; its name lets a user fetch or cancel it."""


def _state(job: Any) -> str:
    state = getattr(job, "state", None)
    return str(getattr(state, "value", state) or "")


async def _sdk(fn: Callable[[], Awaitable[T]]) -> T:
    """One SDK call with errors described like online calls (so the one retry layer applies)."""
    try:
        return await fn()
    except genai_errors.APIError as exc:
        raise classify_status(exc.code, exc.message or str(exc), retry_delay_of(exc)) from exc


def _chunks(todo: list[tuple[int, ModelInput]]) -> list[list[tuple[int, ModelInput]]]:
    out: list[list[tuple[int, ModelInput]]] = [[]]
    size = 0
    for idx, inp in todo:
        cost = len(inp.data) * 4 // 3 + 4096  # base64 + prompt and config
        if out[-1] and size + cost > MAX_INLINE_BYTES:
            out.append([])
            size = 0
        out[-1].append((idx, inp))
        size += cost
    return [c for c in out if c]


async def aclassify_gemini_batch(
    ctx: AppContext, items: Sequence[Item], *, settings: ClassifierSettings,
    condition: str = "image", replicates: int = 1, prompt_version: str | None = None,
    job_id: str | None = None, poll_s: float | None = None,
    timeout_s: float = 48 * 3600.0,
) -> list[LLMClassification]:
    """Like :func:`~sonoaudit_classifier.batch.aclassify_items` through Gemini Batch mode."""
    if replicates < 1:
        raise ValueError(f"replicates must be >= 1, got {replicates}")
    require_backend(settings, "gemini")
    prompt = load_prompt(prompt_version or settings.prompt_version, condition, settings.prompt_dir)
    if condition != "image":
        unmasked = [it.name for it in items if not it.has_mask]
        if unmasked:
            raise MissingMasks(condition, unmasked)
    poll = poll_s if poll_s is not None else settings.gemini_batch_poll_s
    backend = GeminiBackend(settings)
    clf = Classifier(backend, settings)
    try:
        pairs = _keys(items, backend.name, backend.model, prompt.version, condition, replicates)
        before = existing(ctx.sessions, [k for _, k in pairs])
        _check_same_prompt(before.values(), prompt.hash)
        todo = [(it, key) for it, key in pairs
                if (row := before.get(key)) is None or row.status not in FINAL]
        record: dict[str, Any] = {
            **backend.request_settings(), "mode": "gemini-batch", "condition": condition,
            "prompt_version": prompt.version, "prompt_hash": prompt.hash,
            "provenance": provenance(model=backend.model, prompt_version=prompt.version),
        }
        pending: list[Pending] = []

        def keep(i: int, outcome: Outcome, extra: dict[str, Any]) -> None:
            it, key = todo[i]
            pending.append(Pending(key, outcome, prompt.hash, it.image_id, it.name, job_id,
                                   {**record, **extra, "seed": outcome.seed,
                                    "replicate": key.replicate}))

        inputs: dict[int, ModelInput] = {}
        rendered: dict[str, ModelInput | Exception] = {}
        for i, (it, _) in enumerate(todo):
            ident = it.image_sha256 + "|" + it.name
            if ident not in rendered:
                try:
                    data, mask = await asyncio.to_thread(it.load)
                    rendered[ident] = render(data, condition, mask)
                except (BadImage, OSError) as exc:
                    rendered[ident] = exc
                except Exception as exc:  # anything else stays with this image too
                    log.exception("%s: could not prepare the input", it.name)
                    rendered[ident] = RuntimeError(f"{type(exc).__name__}: {exc}")
            got = rendered[ident]
            if isinstance(got, ModelInput):
                inputs[i] = got
            else:
                keep(i, Outcome("error", reason=f"bad input {it.name}: {got}"), {})
        try:
            for chunk in _chunks(sorted(inputs.items())):
                await _run_job(clf, backend, prompt, chunk, todo, keep, poll, timeout_s)
        finally:  # answers of jobs that ended are kept even when a later job fails
            await asyncio.to_thread(save_many, ctx.sessions, pending)
        after = existing(ctx.sessions, [k for _, k in pairs])
        return [after[k] for _, k in pairs if k in after]
    finally:
        await backend.aclose()


async def _run_job(clf: Classifier, backend: GeminiBackend, prompt: Any,
                   chunk: list[tuple[int, ModelInput]],
                   todo: list[tuple[Item, ResultKey]],
                   keep: Callable[[int, Outcome, dict[str, Any]], None],
                   poll_s: float, timeout_s: float) -> None:
    requests = [backend.inline_request(inp, prompt, clf.seed_for(todo[i][1].replicate), str(i))
                for i, inp in chunk]
    display = f"sonoaudit-{prompt.version}-{prompt.condition}-{len(requests)}"
    try:
        job = await call_with_retries(
            lambda: _sdk(lambda: backend.batches.create(
                model=backend.model, src=requests, config={"display_name": display})),
            clf.policy, clf.limiter, CallStats())
    except (CallError, RetriesExhausted) as exc:
        raise BackendFailed(f"gemini batch job could not be created: {exc}") from exc
    name = str(job.name)
    log.info("gemini batch job %s: %d requests", name, len(requests))
    deadline = time.monotonic() + timeout_s
    while _state(job) not in ENDED:
        if time.monotonic() > deadline:
            raise BatchTimeout(f"gemini batch job {name} did not end within {timeout_s:g} s "
                               f"(state {_state(job)}); its answers are not stored")
        await asyncio.sleep(poll_s)
        try:
            job = await call_with_retries(lambda: _sdk(lambda: backend.batches.get(name=name)),
                                          clf.policy, clf.limiter, CallStats())
        except RetriesExhausted as exc:
            log.warning("polling %s failed (%s); polling again", name, exc)
    extra = {"batch_name": name}
    answered: set[int] = set()
    responses = (job.dest.inlined_responses or []) if job.dest is not None else []
    by_index = dict(chunk)
    for resp in responses if _state(job) == DONE else []:
        key = (resp.metadata or {}).get("key", "")
        if not key.isdigit() or int(key) not in by_index or int(key) in answered:
            log.warning("batch %s: response with unknown key %r ignored", name, key)
            continue
        i = int(key)
        answered.add(i)
        seed = clf.seed_for(todo[i][1].replicate)
        if resp.error is not None or resp.response is None:
            err = resp.error
            reason = (f"batch item error {getattr(err, 'code', None)}: "
                      f"{getattr(err, 'message', None)}" if err else "batch item without answer")
            keep(i, Outcome("error", reason=reason, attempts=1, seed=seed), extra)
            continue
        first = backend.answer_of(resp.response)
        keep(i, await clf.finish(by_index[i], prompt, todo[i][1].replicate, first), extra)
    for i, _ in chunk:
        if i not in answered:
            keep(i, Outcome("error", attempts=1, seed=clf.seed_for(todo[i][1].replicate),
                            reason=f"gemini batch job {name} ended {_state(job)} without an "
                                   "answer for this item"), extra)
