"""Payloads of the job messages. Within a schema version only add optional fields."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Sampler = Literal["ddpm", "ddim", "dpmpp"]
Condition = Literal["image", "outline", "side_by_side"]
Backbone = Literal["rsu", "diffusers"]
BetaSchedule = Literal["linear", "cosine"]
Prediction = Literal["epsilon", "v"]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerateRequest(_Payload):
    job_id: str
    model_id: str
    n: int = Field(ge=1)
    sampler: Sampler = "ddpm"
    steps: int = Field(ge=1)
    seed: int = 0
    class_label: str | None = Field(
        default=None, description="The class to sample: required for a class-conditional model "
        "(one of its classes); a per-class model samples only its own class.")


class ClassifyRequest(_Payload):
    """Classify images (ids in the results store) with an LLM; one answer per replicate."""

    job_id: str
    image_ids: list[str] = Field(min_length=1)
    backend: str = Field(default="gemini", description="gemini | openai")
    condition: Condition = Field(
        default="image", description="image | outline (mask drawn) | side_by_side (with mask)")
    replicates: int = Field(default=1, ge=1, le=20)
    prompt_version: str | None = Field(
        default=None, description="Prompt template set; None = the worker's configured one.")


class MetricsRequest(_Payload):
    job_id: str
    real_ref: str = Field(min_length=1, description="Real set: dataset folder or dataset id.")
    synthetic_ref: str = Field(
        min_length=1, description="Synthetic set: generator pairs folder or generation run id.")
    class_label: str | None = Field(default=None, description="Score only this class.")


class TrainRequest(_Payload):
    """Train one model on an imported dataset (the generator's train worker): per-class, or
    class-conditional when ``class_label`` is ``all`` or a comma list."""

    job_id: str
    dataset_id: str = Field(min_length=1, description="Id of an imported dataset.")
    class_label: str = Field(
        min_length=1, description="Class whose images train the model; `all` or a comma list "
        "(`benign,malignant`): one class-conditional model on those classes.")
    profile: str = Field(default="quick", description="Training preset: quick | paper | tiny.")
    seed: int = 0
    steps: int | None = Field(default=None, ge=1, description="None = the profile's steps.")
    backbone: Backbone | None = Field(
        default=None, description="Denoiser: rsu (the D-DDPM's RSU U-Net) | diffusers "
        "(UNet2DModel baseline); None = the profile's (rsu).")
    schedule: BetaSchedule | None = Field(
        default=None, description="β schedule: linear | cosine; None = the profile's (linear).")
    prediction: Prediction | None = Field(
        default=None, description="Network target: epsilon | v; None = the profile's (epsilon).")


class JobResult(_Payload):
    job_id: str
    status: Literal["done", "failed"]
    detail: str | None = None


class DeadLetterNotice(_Payload):
    subject: str
    message_id: str | None
    deliveries: int
    error: str
    data: str
