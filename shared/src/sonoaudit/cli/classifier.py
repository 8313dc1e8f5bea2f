"""``sonoaudit classify``: zero-shot LLM classification of a folder, a run or a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sonoaudit.cli.common import context, fail, print_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


STATUSES = ("ok", "abstain", "invalid", "error")
FAILED_STATUSES = ("invalid", "error")
MAX_SKIPPED_SHOWN = 20


def _folder_pairs(root: Path) -> tuple[list[tuple[Path, Path | None]], list[str]]:
    """(image/mask pairs, files skipped with why). A dataset layout the readers know gives
    images with masks, and must pass validation (as for ``sonoaudit metrics``: a bad file is an
    error, not a silently smaller set); any other folder gives every image file, and every
    other file is listed as skipped."""
    from sonoaudit.datasets.scan import scan

    found = scan(root)
    if found.format != "unknown":
        if found.problems:
            shown = "; ".join(str(p) for p in found.problems[:5])
            more = len(found.problems) - 5
            fail(f"--images {root}: the {found.format} dataset fails validation, "
                 f"{len(found.problems)} problem(s): {shown}"
                 + (f"; … and {more} more" if more > 0 else "")
                 + f" (see `sonoaudit datasets inspect {root}`)")
        # BUSI may list several masks per image; the first is the lesion the outline shows.
        return [(r.image_path, r.mask_paths[0] if r.mask_paths else None)
                for r in found.records], []
    pairs: list[tuple[Path, Path | None]] = []
    skipped: list[str] = []
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        rel = p.relative_to(root).as_posix()
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{rel} (not {'/'.join(IMAGE_SUFFIXES)})")
        elif "mask" in p.name.lower():
            skipped.append(f"{rel} (a mask: 'mask' in its name)")
        else:
            pairs.append((p, None))
    return pairs, skipped


def _skipped_note(skipped: list[str]) -> str:
    shown = ", ".join(skipped[:MAX_SKIPPED_SHOWN])
    more = len(skipped) - MAX_SKIPPED_SHOWN
    return (f"skipped {len(skipped)} file(s) that are not images to classify: {shown}"
            + (f", … and {more} more" if more > 0 else ""))


def _ids_for(ref: str) -> list[str] | None:
    from sqlalchemy import select

    from sonoaudit.db.models import Image

    ctx = context()
    try:
        with ctx.sessions() as s:
            for column in (Image.generation_run_id, Image.dataset_id):
                ids = list(s.scalars(select(Image.id).where(column == ref).order_by(Image.name)))
                if ids:
                    return ids
    finally:
        ctx.close()
    return None


def register(app: typer.Typer) -> None:
    @app.command()
    def classify(
        images: str = typer.Option(..., "--images", help="A folder of images (a dataset layout "
                                   "gives masks too), or a generation-run / dataset id."),
        backend: str | None = typer.Option(None, help="gemini | openai (default: "
                                           "SONOAUDIT_LLM_BACKEND or gemini)"),
        condition: str = typer.Option("image", help="image | outline | side_by_side"),
        replicates: int = typer.Option(1, min=1, max=20, help="Answers per image (>= 2: the "
                                       "LLM's self-agreement is reported too)."),
        prompt_version: str | None = typer.Option(
            None, "--prompt-version", help="Prompt template set (default: "
            "SONOAUDIT_PROMPT_VERSION or v1; own sets in SONOAUDIT_PROMPT_DIR)."),
        gemini_batch: bool = typer.Option(
            False, "--gemini-batch", help="Gemini Batch mode: half price, waits until Google "
            "finishes the job (up to 24 h). Large runs only."),
        as_json: bool = typer.Option(False, "--json",
                                     help="Print {answers, self_agreement} as JSON."),
    ) -> None:
        """Ask a multimodal LLM (zero-shot) whether each image is benign, malignant or normal.
        Every answer is stored; rerunning costs nothing for images already answered."""
        import asyncio

        from sonoaudit_classifier.batch import (
            BackendFailed,
            MissingMasks,
            UnknownImages,
            aclassify_images,
            aclassify_items,
            items_from_files,
            items_from_images,
        )
        from sonoaudit_classifier.consistency import self_agreement
        from sonoaudit_classifier.gemini_batch import BatchTimeout, aclassify_gemini_batch
        from sonoaudit_classifier.prompts import CONDITIONS, PromptChanged, UnknownPrompt
        from sonoaudit_classifier.settings import (
            BackendNotConfigured,
            ClassifierSettings,
            UnknownBackend,
        )

        if condition not in CONDITIONS:
            fail(f"--condition {condition!r}: expected one of {', '.join(CONDITIONS)}")
        settings = ClassifierSettings()
        if gemini_batch and (backend or settings.llm_backend) != "gemini":
            fail("--gemini-batch needs the gemini backend")
        path = Path(images)
        skipped: list[str] = []
        ctx = context()
        try:
            if path.is_dir():
                pairs, skipped = _folder_pairs(path)
                if not pairs:
                    fail(f"--images {images}: no image files (.png/.jpg/.webp) in this folder"
                         + (f"; {_skipped_note(skipped)}" if skipped else ""))
                if skipped:
                    typer.echo(f"note: {_skipped_note(skipped)}", err=True)
                coro: Any = (aclassify_gemini_batch(
                    ctx, items_from_files(pairs), settings=settings, condition=condition,
                    replicates=replicates, prompt_version=prompt_version) if gemini_batch
                    else aclassify_items(
                    ctx, items_from_files(pairs), settings=settings, backend=backend,
                    condition=condition, replicates=replicates, prompt_version=prompt_version))
            else:
                ids = _ids_for(images)
                if ids is None:
                    fail(f"--images {images}: neither a folder nor a generation-run/dataset id "
                         "with images in the results store")
                coro = (aclassify_gemini_batch(
                    ctx, items_from_images(ctx, ids), settings=settings, condition=condition,
                    replicates=replicates, prompt_version=prompt_version) if gemini_batch
                    else aclassify_images(ctx, ids, settings=settings, backend=backend,
                                          condition=condition, replicates=replicates,
                                          prompt_version=prompt_version))
            rows = asyncio.run(coro)
        except (UnknownBackend, BackendNotConfigured, UnknownImages, MissingMasks,
                UnknownPrompt, PromptChanged, BackendFailed, BatchTimeout) as exc:
            fail(str(exc))
        finally:
            ctx.close()
        answers = [{
            "image": r.source_name, "image_id": r.image_id, "replicate": r.replicate,
            "status": r.status, "label": r.label, "confidence": r.confidence,
            "reason": r.reason, "backend": r.backend, "model": r.model,
            "prompt_version": r.prompt_version, "condition": r.condition, "attempts": r.attempts,
        } for r in rows]
        agreement = self_agreement(rows) if replicates > 1 else []
        summary = {k: sum(a["status"] == k for a in answers) for k in STATUSES}
        n_failed = sum(summary[k] for k in FAILED_STATUSES)
        if as_json:
            print_json({"answers": answers, "self_agreement": agreement, "summary": summary,
                        "skipped": skipped})
        else:
            _print_text(answers, agreement, rows, condition, summary)
        if n_failed:
            # An answer that is no answer must not look like success to a script or pipeline.
            fail(f"{n_failed} of {len(answers)} answer(s) ended in "
                 + " or ".join(FAILED_STATUSES)
                 + ": " + ", ".join(f"{k} {summary[k]}" for k in FAILED_STATUSES)
                 + " (reasons in the answers; a rerun retries the errors)", code=1)


def _print_text(answers: list[dict[str, Any]], agreement: list[dict[str, Any]], rows: Any,
                condition: str, summary: dict[str, int]) -> None:
    counts: dict[str, int] = {}
    for a in answers:
        key = a["label"] if a["status"] == "ok" else a["status"]
        counts[key] = counts.get(key, 0) + 1
    typer.echo(f"{len(answers)} answers ({rows[0].backend}/{rows[0].model}, prompt "
               f"{rows[0].prompt_version}, condition {condition}): "
               + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for a in answers:
        if a["status"] != "ok":
            typer.echo(f"  {a['image']} r{a['replicate']}: {a['status']}: {a['reason']}")
    typer.echo("status: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    for g in agreement:
        kappa = (f"{g['fleiss_kappa']:.3f}" if g["fleiss_kappa"] is not None
                 else f"undefined ({g['kappa_reason']})")
        typer.echo(f"self-agreement over {g['replicates']} replicates: Fleiss kappa {kappa}, "
                   f"n={g['n_images']} images ({g['excluded']} excluded: a replicate "
                   "without a label)")
