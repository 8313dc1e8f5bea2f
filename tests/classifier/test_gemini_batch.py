"""Gemini Batch mode through the real google-genai SDK (``client.aio.batches``) against the fake
server: every (image, replicate) ends with one stored row, decided like an online answer; items a
job does not answer are stored as errors and asked again by the next run."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import pytest
from classifier_helpers import register_images, synthetic_pngs  # type: ignore[import-not-found]
from sonoaudit.context import AppContext
from sonoaudit_classifier.batch import BackendFailed, Item, aclassify_items, items_from_images
from sonoaudit_classifier.gemini_batch import aclassify_gemini_batch
from sonoaudit_classifier.testing.fake_servers import FakeGeminiServer, default_label


async def test_batch_mode_answers_and_faults(sqlite_ctx: AppContext, make_settings: Any) -> None:
    images = synthetic_pngs(6, seed=21)
    ids = register_images(sqlite_ctx, images)
    items = items_from_images(sqlite_ctx, ids)
    with FakeGeminiServer() as server:
        server.script_for(images[0][1], "blocked")            # one replicate abstains
        server.script_for(images[1][1], "bad_json")            # repaired by an online call
        server.script_for(images[2][1], "500")                 # item error inside the job
        settings = make_settings(gemini_base_url=server.url, seed=10)
        rows = await aclassify_gemini_batch(sqlite_ctx, items, settings=settings,
                                            replicates=2, poll_s=0.01)
        assert len(rows) == 12
        assert Counter((r.image_id, r.replicate) for r in rows) == {
            (i, r): 1 for i in ids for r in (0, 1)}
        assert Counter(r.status for r in rows) == {"ok": 10, "abstain": 1, "error": 1}
        assert len(server.batch_jobs) == 1
        [(name, job)] = server.batch_jobs.items()
        assert job["polls"] == 2  # RUNNING once, then SUCCEEDED with the answers
        # 12 inline requests + 1 online repair request.
        assert len(server.requests) == 13
        assert sorted(q["seed"] for q in server.requests[:12]) == [10] * 6 + [11] * 6
        assert all("breast radiologist" in (q["system"] or {}).get("parts", [{}])[0]
                   .get("text", "") for q in server.requests[:12])
        by_id = {i: d for i, (_, d, _, _) in zip(ids, images, strict=True)}
        for r in rows:
            assert r.request_settings["mode"] == "gemini-batch"
            assert r.request_settings["batch_name"] == name
            if r.status == "ok":
                assert r.label == default_label(by_id[r.image_id or ""])
        assert next(r for r in rows if r.status == "abstain").reason == "prompt blocked: SAFETY"
        repaired = [r for r in rows if r.repairs]
        assert len(repaired) == 1 and repaired[0].status == "ok"
        err = next(r for r in rows if r.status == "error")
        assert err.image_id == ids[2] and "batch item error 500" in (err.reason or "")
        # Rerun: only the error item is asked again, in a new job; nothing duplicated.
        again = await aclassify_gemini_batch(sqlite_ctx, items, settings=settings,
                                             replicates=2, poll_s=0.01)
        assert len(server.batch_jobs) == 2 and len(server.requests) == 14
        assert Counter(r.status for r in again) == {"ok": 11, "abstain": 1}
        assert {r.id for r in again} == {r.id for r in rows}


async def test_batch_job_that_fails_leaves_error_rows(sqlite_ctx: AppContext,
                                                      make_settings: Any) -> None:
    images = synthetic_pngs(3, seed=22)
    items = items_from_images(sqlite_ctx, register_images(sqlite_ctx, images))
    with FakeGeminiServer() as server:
        server.batch_final_state = "BATCH_STATE_EXPIRED"
        settings = make_settings(gemini_base_url=server.url)
        rows = await aclassify_gemini_batch(sqlite_ctx, items, settings=settings, poll_s=0.01)
        assert [r.status for r in rows] == ["error"] * 3
        assert all("ended JOB_STATE_EXPIRED" in (r.reason or "") for r in rows)
        server.batch_final_state = "BATCH_STATE_SUCCEEDED"
        rows = await aclassify_gemini_batch(sqlite_ctx, items, settings=settings, poll_s=0.01)
        assert [r.status for r in rows] == ["ok"] * 3
        # A wrong key: Google answers 400 "API key not valid"; nothing is submitted or stored.
        more = synthetic_pngs(1, seed=23)
        items = items_from_images(sqlite_ctx, register_images(sqlite_ctx, more))
        bad = make_settings(gemini_base_url=server.url, GEMINI_API_KEY=server.rejected_key)
        with pytest.raises(BackendFailed, match="API key not valid"):
            await aclassify_gemini_batch(sqlite_ctx, items, settings=bad, poll_s=0.01)
        assert len(server.batch_jobs) == 2
        assert hashlib.sha256(more[0][1]).hexdigest() not in server.calls_by_image
        assert await aclassify_gemini_batch(sqlite_ctx, [], settings=settings) == []


async def test_input_that_cannot_be_prepared_stays_with_its_item(
    sqlite_ctx: AppContext, make_settings: Any,
) -> None:
    """An unplanned exception while loading one item (here a KeyError) is that item's error row,
    online and in batch mode; the other items are answered."""
    images = synthetic_pngs(2, seed=24)
    items = items_from_images(sqlite_ctx, register_images(sqlite_ctx, images))

    def broken() -> tuple[bytes, bytes | None]:
        raise KeyError("no such blob")

    items.append(Item("broken.png", "0" * 64, None, False, broken))
    with FakeGeminiServer() as server:
        settings = make_settings(gemini_base_url=server.url)
        for run in ("online", "batch"):
            if run == "online":
                rows = await aclassify_items(sqlite_ctx, items, settings=settings,
                                             progress=False)
            else:
                rows = await aclassify_gemini_batch(sqlite_ctx, items, settings=settings,
                                                    poll_s=0.01)
            assert [r.status for r in rows] == ["ok", "ok", "error"], run
            assert rows[2].source_name == "broken.png"
            assert rows[2].reason == "bad input broken.png: KeyError: 'no such blob'", run
        assert len(server.requests) == 2  # the answered items were not asked again
