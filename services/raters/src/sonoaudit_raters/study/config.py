"""A study's configuration: its questions (with the defaults of the sonoaudit protocol), how
images are displayed, and which LLM answer is revealed. Stored as JSON in ``Study.config``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sonoaudit.messages.payloads import Condition

from sonoaudit_raters.study.errors import InvalidAnswer

# Stage "read": answered and locked before anything else is shown (no anchoring).
# Stage "llm": asked only after "read" is locked, next to the revealed LLM answer.
# Stage "extra": optional, submitted with the item's last step.
Stage = Literal["read", "llm", "extra"]
Kind = Literal["choice", "scale", "multi", "text"]


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=r"^[a-z][a-z0-9_]{0,30}$")
    kind: Kind
    prompt: str
    stage: Stage
    options: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # display text per option; defaults to the option itself
    min: int = 0
    max: int = 100
    step: int = 20
    required: bool = True
    max_length: int = 2000

    @model_validator(mode="after")
    def _check(self) -> Question:
        if self.kind in ("choice", "multi") and not self.options:
            raise ValueError(f"question {self.key!r}: a {self.kind} question needs options")
        if self.labels and len(self.labels) != len(self.options):
            raise ValueError(f"question {self.key!r}: labels must match options one to one")
        if self.kind == "scale" and (
            self.step <= 0 or self.max <= self.min or (self.max - self.min) % self.step
        ):
            raise ValueError(
                f"question {self.key!r}: scale needs min < max and (max - min) divisible by step"
            )
        if self.stage != "extra" and self.kind in ("multi", "text") and self.required:
            raise ValueError(f"question {self.key!r}: multi/text questions must be optional extras")
        return self

    @property
    def allowed(self) -> tuple[str, ...]:
        if self.kind == "scale":
            return tuple(str(v) for v in range(self.min, self.max + 1, self.step))
        return self.options

    def option_labels(self) -> list[tuple[str, str]]:
        labels = self.labels or self.allowed
        return list(zip(self.allowed, labels, strict=True))

    def clean(self, raw: str | list[str] | None) -> str | None:
        """The stored form of an answer, or None when left empty; InvalidAnswer when not allowed."""
        if self.kind == "multi":
            values = [raw] if isinstance(raw, str) else list(raw or [])
            values = sorted({v.strip() for v in values if v and v.strip()})
            bad = [v for v in values if v not in self.options]
            if bad:
                raise InvalidAnswer(
                    f"{self.key}: {bad} not allowed; expected any of {list(self.options)}",
                    field=self.key,
                )
            return ";".join(values) if values else None
        if isinstance(raw, list):
            if len(raw) > 1:
                raise InvalidAnswer(f"{self.key}: expected one value, got {raw}", field=self.key)
            raw = raw[0] if raw else None
        value = (raw or "").strip()
        if not value:
            return None
        if self.kind == "text":
            if len(value) > self.max_length:
                raise InvalidAnswer(
                    f"{self.key}: text longer than {self.max_length} characters", field=self.key
                )
            return value
        if value not in self.allowed:
            raise InvalidAnswer(
                f"{self.key}: {value!r} not allowed; expected one of {list(self.allowed)}",
                field=self.key,
            )
        return value


def default_questions() -> list[Question]:
    return [
        Question(key="class", kind="choice", stage="read",
                 prompt="What is the class of this image?",
                 options=("benign", "malignant", "normal"),
                 labels=("Benign", "Malignant", "Normal")),
        Question(key="confidence", kind="scale", stage="read",
                 prompt="How confident are you in the annotation quality of this image?",
                 min=0, max=100, step=20),
        Question(key="llm_match", kind="choice", stage="llm",
                 prompt="Does the LLM's interpretation match yours?",
                 options=("agree", "partly", "disagree"),
                 labels=("Agree", "Partly", "Disagree")),
        Question(key="flag", kind="multi", stage="extra", required=False,
                 prompt="Flag this image (optional)",
                 options=("artefact", "implausible_anatomy", "mask_wrong"),
                 labels=("Artefact", "Implausible anatomy", "Mask wrong")),
        Question(key="comment", kind="text", stage="extra", required=False,
                 prompt="Comment (optional)"),
    ]


class DisplayConfig(BaseModel):
    """How images reach readers. Real and synthetic images differ in size; showing both at one
    square size (as the generator's training data was prepared) keeps size from revealing the
    source. ``fit="none"`` shows pixels as stored."""

    model_config = ConfigDict(extra="forbid")

    size: int | None = Field(default=256, ge=32, le=2048)
    fit: Literal["stretch", "letterbox", "none"] = "stretch"


class LLMFilter(BaseModel):
    """Which stored LLM answer to reveal when an image has several (latest matching 'ok' wins)."""

    model_config = ConfigDict(extra="forbid")

    backend: str | None = None
    model: str | None = None
    prompt_version: str | None = None
    # The classifier's condition names (shared with its job payload): a name it never stores
    # would match nothing and readers would silently never see the LLM answer.
    condition: Condition | None = None


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    questions: list[Question] = Field(default_factory=default_questions)
    display: DisplayConfig = Field(default_factory=DisplayConfig)
    llm: LLMFilter = Field(default_factory=LLMFilter)
    n_repeats: int = Field(default=0, ge=0)
    min_repeat_gap: int = Field(default=5, ge=1)
    seed_scope: Literal["study+reader"] = "study+reader"

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        keys = [q.key for q in self.questions]
        if len(keys) != len(set(keys)):
            raise ValueError(f"question keys must be unique, got {keys}")
        if not any(q.stage == "read" and q.required for q in self.questions):
            raise ValueError("a study needs at least one required 'read' question")
        return self

    def stage(self, stage: Stage) -> list[Question]:
        return [q for q in self.questions if q.stage == stage]

    def question(self, key: str) -> Question | None:
        return next((q for q in self.questions if q.key == key), None)
