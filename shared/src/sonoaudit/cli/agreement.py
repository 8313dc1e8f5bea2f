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
    ci_s = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f" [no CI: {e.get('ci_reason', '?')}]"
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
        if level != "nominal" and not levels:
            if table.numeric_values() is None:
                fail(f"--level {level} with text values {table.categories} needs --scale to "
                     "give their order (they would otherwise be sorted alphabetically)")
            typer.echo(f"note: no --scale given; weighted kappa uses only the observed levels "
                       f"{table.categories} — declare the full scale if others exist", err=True)
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

    @app.command("report")
    def report_cmd(
        study: str = typer.Argument(..., help="study id"),
        out: Path = typer.Option(Path("report"), "--out", help="folder for HTML, JSON, CSV, PNGs"),
        n_boot: int = typer.Option(2000, "--bootstrap", "-B", min=0),
        seed: int = typer.Option(0, "--seed"),
        tie_policy: str = typer.Option("wrong", "--tie-policy",
                                       help="majority-vote ties: wrong | exclude"),
    ) -> None:
        """Write the study report: self-contained report.html, report.json, report.csv, figures/."""
        from sonoaudit_raters.report.render import build_report
        from sonoaudit_raters.study.errors import StudyError

        from sonoaudit.cli.common import context

        if tie_policy not in ("wrong", "exclude"):
            fail(f"--tie-policy must be wrong or exclude, got {tie_policy!r}")
        ctx = context()
        try:
            report = build_report(ctx, study, n_boot=n_boot, seed=seed, tie_policy=tie_policy)
        except StudyError as exc:
            fail(exc.message)
        finally:
            ctx.close()
        for path in report.write(out):
            typer.echo(str(path))
        for x in report.json["not_run"]:
            typer.echo(f"not run: {x['section']}: {x['why']}", err=True)

    @app.command("plan-study")
    def plan_study_cmd(
        images: str = typer.Option("40,80,160,320", "--images", help="numbers of images"),
        readers: str = typer.Option("2,3,5,8", "--readers", help="numbers of readers"),
        accuracy: float = typer.Option(0.8, "--accuracy", min=0.34, max=1.0,
                                       help="each simulated reader's accuracy"),
        accuracy_drop: float = typer.Option(0.1, "--accuracy-drop", min=0.0, max=0.6,
                                            help="accuracy lower on synthetic images by this"),
        class_mix: str = typer.Option("0.45,0.45,0.10", "--class-mix",
                                      help="shares of benign, malignant, normal"),
        error_correlation: float = typer.Option(
            0.0, "--error-correlation", min=0.0, max=1.0,
            help="share of wrong answers going to the item's one look-alike class "
                 "(readers err together: higher agreement at the same accuracy)"),
        simulations: int = typer.Option(20, "--simulations", min=2),
        n_boot: int = typer.Option(500, "--bootstrap", "-B", min=50),
        seed: int = typer.Option(0, "--seed"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """SIMULATED reader panels: expected 95 % CI widths by number of images and readers.

        Kappa/alpha and the real − synthetic accuracy difference, so a team can size its study."""
        from sonoaudit_raters.stats.simulate import PanelSpec, plan

        try:
            spec = PanelSpec(accuracy=accuracy, accuracy_drop=accuracy_drop,
                             class_mix=tuple(float(x) for x in class_mix.split(",")),
                             error_correlation=error_correlation)
            grid_images = [int(x) for x in images.split(",")]
            grid_readers = [int(x) for x in readers.split(",")]
        except ValueError as exc:
            fail(f"bad option value: {exc}")
        if min(grid_images) < 4:
            fail(f"--images: each number must be at least 4, got {grid_images}")
        if min(grid_readers) < 2:
            fail(f"--readers: agreement needs at least 2 readers, got {grid_readers}")
        result = plan(spec, grid_images, grid_readers, simulations=simulations, n_boot=n_boot,
                      seed=seed)
        if as_json:
            print_json(result)
            return
        typer.echo("SIMULATED reader panels (not real data): " + result["assumptions"])
        typer.echo(f"{'images':>7} {'readers':>7} {'Fleiss κ':>9} {'CI width κ':>11} "
                   f"{'CI width α':>11} {'CI width Δacc':>14}")
        for r in result["rows"]:
            typer.echo(f"{r['n_images']:>7} {r['n_readers']:>7} {r['fleiss_kappa_mean']:>9.3f} "
                       f"{r['ci_width_fleiss_kappa']:>11.3f} {r['ci_width_alpha']:>11.3f} "
                       f"{r['ci_width_accuracy_difference']:>14.3f}")
