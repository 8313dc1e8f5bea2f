"""A thin JetStream client: connect with retry, declare streams once, publish, pull-consume."""

from sonoaudit.bus.client import Bus, Handler, PoisonMessage, TransientError

__all__ = ["Bus", "Handler", "PoisonMessage", "TransientError"]
