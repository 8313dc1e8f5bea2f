"""Settings of the LLM classifier (``SONOAUDIT_`` prefix); the API key comes from the provider's own
variables (``GEMINI_API_KEY`` / ``GOOGLE_API_KEY`` / ``OPENAI_API_KEY``) and is never logged."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

BackendName = Literal["gemini", "openai"]
BACKENDS: tuple[str, ...] = ("gemini", "openai")


class ClassifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SONOAUDIT_", extra="ignore")

    llm_backend: str = Field(default="gemini", description="gemini | openai")
    prompt_version: str = Field(default="v1", description="Prompt template set under prompts/.")
    prompt_dir: Path | None = Field(
        default=None, description="Extra folder of prompt versions ({version}-system.txt, ...).")

    # Gemini (google-genai)
    gemini_model: str = "gemini-2.5-flash"
    gemini_base_url: str | None = Field(default=None, description="Unset: Google's endpoint.")
    # Pinned: the SDK's default differs between releases (v1beta in 1.x, v1 in 3.x).
    gemini_api_version: str = "v1beta"
    gemini_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("GEMINI_API_KEY", "GOOGLE_API_KEY",
                                                    "SONOAUDIT_GEMINI_API_KEY"),
    )
    # Google's recommended default; below 1.0 Gemini 3 can loop (see docs/classifier.md).
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    seed: int | None = Field(default=0, description="Base seed; replicate r sends seed + r.")
    thinking_budget: int | None = Field(default=None, ge=-1)
    max_output_tokens: int = Field(default=8192, ge=64)
    gemini_batch_poll_s: float = Field(default=30.0, gt=0, description="Batch mode: poll interval.")

    # OpenAI-compatible (vLLM, Ollama, ...)
    openai_base_url: str | None = Field(default=None, description="e.g. http://localhost:8000/v1")
    openai_model: str | None = None
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "SONOAUDIT_OPENAI_API_KEY"),
    )

    # Reliability: the ONE retry layer (SDK retries are switched off).
    request_timeout_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, description="HTTP attempts per answer.")
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    max_server_delay_s: float = Field(
        default=300.0, gt=0, description="A server asking to wait longer than this is an error."
    )
    concurrency: int = Field(default=8, ge=1, description="In-flight calls per backend+model.")
    rate_limit_rpm: float | None = Field(
        default=60.0, gt=0, description="Calls per minute per backend+model; unset = no limit."
    )
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)

    def model_for(self, backend: str) -> str:
        if backend == "gemini":
            return self.gemini_model
        if backend == "openai":
            return self.openai_model or ""
        raise UnknownBackend(backend)

    def public_dict(self) -> dict[str, Any]:
        """Settings as stored with results: never the keys."""
        return self.model_dump(mode="json", exclude={"gemini_api_key", "openai_api_key"})


class UnknownBackend(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown LLM backend {name!r}; expected one of {', '.join(BACKENDS)}")
        self.name = name


class BackendNotConfigured(RuntimeError):
    """The backend cannot run at all (no key, no URL): said once, at the start of a batch."""


def backend_problem(settings: ClassifierSettings, backend: str | None = None) -> str | None:
    """Why ``backend`` cannot run, or None when it is configured. The pipeline reports this as
    "LLM not run: <reason>"."""
    name = backend or settings.llm_backend
    if name not in BACKENDS:
        return str(UnknownBackend(name))
    if name == "gemini":
        if settings.gemini_api_key is None or not settings.gemini_api_key.get_secret_value():
            return "no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY)"
        return None
    if not settings.openai_base_url:
        return "no OpenAI-compatible server: set SONOAUDIT_OPENAI_BASE_URL (e.g. http://localhost:8000/v1)"
    if not settings.openai_model:
        return "no model for the OpenAI-compatible server: set SONOAUDIT_OPENAI_MODEL"
    return None


def require_backend(settings: ClassifierSettings, backend: str | None = None) -> str:
    name = backend or settings.llm_backend
    if name not in BACKENDS:
        raise UnknownBackend(name)
    problem = backend_problem(settings, name)
    if problem:
        raise BackendNotConfigured(problem)
    return name
