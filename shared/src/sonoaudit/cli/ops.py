"""Operational commands: serve a service, migrate the store, write message schemas."""

from __future__ import annotations

from pathlib import Path

import typer

from sonoaudit.cli.common import fail

SERVICES = ("generator", "metrics", "classifier", "raters")


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        service: str = typer.Argument(..., help="generator | metrics | classifier | raters"),
        host: str = typer.Option("127.0.0.1", help="Bind address."),
        port: int = typer.Option(8000, help="Port."),
    ) -> None:
        """Start one service (uvicorn)."""
        if service not in SERVICES:
            fail(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
        import uvicorn

        from sonoaudit.service import configure_logging
        from sonoaudit.settings import Settings

        # JSON logs on stderr for every logger (uvicorn's included: log_config=None keeps
        # uvicorn from installing its own text handlers); the app writes the access lines.
        configure_logging(Settings().log_level)
        uvicorn.run(f"sonoaudit_{service}.main:create_app", factory=True, host=host, port=port,
                    log_config=None, access_log=False)

    @app.command()
    def migrate(
        revision: str = typer.Argument("head", help="Alembic revision."),
    ) -> None:
        """Bring the results store (SONOAUDIT_DATABASE_URL or embedded SQLite) to a revision."""
        from sonoaudit.db.migrate import upgrade
        from sonoaudit.settings import Settings

        url = Settings().resolved_database_url
        upgrade(url, revision)
        typer.echo(f"migrated {url.split('@')[-1]} to {revision}")

    @app.command()
    def schemas(out: Path = typer.Option(Path("proto"), help="proto/ folder.")) -> None:
        """Write the JSON Schema of every bus message into proto/."""
        from sonoaudit.messages.schemas import write

        for p in write(out):
            typer.echo(p)
