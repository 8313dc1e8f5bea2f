"""CLI of the reader study: ``sonoaudit study create | add-reader | revoke | progress | export |
import | simulate``. The web app itself runs with ``sonoaudit serve raters``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sonoaudit.cli.common import context, fail, print_json

study_app = typer.Typer(no_args_is_help=True, help="Reader study: set-up, invitations, data.")


def _per_class(spec: str | None) -> dict[str, int] | None:
    if not spec:
        return None
    out: dict[str, int] = {}
    for part in spec.split(","):
        cls, _, n = part.partition("=")
        if not cls.strip() or not n.strip().isdigit():
            fail(f"--per-class: expected CLASS=N[,CLASS=N…], got {part!r}")
        out[cls.strip()] = int(n)
    return out


def _config(path: Path | None, display_size: int | None, fit: str | None) -> dict[str, Any]:
    import json

    cfg: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            fail(f"{path}: no such file (expected a JSON or YAML study config)")
        import yaml

        text = path.read_text(encoding="utf-8")
        is_yaml = path.suffix in (".yaml", ".yml")
        try:
            cfg = (yaml.safe_load(text) or {}) if is_yaml else json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:  # both name the line and column
            fail(f"{path}: not valid {'YAML' if is_yaml else 'JSON'}: {exc}")
        if not isinstance(cfg, dict):
            fail(f"{path}: expected a mapping at the top level")
    if display_size is not None or fit is not None:
        display = dict(cfg.get("display") or {})
        if display_size is not None:
            display["size"] = display_size if display_size > 0 else None
        if fit is not None:
            display["fit"] = fit
        cfg["display"] = display
    return cfg


@study_app.command("create")
def create_cmd(
    name: str = typer.Argument(..., help="study name"),
    dataset: str | None = typer.Option(None, "--dataset", help="dataset id (real images)"),
    generation_run: list[str] = typer.Option([], "--generation-run",
                                             help="generation run id (synthetic); repeatable"),
    per_class: str | None = typer.Option(None, "--per-class",
                                         help="images per class and group, e.g. benign=10,"
                                              "malignant=10 (default: all)"),
    repeats: int = typer.Option(0, "--repeats", min=0, help="items shown twice (intra-reader)"),
    seed: int = typer.Option(0, "--seed", help="seeds the image draw, repeats and reader orders"),
    config: Path | None = typer.Option(None, "--config",
                                       help="JSON/YAML study config (questions, display, llm)"),
    display_size: int | None = typer.Option(None, "--display-size",
                                            help="square display size in px (0 = as stored)"),
    fit: str | None = typer.Option(None, "--fit", help="stretch | letterbox | none"),
    readers: list[str] = typer.Option([], "--reader", help="invite a reader; repeatable"),
    base_url: str = typer.Option("http://127.0.0.1:8000", "--base-url",
                                 help="where the raters service is reachable (for links)"),
) -> None:
    """Create a study from a dataset and/or generation runs; prints the admin token (once)."""
    from pydantic import ValidationError
    from sonoaudit_raters.study import StudyError, add_reader, create_study, reader_link
    from sonoaudit_raters.study import select_images as select

    if dataset is None and not generation_run:
        fail("give --dataset and/or --generation-run: a study needs images")
    ctx = context()
    try:
        real, synth = select(ctx, dataset_id=dataset, generation_run_ids=generation_run,
                             per_class=_per_class(per_class), seed=seed)
        study, admin = create_study(ctx, name, real, synth,
                                    config=_config(config, display_size, fit),
                                    n_repeats=repeats, seed=seed)
        links = {r: reader_link(base_url, add_reader(ctx, study.id, r)) for r in readers}
    except (StudyError, ValidationError) as exc:
        fail(str(exc))
    finally:
        ctx.close()
    print_json({"study_id": study.id, "name": study.name, "n_real": len(real),
                "n_synthetic": len(synth), "n_repeats": repeats, "admin_token": admin,
                "admin_url": f"{base_url.rstrip('/')}/study/admin/{study.id}",
                "reader_links": links})


@study_app.command("add-reader")
def add_reader_cmd(
    study: str = typer.Argument(..., help="study id"),
    name: str = typer.Argument(..., help="reader name (unique in the study)"),
    base_url: str = typer.Option("http://127.0.0.1:8000", "--base-url"),
) -> None:
    """Invite a reader; prints their link (shown once: the token is stored hashed)."""
    from sonoaudit_raters.study import StudyError, add_reader, reader_link

    ctx = context()
    try:
        token = add_reader(ctx, study, name)
    except StudyError as exc:
        fail(str(exc))
    finally:
        ctx.close()
    print_json({"reader": name, "link": reader_link(base_url, token)})


@study_app.command("revoke")
def revoke_cmd(study: str = typer.Argument(...), reader_id: str = typer.Argument(...)) -> None:
    """Revoke a reader's link (their answers stay)."""
    from sonoaudit_raters.study import StudyError, revoke_reader

    ctx = context()
    try:
        revoke_reader(ctx, study, reader_id)
    except StudyError as exc:
        fail(str(exc))
    finally:
        ctx.close()
    typer.echo(f"revoked reader {reader_id}")


@study_app.command("progress")
def progress_cmd(study: str = typer.Argument(...)) -> None:
    """Images complete per reader."""
    from sonoaudit_raters.study import StudyError, progress

    ctx = context()
    try:
        rows = progress(ctx, study)
    except StudyError as exc:
        fail(str(exc))
    finally:
        ctx.close()
    print_json(rows)


@study_app.command("export")
def export_cmd(
    study: str = typer.Argument(...),
    out: Path = typer.Option(..., "--out", help="file to write (.csv or .json)"),
) -> None:
    """Every answer in long format (CSV), or answers + event history + study (JSON)."""
    from sonoaudit_raters.study import StudyError, export_answers, rows_to_csv
    from sonoaudit_raters.study.export import export_json_text

    from sonoaudit.filestore import atomic_write_bytes

    if out.suffix not in (".csv", ".json"):
        fail(f"--out {out}: expected a .csv or .json file name")
    ctx = context()
    try:
        if out.suffix == ".csv":
            rows = export_answers(ctx, study)
            text = rows_to_csv(rows)
            n = len(rows)
        else:
            text = export_json_text(ctx, study)
            n = text.count('"question"')
    except StudyError as exc:
        fail(str(exc))
    finally:
        ctx.close()
    atomic_write_bytes(out, text.encode())
    typer.echo(f"wrote {out} ({n} answer rows)" if out.suffix == ".csv" else f"wrote {out}")


@study_app.command("import")
def import_cmd(
    study: str = typer.Argument(...),
    ratings: Path = typer.Argument(..., help="long CSV: item, reader, question, answer[, time]"),
) -> None:
    """Import ratings gathered elsewhere; all rows are checked first, nothing partial."""
    from sonoaudit_raters.study import StudyError, import_answers

    if not ratings.is_file():
        fail(f"{ratings}: no such file")
    ctx = context()
    try:
        rep = import_answers(ctx, study, ratings)
    except StudyError as exc:
        fail(str(exc))
    finally:
        ctx.close()
    print_json({"rows": rep.rows, "recorded": rep.recorded, "duplicates": rep.duplicates,
                "readers_created": rep.readers_created})


@study_app.command("simulate")
def simulate_cmd(
    study: str = typer.Argument(...),
    readers: int = typer.Option(3, "--readers", min=1),
    accuracy: float = typer.Option(0.8, "--accuracy", min=0.0, max=1.0),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Fill the study with a SIMULATED reader panel (demo only; marked simulated everywhere)."""
    from sonoaudit_raters.study import StudyError, simulate_panel

    ctx = context()
    try:
        ids = simulate_panel(ctx, study, n_readers=readers, accuracy=accuracy, seed=seed)
    except StudyError as exc:
        fail(str(exc))
    finally:
        ctx.close()
    print_json({"simulated_readers": ids})


def register(app: typer.Typer) -> None:
    app.add_typer(study_app, name="study")
