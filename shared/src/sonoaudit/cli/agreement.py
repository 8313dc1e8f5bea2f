"""CLI of the agreement area: ``sonoaudit agreement`` (any long-format rating table),
``sonoaudit plan-study`` (simulated reader panels → CI widths) and ``sonoaudit report STUDY``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sonoaudit.cli.common import fail, print_json


def _read_table(path: Path) -> list[dict[str, Any]]:
    import csv

    if not path.is_file():
        fail(f"{path}: no such file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return list(csv.DictReader(fh))
    except UnicodeDecodeError:
        fail(f"{path}: not UTF-8 text (expected a CSV with a header row)")


def _fmt(e: dict[str, Any]) -> str:
    if e.get("value") is None:
        return f"undefined ({e.get('reason', '?')})"
    ci = e.get("ci95")
    ci_s = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " [CI undefined]"
    return f"{e['value']:.3f}{ci_s}  n={e.get('n')}"


def register(app: typer.Typer) -> None:
    @app.command("agreement")
    def agreement_cmd(
        ratings: Path = typer.Argument(..., help="CSV, one row per item × rater"),
        item: str = typer.Option("item", "--item", help="column naming the item"),
        rater: str = typer.Option("rater", "--rater", help="column naming the rater"),
        value: str = typer.Option("value", "--value", help="column with the rating"),
        level: str = typer.Option("nominal", "--level", help="nominal | ordinal | interval"),
        scale: str | None = typer.Option(None, "--scale",
                                         help="every level in order, comma-separated"),
        n_boot: int = typer.Option(2000, "--bootstrap", "-B", min=0,
                                   help="bootstrap replicates"),
        seed: int = typer.Option(0, "--seed"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    ) -> None:
        """Inter-rater agreement with 95 % bootstrap CIs for any long-format rating table."""
        from sonoaudit_raters.stats import RatingTableError, agreement, from_long, public

        from sonoaudit.provenance import provenance

        rows = _read_table(ratings)
        if level not in ("nominal", "ordinal", "interval"):
            fail(f"--level must be nominal, ordinal or interval, got {level!r}")
        levels = [s.strip() for s in scale.split(",")] if scale else None
        try:
            table = from_long(rows, item=item, rater=rater, value=value,
                              level=level,  # type: ignore[arg-type]
                              scale=levels, source=str(ratings), first_row=2)
        except RatingTableError as exc:
            fail(str(exc))
        result = public(agreement(table, n_boot=n_boot, seed=seed))
        result["input"] = {"file": str(ratings), "item": item, "rater": rater, "value": value}
        result["provenance"] = provenance(kind="agreement", seed=seed, n_boot=n_boot,
                                          ci="percentile bootstrap over items")
        if as_json:
            print_json(result)
            return
        typer.echo(f"{result['n_items']} items, {result['n_raters']} raters, "
                   f"{result['n_ratings']} ratings; level {level}; B={n_boot}, seed {seed}")
        for key in ("percent_agreement", "fleiss_kappa", "gwet_ac1", "light_kappa"):
            typer.echo(f"  {key:<22} {_fmt(result[key])}")
        for lv, e in result["krippendorff_alpha_by_level"].items():
            typer.echo(f"  {'alpha ' + lv:<22} {_fmt(e)}")
        for p in result["cohen_kappa_pairwise"]:
            extra = "".join(f"  {s}: {_fmt(e)}" for s, e in p.get("weighted", {}).items())
            typer.echo(f"  kappa {p['rater_a']}~{p['rater_b']}: {_fmt(p)}{extra}")
