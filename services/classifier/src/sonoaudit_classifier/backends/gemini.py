"""Gemini through the real google-genai SDK (async client), one attempt per call."""

from __future__ import annotations

import re
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from sonoaudit_classifier.backends.base import (
    CallError,
    RawAnswer,
    classify_status,
    parse_duration_s,
)
from sonoaudit_classifier.backends.transport import is_transient_transport_error
from sonoaudit_classifier.conditions import ModelInput
from sonoaudit_classifier.prompts import Prompt
from sonoaudit_classifier.settings import ClassifierSettings
from sonoaudit_classifier.verdict import Verdict

_RETRY_IN = re.compile(r"retry in ([0-9.]+)\s*s", re.IGNORECASE)


def _enum_value(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value)).upper()


def _find_retry_delay(details: Any) -> float | None:
    """``google.rpc.RetryInfo.retryDelay`` anywhere in the error JSON."""
    if isinstance(details, dict):
        if "retryDelay" in details:
            return parse_duration_s(details["retryDelay"])
        for v in details.values():
            found = _find_retry_delay(v)
            if found is not None:
                return found
    elif isinstance(details, list):
        for v in details:
            found = _find_retry_delay(v)
            if found is not None:
                return found
    return None


def retry_delay_of(exc: genai_errors.APIError) -> float | None:
    delay = _find_retry_delay(exc.details)
    if delay is None:
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        delay = parse_duration_s(headers.get("retry-after"))
    if delay is None and exc.message:
        m = _RETRY_IN.search(exc.message)
        delay = float(m.group(1)) if m else None
    return delay


class GeminiBackend:
    name = "gemini"

    def __init__(self, settings: ClassifierSettings) -> None:
        assert settings.gemini_api_key is not None
        self.settings = settings
        self.model = settings.gemini_model
        self._client = genai.Client(
            api_key=settings.gemini_api_key.get_secret_value(),
            http_options=types.HttpOptions(
                base_url=settings.gemini_base_url,
                api_version=settings.gemini_api_version,
                timeout=int(settings.request_timeout_s * 1000),  # milliseconds
                # attempts=1 switches off the SDK's own retries, including its hidden
                # connection-error retry: our retry layer is the only one.
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )
        self._schema: Any = Verdict
        try:
            # Convert the pydantic schema once, and hand it over as a plain dict: the SDK
            # otherwise re-converts it and deep-copies a tree of pydantic objects on every call
            # (about half of its CPU per request). Private helper, hence the fallback.
            from google.genai import _transformers

            converted = _transformers.t_schema(self._client._api_client, Verdict)
            if converted is not None:
                self._schema = converted.model_dump(mode="json", exclude_none=True)
        except Exception:  # pragma: no cover - SDK layout changed: convert per call
            self._schema = Verdict

    def request_settings(self) -> dict[str, Any]:
        s = self.settings
        return {
            "backend": self.name, "model": self.model, "base_url": s.gemini_base_url,
            "api_version": s.gemini_api_version, "temperature": s.temperature,
            "seed_base": s.seed, "thinking_budget": s.thinking_budget,
            "max_output_tokens": s.max_output_tokens, "timeout_s": s.request_timeout_s,
            "response_mime_type": "application/json", "response_schema": "Verdict",
        }

    def _config(self, prompt: Prompt, seed: int | None) -> types.GenerateContentConfig:
        s = self.settings
        thinking = (types.ThinkingConfig(thinking_budget=s.thinking_budget)
                    if s.thinking_budget is not None else None)
        return types.GenerateContentConfig(
            system_instruction=prompt.system,
            temperature=s.temperature,
            seed=seed,
            max_output_tokens=s.max_output_tokens,
            response_mime_type="application/json",
            response_schema=self._schema,
            thinking_config=thinking,
        )

    def _contents(self, inp: ModelInput, prompt: Prompt) -> list[types.Content]:
        return [types.Content(role="user", parts=[
            types.Part.from_bytes(data=inp.data, mime_type=inp.mime_type),
            types.Part.from_text(text=prompt.task),
        ])]

    def inline_request(self, inp: ModelInput, prompt: Prompt, seed: int | None,
                       key: str) -> types.InlinedRequest:
        """The same request as :meth:`generate`, for a Gemini batch job, tagged with ``key``."""
        return types.InlinedRequest(contents=self._contents(inp, prompt),
                                    config=self._config(prompt, seed), metadata={"key": key})

    @property
    def batches(self) -> Any:
        """The SDK's async batch API (``client.aio.batches``)."""
        return self._client.aio.batches

    def answer_of(self, resp: types.GenerateContentResponse) -> RawAnswer:
        return self._answer(resp)

    async def generate(self, inp: ModelInput, prompt: Prompt, *, seed: int | None,
                       repair: tuple[str, str] | None = None) -> RawAnswer:
        contents = self._contents(inp, prompt)
        if repair is not None:
            previous, problem = repair
            contents.append(types.Content(role="model",
                                          parts=[types.Part.from_text(text=previous)]))
            contents.append(types.Content(role="user", parts=[
                types.Part.from_text(text=prompt.repair(previous, problem))]))
        try:
            resp = await self._client.aio.models.generate_content(
                model=self.model, contents=contents, config=self._config(prompt, seed))
        except genai_errors.APIError as exc:
            raise classify_status(exc.code, exc.message or str(exc), retry_delay_of(exc)) from exc
        except genai_errors.UnknownApiResponseError as exc:  # non-JSON body, e.g. a proxy page
            raise CallError(f"unreadable response: {exc}", retryable=True) from exc
        except Exception as exc:
            if is_transient_transport_error(exc):
                raise CallError(f"transport: {type(exc).__name__}: {exc}", retryable=True) from exc
            # Anything else the SDK raises (a 200 body it cannot parse, a bug) fails this
            # answer only, with the reason; never the batch.
            raise CallError(f"unexpected {type(exc).__name__} from the SDK: {exc}"[:2000]
                            ) from exc
        return self._answer(resp)

    def _answer(self, resp: types.GenerateContentResponse) -> RawAnswer:
        raw = resp.model_dump(mode="json", exclude_none=True, exclude={
            "sdk_http_response", "parsed", "automatic_function_calling_history"})
        usage = (resp.usage_metadata.model_dump(mode="json", exclude_none=True)
                 if resp.usage_metadata else {})
        block = (_enum_value(resp.prompt_feedback.block_reason)
                 if resp.prompt_feedback is not None else None)
        finish: str | None = None
        text: str | None = None
        if resp.candidates:
            cand = resp.candidates[0]
            finish = _enum_value(cand.finish_reason)
            if cand.content is not None and cand.content.parts:
                # Own extraction (not resp.text): skip thought parts, join text parts.
                text = "".join(p.text for p in cand.content.parts
                               if p.text is not None and not p.thought) or None
        return RawAnswer(
            text=text, finish_reason=finish, block_reason=block,
            response_id=resp.response_id, model_version=resp.model_version,
            usage=usage, raw=raw,
        )

    async def aclose(self) -> None:
        await self._client.aio.aclose()
