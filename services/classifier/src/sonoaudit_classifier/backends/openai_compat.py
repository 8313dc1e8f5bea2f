"""OpenAI-compatible chat completions (vLLM, Ollama, ...): image part + JSON-schema response
format, so images can stay inside the hospital. One attempt per call (``max_retries=0``)."""

from __future__ import annotations

import base64
from typing import Any

import openai

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
from sonoaudit_classifier.verdict import verdict_json_schema

_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY"}


class OpenAICompatBackend:
    name = "openai"

    def __init__(self, settings: ClassifierSettings) -> None:
        assert settings.openai_base_url and settings.openai_model
        self.settings = settings
        self.model = settings.openai_model
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "EMPTY"
        self._client = openai.AsyncOpenAI(
            base_url=settings.openai_base_url, api_key=key,
            max_retries=0,  # our retry layer is the only one
            timeout=settings.request_timeout_s,
        )

    def request_settings(self) -> dict[str, Any]:
        s = self.settings
        return {
            "backend": self.name, "model": self.model, "base_url": s.openai_base_url,
            "temperature": s.temperature, "seed_base": s.seed,
            "max_tokens": s.max_output_tokens, "timeout_s": s.request_timeout_s,
            "response_format": "json_schema:Verdict",
        }

    async def generate(self, inp: ModelInput, prompt: Prompt, *, seed: int | None,
                       repair: tuple[str, str] | None = None) -> RawAnswer:
        data_url = f"data:{inp.mime_type};base64,{base64.b64encode(inp.data).decode('ascii')}"
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url}},
                {"type": "text", "text": prompt.task},
            ]},
        ]
        if repair is not None:
            previous, problem = repair
            messages.append({"role": "assistant", "content": previous})
            messages.append({"role": "user", "content": prompt.repair(previous, problem)})
        kwargs: dict[str, Any] = {
            "model": self.model, "messages": messages,
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_output_tokens,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "Verdict", "strict": True, "schema": verdict_json_schema()}},
        }
        if seed is not None:
            kwargs["seed"] = seed
        try:
            resp = await self._client.chat.completions.create(**kwargs)
        except openai.APIStatusError as exc:
            delay = parse_duration_s(exc.response.headers.get("retry-after"))
            raise classify_status(exc.status_code, exc.message, delay) from exc
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise CallError(f"transport: {type(exc).__name__}: {exc}", retryable=True) from exc
        except Exception as exc:
            if is_transient_transport_error(exc):
                raise CallError(f"transport: {type(exc).__name__}: {exc}", retryable=True) from exc
            # Anything else the SDK raises (a 200 body it cannot parse, a bug) fails this
            # answer only, with the reason; never the batch.
            raise CallError(f"unexpected {type(exc).__name__} from the SDK: {exc}"[:2000]
                            ) from exc
        raw = resp.model_dump(mode="json", exclude_none=True)
        usage = resp.usage.model_dump(mode="json", exclude_none=True) if resp.usage else {}
        if not resp.choices:
            return RawAnswer(text=None, finish_reason="NO_CHOICES", response_id=resp.id,
                             model_version=resp.model, usage=usage, raw=raw)
        choice = resp.choices[0]
        finish = _FINISH.get(str(choice.finish_reason), str(choice.finish_reason).upper())
        return RawAnswer(
            text=choice.message.content, finish_reason=finish,
            refusal=getattr(choice.message, "refusal", None),
            response_id=resp.id, model_version=resp.model, usage=usage, raw=raw,
        )

    async def aclose(self) -> None:
        await self._client.close()
