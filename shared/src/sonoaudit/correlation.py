"""The correlation id of the request or bus message being handled, read by the JSON log
formatter. Set by the HTTP middleware (``x-correlation-id``) and by the bus for each message, so
one job's lines can be followed across services."""

from __future__ import annotations

from contextvars import ContextVar

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
