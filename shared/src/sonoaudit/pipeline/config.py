"""The study configuration (YAML) of ``sonoaudit run-study``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sonoaudit.messages.payloads import Backbone, BetaSchedule, Prediction


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhantomConfig(_Cfg):
    n_per_class: int = Field(default=40, ge=2)
    size: int = Field(default=128, ge=32)
    seed: int = 0


class DataConfig(_Cfg):
    path: str | None = Field(default=None, description="Dataset folder; unset = built-in phantom.")
    phantom: PhantomConfig = PhantomConfig()


class TrainConfig(_Cfg):
    profile: Literal["quick", "paper"] = "quick"
    steps: int | None = Field(default=None, ge=1, description="Override the profile's steps.")
    seed: int = 0
    # None = the profile's (sonoaudit train --backbone/--schedule/--prediction)
    backbone: Backbone | None = None
    schedule: BetaSchedule | None = None
    prediction: Prediction | None = None

    def options(self) -> dict[str, str]:
        """The settings that override the profile's, as train_model / POST /train take them."""
        return {k: v for k in ("backbone", "schedule", "prediction")
                if (v := getattr(self, k)) is not None}


class GenerateConfig(_Cfg):
    n: int = Field(default=16, ge=1)
    sampler: Literal["ddpm", "ddim", "dpmpp"] = "ddim"
    steps: int | None = Field(default=50, ge=1)
    seed: int = 0


class MetricsConfig(_Cfg):
    enabled: bool = True


class ClassifyConfig(_Cfg):
    enabled: bool = True
    backend: str | None = Field(default=None, description="gemini | openai; unset = settings.")
    condition: Literal["image", "outline", "side_by_side"] = "image"
    replicates: int = Field(default=1, ge=1)


class SimulatedPanel(_Cfg):
    n_readers: int = Field(default=3, ge=1)
    accuracy: float = Field(default=0.8, ge=0, le=1)
    seed: int = 0


class StudyConfig(_Cfg):
    n_real_per_class: int = Field(default=10, ge=0)
    n_synthetic_per_class: int = Field(default=10, ge=0)
    readers: list[str] = Field(default_factory=list, description="Names of readers to invite.")
    base_url: str | None = Field(
        default=None, description="Address readers open the study at (reader links); unset = "
        "SONOAUDIT_RATERS_URL in distributed mode, http://127.0.0.1:8000 (`sonoaudit serve "
        "raters`) in embedded mode.")
    seed: int = 0
    n_repeats: int = Field(
        default=0, ge=0, description="Items shown twice to every reader (intra-reader agreement).")
    simulate_panel: SimulatedPanel | None = Field(
        default=None, description="Demo only: fill answers from a simulated panel (labelled).")


class ReportConfig(_Cfg):
    bootstrap: int = Field(default=2000, ge=100)
    seed: int = 0


ClassName = Literal["benign", "malignant", "normal"]


def _default_classes() -> list[ClassName]:
    return ["benign", "malignant"]


class RunConfig(_Cfg):
    name: str = Field(min_length=1, max_length=200)
    out_dir: str | None = Field(default=None, description="Default: ./runs/<name>.")
    classes: list[ClassName] = Field(default_factory=_default_classes, min_length=1)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    generate: GenerateConfig = GenerateConfig()
    metrics: MetricsConfig = MetricsConfig()
    classify: ClassifyConfig = ClassifyConfig()
    study: StudyConfig = StudyConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _unique_classes(self) -> RunConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes has duplicates: {self.classes}")
        return self

    def section(self, step: str) -> dict[str, Any]:
        return {
            "import": {"data": self.data.model_dump(), "classes": self.classes},
            "train": self.train.model_dump(),
            "generate": self.generate.model_dump(),
            "metrics": self.metrics.model_dump(),
            "classify": self.classify.model_dump(),
            "study": self.study.model_dump(),
            "agreement": self.report.model_dump(),
            "report": self.report.model_dump(),
        }[step]


BUNDLED = ("demo",)


def load_config(ref: str | Path, **overrides: Any) -> RunConfig:
    """Load a YAML file, or a bundled config by name (``demo``). Errors name the file and field."""
    ref_s = str(ref)
    if ref_s in BUNDLED:
        text = resources.files("sonoaudit.configs").joinpath(f"{ref_s}.yaml").read_text()
        origin = f"bundled config {ref_s!r}"
    else:
        path = Path(ref_s)
        if not path.is_file():
            raise ValueError(f"{path}: config file not found (or use a bundled one: {BUNDLED})")
        text = path.read_text()
        origin = str(path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{origin}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{origin}: expected a mapping at the top level")
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  - {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ValueError(f"{origin}: invalid config:\n" + "\n".join(lines)) from exc
