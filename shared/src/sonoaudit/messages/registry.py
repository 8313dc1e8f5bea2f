"""Subjects, streams and consumers: one table, used by the bus bootstrap and by ``proto/``."""

from __future__ import annotations

import builtins
from dataclasses import dataclass

from pydantic import BaseModel

from sonoaudit.messages.payloads import (
    ClassifyRequest,
    DeadLetterNotice,
    GenerateRequest,
    JobResult,
    MetricsRequest,
    TrainRequest,
)

PREFIX = "sonoaudit"


def subject(capability: str, kind: str) -> str:
    return f"{PREFIX}.{capability}.{kind}"


@dataclass(frozen=True)
class MessageSpec:
    type: str
    subject: str
    payload: builtins.type[BaseModel]  # `type` alone would name the field above
    schema_version: int = 1
    description: str = ""


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: str  # "workqueue" | "limits"
    consumer: str | None
    description: str


MESSAGES: tuple[MessageSpec, ...] = (
    MessageSpec("generate.request", subject("generate", "request"), GenerateRequest,
                description="Generate N image/mask pairs from a model."),
    MessageSpec("classify.request", subject("classify", "request"), ClassifyRequest,
                description="Classify a set of images with an LLM backend."),
    MessageSpec("metrics.request", subject("metrics", "request"), MetricsRequest,
                description="Score a synthetic set against a real set."),
    MessageSpec("train.request", subject("train", "request"), TrainRequest,
                description="Train one per-class model on an imported dataset."),
    MessageSpec("job.result", subject("jobs", "result"), JobResult,
                description="A job finished (done or failed)."),
    MessageSpec("dlq.notice", subject("dlq", "<capability>"), DeadLetterNotice,
                description="A message given up on, with its error and raw body."),
)

STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("GENERATE", (subject("generate", "request"),), "workqueue", "generator",
               "generation jobs"),
    StreamSpec("CLASSIFY", (subject("classify", "request"),), "workqueue", "classifier",
               "classification jobs"),
    StreamSpec("METRICS", (subject("metrics", "request"),), "workqueue", "metrics",
               "metric jobs"),
    StreamSpec("TRAIN", (subject("train", "request"),), "workqueue", "generator",
               "training jobs"),
    StreamSpec("RESULTS", (subject("jobs", "result"),), "limits", None, "job outcomes"),
    StreamSpec("DLQ", (f"{PREFIX}.dlq.>",), "limits", None, "dead letters"),
)


def message_spec(type_: str) -> MessageSpec:
    for spec in MESSAGES:
        if spec.type == type_:
            return spec
    raise KeyError(f"unknown message type {type_!r}")


def stream_for(subject_: str) -> StreamSpec:
    for s in STREAMS:
        if subject_ in s.subjects:
            return s
    raise KeyError(f"no stream for subject {subject_!r}")
