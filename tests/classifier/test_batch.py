"""classify_images on the embedded store (SQLite): one row per image and replicate, the labels
the server gave (here: the biopsy pathology from bus_data.csv), abstains kept, reruns free."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from classifier_helpers import (  # type: ignore[import-not-found]
    register_images,
    write_prompt_version,
)
from sonoaudit.context import AppContext
from sonoaudit.db.models import LLMClassification
from sonoaudit_classifier.batch import (
    BackendFailed,
    MissingMasks,
    PromptChanged,
    UnknownImages,
    aclassify_items,
    classify_images,
    items_from_files,
    llm_status,
)
from sonoaudit_classifier.prompts import UnknownPrompt
from sonoaudit_classifier.settings import BackendNotConfigured, ClassifierSettings
from sonoaudit_classifier.testing.fake_servers import FakeGeminiServer, default_label
from sqlalchemy import func, select


@pytest.fixture
def busbra_ids(sqlite_ctx: AppContext, busbra_truth: dict[str, Any]) -> dict[str, str]:
    """image id -> pathology, for the first 20 BUS-BRA sample images."""
    chosen = sorted(busbra_truth.items(), key=lambda kv: kv[1][0].name)[:20]
    ids = register_images(sqlite_ctx, [(p.stem, p.read_bytes(), m.read_bytes(), label)
                                       for _, (p, m, label) in chosen])
    return {i: label for i, (_, (_, _, label)) in zip(ids, chosen, strict=True)}


def _count(ctx: AppContext) -> int:
    with ctx.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(LLMClassification)) or 0)


def test_batch_with_faults_then_free_rerun(
    sqlite_ctx: AppContext, busbra_ids: dict[str, str], busbra_truth: dict[str, Any],
    make_settings: Any,
) -> None:
    truth_by_sha = {sha: label for sha, (_, _, label) in busbra_truth.items()}
    with FakeGeminiServer(label_for=lambda b: truth_by_sha[__import__("hashlib").sha256(b)
                                                           .hexdigest()]) as server:
        shas = {i: r.sha256 for i, r in _images(sqlite_ctx, list(busbra_ids)).items()}
        ids = list(busbra_ids)
        server.script_for(shas[ids[0]], "429:0.1", "500")      # retried, then ok
        server.script_for(shas[ids[1]], "blocked")               # abstain (replicate 0 or 1)
        server.script_for(shas[ids[2]], "max_tokens")            # abstain
        server.script_for(shas[ids[3]], *["bad_schema"] * 4)  # both replicates invalid
        settings = make_settings(gemini_base_url=server.url)
        rows = classify_images(sqlite_ctx, ids, replicates=2, settings=settings, progress=False)
        assert len(rows) == 40 and _count(sqlite_ctx) == 40
        assert Counter((r.image_id, r.replicate) for r in rows) == {
            (i, r): 1 for i in ids for r in (0, 1)}
        by_status = Counter(r.status for r in rows)
        assert by_status == {"ok": 36, "abstain": 2, "invalid": 2}
        for r in rows:
            if r.status == "ok":
                assert r.label == busbra_ids[r.image_id or ""]  # the server said: the pathology
                assert r.prompt_hash and r.model == "gemini-2.5-flash"
                assert r.findings["shape"] in ("oval", "irregular")
            else:
                assert r.label is None and r.reason
        # Its two replicates run concurrently, so either may have met the 429 and the 500.
        first = [r for r in rows if r.image_id == ids[0]]
        assert sum(r.attempts for r in first) == 4
        assert sum(len(r.attempt_errors) for r in first) == 2
        assert {r.reason for r in rows if r.status == "abstain"} == {
            "prompt blocked: SAFETY", "answer truncated (MAX_TOKENS)"}
        invalid = next(r for r in rows if r.status == "invalid")
        assert invalid.raw_text and "probably benign" in invalid.raw_text
        assert invalid.request_settings["provenance"]["packages"]["google-genai"]
        calls = len(server.requests)
        assert calls == 40 + 2 + 2  # + 2 retries + 2 repairs
        # Rerun: nothing to do, no call, no new row.
        again = classify_images(sqlite_ctx, ids, replicates=2, settings=settings, progress=False)
        assert len(server.requests) == calls and _count(sqlite_ctx) == 40
        assert [r.id for r in again] == [r.id for r in rows]
        # One more replicate costs exactly one call per image.
        classify_images(sqlite_ctx, ids, replicates=3, settings=settings, progress=False)
        assert len(server.requests) == calls + 20 and _count(sqlite_ctx) == 60


def _images(ctx: AppContext, ids: list[str]) -> dict[str, Any]:
    from sonoaudit.db.models import Image

    with ctx.sessions() as s:
        return {r.id: r for r in s.scalars(select(Image).where(Image.id.in_(ids)))}


def test_error_rows_are_retried_on_rerun(sqlite_ctx: AppContext, busbra_ids: dict[str, str],
                                         make_settings: Any) -> None:
    ids = list(busbra_ids)[:3]
    with FakeGeminiServer() as server:
        sha = _images(sqlite_ctx, ids[:1])[ids[0]].sha256
        server.script_for(sha, "500", "500")  # first image: out of attempts (max_attempts=2)
        settings = make_settings(gemini_base_url=server.url, max_attempts=2)
        rows = classify_images(sqlite_ctx, ids, settings=settings, progress=False)
        assert Counter(r.status for r in rows) == {"ok": 2, "error": 1}
        err = next(r for r in rows if r.status == "error")
        assert "gave up after 2 attempt(s)" in (err.reason or "")
        rows2 = classify_images(sqlite_ctx, ids, settings=settings, progress=False)
        assert Counter(r.status for r in rows2) == {"ok": 3}
        assert _count(sqlite_ctx) == 3
        assert next(r for r in rows2 if r.image_id == err.image_id).id == err.id  # same row


def test_configuration_problems_stop_before_any_call(
    sqlite_ctx: AppContext, busbra_ids: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    make_settings: Any,
) -> None:
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "SONOAUDIT_GEMINI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    ids = list(busbra_ids)
    with FakeGeminiServer() as server:
        no_key = ClassifierSettings(gemini_base_url=server.url)
        assert "GEMINI_API_KEY" in (llm_status(no_key) or "")
        with pytest.raises(BackendNotConfigured, match="GEMINI_API_KEY"):
            classify_images(sqlite_ctx, ids, settings=no_key, progress=False)
        settings = make_settings(gemini_base_url=server.url)
        with pytest.raises(UnknownImages, match="1 unknown image id"):
            classify_images(sqlite_ctx, [*ids, "nope"], settings=settings, progress=False)
        assert server.requests == [] and _count(sqlite_ctx) == 0
        server.script("401")
        with pytest.raises(BackendFailed, match="401"):
            classify_images(sqlite_ctx, ids, settings=make_settings(
                gemini_base_url=server.url, concurrency=1), progress=False)
        assert len(server.requests) == 1  # stopped at the first rejected call


async def test_files_with_masks_and_conditions(
    sqlite_ctx: AppContext, busbra_sample: Path, make_settings: Any,
) -> None:
    images = sorted((busbra_sample / "Images").glob("*.png"))[:3]
    pairs = [(p, busbra_sample / "Masks" / f"mask_{p.stem.split('_', 1)[1]}.png") for p in images]
    with FakeGeminiServer() as server:
        settings = make_settings(gemini_base_url=server.url)
        rows = await aclassify_items(sqlite_ctx, items_from_files(pairs), settings=settings,
                                     condition="side_by_side", progress=False)
        assert [r.source_name for r in rows] == [p.name for p in images]
        assert all(r.condition == "side_by_side" and r.status == "ok" for r in rows)
        # Side by side: what was sent is a new PNG, not the original bytes.
        assert {q["image_sha256"] for q in server.requests}.isdisjoint(
            {r.image_sha256 for r in rows})
        with pytest.raises(MissingMasks, match="needs a mask"):
            await aclassify_items(sqlite_ctx, items_from_files([(images[0], None)]),
                                  settings=settings, condition="outline", progress=False)


def test_prompt_versions_are_separate_and_frozen(
    sqlite_ctx: AppContext, busbra_ids: dict[str, str], tmp_path: Path, make_settings: Any,
) -> None:
    ids = list(busbra_ids)[:3]
    prompts = write_prompt_version(tmp_path / "prompts", "v2", "You are a sonographer.")
    with FakeGeminiServer() as server:
        settings = make_settings(gemini_base_url=server.url, prompt_dir=prompts)
        v1 = classify_images(sqlite_ctx, ids, settings=settings, progress=False)
        v2 = classify_images(sqlite_ctx, ids, settings=settings, progress=False,
                             prompt_version="v2")
        assert {r.prompt_version for r in v1} == {"v1"} and {r.prompt_version for r in v2} == {
            "v2"}
        assert len({r.prompt_hash for r in v1} | {r.prompt_hash for r in v2}) == 2
        assert {r.request_settings["prompt_version"] for r in v2} == {"v2"}
        systems = [q["system"]["parts"][0]["text"] for q in server.requests]
        assert len(systems) == 6 and systems[3:] == ["You are a sonographer."] * 3
        assert "breast radiologist" in systems[0]
        assert _count(sqlite_ctx) == 6
        # Editing a used version is refused before any call: its stored answers would be mixed
        # with answers to other words under the same version.
        (prompts / "v2-system.txt").write_text("You are a radiographer.")
        with pytest.raises(PromptChanged, match="'v2'.*changed since answers were stored"):
            classify_images(sqlite_ctx, ids, settings=settings, progress=False,
                            prompt_version="v2")
        classify_images(sqlite_ctx, ids, settings=settings, progress=False)  # v1: untouched
        assert len(server.requests) == 6 and _count(sqlite_ctx) == 6
        with pytest.raises(UnknownPrompt, match="'v3' not found"):
            classify_images(sqlite_ctx, ids, settings=settings, progress=False,
                            prompt_version="v3")


def test_unexpected_errors_stay_with_their_image(
    sqlite_ctx: AppContext, busbra_ids: dict[str, str], make_settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception nobody planned for (the SDK failing to parse a 200 response, a bug raising
    RuntimeError for one image, PIL refusing a decompression bomb) is stored as that item's
    ``error`` row with the reason; every other image still gets its answer."""
    import hashlib
    import io

    from PIL import Image as PILImage
    from sonoaudit_classifier.engine import Classifier

    buf = io.BytesIO()
    PILImage.new("L", (1200, 1000)).save(buf, format="PNG")  # 1.2 M pixels, a few kB
    bomb_id = register_images(sqlite_ctx, [("bomb", buf.getvalue(), None, "benign")])[0]
    ids = [*list(busbra_ids)[:6], bomb_id]
    images = _images(sqlite_ctx, ids)
    shas = {i: r.sha256 for i, r in images.items()}
    # What the fake server answers for an image it was sent.
    expected = {i: default_label(sqlite_ctx.store.get(r.path)) for i, r in images.items()}
    sdk_bad, raises = ids[0], ids[1]
    real_answer = Classifier.answer

    async def answer(self: Classifier, inp: Any, prompt: Any, replicate: int) -> Any:
        if replicate == 1 and hashlib.sha256(inp.data).hexdigest() == shas[raises]:
            raise RuntimeError("boom from the test")
        return await real_answer(self, inp, prompt, replicate)

    with FakeGeminiServer() as server:
        server.script_for(shas[sdk_bad], "bad_body", "bad_body")  # both replicates
        settings = make_settings(gemini_base_url=server.url)
        with monkeypatch.context() as m:
            m.setattr(Classifier, "answer", answer)
            # Above 2 x MAX_IMAGE_PIXELS PIL raises DecompressionBombError (not an OSError);
            # the BUS-BRA images are below 160 k pixels.
            m.setattr(PILImage, "MAX_IMAGE_PIXELS", 400_000)
            rows = classify_images(sqlite_ctx, ids, replicates=2, settings=settings,
                                   progress=False)
        assert Counter((r.image_id, r.replicate) for r in rows) == {
            (i, rep): 1 for i in ids for rep in (0, 1)}
        assert _count(sqlite_ctx) == 14
        status = {(r.image_id, r.replicate): r for r in rows}
        for (image_id, rep), r in status.items():
            if image_id in (sdk_bad, bomb_id) or (image_id, rep) == (raises, 1):
                assert r.status == "error" and r.label is None, (image_id, rep, r.status)
            else:
                assert r.status == "ok" and r.label == expected[image_id or ""]
        for rep in (0, 1):
            reason = status[(sdk_bad, rep)].reason or ""
            assert "ValidationError" in reason and "promptTokenCount" in reason, reason
            assert status[(sdk_bad, rep)].attempts == 1
            bomb = status[(bomb_id, rep)].reason or ""
            assert bomb.startswith("bad input bomb:") and "decompression bomb" in bomb, bomb
        assert "RuntimeError: boom from the test" in (status[(raises, 1)].reason or "")
        # The bomb was never sent; the SDK-error image was asked once per replicate.
        assert len(server.requests) == 6 * 2 - 1
        # Error rows are asked again by the next run (and replaced: still one row per key).
        again = classify_images(sqlite_ctx, ids, replicates=2, settings=settings,
                                progress=False)
        assert Counter(r.status for r in again) == {"ok": 14} and _count(sqlite_ctx) == 14
