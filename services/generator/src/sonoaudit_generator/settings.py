"""Settings of the generator service (``SONOAUDIT_`` prefix)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GeneratorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SONOAUDIT_GENERATOR_", extra="ignore")

    max_n: int = Field(default=1000, ge=1, description="Largest n one request may ask for.")
    sync_max_n: int = Field(default=4, ge=0, description="n up to this is answered inline.")
    batch_size: int = Field(default=16, ge=1, description="Samples per batch (halved on OOM).")
    backend: Literal["torch", "onnx"] = "torch"
    heartbeat_s: float = Field(default=2.0, gt=0, description="JetStream in_progress interval.")
    threads: int | None = Field(
        default=None, ge=1,
        description="torch CPU threads for sampling (unset: torch's default, one per core). "
                    "On a machine shared with other busy processes 1 is often much faster: "
                    "OpenMP threads spin-wait on oversubscribed cores.")

    def apply_threads(self) -> None:
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
