"""Message schemas: pydantic models are the source of truth; ``make schemas`` writes ``proto/``."""

from sonoaudit.messages.envelope import Envelope, make_envelope
from sonoaudit.messages.registry import MESSAGES, STREAMS, MessageSpec, StreamSpec

__all__ = ["MESSAGES", "STREAMS", "Envelope", "MessageSpec", "StreamSpec", "make_envelope"]
