"""CLI commands of the metrics area (filled in by that area)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
