"""Classify a set of images: the in-process API the embedded pipeline, the service and the job
worker all call.

Every (image, replicate) ends with exactly one stored row; done rows are skipped, so a rerun or
a redelivered job costs nothing. Configuration problems (unknown backend, no key, no URL, a
rejected key) stop the batch before or at its first call, never image by image."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonoaudit.context import AppContext
from sonoaudit.db.models import Image, LLMClassification
from sonoaudit.filestore import sha256_bytes
from sonoaudit.provenance import provenance
from sqlalchemy import select
from tqdm import tqdm

from sonoaudit_classifier.backends import make_backend
from sonoaudit_classifier.backends.base import CallError
from sonoaudit_classifier.conditions import BadImage, ModelInput, render
from sonoaudit_classifier.engine import Classifier, Outcome
from sonoaudit_classifier.prompts import PromptChanged, load_prompt
from sonoaudit_classifier.settings import (
    BackendNotConfigured,
    ClassifierSettings,
    backend_problem,
    require_backend,
)
from sonoaudit_classifier.store import FINAL, Pending, ResultKey, existing, save_many

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, int], Awaitable[None]]  # (done, failed, total)


class UnknownImages(LookupError):
    def __init__(self, ids: Sequence[str]) -> None:
        shown = ", ".join(ids[:20]) + (f" … and {len(ids) - 20} more" if len(ids) > 20 else "")
        super().__init__(f"{len(ids)} unknown image id(s): {shown}")
        self.ids = list(ids)


class MissingMasks(ValueError):
    def __init__(self, condition: str, names: Sequence[str]) -> None:
        shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
        super().__init__(f"condition {condition!r} needs a mask; {len(names)} image(s) have "
                         f"none: {shown}")


class BackendFailed(RuntimeError):
    """A call failed in a way no other call can avoid (rejected key, unknown model)."""


@dataclass(frozen=True)
class Item:
    """One image to classify; bytes are read only when its turn comes."""

    name: str
    image_sha256: str
    image_id: str | None
    has_mask: bool
    load: Callable[[], tuple[bytes, bytes | None]]


def llm_status(settings: ClassifierSettings | None = None,
               backend: str | None = None) -> str | None:
    """None when the LLM can run; otherwise why not (for "LLM not run: <reason>" in reports)."""
    return backend_problem(settings or ClassifierSettings(), backend)


def items_from_images(ctx: AppContext, image_ids: Sequence[str]) -> list[Item]:
    with ctx.sessions() as s:
        rows = {r.id: r for r in s.scalars(select(Image).where(Image.id.in_(list(image_ids))))}
    missing = [i for i in image_ids if i not in rows]
    if missing:
        raise UnknownImages(missing)
    store = ctx.store

    def loader(path: str, mask_path: str | None) -> Callable[[], tuple[bytes, bytes | None]]:
        return lambda: (store.get(path), store.get(mask_path) if mask_path else None)

    return [Item(r.name, r.sha256, r.id, bool(r.mask_path), loader(r.path, r.mask_path))
            for r in (rows[i] for i in image_ids)]


def items_from_files(pairs: Iterable[tuple[Path, Path | None]]) -> list[Item]:
    """Images on disk (with optional masks); hashes are computed now, bytes read again later."""
    out = []
    for image, mask in pairs:
        data = image.read_bytes()

        def load(image: Path = image, mask: Path | None = mask) -> tuple[bytes, bytes | None]:
            return image.read_bytes(), mask.read_bytes() if mask else None

        out.append(Item(image.name, sha256_bytes(data), None, mask is not None, load))
    return out


def _keys(items: Sequence[Item], backend: str, model: str, prompt_version: str, condition: str,
          replicates: int) -> list[tuple[Item, ResultKey]]:
    return [(it, ResultKey(it.image_sha256, backend, model, prompt_version, condition, r))
            for it in items for r in range(replicates)]


async def aclassify_items(
    ctx: AppContext, items: Sequence[Item], *, settings: ClassifierSettings,
    backend: str | None = None, condition: str = "image", replicates: int = 1,
    job_id: str | None = None, classifier: Classifier | None = None, progress: bool = True,
    on_progress: ProgressFn | None = None, prompt_version: str | None = None,
) -> list[LLMClassification]:
    """One stored row per (item, replicate), in input order. ``prompt_version`` None = the
    configured one. Raises UnknownPrompt / PromptChanged before any call."""
    if replicates < 1:
        raise ValueError(f"replicates must be >= 1, got {replicates}")
    name = classifier.name if classifier is not None else require_backend(settings, backend)
    prompt = load_prompt(prompt_version or settings.prompt_version, condition, settings.prompt_dir)
    if condition != "image":
        unmasked = [it.name for it in items if not it.has_mask]
        if unmasked:
            raise MissingMasks(condition, unmasked)
    own = classifier is None
    clf = classifier or Classifier(make_backend(settings, name), settings)
    clf.fatal = None
    try:
        pairs = _keys(items, clf.name, clf.model, prompt.version, condition, replicates)
        before = existing(ctx.sessions, [k for _, k in pairs])
        _check_same_prompt(before.values(), prompt.hash)
        todo: dict[str, list[tuple[Item, ResultKey]]] = {}
        for it, key in pairs:
            row = before.get(key)
            if row is None or row.status not in FINAL:
                todo.setdefault(it.image_sha256 + "|" + it.name, []).append((it, key))
        total = len(pairs)
        state = {"done": total - sum(len(v) for v in todo.values()), "failed": 0}
        settings_record: dict[str, Any] = {
            **clf.backend.request_settings(), "condition": condition,
            "prompt_version": prompt.version, "prompt_hash": prompt.hash,
            "max_attempts": settings.max_attempts, "concurrency": settings.concurrency,
            "rate_limit_rpm": settings.rate_limit_rpm,
            "provenance": provenance(model=clf.model, prompt_version=prompt.version),
        }
        bar = tqdm(total=total, initial=state["done"], desc=f"classify ({clf.name})",
                   unit="answer", disable=not progress)
        # Bounds how many images are held in memory at once.
        gate = asyncio.Semaphore(max(4, 2 * settings.concurrency))

        # One writer batches whatever answers piled up while it was writing: one transaction
        # per batch instead of one per answer keeps the event loop free for calls.
        queue: asyncio.Queue[Pending | None] = asyncio.Queue()

        async def writer() -> None:
            finished = False
            while not finished:
                batch: list[Pending] = []
                item = await queue.get()
                while True:
                    if item is None:
                        finished = True
                        break
                    batch.append(item)
                    if queue.empty() or len(batch) >= 200:
                        break
                    item = queue.get_nowait()
                if not batch:
                    continue
                await asyncio.to_thread(save_many, ctx.sessions, batch)
                for p in batch:
                    state["failed" if p.outcome.status == "error" else "done"] += 1
                bar.update(len(batch))
                if on_progress is not None:
                    await on_progress(state["done"], state["failed"], total)

        writer_task = asyncio.create_task(writer())

        async def answer(item: Item, inp: ModelInput, key: ResultKey) -> Outcome:
            """One replicate. Whatever goes wrong is this replicate's ``error`` row, with the
            reason; only a fatal backend error (rejected key, unknown model) leaves, to stop the
            batch."""
            try:
                return await clf.answer(inp, prompt, key.replicate)
            except CallError as exc:
                if exc.fatal:
                    raise
                reason = f"call failed: {exc}"
            except Exception as exc:
                log.exception("%s replicate %d: unexpected error", item.name, key.replicate)
                reason = f"unexpected error: {type(exc).__name__}: {exc}"
            return Outcome("error", reason=reason[:2000], seed=clf.seed_for(key.replicate))

        async def one(group: list[tuple[Item, ResultKey]]) -> None:
            async with gate:
                if writer_task.done():  # the store failed: stop asking
                    return
                item = group[0][0]
                outcomes: list[Outcome]
                try:
                    data, mask = await asyncio.to_thread(item.load)
                    inp = render(data, condition, mask)
                except (BadImage, OSError) as exc:
                    outcomes = [Outcome("error", reason=f"bad input {item.name}: {exc}")
                                for _ in group]
                except Exception as exc:  # e.g. a store or PIL error nobody planned for
                    log.exception("%s: could not prepare the input", item.name)
                    outcomes = [Outcome("error", reason=f"bad input {item.name}: "
                                        f"{type(exc).__name__}: {exc}"[:2000]) for _ in group]
                else:
                    outcomes = list(await asyncio.gather(*(answer(item, inp, key)
                                                           for _, key in group)))
                for (it, key), outcome in zip(group, outcomes, strict=True):
                    queue.put_nowait(Pending(
                        key, outcome, prompt.hash, it.image_id, it.name, job_id,
                        {**settings_record, "seed": outcome.seed, "replicate": key.replicate}))

        tasks = [asyncio.create_task(one(g)) for g in todo.values()]
        try:
            await asyncio.gather(*tasks)
        except BaseException as exc:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            queue.put_nowait(None)  # answers already received are still written
            with contextlib.suppress(Exception):
                await writer_task
            if isinstance(exc, CallError):  # fatal for every call: stop, keep what is stored
                raise BackendFailed(f"{clf.name} backend rejected the request: {exc}") from exc
            raise
        else:
            queue.put_nowait(None)
            await writer_task
        finally:
            bar.close()
        after = existing(ctx.sessions, [k for _, k in pairs])
        return [after[k] for _, k in pairs if k in after]
    finally:
        if own:
            await clf.backend.aclose()


def _check_same_prompt(rows: Iterable[LLMClassification], prompt_hash: str) -> None:
    """Stored answers are reused by prompt *version*; refuse when the words behind the version
    changed, instead of silently mixing two prompts in one analysis."""
    for row in rows:
        if row.status in FINAL and row.prompt_hash != prompt_hash:
            raise PromptChanged(row.prompt_version, row.condition, row.prompt_hash, prompt_hash)


async def aclassify_images(
    ctx: AppContext, image_ids: Sequence[str], *, settings: ClassifierSettings,
    backend: str | None = None, condition: str = "image", replicates: int = 1,
    job_id: str | None = None, classifier: Classifier | None = None, progress: bool = True,
    on_progress: ProgressFn | None = None, prompt_version: str | None = None,
) -> list[LLMClassification]:
    items = await asyncio.to_thread(items_from_images, ctx, image_ids)
    return await aclassify_items(
        ctx, items, settings=settings, backend=backend, condition=condition,
        replicates=replicates, job_id=job_id, classifier=classifier, progress=progress,
        on_progress=on_progress, prompt_version=prompt_version)


def classify_images(
    ctx: AppContext, image_ids: Sequence[str], backend: str | None = None,
    condition: str = "image", replicates: int = 1, settings: ClassifierSettings | None = None,
    *, job_id: str | None = None, progress: bool = True, prompt_version: str | None = None,
) -> list[LLMClassification]:
    """Synchronous entry point for the embedded pipeline. Raises BackendNotConfigured (use
    :func:`llm_status` first to report "LLM not run and why"), UnknownBackend, UnknownImages,
    MissingMasks, UnknownPrompt, PromptChanged or BackendFailed."""
    return asyncio.run(aclassify_images(
        ctx, image_ids, settings=settings or ClassifierSettings(), backend=backend,
        condition=condition, replicates=replicates, job_id=job_id, progress=progress,
        prompt_version=prompt_version))


__all__ = [
    "BackendFailed", "BackendNotConfigured", "Item", "MissingMasks", "PromptChanged",
    "UnknownImages",
    "aclassify_images", "aclassify_items", "classify_images", "items_from_files",
    "items_from_images", "llm_status",
]
