"""``sonoaudit run-study``: the whole study, embedded or distributed."""

from __future__ import annotations

from pathlib import Path

import typer

from sonoaudit.cli.common import fail


def register(app: typer.Typer) -> None:
    @app.command("run-study")
    def run_study(
        config: str = typer.Argument(..., help="CONFIG.yaml, or 'demo' for the bundled demo."),
        data: str | None = typer.Option(
            None, "--data", help="Dataset folder (overrides data.path)."),
        out: Path | None = typer.Option(
            None, "--out", help="Output folder (default runs/<name>)."),
        name: str | None = typer.Option(None, "--name", help="Run name (overrides name)."),
        from_step: str | None = typer.Option(
            None, "--from", help="Force this step and all after it."),
    ) -> None:
        """Run the study: import → train → generate → metrics → LLM → reader study → agreement →
        report. Finished steps are skipped on a re-run; progress is printed as it goes."""
        from sonoaudit.context import build_context
        from sonoaudit.pipeline.config import load_config
        from sonoaudit.pipeline.runner import STEPS, Pipeline
        from sonoaudit.pipeline.transport import EmbeddedTransport, Transport
        from sonoaudit.settings import Settings

        if from_step is not None and from_step not in STEPS:
            fail(f"--from {from_step!r}: expected one of {', '.join(STEPS)}")
        if data is not None and not Path(data).is_dir():
            fail(f"--data {data}: not a folder")
        overrides = {"data.path": str(Path(data).resolve()) if data else None, "name": name}
        if data and name is None:
            stem = config if config == "demo" else Path(config).stem
            overrides["name"] = f"{stem}-{Path(data).name}"
        try:
            cfg = load_config(config, **overrides)
        except ValueError as exc:
            fail(str(exc))
        settings = Settings()
        out_dir = (out or Path(cfg.out_dir or Path("runs") / cfg.name)).resolve()
        ctx = build_context(settings)
        if settings.distributed:
            from sonoaudit.pipeline.distributed import DistributedTransport

            dist = DistributedTransport(ctx, echo=typer.echo)
            try:
                dist.check_services()
            except Exception as exc:
                ctx.close()
                fail(f"run-study (distributed mode): {exc}", code=1)
            transport: Transport = dist
        else:
            transport = EmbeddedTransport(ctx)
        typer.echo(f"run-study {cfg.name!r}: {transport.name} mode, "
                   f"store {settings.resolved_database_url.split('@')[-1]}, output {out_dir}")
        try:
            result = Pipeline(ctx, transport, cfg, out_dir, echo=typer.echo).run(from_step)
        except Exception as exc:
            fail(f"run-study stopped: {exc}", code=1)
        finally:
            ctx.close()
        report = result.outputs.get("report", {}).get("report_html")
        typer.echo(f"\nreport: {report}")
