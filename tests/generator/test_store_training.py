"""``train_model`` (training wired to the store): what a refused resume leaves behind, and the
rank logic under torchrun (rank 0 imports and writes; the other ranks wait and look up)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sonoaudit.context import AppContext, build_context
from sonoaudit.datasets import import_dataset, write_phantom
from sonoaudit.db.models import Model, TrainingRun
from sonoaudit.settings import Settings
from sonoaudit_generator.checkpoint import CheckpointError, load_checkpoint
from sonoaudit_generator.store_training import train_model
from sqlalchemy import func, select

torch.set_num_threads(1)


@pytest.fixture
def phantom(tmp_path: Path) -> Iterator[tuple[AppContext, str]]:
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    ctx = build_context(settings)
    ds = import_dataset(ctx, write_phantom(tmp_path / "phantom", n_per_class=4, size=64))
    yield ctx, ds.id
    ctx.close()


def _runs(ctx: AppContext) -> list[dict[str, Any]]:
    cols = ("id", "status", "provenance", "loss_curve", "config", "started_at", "finished_at",
            "class_label", "seed")
    with ctx.sessions() as s:
        return [{c: getattr(r, c) for c in cols}
                for r in s.scalars(select(TrainingRun).order_by(TrainingRun.started_at))]


def test_refused_resume_leaves_the_earlier_run_as_it_was(
        phantom: tuple[AppContext, str], tmp_path: Path) -> None:
    """The refusal is about the new request: the run that wrote the checkpoint keeps its
    status, provenance (no error) and curve, no new row appears, the checkpoint is untouched."""
    ctx, ds = phantom
    out = tmp_path / "model"
    assert train_model(ctx, ds, "benign", "tiny", out, seed=0, steps=4, stop_after=2,
                       progress=False) is None  # interrupted after 2 of 4 steps
    before = _runs(ctx)
    assert [r["status"] for r in before] == ["interrupted"]
    assert [c["step"] for c in before[0]["loss_curve"]] == [1, 2]
    digests = load_checkpoint(out / "checkpoint").digests
    refused: list[tuple[dict[str, Any], str]] = [
        ({"seed": 1}, "seed 0, not 1"),
        ({"schedule": "cosine"}, "schedule.beta_schedule: 'linear' -> 'cosine'"),
        ({"class_label": "malignant"}, "class 'benign', not 'malignant'"),
        ({"steps": 6}, "train.steps: 4 -> 6"),
    ]
    for kw, text in refused:
        args: dict[str, Any] = {"class_label": "benign", "seed": 0, "steps": 4, **kw}
        with pytest.raises(CheckpointError, match=text.replace("(", r"\(").replace(")", r"\)")):
            train_model(ctx, ds, args.pop("class_label"), "tiny", out, resume=True,
                        progress=False, **args)
        assert _runs(ctx) == before, kw
    assert load_checkpoint(out / "checkpoint").digests == digests
    # a resume that fits continues that same row to the end
    model = train_model(ctx, ds, "benign", "tiny", out, seed=0, steps=4, resume=True,
                        progress=False)
    assert model is not None and model.training_run_id == before[0]["id"]
    done = _runs(ctx)
    assert [(r["id"], r["status"]) for r in done] == [(before[0]["id"], "done")]
    assert "error" not in done[0]["provenance"]
    assert [c["step"] for c in done[0]["loss_curve"]] == [1, 2, 3, 4]
    # a finished run stays finished when a later resume is refused
    with pytest.raises(CheckpointError, match="seed 0, not 2"):
        train_model(ctx, ds, "benign", "tiny", out, seed=2, steps=4, resume=True,
                    progress=False)
    assert _runs(ctx) == done
    # --resume on a folder without a checkpoint writes no row at all
    with pytest.raises(CheckpointError, match="not found"):
        train_model(ctx, ds, "benign", "tiny", tmp_path / "empty", seed=0, steps=4,
                    resume=True, progress=False)
    assert _runs(ctx) == done
    with ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Model)) == 1
