"""Helpers shared by CLI commands: the embedded context, JSON output, clean error exits."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer

from sonoaudit.context import AppContext, build_context
from sonoaudit.settings import Settings


def context(settings: Settings | None = None) -> AppContext:
    return build_context(settings or Settings())


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str, allow_nan=False))


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)
