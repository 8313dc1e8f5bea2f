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


def test_torchrun_rank0_imports_and_writes_the_others_wait_and_look_up(tmp_path: Path) -> None:
    """Two real gloo ranks through ``train_model`` on a folder not imported yet: rank 0 alone
    imports it and creates the TrainingRun; rank 1 trains on the same dataset id and run id,
    which it got from rank 0 after waiting; only rank 0 writes (checkpoint callback, Model);
    a resume refused on rank 0 is raised on both ranks (nobody hangs)."""
    import json
    import os
    import subprocess
    import sys

    data = write_phantom(tmp_path / "phantom", n_per_class=4, size=64)
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    settings = Settings(home=tmp_path / "home", database_url=db)
    build_context(settings).close()  # creates the schema once, before the ranks start
    record = tmp_path / "record"
    record.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("SONOAUDIT_DATABASE_URL", "SONOAUDIT_NATS_URL", "SONOAUDIT_STORE_DIR"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(Path(__file__).resolve().parent / "ddp_store_train.py"), str(tmp_path / "home"),
         db, str(data), str(tmp_path / "model"), str(record)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1))

    ctx = build_context(settings)
    with ctx.sessions() as s:
        from sonoaudit.db.models import Dataset

        datasets = list(s.scalars(select(Dataset.id)))
        runs = list(s.scalars(select(TrainingRun)))
        models = list(s.scalars(select(Model.id)))
        assert len(runs) == 1
        run_id, world, status = runs[0].id, runs[0].provenance["world_size"], runs[0].status
    ctx.close()
    assert len(datasets) == 1 and status == "done" and world == 2
    # rank 0 resolves --data once per train_model call (the second finds it imported); rank 1
    # never imports
    assert (r0["imports"], r1["imports"]) == (2, 0)
    for r in (r0, r1):  # both trained the same dataset and run (the refused resume: no call)
        assert [c["meta"]["dataset_id"] for c in r["train_loop"]] == datasets
        assert [c["meta"]["training_run_id"] for c in r["train_loop"]] == [run_id]
        assert "not found" in r["refused"]
    assert r1["refused"] == r0["refused"]
    assert [c["on_checkpoint"] for c in r0["train_loop"] + r1["train_loop"]] == [True, False]
    assert (r0["model_id"], r1["model_id"]) == (models[0], None) and len(models) == 1
    ck = load_checkpoint(tmp_path / "model" / "checkpoint")
    assert ck.step == 2 and ck.meta["training_run_id"] == run_id
    assert json.loads((tmp_path / "model" / "loss_curve.json").read_text())[-1]["step"] == 2
