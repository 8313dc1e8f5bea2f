"""``sonoaudit train`` and ``sonoaudit generate`` on the real BUS-BRA sample (tiny profile, so it
runs in seconds): store rows, patient-level split, loss curve, PNG pairs and manifest."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from sonoaudit.cli.main import app
from sonoaudit.context import build_context
from sonoaudit.db.models import Image, Model, TrainingRun
from sonoaudit.settings import Settings
from sqlalchemy import select
from typer.testing import CliRunner


def _json(stdout: str) -> object:
    return json.loads(stdout[stdout.index("{"):])  # progress bars go to stderr


def test_train_then_generate_on_busbra(tmp_path: Path, busbra_sample: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SONOAUDIT_DATABASE_URL", "SONOAUDIT_NATS_URL", "SONOAUDIT_STORE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SONOAUDIT_HOME", str(tmp_path / "home"))
    out = tmp_path / "model"
    res = CliRunner().invoke(app, ["train", "--data", str(busbra_sample), "--class", "benign",
                                   "--profile", "tiny", "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    trained = _json(res.stdout)
    assert isinstance(trained, dict) and trained["class"] == "benign"

    ctx = build_context(Settings(home=tmp_path / "home"))
    with ctx.sessions() as s:
        model = s.get_one(Model, trained["model_id"])
        run = s.get_one(TrainingRun, model.training_run_id)
        rows = list(s.scalars(select(Image).where(Image.dataset_id == run.dataset_id,
                                                  Image.class_label == "benign")))
        curve, prov = run.loss_curve, run.provenance
    # the split used is the dataset's patient-level split: counts match, and no BUS-BRA patient
    # (bus_NNNN in the file name) is on both sides
    val = [r for r in rows if r.split == "val"]
    assert prov["n_train"] == len(rows) - len(val) and prov["n_val"] == len(val) > 0
    patient = re.compile(r"bus_(\d+)")

    def patients(rs: list[Image]) -> set[str]:
        return {m.group(1) for r in rs if (m := patient.search(r.name))}

    assert patients(val) and not patients(val) & patients([r for r in rows if r.split != "val"])
    assert [c["step"] for c in curve] == list(range(1, 7))  # tiny: 6 steps, all logged
    png = PILImage.open(out / "loss_curve.png")
    assert png.format == "PNG" and png.size[0] > 100
    assert json.loads((out / "loss_curve.json").read_text()) == curve

    gen_out = tmp_path / "gen"
    res = CliRunner().invoke(app, ["generate", "--model", trained["model_id"], "--n", "3",
                                   "--sampler", "ddim", "--steps", "3", "--seed", "2",
                                   "--out", str(gen_out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((gen_out / "manifest.json").read_text())
    assert manifest["class_label"] == "benign" and manifest["steps"] == 3
    assert manifest["provenance"]["packages"]["torch"] == torch.__version__
    assert manifest["provenance"]["seed"] == 2
    for k, sample in enumerate(manifest["samples"]):
        assert sample["image"] == f"benign_{k:05d}_image.png"
        img = np.array(PILImage.open(gen_out / sample["image"]))
        mask = np.array(PILImage.open(io.BytesIO((gen_out / sample["mask"]).read_bytes())))
        assert img.shape == mask.shape == (16, 16)
        assert sample["qc"]["lesion_area_px"] == int((mask > 0).sum())

    bad = CliRunner().invoke(app, ["generate", "--model", trained["model_id"], "--n", "2",
                                   "--sampler", "ddim", "--steps", "101"])
    assert bad.exit_code != 0 and "steps must be in 1..100" in bad.output
    ctx.close()
