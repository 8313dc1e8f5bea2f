"""LLM backends: Gemini (google-genai) and OpenAI-compatible servers (vLLM, Ollama)."""

from __future__ import annotations

from sonoaudit_classifier.backends.base import Backend, CallError, RawAnswer
from sonoaudit_classifier.settings import ClassifierSettings, require_backend


def make_backend(settings: ClassifierSettings, name: str | None = None) -> Backend:
    """Build the backend ``name`` (default: settings.llm_backend); raises UnknownBackend or
    BackendNotConfigured before any call is made."""
    backend = require_backend(settings, name)
    if backend == "gemini":
        from sonoaudit_classifier.backends.gemini import GeminiBackend

        return GeminiBackend(settings)
    from sonoaudit_classifier.backends.openai_compat import OpenAICompatBackend

    return OpenAICompatBackend(settings)


__all__ = ["Backend", "CallError", "RawAnswer", "make_backend"]
