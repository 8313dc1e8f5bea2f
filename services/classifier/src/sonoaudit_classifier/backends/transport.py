"""Which low-level transport errors are transient. google-genai 3.x uses ``httpx2`` (pydantic's
fork), older releases and openai use ``httpx``: check both without depending on either."""

from __future__ import annotations

import asyncio
import importlib

_NAMES = ("TimeoutException", "ConnectError", "RemoteProtocolError", "ReadError", "WriteError",
          "NetworkError")


def _transient_classes() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [asyncio.TimeoutError, ConnectionError]
    for module in ("httpx", "httpx2"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found.extend(getattr(mod, n) for n in _NAMES if hasattr(mod, n))
    return tuple(found)


_TRANSIENT: tuple[type[BaseException], ...] | None = None


def is_transient_transport_error(exc: BaseException) -> bool:
    global _TRANSIENT
    if _TRANSIENT is None:
        _TRANSIENT = _transient_classes()
    return isinstance(exc, _TRANSIENT)
