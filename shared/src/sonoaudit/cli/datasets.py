"""``sonoaudit datasets inspect|import|phantom``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sonoaudit.cli.common import fail, print_json


def _print_scan(summary: dict[str, Any]) -> None:
    phantom = "  [PHANTOM DATA: synthetic, not patients]" if summary["is_phantom"] else ""
    typer.echo(f"{summary['root']}: {summary['format']}{phantom}")
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items()) or "none"
    typer.echo(f"  usable images: {summary['n_images']} of {summary['n_images_checked']} checked "
               f"({counts}); cases: {summary['n_cases']}")
    problems = summary["problems"]
    if problems:
        typer.echo(f"  {len(problems)} problem(s):")
        for p in problems:
            typer.echo(f"    {p['path']}: {p['problem']}")
    else:
        typer.echo("  no problems")


def register(app: typer.Typer) -> None:
    datasets = typer.Typer(no_args_is_help=True, help="Read, check and import datasets.")
    app.add_typer(datasets, name="datasets")

    @datasets.command("inspect")
    def inspect_cmd(
        path: Path = typer.Argument(..., help="Dataset folder (BUS-BRA, UDIAT Dataset B, BUSI)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        format: str | None = typer.Option(None, help="Force a layout: busbra | udiat | busi."),
    ) -> None:
        """Detect the layout, check every file, report counts and every problem (exit 1 on any)."""
        from sonoaudit.datasets.scan import FORMATS, scan

        if format is not None and format not in FORMATS:
            fail(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
        result = scan(path, format=format, progress=not as_json)
        summary = result.summary()
        if as_json:
            print_json(summary)
        else:
            _print_scan(summary)
        if result.problems:
            raise typer.Exit(1)

    @datasets.command("import")
    def import_cmd(
        path: Path = typer.Argument(..., help="Dataset folder."),
        size: int | None = typer.Option(None, help="Also store square preprocessed copies."),
        val_fraction: float = typer.Option(0.2, help="Fraction of cases (patients) for val."),
        seed: int = typer.Option(0, help="Seed of the patient-level split."),
        name: str | None = typer.Option(None, help="Dataset name (default: folder name)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Check and register a dataset in the store (nothing is written on any problem)."""
        from sonoaudit.cli.common import context
        from sonoaudit.datasets.importer import import_dataset
        from sonoaudit.datasets.records import DatasetError

        ctx = context()
        try:
            ds = import_dataset(ctx, path, size=size, val_fraction=val_fraction, seed=seed,
                                name=name, progress=not as_json)
        except DatasetError as exc:
            if as_json:
                print_json({"imported": False, "problems": [
                    {"path": p.path, "problem": p.problem} for p in exc.problems]})
                raise typer.Exit(1) from exc
            fail(f"nothing imported; {exc}", code=1)
        except ValueError as exc:
            fail(str(exc))
        finally:
            ctx.close()
        out = {"imported": True, "id": ds.id, "name": ds.name, "format": ds.format,
               "is_phantom": ds.is_phantom, "counts": ds.counts, "n_cases": ds.n_cases,
               "split": ds.provenance.get("split", {}), "fingerprint": ds.fingerprint}
        if as_json:
            print_json(out)
        else:
            phantom = " [PHANTOM DATA]" if ds.is_phantom else ""
            typer.echo(f"dataset {ds.id} {ds.name!r}{phantom}: {ds.counts}, {ds.n_cases} cases")
            typer.echo(f"  split by case: {out['split'].get('counts')}")

    @datasets.command("phantom")
    def phantom_cmd(
        out: Path = typer.Argument(..., help="Folder to write the phantom dataset into."),
        n_per_class: int = typer.Option(40, help="Images per class (benign, malignant)."),
        seed: int = typer.Option(0, help="Random seed."),
        size: int = typer.Option(128, help="Image side in pixels."),
    ) -> None:
        """Write a synthetic BUS-BRA-layout phantom dataset (labelled as phantom data)."""
        from sonoaudit.datasets.phantom import write_phantom

        if out.exists() and any(out.iterdir()):
            fail(f"{out} exists and is not empty; choose a new folder")
        try:
            root = write_phantom(out, n_per_class=n_per_class, seed=seed, size=size)
        except ValueError as exc:
            fail(str(exc))
        typer.echo(f"wrote phantom dataset (synthetic, not patient data) to {root}: "
                   f"{n_per_class} benign + {n_per_class} malignant, {size}x{size}, seed {seed}")
