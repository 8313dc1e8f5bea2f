"""Pure logic: answer validation, prompt hashing, condition rendering, backoff, rate limit."""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sonoaudit_classifier.backends.base import CallError
from sonoaudit_classifier.conditions import SIDE_GAP_PX, BadImage, render
from sonoaudit_classifier.prompts import UnknownPrompt, load_prompt
from sonoaudit_classifier.ratelimit import ModelLimiter
from sonoaudit_classifier.retry import CallStats, RetriesExhausted, RetryPolicy, call_with_retries
from sonoaudit_classifier.settings import ClassifierSettings, backend_problem
from sonoaudit_classifier.testing.fake_servers import verdict_for
from sonoaudit_classifier.verdict import InvalidAnswer, parse_verdict


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_parse_valid_and_fenced() -> None:
    text = json.dumps(verdict_for("malignant"))
    assert parse_verdict(text).label == "malignant"
    assert parse_verdict(f"```json\n{text}\n```").confidence == 80


@pytest.mark.parametrize("text, fragment", [
    ("", "empty answer"),
    ('{"label": "benign"', "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({**verdict_for("benign"), "label": "cancer"}), "label"),
    (json.dumps({**verdict_for("benign"), "confidence": 87.5}), "confidence"),
    (json.dumps({**verdict_for("benign"), "confidence": 101}), "confidence"),
    (json.dumps({k: v for k, v in verdict_for("benign").items() if k != "findings"}), "findings"),
])
def test_parse_rejects(text: str, fragment: str) -> None:
    with pytest.raises(InvalidAnswer, match=fragment):
        parse_verdict(text)


def test_prompt_hash_is_stable_and_differs_per_condition() -> None:
    a, b = load_prompt("v1", "image"), load_prompt("v1", "image")
    assert a.hash == b.hash and len(a.hash) == 64
    assert a.hash != load_prompt("v1", "outline").hash
    # Findings are asked before the label.
    assert a.task.index("BI-RADS") < a.task.index('"malignant"')
    with pytest.raises(UnknownPrompt, match="condition"):
        load_prompt("v1", "with_report")
    with pytest.raises(UnknownPrompt, match="not found"):
        load_prompt("v999", "image")


def test_conditions_come_from_the_message_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classifier's list is the bus payload's ``Condition`` type, so the two cannot drift:
    a condition added to the type is accepted by a freshly loaded prompts module."""
    import importlib.util
    import sys
    from typing import Literal, get_args

    import sonoaudit.messages.payloads as payloads
    import sonoaudit_classifier.prompts as prompts

    assert prompts.CONDITIONS == get_args(payloads.Condition) == (
        "image", "outline", "side_by_side")
    for c in prompts.CONDITIONS:  # every condition of the type has its prompt text
        assert load_prompt("v1", c).condition == c
    monkeypatch.setattr(payloads, "Condition",
                        Literal["image", "outline", "side_by_side", "with_report"])
    assert prompts.__file__ is not None
    spec = importlib.util.spec_from_file_location("prompts_copy", prompts.__file__)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    # under its own name (dataclasses look their module up), removed again after the test
    monkeypatch.setitem(sys.modules, "prompts_copy", copy)
    spec.loader.exec_module(copy)
    assert copy.CONDITIONS == ("image", "outline", "side_by_side", "with_report")
    with pytest.raises(copy.UnknownPrompt, match="not found"):  # known now, no prompt file yet
        copy.load_prompt("v1", "with_report")


def test_render_image_keeps_bytes_and_outline_marks_boundary() -> None:
    img = np.full((10, 12), 100, dtype=np.uint8)
    data = _png(img)
    assert render(data, "image").data == data
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:8, 3:9] = 255  # 6x6 square
    out = np.asarray(Image.open(io.BytesIO(render(data, "outline", _png(mask)).data)))
    green = (out[..., 0] == 0) & (out[..., 1] == 255) & (out[..., 2] == 0)
    # A 2-px inner ring of a 6x6 square: 36 - 2x2 interior = 32 pixels, all inside the square.
    assert green.sum() == 32
    assert not green[~(mask > 0)].any()
    side = np.asarray(Image.open(io.BytesIO(render(data, "side_by_side", _png(mask)).data)))
    assert side.shape == (10, 2 * 12 + SIDE_GAP_PX, 3)
    assert (side[:, 12 + SIDE_GAP_PX:, 0] > 0).sum() == 36
    assert (side[:, :12, 0] == 100).all()


def test_render_errors_name_the_problem() -> None:
    with pytest.raises(BadImage, match="image: not a readable image"):
        render(b"not an image", "image")
    data = _png(np.zeros((10, 12), dtype=np.uint8))
    with pytest.raises(BadImage, match="needs the image's mask"):
        render(data, "outline", None)
    with pytest.raises(BadImage, match="does not match"):
        render(data, "outline", _png(np.zeros((5, 5), dtype=np.uint8)))


def test_unreadable_image_reasons_carry_no_buffer_repr() -> None:
    """PIL's "cannot identify image file <_io.BytesIO object at 0x…>" is replaced by words."""
    with pytest.raises(BadImage) as err:
        render(b"hello, not an image", "image")
    assert str(err.value) == ("image: not a readable image (not an image format Pillow "
                              "recognises; expected PNG, JPEG or WebP)")
    data = _png(np.zeros((40, 40), dtype=np.uint8))
    with pytest.raises(BadImage) as err:
        render(data, "outline", b"garbage")
    assert str(err.value).startswith("mask: not a readable image (not an image format")
    truncated = _png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(BadImage) as err:
        render(truncated[: len(truncated) // 2], "image")
    reason = str(err.value)
    assert reason.startswith("image: not a readable image (") and "truncated" in reason.lower()
    assert "BytesIO" not in reason and "0x" not in reason


def test_masks_are_read_and_refused_by_the_dataset_reader_rules() -> None:
    from sonoaudit.datasets.imageio import MASK_NONBINARY_TOLERANCE

    img = np.full((20, 20), 100, dtype=np.uint8)
    data = _png(img)
    square = np.zeros((20, 20), dtype=np.uint8)
    square[5:15, 5:15] = 255
    want = render(data, "outline", _png(square)).data
    # the same lesion stored as 0/1, or drawn in red, is the same lesion (as the reader says)
    assert render(data, "outline", _png((square > 0).astype(np.uint8))).data == want
    red = np.zeros((20, 20, 3), dtype=np.uint8)
    red[..., 0] = square
    assert render(data, "outline", _png(red)).data == want
    # 4 of 400 pixels grey = 1.0%: at the tolerance, accepted; 5 = 1.25%: refused
    assert MASK_NONBINARY_TOLERANCE == 0.01
    soft = square.copy()
    soft[0, :4] = 128
    render(data, "outline", _png(soft))
    soft[0, 4] = 128
    with pytest.raises(BadImage) as err:
        render(data, "side_by_side", _png(soft))
    assert str(err.value) == ("mask: mask is not binary: 1.2% of pixels are neither black nor "
                              "white (tolerance 1%); re-export it as a black/white PNG")


def test_decompression_bomb_is_a_bad_image(monkeypatch: pytest.MonkeyPatch) -> None:
    # PIL raises DecompressionBombError (an Exception, not an OSError) above 2 x MAX_IMAGE_PIXELS.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    data = _png(np.zeros((10, 12), dtype=np.uint8))  # 120 pixels > 100
    with pytest.raises(BadImage, match="image: too many pixels.*decompression bomb"):
        render(data, "image")
    with pytest.raises(BadImage, match="mask: too many pixels"):
        render(_png(np.zeros((7, 7), dtype=np.uint8)), "outline", data)


def test_backoff_is_exponential_with_bounded_jitter() -> None:
    p = RetryPolicy(initial_s=1.0, max_s=8.0, rng=random.Random(1))
    for attempt, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0)]:
        delays = [p.backoff(attempt) for _ in range(200)]
        assert min(delays) >= step / 2 and max(delays) <= step
        assert max(delays) - min(delays) > step / 4  # really jittered


def test_no_key_is_reported_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "SONOAUDIT_GEMINI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    s = ClassifierSettings()
    assert "GEMINI_API_KEY" in (backend_problem(s) or "")
    assert "SONOAUDIT_OPENAI_BASE_URL" in (backend_problem(s, "openai") or "")
    assert "unknown LLM backend 'claude'" in (backend_problem(s, "claude") or "")
    monkeypatch.setenv("GOOGLE_API_KEY", "secret-value")
    s = ClassifierSettings()
    assert backend_problem(s) is None
    assert "secret-value" not in repr(s) and "secret-value" not in json.dumps(s.public_dict())


async def test_retry_honours_server_delay_and_counts_attempts() -> None:
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(time.perf_counter())
        if len(calls) == 1:
            raise CallError("429", status=429, retryable=True, retry_after_s=0.3)
        if len(calls) == 2:
            raise CallError("503", status=503, retryable=True)
        return "done"

    stats = CallStats()
    policy = RetryPolicy(max_attempts=5, initial_s=0.01, max_s=0.02)
    assert await call_with_retries(flaky, policy, ModelLimiter(2, None), stats) == "done"
    assert stats.attempts == 3
    assert calls[1] - calls[0] >= 0.3  # waited at least what the server asked

    async def bad_request() -> str:
        raise CallError("400", status=400)

    stats = CallStats()
    with pytest.raises(RetriesExhausted, match="not retryable after 1"):
        await call_with_retries(bad_request, policy, ModelLimiter(2, None), stats)
    assert stats.attempts == 1


async def test_rate_limit_spaces_call_starts() -> None:
    limiter = ModelLimiter(concurrency=10, rpm=600)  # one start per 0.1 s
    starts: list[float] = []

    async def one() -> None:
        async with limiter.slot():
            starts.append(asyncio.get_running_loop().time())

    await asyncio.gather(*(one() for _ in range(6)))
    # Start k is scheduled 0.1 s * k after the first; a loaded machine may wake a task late
    # (so one gap shrinks after a late one), but never early.
    offsets = np.array(sorted(starts)) - min(starts)
    assert (offsets >= np.arange(6) * 0.1 - 0.005).all(), offsets


async def test_concurrency_limit_caps_in_flight() -> None:
    limiter = ModelLimiter(concurrency=3, rpm=None)
    live, peak = 0, 0

    async def one() -> None:
        nonlocal live, peak
        async with limiter.slot():
            live += 1
            peak = max(peak, live)
            await asyncio.sleep(0.02)
            live -= 1

    await asyncio.gather(*(one() for _ in range(12)))
    assert peak == 3


# Fleiss (1971) worked example as printed in Wikipedia's "Fleiss' kappa" article: 10 subjects,
# 14 raters, 5 categories; P-bar = 0.378, P_e = 0.213, kappa = 0.210.
FLEISS_EXAMPLE = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_matches_published_example_and_statsmodels() -> None:
    from sonoaudit_classifier.consistency import fleiss_kappa
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

    assert fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(0.2099, abs=5e-4)
    rng = np.random.default_rng(5)
    for _ in range(5):
        raters = rng.integers(2, 8)
        table = np.array([rng.multinomial(raters, [0.5, 0.3, 0.2]) for _ in range(30)])
        assert fleiss_kappa(table.tolist()) == pytest.approx(sm_fleiss(table), abs=1e-12)
    assert fleiss_kappa([[3, 0, 0], [3, 0, 0]]) is None  # one label throughout: undefined
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[2, 0, 0], [1, 0, 0]])


def test_self_agreement_groups_and_excludes_unlabelled() -> None:
    from types import SimpleNamespace

    from sonoaudit_classifier.consistency import self_agreement

    def rows(sha: str, labels: list[str | None], condition: str = "image") -> list[Any]:
        return [SimpleNamespace(image_sha256=sha, backend="gemini", model="m",
                                prompt_version="v1", condition=condition, replicate=i,
                                status="ok" if lab else "abstain", label=lab)
                for i, lab in enumerate(labels)]

    answers = [*rows("a", ["benign"] * 3), *rows("b", ["benign", "benign", "malignant"]),
               *rows("c", ["normal", "malignant", "benign"]),
               *rows("d", ["benign", None, "benign"]),
               *rows("e", ["normal"], condition="outline")]  # one replicate: no agreement
    [g] = self_agreement(answers)
    assert (g["condition"], g["replicates"], g["n_images"], g["excluded"]) == ("image", 3, 3, 1)
    # By hand: counts (benign, malignant, normal) a=(3,0,0) b=(2,1,0) c=(1,1,1);
    # P_i = 1, 1/3, 0 -> P-bar = 4/9 = 36/81; p = (6/9, 2/9, 1/9) -> P_e = 41/81;
    # kappa = (36 - 41) / (81 - 41) = -1/8 (worse than chance).
    assert g["fleiss_kappa"] == pytest.approx(-1 / 8)
    assert g["pairwise_agreement"] == pytest.approx(4 / 9)
    assert g["unanimous"] == pytest.approx(1 / 3)
    [same] = self_agreement(rows("a", ["benign"] * 2) + rows("b", ["benign"] * 2))
    assert same["fleiss_kappa"] is None and "same label" in same["kappa_reason"]


def test_user_prompt_versions(tmp_path: Any) -> None:
    from pathlib import Path

    packaged = Path(__file__).parents[2] / "services/classifier/src/sonoaudit_classifier/prompts"
    for f in packaged.glob("v1-*.txt"):
        (tmp_path / f.name.replace("v1-", "v2-")).write_text(f.read_text())
    (tmp_path / "v2-system.txt").write_text("You are a sonographer.")
    v1, v2 = load_prompt("v1", "image", tmp_path), load_prompt("v2", "image", tmp_path)
    assert v2.version == "v2" and v2.system == "You are a sonographer." and v2.task == v1.task
    assert v2.hash != v1.hash
    with pytest.raises(UnknownPrompt, match="not found"):
        load_prompt("v2", "image")  # without the folder
    (tmp_path / "v1-system.txt").write_text("shadow")
    with pytest.raises(UnknownPrompt, match="shipped with sonoaudit"):
        load_prompt("v1", "image", tmp_path)
    (tmp_path / "v2-task.txt").write_text("Look at $condition_txt")
    with pytest.raises(UnknownPrompt, match="bad template placeholder"):
        load_prompt("v2", "image", tmp_path)
