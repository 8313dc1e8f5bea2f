"""Output folders never mix runs: ``generate`` refuses a non-empty ``--out`` and writes a folder
per run by default (a redelivered job still continues its own folder); ``train`` writes a folder
per training run by default and refuses an ``--out`` that holds another model's checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from gen_helpers import register_model
from gen_helpers import row_count as _count
from sonoaudit.cli.main import app
from sonoaudit.context import AppContext, build_context
from sonoaudit.db.models import GenerationRun, Image, Job, Model, TrainingRun
from sonoaudit.db.session import session_scope
from sonoaudit.settings import Settings
from sonoaudit_generator.checkpoint import load_checkpoint
from sonoaudit_generator.generation import GenerationError, generate
from sonoaudit_generator.store_training import train_model
from sqlalchemy import func, select
from typer.testing import CliRunner


def _json(stdout: str) -> Any:
    return json.loads(stdout[stdout.index("{"):])  # progress bars go to stderr


def _tree(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


GEN = ["--sampler", "ddim", "--steps", "2", "--threads", "1"]


def test_generate_refuses_a_non_empty_out_and_leaves_it_as_it_was(
        tiny_checkpoint: Path, home: Path, tmp_path: Path) -> None:
    ctx = build_context(Settings(home=home))
    model_id = register_model(ctx, tiny_checkpoint)
    ctx.close()
    out = tmp_path / "gen"
    cli = CliRunner()
    first = cli.invoke(app, ["generate", "--model", model_id, "--n", "2", *GEN,
                             "--out", str(out)])
    assert first.exit_code == 0, first.output
    run_id = _json(first.stdout)["generation_run_id"]
    before = _tree(out)
    assert sorted(before) == ["benign_00000_image.png", "benign_00000_mask.png",
                              "benign_00001_image.png", "benign_00001_mask.png",
                              "manifest.json"]
    again = cli.invoke(app, ["generate", "--model", model_id, "--n", "1", *GEN, "--seed", "7",
                             "--out", str(out)])
    assert again.exit_code == 2, again.output
    assert f"--out {out} is not empty (5 entries, e.g. benign_00000_image.png)" in again.output
    assert "Traceback" not in again.output
    assert _tree(out) == before  # no sample overwritten, the manifest is still the first run's
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generation_run_id"] == run_id and len(manifest["samples"]) == 2
    assert _count(home, GenerationRun) == 1  # refused before any row was written
    # an existing but empty folder is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    ok = cli.invoke(app, ["generate", "--model", model_id, "--n", "1", *GEN,
                          "--out", str(empty)])
    assert ok.exit_code == 0, ok.output
    assert _json(ok.stdout)["out"] == str(empty)
    assert len(json.loads((empty / "manifest.json").read_text())["samples"]) == 1


def test_generate_default_out_is_a_new_folder_per_run(tiny_checkpoint: Path,
                                                      home: Path) -> None:
    ctx = build_context(Settings(home=home))
    model_id = register_model(ctx, tiny_checkpoint)
    ctx.close()
    outs = []
    for n in (2, 1):
        res = CliRunner().invoke(app, ["generate", "--model", model_id, "--n", str(n), *GEN])
        assert res.exit_code == 0, res.output
        info = _json(res.stdout)
        folder = Path(info["out"])
        assert folder == home / "generated" / info["generation_run_id"]
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["generation_run_id"] == info["generation_run_id"]
        assert len(manifest["samples"]) == n
        assert len(list(folder.glob("*_image.png"))) == n
        outs.append(folder)
    assert outs[0] != outs[1]


class Stop(Exception):
    pass


def test_a_redelivered_job_continues_its_own_non_empty_folder(
        tiny_checkpoint: Path, sqlite_ctx: AppContext, tmp_path: Path) -> None:
    """``fresh_out`` refuses other runs' folders, not the job's own on redelivery."""
    model_id = register_model(sqlite_ctx, tiny_checkpoint)
    with session_scope(sqlite_ctx.sessions) as s:
        s.add_all([Job(id=j, kind="generate", total=3) for j in ("job-1", "job-2")])
    out = tmp_path / "job"

    def die_after_first(done: int, total: int) -> None:
        raise Stop  # the worker dies once sample 0 is stored

    with pytest.raises(Stop):
        generate(sqlite_ctx, model_id, 3, "ddim", 2, 0, out, batch_size=1, job_id="job-1",
                 progress=False, on_progress=die_after_first, fresh_out=True)
    assert sorted(p.name for p in out.iterdir()) == ["benign_00000_image.png",
                                                     "benign_00000_mask.png"]
    (out / ".benign_00001_image.png.x.tmp").write_bytes(b"half")  # a half-written file
    # another run is refused the folder ...
    with pytest.raises(GenerationError, match="is not empty"):
        generate(sqlite_ctx, model_id, 1, "ddim", 2, 0, out, job_id="job-2", progress=False,
                 fresh_out=True)
    # ... the same job (redelivered) continues it
    run = generate(sqlite_ctx, model_id, 3, "ddim", 2, 0, out, batch_size=1, job_id="job-1",
                   progress=False, fresh_out=True)
    assert sorted(p.name for p in out.iterdir()) == [
        *[f"benign_{i:05d}_{k}.png" for i in range(3) for k in ("image", "mask")],
        "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generation_run_id"] == run.id and manifest["job_id"] == "job-1"
    assert [s["index"] for s in manifest["samples"]] == [0, 1, 2]
    with sqlite_ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(GenerationRun)) == 1
        assert list(s.scalars(select(Image.sample_index).where(
            Image.generation_run_id == run.id).order_by(Image.sample_index))) == [0, 1, 2]


TRAIN = ["train", "--class", "benign", "--profile", "tiny", "--threads", "1"]


def _model(home: Path, model_id: str) -> tuple[str, str, str]:
    """(checkpoint path, training run id, training run out_dir) of a model."""
    ctx = build_context(Settings(home=home))
    try:
        with ctx.sessions() as s:
            m = s.get_one(Model, model_id)
            run = s.get_one(TrainingRun, m.training_run_id)
            return m.checkpoint_path, run.id, str(run.out_dir)
    finally:
        ctx.close()


def test_retraining_without_out_keeps_the_first_models_weights(busbra_sample: Path,
                                                               home: Path) -> None:
    """The newcomer's case: train, then train again with --steps 3 and no --resume. Each run
    gets its own folder, named by its TrainingRun id; the first model still samples its own
    6-step weights."""
    cli = CliRunner()
    trained = []
    for extra in ([], ["--steps", "3"]):
        res = cli.invoke(app, [*TRAIN, "--data", str(busbra_sample), *extra])
        assert res.exit_code == 0, res.output
        trained.append(_json(res.stdout))
    paths = []
    for info, steps in zip(trained, (6, 3), strict=True):
        ckpt, run_id, out_dir = _model(home, info["model_id"])
        folder = home / "models" / f"benign-tiny-seed0-{run_id[:8]}"
        assert out_dir == str(folder) and ckpt == str((folder / "checkpoint").resolve())
        assert info["checkpoint"] == ckpt
        assert load_checkpoint(folder / "checkpoint").step == steps
        paths.append(ckpt)
    assert paths[0] != paths[1]
    assert not (home / "models" / "benign-tiny-seed0").exists()  # the old shared default
    res = cli.invoke(app, ["generate", "--model", trained[0]["model_id"], "--n", "1", *GEN])
    assert res.exit_code == 0, res.output
    manifest = json.loads((Path(_json(res.stdout)["out"]) / "manifest.json").read_text())
    assert manifest["provenance"]["checkpoint"] == paths[0]
    assert manifest["provenance"]["checkpoint_step"] == 6
    # --resume without --out continues the newest default folder (the 3-step run's)
    res = cli.invoke(app, [*TRAIN, "--data", str(busbra_sample), "--steps", "3", "--resume"])
    assert res.exit_code == 0, res.output
    assert _json(res.stdout)["model_id"] == trained[1]["model_id"]
    assert _count(home, TrainingRun) == 2 and _count(home, Model) == 2


def test_an_out_holding_a_checkpoint_is_refused_unless_resumed(busbra_sample: Path, home: Path,
                                                               tmp_path: Path) -> None:
    cli = CliRunner()
    out = tmp_path / "model"
    res = cli.invoke(app, [*TRAIN, "--data", str(busbra_sample), "--out", str(out)])
    assert res.exit_code == 0, res.output
    first = _json(res.stdout)
    digests = load_checkpoint(out / "checkpoint").digests
    ctx = build_context(Settings(home=home))
    with ctx.sessions() as s:
        name = s.get_one(Model, first["model_id"]).name
    ctx.close()
    again = cli.invoke(app, [*TRAIN, "--data", str(busbra_sample), "--out", str(out),
                             "--steps", "3"])
    assert again.exit_code == 2, again.output
    assert (f"--out {out} already holds the checkpoint of model {first['model_id']} ({name})"
            in again.output.replace("\n", " "))
    assert "--resume" in again.output and "Traceback" not in again.output
    assert load_checkpoint(out / "checkpoint").digests == digests
    assert _count(home, TrainingRun) == 1 and _count(home, Model) == 1
    # --resume there continues that same run and model
    res = cli.invoke(app, [*TRAIN, "--data", str(busbra_sample), "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    assert _json(res.stdout)["model_id"] == first["model_id"]
    assert _count(home, TrainingRun) == 1 and _count(home, Model) == 1


def test_an_interrupted_default_run_is_refused_afresh_and_resumed_without_out(
        busbra_sample: Path, home: Path) -> None:
    cli = CliRunner()
    res = cli.invoke(app, [*TRAIN, "--data", str(busbra_sample), "--resume"])
    assert res.exit_code == 2, res.output
    assert "no checkpoint of an earlier run in" in res.output
    assert _count(home, TrainingRun) == 0
    ctx = build_context(Settings(home=home))
    try:
        assert train_model(ctx, busbra_sample, "benign", "tiny", None, seed=0, stop_after=3,
                           progress=False) is None  # interrupted after 3 of 6 steps
        with ctx.sessions() as s:
            run = s.scalars(select(TrainingRun)).one()
            run_id, out = run.id, Path(str(run.out_dir))
    finally:
        ctx.close()
    assert out == home / "models" / f"benign-tiny-seed0-{run_id[:8]}"
    assert load_checkpoint(out / "checkpoint").step == 3
    # training afresh in that folder is refused, naming the interrupted run
    res = cli.invoke(app, [*TRAIN, "--data", str(busbra_sample), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert f"training run {run_id} (interrupted)" in res.output.replace("\n", " ")
    res = cli.invoke(app, [*TRAIN, "--data", str(busbra_sample), "--resume"])
    assert res.exit_code == 0, res.output
    ckpt, resumed_run, _ = _model(home, _json(res.stdout)["model_id"])
    assert resumed_run == run_id and ckpt == str((out / "checkpoint").resolve())
    assert load_checkpoint(out / "checkpoint").step == 6
