"""The envelope every bus message travels in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

P = TypeVar("P", bound=BaseModel)


class Envelope(BaseModel, Generic[P]):
    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: str = Field(description="Unique id; also sent as the Nats-Msg-Id header.")
    correlation_id: str = Field(description="Ties every message of one request/job together.")
    type: str = Field(description="Message type, e.g. 'generate.request'.")
    schema_version: int = Field(ge=1)
    created_at: datetime
    payload: P


def make_envelope(
    type_: str,
    payload: P,
    *,
    schema_version: int = 1,
    correlation_id: str | None = None,
    message_id: str | None = None,
) -> Envelope[P]:
    mid = message_id or uuid.uuid4().hex
    # Parametrised with the payload's runtime class so the JSON schema and validation are exact.
    model: Any = Envelope[type(payload)]  # type: ignore[misc]
    envelope: Envelope[P] = model(
        message_id=mid,
        correlation_id=correlation_id or mid,
        type=type_,
        schema_version=schema_version,
        created_at=datetime.now(UTC),
        payload=payload,
    )
    return envelope
