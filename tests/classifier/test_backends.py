"""The real google-genai and openai SDKs against the fake servers: every reply kind ends as the
right outcome, with the right number of HTTP attempts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sonoaudit_classifier.backends import make_backend
from sonoaudit_classifier.backends.base import CallError
from sonoaudit_classifier.conditions import render
from sonoaudit_classifier.engine import Classifier, Outcome
from sonoaudit_classifier.prompts import load_prompt
from sonoaudit_classifier.settings import ClassifierSettings
from sonoaudit_classifier.testing.fake_servers import (
    FakeGeminiServer,
    FakeOpenAIServer,
    default_label,
)


@pytest.fixture
def image(busbra_sample: Path) -> bytes:
    return (busbra_sample / "Images" / "bus_0011-r.png").read_bytes()


def fast_settings(**kw: object) -> ClassifierSettings:
    return ClassifierSettings(**{"GEMINI_API_KEY": "test-key", "backoff_initial_s": 0.02,
                                 "backoff_max_s": 0.1, "rate_limit_rpm": None,
                                 "request_timeout_s": 5.0, **kw})  # type: ignore[arg-type]


def _gemini(server: FakeGeminiServer, **kw: object) -> Classifier:
    s = fast_settings(gemini_base_url=server.url, **kw)
    return Classifier(make_backend(s, "gemini"), s)


def _openai(server: FakeOpenAIServer, **kw: object) -> Classifier:
    s = fast_settings(openai_base_url=server.url + "/v1", openai_model="local-vlm", **kw)
    return Classifier(make_backend(s, "openai"), s)


async def _answer(clf: Classifier, image: bytes, replicate: int = 0) -> Outcome:
    try:
        return await clf.answer(render(image, "image"), load_prompt("v1", "image"), replicate)
    finally:
        await clf.backend.aclose()


async def test_gemini_request_on_the_wire(fake_gemini: FakeGeminiServer, image: bytes) -> None:
    out = await _answer(_gemini(fake_gemini, temperature=0.7, seed=40), image, replicate=2)
    assert out.status == "ok" and out.verdict is not None
    assert out.verdict.label == default_label(image)
    assert out.attempts == 1 and out.finish_reason == "STOP"
    assert out.model_version == "fake-model-001" and out.response_id == "fake-1"
    assert out.usage["total_token_count"] == 360
    req = fake_gemini.requests[0]
    assert req["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"  # pinned version
    assert req["mime_type"] == "image/png" and req["temperature"] == 0.7
    assert req["seed"] == 42  # base seed + replicate
    schema = req["response_schema"]
    assert schema["property_ordering"] == ["findings", "rationale", "label", "confidence"]
    assert schema["properties"]["label"]["enum"] == ["benign", "malignant", "normal"]
    assert "breast radiologist" in req["system"]["parts"][0]["text"]


@pytest.mark.parametrize("script, status, attempts, reason", [
    (["429:0.2"], "ok", 2, None),
    (["500", "503"], "ok", 3, None),
    (["500"] * 5, "error", 5, "gave up after 5 attempt(s): HTTP 500"),
    (["400"], "error", 1, "not retryable after 1 attempt(s): HTTP 400"),
    (["blocked"], "abstain", 1, "prompt blocked: SAFETY"),
    (["safety"], "abstain", 1, "answer stopped: SAFETY"),
    (["max_tokens"], "abstain", 1, "answer truncated (MAX_TOKENS)"),
    (["empty"], "abstain", 1, "empty answer"),
    (["bad_json"], "ok", 2, "repaired: first answer not JSON"),
    (["bad_schema", "bad_schema"], "invalid", 2, "after one repair retry: does not match"),
    (["bad_json", "blocked"], "abstain", 2, "after repair request: prompt blocked"),
    (["slow:3"], "ok", 2, None),
    # A 200 body the SDK cannot parse: not an API error, yet only this answer fails.
    (["bad_body"], "error", 1,
     "not retryable after 1 attempt(s): unexpected ValidationError from the SDK"),
])
async def test_gemini_outcomes(fake_gemini: FakeGeminiServer, image: bytes, script: list[str],
                               status: str, attempts: int, reason: str | None) -> None:
    fake_gemini.script(*script)
    t0 = time.perf_counter()
    out = await _answer(_gemini(fake_gemini, request_timeout_s=1.0), image)
    assert (out.status, out.attempts) == (status, attempts), out.reason
    assert len(fake_gemini.requests) == attempts
    if reason:
        assert out.reason is not None and reason in out.reason
    if status == "ok":
        assert out.verdict is not None and out.verdict.label == default_label(image)
    else:
        assert out.verdict is None  # never mapped to a class
    if script == ["429:0.2"]:
        assert time.perf_counter() - t0 >= 0.2
    if status == "invalid":
        assert out.raw_text is not None and "probably benign" in out.raw_text
    if "bad_json" in script:  # the repair request shows the model its answer
        assert fake_gemini.requests[1]["turns"] == 3
        assert "could not be used" in fake_gemini.requests[1]["texts"][-1]


async def test_gemini_rejected_key_is_fatal(fake_gemini: FakeGeminiServer, image: bytes) -> None:
    fake_gemini.script("401")
    with pytest.raises(CallError) as info:
        await _answer(_gemini(fake_gemini), image)
    assert info.value.fatal and info.value.status == 401
    assert len(fake_gemini.requests) == 1  # no retries on a bad key
    # Google's answer to a wrong key is a 400 "API key not valid": fatal too, not per image.
    with pytest.raises(CallError) as info:
        await _answer(_gemini(fake_gemini, GEMINI_API_KEY=fake_gemini.rejected_key), image)
    assert info.value.fatal and "API key not valid" in str(info.value)
    assert len(fake_gemini.requests) == 1  # rejected before the handler records a request


@pytest.mark.parametrize("script, status, attempts, reason", [
    ([], "ok", 1, None),
    (["429:0.2", "500"], "ok", 3, None),
    (["safety"], "abstain", 1, "answer stopped: SAFETY"),
    (["max_tokens"], "abstain", 1, "MAX_TOKENS"),
    (["bad_schema", "bad_schema"], "invalid", 2, "after one repair retry"),
    (["bad_json"], "ok", 2, "repaired"),
])
async def test_openai_outcomes(fake_openai: FakeOpenAIServer, image: bytes, script: list[str],
                               status: str, attempts: int, reason: str | None) -> None:
    fake_openai.script(*script)
    out = await _answer(_openai(fake_openai, seed=7), image, replicate=1)
    assert (out.status, out.attempts) == (status, attempts), out.reason
    assert len(fake_openai.requests) == attempts
    if reason:
        assert out.reason is not None and reason in out.reason
    if status == "ok":
        assert out.verdict is not None and out.verdict.label == default_label(image)
    req = fake_openai.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["model"] == "local-vlm"
    assert req["seed"] == 8
    assert req["response_format"]["type"] == "json_schema"
    assert req["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"] == [
        "benign", "malignant", "normal"]


async def test_openai_unexpected_sdk_exception_fails_one_answer(
    fake_openai: FakeOpenAIServer, image: bytes, monkeypatch: pytest.MonkeyPatch,
) -> None:
    clf = _openai(fake_openai)

    async def broken(**kw: object) -> None:
        raise RuntimeError("sdk bug")

    monkeypatch.setattr(clf.backend._client.chat.completions,  # type: ignore[attr-defined]
                        "create", broken)
    out = await _answer(clf, image)
    assert (out.status, out.attempts, out.verdict) == ("error", 1, None)
    assert out.reason == ("not retryable after 1 attempt(s): unexpected RuntimeError from the "
                          "SDK: sdk bug")
