"""Reader tokens travel in the URL (an invitation link is all a radiologist needs), so the
access log would keep every working token in plain text. This filter redacts them."""

from __future__ import annotations

import logging
import re

TOKEN_IN_PATH = re.compile(r"(/study/r/)[^/?#\s]+")
REDACTED = r"\1<token>"


class RedactReaderTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = TOKEN_IN_PATH.sub(REDACTED, record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(TOKEN_IN_PATH.sub(REDACTED, a) if isinstance(a, str) else a
                                for a in record.args)
        return True


def install(*logger_names: str) -> None:
    """Add the filter once per logger (the app factory may run several times per process)."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactReaderTokens) for f in logger.filters):
            logger.addFilter(RedactReaderTokens())
