"""Settings of the reader study (``SONOAUDIT_STUDY_`` prefix), read when the router is built."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class StudySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SONOAUDIT_STUDY_", extra="ignore")

    creator_token: SecretStr | None = Field(
        default=None,
        description="Bearer token allowed to create studies over HTTP; unset = only the CLI "
                    "and the in-process API can create studies.",
    )
