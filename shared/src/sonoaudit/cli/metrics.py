"""CLI of the metrics area: ``sonoaudit metrics --real … --synthetic … [--json]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sonoaudit.cli.common import context, fail, print_json


def _fmt(block: dict[str, Any], key: str = "value") -> str:
    if not isinstance(block, dict):
        return "?"
    if block.get("value", 0) is None and "reason" in block:
        return f"unavailable ({block['reason']})"
    if "mean" in block and key == "value" and "value" not in block:
        return f"{block['mean']:.5f} ± {block['std']:.5f}"
    v = block.get(key)
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _print_summary(res: dict[str, Any], indent: str = "") -> None:
    typer.echo(f"{indent}n_real={res['n_real']}  n_synthetic={res['n_synthetic']}")
    typer.echo(f"{indent}FID  {_fmt(res['fid'])}")
    typer.echo(f"{indent}KID  {_fmt(res['kid'])}")
    typer.echo(f"{indent}IS   {_fmt(res['is'])}")
    p = res.get("prdc", {})
    if "precision" in p:
        typer.echo(f"{indent}precision {p['precision']:.3f}  recall {p['recall']:.3f}  "
                   f"density {p['density']:.3f}  coverage {p['coverage']:.3f}")
    m = res.get("memorisation", {})
    if "n_flagged" in m:
        typer.echo(f"{indent}memorisation: {m['n_flagged']} near-copies "
                   f"({m['fraction_flagged']:.1%}), max SSIM {m['nearest_ssim']['max']:.3f}")
    d = res.get("diversity", {})
    if "synthetic" in d:
        typer.echo(f"{indent}MS-SSIM within synthetic {d['synthetic']['mean']:.3f}, "
                   f"within real {d['real']['mean']:.3f}")
    for w in res.get("warnings", []):
        typer.echo(f"{indent}warning: {w}")


def register(app: typer.Typer) -> None:
    @app.command("metrics")
    def metrics_cmd(
        real: str = typer.Option(
            ..., "--real", help="Real set: dataset folder (BUS-BRA, UDIAT, BUSI), folder of "
            "*_image.png/*_mask.png pairs, or dataset id"),
        synthetic: str = typer.Option(
            ..., "--synthetic", help="Synthetic set: folder of *_image.png/*_mask.png pairs "
            "(or a dataset folder) or generation run id"),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
        class_label: str | None = typer.Option(None, "--class", help="Score only this class"),
        is_weights: Path | None = typer.Option(
            None, "--is-weights", help="Full pt_inception-2015-12-05 weights (enables IS)"),
        store_run: bool = typer.Option(
            True, "--store/--no-store", help="Keep the result as a MetricRun in the store"),
    ) -> None:
        """FID, KID, IS and the medical checks of a synthetic set against a real set."""
        import torch
        from sonoaudit_metrics.config import MetricsSettings
        from sonoaudit_metrics.runs import known_failure, run_metrics, score_refs

        ms = MetricsSettings()
        if is_weights is not None:
            ms.is_weights = is_weights
        if ms.threads:
            torch.set_num_threads(ms.threads)
        ctx = context()
        try:
            if store_run:
                run = run_metrics(ctx, real, synthetic, class_label, ms.options(), None, ms)
                res = dict(run.results)
                res["metric_run_id"] = run.id
            else:
                res = score_refs(ctx, real, synthetic, class_label, ms.options(), ms)
        except Exception as exc:
            known = known_failure(exc)  # bad input, NaN result, missing weights: one line
            if known is None:
                raise
            fail(known[1])
        finally:
            ctx.close()
        if as_json:
            print_json(res)
            return
        scope = (res.get("provenance") or {}).get("class_scope")
        if scope and scope["chosen"] == "automatically":  # a given --class is in the warnings
            typer.echo(f"class {scope['class_label']} ({scope['chosen']}): {scope['reason']}")
        _print_summary(res)
        for label, block in (res.get("per_class") or {}).items():
            typer.echo(f"[{label}]")
            if block.get("value", 0) is None:
                typer.echo(f"  unavailable: {block['reason']}")
            else:
                _print_summary(block, "  ")
        if "metric_run_id" in res:
            typer.echo(f"metric run: {res['metric_run_id']}")
