"""The train step of ``run-study`` never reuses a model made from other inputs: a re-run with other
data, steps or seed under the same run name trains afresh (it returned the old finished model, or
failed with CheckpointError), while a re-run with the same inputs still resumes its own
checkpoint. Tiny settings: 64 px phantom, 2 training steps, one class."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sonoaudit.context import AppContext, build_context
from sonoaudit.datasets import write_phantom
from sonoaudit.datasets.importer import import_dataset
from sonoaudit.db.models import Model, TrainingRun
from sonoaudit.pipeline.config import RunConfig
from sonoaudit.pipeline.runner import Pipeline
from sonoaudit.pipeline.transport import EmbeddedTransport
from sonoaudit.settings import Settings
from sonoaudit_generator.checkpoint import CheckpointError
from sonoaudit_generator.store_training import train_model


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppContext, str, str, Path]]:
    root = tmp_path_factory.mktemp("traininputs")
    ctx = build_context(Settings(home=root / "home"))
    ids = []
    for seed in (0, 1):
        write_phantom(root / f"data{seed}", n_per_class=4, seed=seed, size=64)
        ids.append(import_dataset(ctx, root / f"data{seed}").id)
    assert ids[0] != ids[1]
    yield ctx, ids[0], ids[1], root
    ctx.close()


def _train(ctx: AppContext, out: Path, dataset_id: str, **train: object) -> str:
    cfg = RunConfig(name="same-name", classes=["benign"],
                    train={"profile": "quick", "steps": 2, **train})
    pipe = Pipeline(ctx, EmbeddedTransport(ctx), cfg, out, echo=lambda _: None)
    return str(pipe.step_train({"import": {"dataset_id": dataset_id}})["models"]["benign"])


def _run_of(ctx: AppContext, model_id: str) -> TrainingRun:
    with ctx.sessions() as s:
        run = s.get_one(TrainingRun, s.get_one(Model, model_id).training_run_id)
        s.expunge(run)
        return run


@pytest.mark.slow
def test_rerun_with_other_inputs_trains_afresh(env: tuple[AppContext, str, str, Path]) -> None:
    ctx, ds_a, ds_b, root = env
    out = root / "run"
    model_a = _train(ctx, out, ds_a)
    assert _run_of(ctx, model_a).dataset_id == ds_a
    # other data under the same run name: a new model, trained on the new data
    model_b = _train(ctx, out, ds_b)
    assert model_b != model_a
    assert _run_of(ctx, model_b).dataset_id == ds_b
    # other steps / seed: trained afresh (not CheckpointError), with what was asked
    model_c = _train(ctx, out, ds_a, steps=3)
    run_c = _run_of(ctx, model_c)
    assert model_c not in (model_a, model_b)
    assert run_c.config["train"]["steps"] == 3 and run_c.dataset_id == ds_a
    model_d = _train(ctx, out, ds_a, seed=5)
    assert _run_of(ctx, model_d).seed == 5 and model_d not in (model_a, model_b, model_c)
    # the same inputs again: its own finished checkpoint is resumed, the model reused
    assert _train(ctx, out, ds_a) == model_a


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_another_dataset(
    env: tuple[AppContext, str, str, Path]
) -> None:
    ctx, ds_a, ds_b, root = env
    out = root / "direct"
    model = train_model(ctx, ds_a, "benign", "quick", out, steps=2, progress=False)
    assert model is not None
    with pytest.raises(CheckpointError, match=f"trained on dataset {ds_a}, not {ds_b}"):
        train_model(ctx, ds_b, "benign", "quick", out, steps=2, resume=True, progress=False)
