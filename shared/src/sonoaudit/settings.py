"""Settings shared by every service and the CLI.

Built on demand (``get_settings()``), never at import time, so tests and app factories can set the
environment first. Every variable is prefixed ``SONOAUDIT_``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    return Path.home() / ".sonoaudit"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SONOAUDIT_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="Root for local state.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Unset: embedded SQLite under home.",
    )
    nats_url: str | None = Field(default=None, description="NATS server URL; unset = embedded.")
    store_dir: Path | None = Field(default=None, description="Content-addressed image store.")
    nats_connect_attempts: int = Field(default=30, ge=1)
    nats_connect_wait_s: float = Field(default=1.0, gt=0)
    nats_duplicate_window_s: float = Field(default=600.0, gt=0)
    nats_max_deliver: int = Field(default=5, ge=1)
    nats_ack_wait_s: float = Field(default=30.0, gt=0)
    # Messages in flight per consumer across all replicas: keep it >= the replicas that should
    # work at once (deploy/k8s HPA maxReplicas), or the extra replicas sit idle.
    nats_max_ack_pending: int = Field(default=16, ge=1)
    db_connect_attempts: int = Field(default=30, ge=1)
    db_connect_wait_s: float = Field(default=1.0, gt=0)
    # Where the distributed pipeline (``sonoaudit run-study`` with NATS + Postgres) reaches the
    # services; the defaults are docker-compose's published ports.
    generator_url: str = Field(default="http://127.0.0.1:8001", description="Generator base URL.")
    metrics_url: str = Field(default="http://127.0.0.1:8002", description="Metrics base URL.")
    classifier_url: str = Field(default="http://127.0.0.1:8003",
                                description="Classifier base URL.")
    raters_url: str = Field(default="http://127.0.0.1:8004", description="Raters base URL.")
    job_poll_s: float = Field(default=1.0, gt=0, description="Pipeline job polling interval.")
    job_timeout_s: float = Field(default=24 * 3600.0, gt=0,
                                 description="Longest the pipeline waits for one job.")
    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _driver(cls, v: str | None) -> str | None:
        # Plain postgres URLs would pick psycopg2, which we do not install.
        if v and v.startswith(("postgres://", "postgresql://")):
            return "postgresql+psycopg://" + v.split("://", 1)[1]
        return v

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'sonoaudit.db').as_posix()}"

    @property
    def resolved_store_dir(self) -> Path:
        return self.store_dir if self.store_dir is not None else self.home / "store"

    @property
    def distributed(self) -> bool:
        """Distributed mode when both the bus and a server database are configured."""
        return bool(self.nats_url and self.database_url)


@lru_cache
def get_settings() -> Settings:
    return Settings()
