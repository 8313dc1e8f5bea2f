"""The answer we ask for, and our own validation of the model's text.

Field order is the order the model writes in: descriptors first, then the rationale, then the
label, so the model describes before it commits (Gemini keeps pydantic order as
``property_ordering``)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

LABELS: tuple[str, ...] = ("benign", "malignant", "normal")
Label = Literal["benign", "malignant", "normal"]


class Findings(BaseModel):
    """BI-RADS ultrasound lexicon descriptors (ACR BI-RADS Atlas, 5th ed.)."""

    model_config = ConfigDict(extra="forbid")

    shape: Literal["oval", "round", "irregular", "no_mass"]
    orientation: Literal["parallel", "not_parallel", "no_mass"]
    margin: Literal["circumscribed", "indistinct", "angular", "microlobulated", "spiculated",
                    "no_mass"]
    echo_pattern: Literal["anechoic", "hyperechoic", "complex_cystic_solid", "hypoechoic",
                          "isoechoic", "heterogeneous", "no_mass"]
    posterior_features: Literal["none", "enhancement", "shadowing", "combined", "no_mass"]


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    findings: Findings
    rationale: str = Field(min_length=1, max_length=4000)
    label: Label
    confidence: int = Field(ge=0, le=100, description="Self-reported, uncalibrated, 0-100.")


class InvalidAnswer(ValueError):
    """The model's text is not a valid :class:`Verdict`; the message says what is wrong."""


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_verdict(text: str | None) -> Verdict:
    """Validate the raw text ourselves: the SDK's parsed result can be silently empty."""
    if text is None or not text.strip():
        raise InvalidAnswer("empty answer")
    body = text
    m = _FENCE.match(body)
    if m:  # some OpenAI-compatible servers wrap JSON in a code fence despite the schema
        body = m.group(1)
    try:
        data: Any = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"not JSON: {exc.msg} at char {exc.pos}") from exc
    if not isinstance(data, dict):
        raise InvalidAnswer(f"expected a JSON object, got {type(data).__name__}")
    try:
        return Verdict.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidAnswer(f"does not match the schema: {problems}") from exc


def verdict_json_schema() -> dict[str, Any]:
    """JSON Schema of the answer (for OpenAI-compatible ``response_format``)."""
    schema = Verdict.model_json_schema()
    return schema
