"""Backbone, noise schedule and prediction target chosen by the user (CLI ``sonoaudit train``,
``POST /train``, the TRAIN job payload), recorded with the model and checked on resume."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from gen_helpers import toy_lesions
from pydantic import ValidationError
from sonoaudit.cli.main import app
from sonoaudit.context import AppContext, build_context
from sonoaudit.datasets import import_dataset, write_phantom
from sonoaudit.db.models import Job, Model, TrainingRun
from sonoaudit.messages import payloads
from sonoaudit.settings import Settings
from sonoaudit_generator.checkpoint import CheckpointError, load_checkpoint
from sonoaudit_generator.config import (
    BACKBONES,
    PREDICTIONS,
    SCHEDULES,
    customise,
    profile,
    variant_tag,
)
from sonoaudit_generator.denoiser import build_denoiser
from sonoaudit_generator.sampling import sample_seed
from sonoaudit_generator.training import _batch_with_index, train_loop
from sqlalchemy import func, select
from typer.testing import CliRunner

torch.set_num_threads(1)
TINY = profile("tiny")


def test_choices_are_the_payload_literals() -> None:
    """CLI, API and job payload offer the same words (one list, no drift)."""
    assert tuple(BACKBONES) == get_args(payloads.Backbone) == ("rsu", "diffusers")
    assert tuple(SCHEDULES) == get_args(payloads.BetaSchedule) == ("linear", "cosine")
    assert tuple(PREDICTIONS) == get_args(payloads.Prediction) == ("epsilon", "v")


def test_customise_sets_the_config_and_keeps_the_rest() -> None:
    p = customise(TINY, backbone="diffusers", schedule="cosine", prediction="v")
    assert (p.model.backbone, p.schedule.beta_schedule, p.schedule.prediction_type) == \
        ("unet2d", "cosine", "v_prediction")
    assert p.model.widths == TINY.model.widths and p.train == TINY.train
    assert customise(TINY) == TINY and variant_tag(TINY) == ""
    assert variant_tag(p) == "diffusers-cosine-v"
    assert variant_tag(customise(TINY, prediction="v")) == "v"
    with pytest.raises(ValueError, match="unknown backbone 'unet'; expected one of rsu, diffusers"):
        customise(TINY, backbone="unet")
    with pytest.raises(ValueError, match="unknown schedule 'sigmoid'"):
        customise(TINY, schedule="sigmoid")


def _cosine_alphas_cumprod(T: int, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule, written out (betas capped at 0.999)."""
    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)], dtype=np.float64)
    return np.cumprod(1 - betas)


def test_diffusers_cosine_v_first_loss_is_the_hand_computed_one(tmp_path: Path) -> None:
    """The first logged loss of a diffusers/cosine/v run is MSE(UNet2DModel(x_t, t), v) with x_t
    and v = √ᾱ ε − √(1−ᾱ) x₀ from the cosine ᾱ computed here by hand, on the batch, timesteps
    and noise of step 0; the ε target (or the linear ᾱ) gives another value."""
    data = toy_lesions(6)
    prof = customise(TINY, backbone="diffusers", schedule="cosine", prediction="v", steps=1)
    res = train_loop(data, data[:2], prof, tmp_path, seed=3, class_label="benign",
                     progress=False)
    torch.manual_seed(3)
    net = build_denoiser(prof.model)
    assert type(net).__name__ == "DiffusersUNet"
    gen = torch.Generator().manual_seed(sample_seed(3, 0))
    x0, _ = _batch_with_index(data, prof.train.batch_size, gen, prof.train.flip)
    t = torch.randint(0, prof.schedule.num_train_timesteps, (x0.shape[0],), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    abar = torch.tensor(_cosine_alphas_cumprod(prof.schedule.num_train_timesteps),
                        dtype=torch.float32)[t][:, None, None, None]
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    with torch.no_grad():
        pred = net(xt, t)
    want = F.mse_loss(pred, v).item()
    assert res.loss_curve[0]["loss"] == pytest.approx(want, rel=1e-4)
    assert F.mse_loss(pred, eps).item() != pytest.approx(want, rel=1e-2)
    ck = load_checkpoint(res.checkpoint)
    assert ck.profile == prof
    assert any(k.startswith("unet.") for k in ck.ema)  # UNet2DModel's weights


@pytest.mark.parametrize(("choice", "field"), [
    ({"backbone": "diffusers"}, "model.backbone: 'rsu_unet' -> 'unet2d'"),
    ({"schedule": "cosine"}, "schedule.beta_schedule: 'linear' -> 'cosine'"),
    ({"prediction": "v"}, "schedule.prediction_type: 'epsilon' -> 'v_prediction'"),
])
def test_resume_with_another_backbone_schedule_or_target_names_it(
        tmp_path: Path, choice: dict[str, Any], field: str) -> None:
    data = toy_lesions(6)
    train_loop(data, data[:2], TINY, tmp_path, seed=0, class_label="benign", progress=False,
               stop_after=3)
    with pytest.raises(CheckpointError) as err:
        train_loop(data, data[:2], customise(TINY, **choice), tmp_path, seed=0,
                   class_label="benign", progress=False, resume=True)
    assert field in str(err.value) and "--backbone/--schedule/--prediction" in str(err.value)
    assert str(err.value).count("' -> '") == 1  # only what differs
    assert load_checkpoint(tmp_path / "checkpoint").step == 3  # untouched


def _json(stdout: str) -> Any:
    return json.loads(stdout[stdout.index("{"):])


def test_cli_train_with_diffusers_cosine_v_records_it_and_resume_refuses_others(
        tmp_path: Path, busbra_sample: Path, home: Path) -> None:
    base = ["train", "--data", str(busbra_sample), "--class", "malignant", "--profile", "tiny",
            "--threads", "1", "--steps", "2"]
    res = CliRunner().invoke(app, [*base, "--backbone", "diffusers", "--schedule", "cosine",
                                   "--prediction", "v"])
    assert res.exit_code == 0, res.output
    out = _json(res.stdout)
    assert out["backbone"] == "unet2d" and out["schedule"]["beta_schedule"] == "cosine"
    # default folder names the variant (and the run: a new folder per training run), so the
    # rsu/linear/epsilon model is not overwritten
    folder = Path(out["checkpoint"]).parent
    assert folder.parent == (home / "models").resolve()
    assert re.fullmatch(r"malignant-tiny-diffusers-cosine-v-seed0-[0-9a-f]{8}", folder.name)
    ck = load_checkpoint(folder / "checkpoint")
    assert (ck.profile.model.backbone, ck.profile.schedule.beta_schedule,
            ck.profile.schedule.prediction_type) == ("unet2d", "cosine", "v_prediction")
    assert (ck.meta["backbone"], ck.meta["schedule"], ck.meta["prediction"]) == \
        ("diffusers", "cosine", "v")
    ctx = build_context(Settings(home=home))
    with ctx.sessions() as s:
        model = s.get_one(Model, out["model_id"])
        run = s.get_one(TrainingRun, model.training_run_id)
        assert model.backbone == "unet2d" and "diffusers-cosine-v" in model.name
        assert model.config["schedule"]["prediction_type"] == "v_prediction"
        assert (run.provenance["backbone"], run.provenance["schedule"],
                run.provenance["prediction"]) == ("diffusers", "cosine", "v")
    ctx.close()

    # resuming that folder with the profile's defaults (rsu) is refused with what differs
    bad = CliRunner().invoke(app, [*base, "--out", str(folder), "--resume", "--schedule",
                                   "cosine", "--prediction", "v"])
    assert bad.exit_code == 2, bad.output
    assert "model.backbone: 'unet2d' -> 'rsu_unet'" in bad.output
    assert load_checkpoint(folder / "checkpoint").digests == ck.digests


@pytest.mark.parametrize(("flag", "value"), [("--backbone", "unet"), ("--schedule", "sigmoid"),
                                             ("--prediction", "x0")])
def test_cli_train_refuses_unknown_choices(busbra_sample: Path, home: Path, flag: str,
                                           value: str) -> None:
    res = CliRunner().invoke(app, ["train", "--data", str(busbra_sample), "--class", "benign",
                                   "--profile", "tiny", flag, value])
    assert res.exit_code == 2
    assert f"{flag} {value!r}: expected one of" in res.output
    assert not (home / "models").exists()


def test_train_payload_validates_the_choices() -> None:
    ok = payloads.TrainRequest(job_id="j", dataset_id="d", class_label="benign",
                               backbone="diffusers", schedule="cosine", prediction="v")
    assert (ok.backbone, ok.schedule, ok.prediction) == ("diffusers", "cosine", "v")
    assert payloads.TrainRequest(job_id="j", dataset_id="d", class_label="benign").backbone \
        is None
    for field, value in (("backbone", "unet2d"), ("schedule", "sigmoid"), ("prediction", "x0")):
        with pytest.raises(ValidationError) as err:
            payloads.TrainRequest(job_id="j", dataset_id="d", class_label="benign",
                                  **{field: value})
        assert err.value.errors()[0]["loc"] == (field,)


@pytest.fixture
def phantom_store(tmp_path: Path) -> Any:
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    ctx = build_context(settings)
    ds = import_dataset(ctx, write_phantom(tmp_path / "phantom", n_per_class=4, size=64))
    yield settings, ctx, ds.id
    ctx.close()


def _wait(client: TestClient, url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while (view := client.get(url).json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, view
        time.sleep(0.2)
    return view  # type: ignore[no-any-return]


def test_post_train_takes_backbone_schedule_prediction(
        phantom_store: tuple[Settings, AppContext, str]) -> None:
    from sonoaudit_generator.main import create_app

    settings, ctx, ds = phantom_store
    with TestClient(create_app(settings)) as client:
        for field, value in (("backbone", "unet2d"), ("schedule", "sigmoid"),
                             ("prediction", "v_prediction")):
            r = client.post("/train", json={"dataset_id": ds, "class_label": "benign",
                                            field: value})
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["loc"] == ["body", field]
        with ctx.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Job)) == 0  # nothing queued

        r = client.post("/train", json={"dataset_id": ds, "class_label": "benign",
                                        "profile": "tiny", "steps": 1, "backbone": "diffusers",
                                        "schedule": "cosine", "prediction": "v"})
        assert r.status_code == 202, r.text
        view = _wait(client, r.json()["url"])
    assert view["status"] == "done", view
    assert view["params"]["backbone"] == "diffusers"
    with ctx.sessions() as s:
        model = s.get_one(Model, view["result"]["model_id"])
        assert model.backbone == "unet2d"
    ck = load_checkpoint(Path(model.checkpoint_path))
    assert (ck.profile.model.backbone, ck.profile.schedule.beta_schedule,
            ck.profile.schedule.prediction_type) == ("unet2d", "cosine", "v_prediction")
