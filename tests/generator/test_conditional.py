"""The class-conditional option: one model for both classes, the class given as an embedding."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gen_helpers import conditional_profile, perturbed, register_model, tiny_profile, toy_lesions
from PIL import Image as PILImage
from sonoaudit.cli.main import app
from sonoaudit.context import build_context
from sonoaudit.db.models import Image, Model, TrainingRun
from sonoaudit.settings import Settings
from sonoaudit_generator.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
)
from sonoaudit_generator.config import customise
from sonoaudit_generator.denoiser import build_denoiser
from sonoaudit_generator.generation import GenerationError, make_backend
from sonoaudit_generator.sampling import TorchBackend, sample_batch
from sonoaudit_generator.schedules import sampler_scheduler, training_scheduler
from sonoaudit_generator.training import diffusion_loss, draw_noise, train_loop
from sqlalchemy import func, select
from typer.testing import CliRunner

torch.set_num_threads(1)


def conditional(steps: int) -> object:
    return conditional_profile(steps)


def test_conditional_model_learns_which_class_is_which(tmp_path: Path) -> None:
    """Class 0: dark lesions on a bright background; class 1: the same pairs with the grey
    levels inverted. After training, the denoising loss on these images with their true labels
    must be clearly below the loss with the labels swapped (same x_t, t and ε): the only
    difference is the class embedding, so the model uses it and has learnt which is which."""
    bright = toy_lesions(8, seed=0)
    dark = bright.clone()
    dark[:, 0] = -dark[:, 0]  # invert the image channel, keep the mask
    data = torch.cat([bright, dark])
    labels = torch.tensor([0] * 8 + [1] * 8)
    prof = conditional(300)
    res = train_loop(data, data[[0, 8]], prof, tmp_path, seed=0, class_label=None,  # type: ignore[arg-type]
                     progress=False, labels=labels, val_labels=torch.tensor([0, 1]))
    ck = load_checkpoint(res.checkpoint)
    net = build_denoiser(ck.profile.model).eval()
    load_weights(net, ck.ema, ck.path, ck.profile.model)
    sched = training_scheduler(ck.profile.schedule)
    x0 = data.repeat(8, 1, 1, 1)
    y = labels.repeat(8)
    gen = torch.Generator().manual_seed(1)
    drawn = draw_noise(sched, x0.shape, gen)
    with torch.no_grad():
        right = diffusion_loss(net, sched, x0, None, "epsilon", drawn=drawn, class_labels=y)
        wrong = diffusion_loss(net, sched, x0, None, "epsilon", drawn=drawn,
                               class_labels=1 - y)
    assert float(right) < 0.8 * float(wrong), (float(right), float(wrong))


@pytest.mark.parametrize(("labels", "val_labels", "match"), [
    (None, None, "needs labels"),
    (torch.tensor([0, 1, 2, 0, 1, 0]), torch.tensor([0, 1]), r"labels must be in 0\.\.1"),
    (torch.tensor([0, 1]), torch.tensor([0, 1]), "one entry per training image"),
    (torch.tensor([0, 1, 1, 0, 1, 0]), None, "val_labels"),
])
def test_conditional_label_errors(tmp_path: Path, labels: torch.Tensor | None,
                                  val_labels: torch.Tensor | None, match: str) -> None:
    data = toy_lesions(6)
    with pytest.raises(ValueError, match=match):
        train_loop(data, data[:2], conditional(2), tmp_path, seed=0, class_label=None,  # type: ignore[arg-type]
                   progress=False, labels=labels, val_labels=val_labels)


def test_unconditional_model_refuses_labels(tmp_path: Path) -> None:
    data = toy_lesions(6)
    with pytest.raises(ValueError, match="only it accepts them"):
        train_loop(data, data[:2], tiny_profile(4, 2), tmp_path, seed=0, class_label="benign",
                   progress=False, labels=torch.zeros(6, dtype=torch.long),
                   val_labels=torch.zeros(2, dtype=torch.long))


# --- the class-conditional model end to end: train (--class all), sample a class, ONNX ---------

_perturbed = perturbed


def _json(stdout: str) -> Any:
    return json.loads(stdout[stdout.index("{"):])


def test_cli_trains_one_conditional_model_and_samples_each_class(
        tmp_path: Path, busbra_sample: Path, monkeypatch: pytest.MonkeyPatch,
        tiny_checkpoint: Path) -> None:
    for var in ("SONOAUDIT_DATABASE_URL", "SONOAUDIT_NATS_URL", "SONOAUDIT_STORE_DIR"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("SONOAUDIT_HOME", str(home))
    cli = CliRunner()
    base = ["train", "--data", str(busbra_sample), "--profile", "tiny", "--threads", "1",
            "--steps", "2"]
    res = cli.invoke(app, [*base, "--class", "all"])
    assert res.exit_code == 0, res.output
    trained = _json(res.stdout)
    assert trained["class"] is None  # Model.class_label None = class-conditional
    folder = Path(trained["checkpoint"]).parent  # a new folder per training run
    assert folder.parent == (home / "models").resolve()
    assert re.fullmatch(r"benign\+malignant-tiny-seed0-[0-9a-f]{8}", folder.name)
    ck = load_checkpoint(folder / "checkpoint")
    assert ck.class_names == ["benign", "malignant"] and ck.profile.model.num_classes == 2
    assert ck.class_label is None
    listed = cli.invoke(app, ["models"])
    assert listed.exit_code == 0, listed.output
    rows_out = json.loads(listed.stdout[listed.stdout.index("["):])
    assert [(m["class"], m["class_names"]) for m in rows_out] == [(None, ["benign", "malignant"])]

    ctx = build_context(Settings(home=home))
    with ctx.sessions() as s:
        model = s.get_one(Model, trained["model_id"])
        run = s.get_one(TrainingRun, model.training_run_id)
        rows = list(s.scalars(select(Image).where(Image.dataset_id == run.dataset_id)))
        prov = run.provenance
        assert model.config["class_names"] == ["benign", "malignant"]
        assert run.class_label == "benign,malignant"
    # both classes, each on the dataset's patient-level split; no patient on both sides
    assert {r.class_label for r in rows} == {"benign", "malignant"}
    val = [r for r in rows if r.split == "val"]
    train = [r for r in rows if r.split != "val"]
    assert prov["n_train"] == len(train) and prov["n_val"] == len(val) > 0
    for c in ("benign", "malignant"):
        assert prov["per_class"][c] == {
            "n_train": sum(r.class_label == c for r in train),
            "n_val": sum(r.class_label == c for r in val)}
    patient = re.compile(r"bus_(\d+)")

    def patients(rs: list[Image]) -> set[str]:
        return {m.group(1) for r in rs if (m := patient.search(r.name))}

    assert patients(val) and not patients(val) & patients(train)

    _perturbed(folder / "checkpoint")
    gen_out = tmp_path / "gen"
    mid = trained["model_id"]
    res = cli.invoke(app, ["generate", "--model", mid, "--class", "malignant", "--n", "2",
                           "--sampler", "ddim", "--steps", "3", "--seed", "4", "--out",
                           str(gen_out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert _json(res.stdout)["class"] == "malignant"
    manifest = json.loads((gen_out / "manifest.json").read_text())
    assert manifest["class_label"] == "malignant"
    assert manifest["provenance"]["class_index"] == 1
    assert manifest["provenance"]["class_names"] == ["benign", "malignant"]
    with ctx.sessions() as s:
        imgs = list(s.scalars(select(Image).where(
            Image.generation_run_id == manifest["generation_run_id"])
            .order_by(Image.sample_index)))
        assert [im.class_label for im in imgs] == ["malignant", "malignant"]
    # the stored pixels are the model's with label 1 (malignant), not label 0
    ck = load_checkpoint(folder / "checkpoint")
    net = build_denoiser(ck.profile.model)
    load_weights(net, ck.ema, ck.path, ck.profile.model)

    def images(label: int) -> np.ndarray:
        return sample_batch(TorchBackend(net, class_label=label),
                            lambda: sampler_scheduler(ck.profile.schedule, "ddim", 3),
                            seed=4, indices=[0, 1], channels=2, size=16).images

    got = np.stack([np.array(PILImage.open(gen_out / sm["image"]))
                    for sm in manifest["samples"]])
    assert [sm["image"] for sm in manifest["samples"]] == \
        ["malignant_00000_image.png", "malignant_00001_image.png"]
    assert np.array_equal(got, images(1)) and not np.array_equal(got, images(0))

    # errors: no class for a conditional model, a class it does not have
    bad = cli.invoke(app, ["generate", "--model", mid, "--n", "1", "--sampler", "ddim",
                           "--steps", "2"])
    assert bad.exit_code == 2
    assert "class-conditional (classes benign, malignant): give the class" in bad.output
    bad = cli.invoke(app, ["generate", "--model", mid, "--class", "normal", "--n", "1",
                           "--sampler", "ddim", "--steps", "2"])
    assert bad.exit_code == 2 and "has no class 'normal'; its classes: benign, malignant" \
        in bad.output
    # a per-class model samples its own class only
    per_class = register_model(ctx, tiny_checkpoint, "benign")
    bad = cli.invoke(app, ["generate", "--model", per_class, "--class", "malignant", "--n", "1",
                           "--sampler", "ddim", "--steps", "2"])
    assert bad.exit_code == 2 and "trained on class 'benign' only" in bad.output
    ok = cli.invoke(app, ["generate", "--model", per_class, "--class", "benign", "--n", "1",
                          "--sampler", "ddim", "--steps", "2", "--out", str(tmp_path / "b")])
    assert ok.exit_code == 0, ok.output
    with ctx.sessions() as s:  # nothing stored for the refused requests
        assert s.scalar(select(func.count()).select_from(Image)
                        .where(Image.source == "synthetic")) == 3
    # a class list naming a class the dataset lacks, or just one class, is refused
    bad = cli.invoke(app, [*base, "--class", "benign,normal"])
    assert bad.exit_code == 2 and "class 'normal' has no images" in bad.output
    bad = cli.invoke(app, [*base, "--class", "benign,"])
    assert bad.exit_code == 2 and "needs at least two classes" in bad.output
    ctx.close()


def test_resume_of_a_conditional_model_with_other_classes_is_refused(tmp_path: Path) -> None:
    data = toy_lesions(6)
    y, vy = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 1])
    train_loop(data, data[:2], conditional(4), tmp_path, seed=0, class_label=None,  # type: ignore[arg-type]
               progress=False, labels=y, val_labels=vy, class_names=["benign", "malignant"],
               stop_after=2)
    assert load_checkpoint(tmp_path / "checkpoint").class_names == ["benign", "malignant"]
    with pytest.raises(CheckpointError, match=r"classes are \['benign', 'malignant'\], not "
                                              r"\['benign', 'normal'\]"):
        train_loop(data, data[:2], conditional(4), tmp_path, seed=0, class_label=None,  # type: ignore[arg-type]
                   progress=False, labels=y, val_labels=vy, class_names=["benign", "normal"],
                   resume=True)
    with pytest.raises(ValueError, match="must name each class"):
        train_loop(data, data[:2], conditional(4), tmp_path / "x", seed=0, class_label=None,  # type: ignore[arg-type]
                   progress=False, labels=y, val_labels=vy, class_names=["benign"])


@pytest.mark.parametrize("backbone", ["rsu", "diffusers"])
def test_onnx_runtime_matches_torch_on_a_conditional_model(tmp_path: Path, backbone: str) -> None:
    """The exported conditional denoiser takes class_labels: ONNX Runtime and torch agree to
    1e-4 (max abs, in [-1, 1]) for each class, directly and through a DDIM run, and the two
    classes give clearly different outputs (the label reaches the graph)."""
    pytest.importorskip("onnxruntime")
    data = toy_lesions(6)
    prof = customise(conditional(2), backbone=backbone)  # type: ignore[arg-type]
    res = train_loop(data, data[:2], prof, tmp_path, seed=0, class_label=None, progress=False,
                     labels=torch.tensor([0, 1, 0, 1, 0, 1]), val_labels=torch.tensor([0, 1]),
                     class_names=["benign", "malignant"])
    _perturbed(res.checkpoint, scale=0.1)
    ck = load_checkpoint(res.checkpoint)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 16, 16, generator=g)
    t = torch.tensor([0, 50, 99])
    outs = {}
    for label in (0, 1):
        tb = make_backend(ck, "torch", device="cpu", class_index=label)
        ob = make_backend(ck, "onnx", class_index=label)
        outs[label] = tb(x, t)
        assert (outs[label] - ob(x, t)).abs().max().item() < 1e-4

        def factory() -> object:
            return sampler_scheduler(ck.profile.schedule, "ddim", 6)

        rt = sample_batch(tb, factory, seed=4, indices=[0, 1, 2], channels=2, size=16)
        ro = sample_batch(ob, factory, seed=4, indices=[0, 1, 2], channels=2, size=16)
        assert (rt.raw - ro.raw).abs().max().item() < 1e-4
        one = sample_batch(ob, factory, seed=4, indices=[1], channels=2, size=16)
        assert (one.raw[0] - rt.raw[1]).abs().max().item() < 1e-4  # dynamic batch
    assert (outs[0] - outs[1]).abs().max().item() > 1e-2
    side = json.loads((ck.path / "denoiser.json").read_text())
    assert side["class_names"] == ["benign", "malignant"] and "class_labels" in side["inputs"]
    from sonoaudit_generator.onnx_backend import OrtBackend

    with pytest.raises(ValueError, match="class-conditional; pass class_label"):
        OrtBackend(ck.path / "denoiser.onnx")
    with pytest.raises(GenerationError, match="needs a class index"):
        make_backend(ck, "torch")
    with pytest.raises(GenerationError, match="outside 0..1"):
        make_backend(ck, "torch", class_index=2)


def test_onnx_of_a_per_class_model_takes_no_class(tiny_checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import shutil

    from sonoaudit_generator.onnx_backend import OrtBackend

    ckpt_dir = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt_dir)
    ck = load_checkpoint(ckpt_dir)
    make_backend(ck, "onnx")
    with pytest.raises(ValueError, match="not class-conditional"):
        OrtBackend(ckpt_dir / "denoiser.onnx", class_label=0)
    with pytest.raises(GenerationError, match="only it takes one"):
        make_backend(ck, "torch", class_index=0)


def test_http_train_all_is_conditional_and_generate_needs_its_class(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from sonoaudit.datasets import import_dataset, write_phantom
    from sonoaudit_generator.main import create_app

    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    ctx = build_context(settings)
    ds = import_dataset(ctx, write_phantom(tmp_path / "phantom", n_per_class=4, size=64)).id
    with TestClient(create_app(settings)) as client:
        for cls, text in (("benign,normal", "class 'normal' has no images"),
                          ("benign,", "at least two classes")):
            r = client.post("/train", json={"dataset_id": ds, "class_label": cls})
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["loc"] == ["body", "class_label"]
            assert text in r.json()["detail"][0]["msg"]
        r = client.post("/train", json={"dataset_id": ds, "class_label": "all",
                                        "profile": "tiny", "steps": 1})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 120
        while (view := client.get(r.json()["url"]).json())["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, view
            time.sleep(0.2)
        assert view["status"] == "done", view
        mid = view["result"]["model_id"]
        with ctx.sessions() as s:
            model = s.get_one(Model, mid)
            assert model.class_label is None
            assert model.config["class_names"] == ["benign", "malignant"]
        listed = {m["id"]: m for m in client.get("/models").json()}
        assert listed[mid]["class"] is None
        assert listed[mid]["class_names"] == ["benign", "malignant"]
        r = client.post("/generate", json={"model_id": mid, "n": 1})  # no class to sample
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "class_label"] and "class-conditional" in detail["msg"]
        r = client.post("/generate", json={"model_id": mid, "class_label": "malignant", "n": 1,
                                           "sampler": "ddim", "steps": 2})
        assert r.status_code == 200, r.text
        assert r.json()["class_label"] == "malignant"
    with ctx.sessions() as s:
        assert list(s.scalars(select(Image.class_label)
                              .where(Image.source == "synthetic"))) == ["malignant"]
    ctx.close()
