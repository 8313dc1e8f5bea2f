"""``sonoaudit train | generate | export-onnx | models``: the D-DDPM generator."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from sonoaudit.cli.common import fail, print_json


def not_a_folder(out: Path | None) -> None:
    """Refuse an ``--out`` that exists but is no folder (a file), naming the option."""
    if out is not None and out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a folder")


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        data: str = typer.Option(..., "--data", help="Dataset folder, or an imported dataset id."),
        class_label: str = typer.Option(
            ..., "--class", help="benign | malignant: one model per class (the study's); all "
            "(or a comma list, benign,malignant): one class-conditional model on those classes."),
        profile: str = typer.Option(
            "quick", help="quick (64px, CPU) | paper (128px, GPU) | tiny (16px, 6 steps, "
            "seconds on a CPU: for tests and smoke checks only)."),
        backbone: str | None = typer.Option(
            None, help="rsu (the D-DDPM's RSU U-Net) | diffusers (UNet2DModel baseline). "
            "Default: the profile's (rsu)."),
        schedule: str | None = typer.Option(
            None, help="β schedule: linear | cosine. Default: the profile's (linear)."),
        prediction: str | None = typer.Option(
            None, help="Network target: epsilon | v. Default: the profile's (epsilon)."),
        out: Path | None = typer.Option(
            None, help="Output folder (checkpoint, loss curve); one that already holds a "
            "checkpoint is refused unless --resume. Default: a new folder per training run "
            "(named by class, profile, variant, seed, run id) in models/ under $SONOAUDIT_HOME."),
        seed: int = typer.Option(0, min=0, help="Seed of weights, batches, noise."),
        steps: int | None = typer.Option(None, min=1, help="Override the profile's step count."),
        resume: bool = typer.Option(
            False, help="Continue the run whose checkpoint is in --out (no --out: the newest "
            "default folder of this class, profile, variant and seed)."),
        threads: int | None = typer.Option(None, min=1, help="torch CPU threads."),
    ) -> None:
        """Train a joint image+mask DDPM: one per class, or one class-conditional model
        (--class all). Under torchrun, trains with DDP."""
        import torch
        from sonoaudit_generator.checkpoint import CheckpointError
        from sonoaudit_generator.config import BACKBONES, PREDICTIONS, PROFILES, SCHEDULES
        from sonoaudit_generator.store_training import train_model

        from sonoaudit.cli.common import context

        if profile not in PROFILES:
            fail(f"--profile {profile!r}: expected one of {', '.join(PROFILES)}")
        for flag, value, allowed in (("--backbone", backbone, BACKBONES),
                                     ("--schedule", schedule, SCHEDULES),
                                     ("--prediction", prediction, PREDICTIONS)):
            if value is not None and value not in allowed:
                fail(f"{flag} {value!r}: expected one of {', '.join(allowed)}")
        not_a_folder(out)
        if threads is not None:
            torch.set_num_threads(threads)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            import torch.distributed as dist

            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        ctx = context()
        try:
            model = train_model(ctx, data, class_label, profile, out, seed, resume=resume,
                                steps=steps, backbone=backbone, schedule=schedule,
                                prediction=prediction)
        except (CheckpointError, ValueError) as exc:
            fail(str(exc))
        finally:
            ctx.close()
            if world > 1:
                import torch.distributed as dist

                dist.destroy_process_group()
        if model is not None:
            print_json({"model_id": model.id, "name": model.name, "class": model.class_label,
                        "backbone": model.backbone, "schedule": model.config["schedule"],
                        "checkpoint": model.checkpoint_path})

    @app.command("generate")
    def generate_cmd(
        model: str = typer.Option(..., "--model", help="Model id (see `sonoaudit models`)."),
        class_label: str | None = typer.Option(
            None, "--class", help="Class to sample: required for a class-conditional model "
            "(one of its classes); a per-class model samples only its own class."),
        n: int = typer.Option(16, "--n", min=1, help="Number of image/mask pairs."),
        sampler: str = typer.Option("ddpm", help="ddpm (ancestral) | ddim | dpmpp."),
        steps: int | None = typer.Option(None, min=1,
                                         help="Denoising steps (default: T, 50, 25)."),
        seed: int = typer.Option(0, min=0),
        out: Path | None = typer.Option(
            None, help="Folder for PNG pairs + manifest.json: new or empty (a non-empty one is "
            "refused). Default: $SONOAUDIT_HOME/generated/<run id>."),
        batch_size: int = typer.Option(16, min=1, help="Samples per batch."),
        backend: str = typer.Option("torch", help="torch | onnx (ONNX Runtime)."),
        threads: int | None = typer.Option(None, min=1, help="torch CPU threads."),
    ) -> None:
        """Generate aligned image/mask PNG pairs, run mask QC, register them in the store."""
        import torch
        from sonoaudit_generator.checkpoint import CheckpointError
        from sonoaudit_generator.generation import default_out_dir, generate

        from sonoaudit.cli.common import context

        not_a_folder(out)
        if threads is not None:
            torch.set_num_threads(threads)
        ctx = context()
        try:
            run = generate(ctx, model, n, sampler, steps, seed, out, batch_size=batch_size,
                           backend=backend, class_label=class_label, fresh_out=True)
            folder = out if out is not None else default_out_dir(ctx, run.id)
        except (CheckpointError, ValueError) as exc:
            fail(str(exc))
        finally:
            ctx.close()
        print_json({"generation_run_id": run.id, "class": run.class_label, "n": run.n,
                    "sampler": run.sampler,
                    "steps": run.steps, "qc_summary": run.qc_summary,
                    "out": str(folder)})

    @app.command("export-onnx")
    def export_cmd(
        model: str = typer.Option(..., "--model", help="Model id."),
        out: Path | None = typer.Option(None, help="Default: <checkpoint>/denoiser.onnx."),
    ) -> None:
        """Export the denoiser (EMA weights) to ONNX with a dynamic batch axis (inputs x, t,
        and class_labels for a class-conditional model)."""
        from sonoaudit_generator.checkpoint import CheckpointError, load_checkpoint
        from sonoaudit_generator.generation import get_model
        from sonoaudit_generator.onnx_backend import export_onnx

        from sonoaudit.cli.common import context

        ctx = context()
        try:
            m = get_model(ctx, model)
            ckpt = load_checkpoint(Path(m.checkpoint_path))
            path = export_onnx(ckpt, out or ckpt.path / "denoiser.onnx")
        except (CheckpointError, ValueError) as exc:
            fail(str(exc))
        finally:
            ctx.close()
        info: dict[str, object] = {"model_id": model, "onnx": str(path)}
        if ckpt.conditional:  # the graph has a class_labels input (index into class_names)
            info["class_names"] = ckpt.class_names_or_indices()
        print_json(info)

    @app.command("models")
    def models_cmd() -> None:
        """List trained models."""
        from sqlalchemy import select

        from sonoaudit.cli.common import context
        from sonoaudit.db.models import Model
        from sonoaudit.db.session import session_scope

        ctx = context()
        try:
            with session_scope(ctx.sessions) as s:
                rows = [{"id": m.id, "name": m.name, "class": m.class_label,
                         "class_names": m.config.get("class_names"),  # conditional models
                         "backbone": m.backbone, "checkpoint": m.checkpoint_path,
                         "created_at": m.created_at} for m in s.scalars(select(Model))]
        finally:
            ctx.close()
        print_json(rows)
