"""Checkpoint saving is atomic for the folder as a whole: a crash mid-save keeps the last one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from sonoaudit_generator import checkpoint as ckpt_mod
from sonoaudit_generator.checkpoint import (
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from sonoaudit_generator.config import profile

TINY = profile("tiny")


def weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 2), value), "b": torch.arange(4.0) * value}


def save(path: Path, step: int, value: float) -> Path:
    return save_checkpoint(path, profile=TINY, class_label="benign", step=step,
                           weights=weights(value), ema=weights(value + 1),
                           state={"loss_curve": [{"step": step}]}, meta={"seed": 0})


def assert_is(path: Path, step: int, value: float) -> None:
    ck = load_checkpoint(path, with_state=True)
    assert ck.step == step and ck.state["loss_curve"] == [{"step": step}]
    torch.testing.assert_close(ck.weights["w"], torch.full((3, 2), value), atol=0, rtol=0)
    torch.testing.assert_close(ck.ema["b"], torch.arange(4.0) * (value + 1), atol=0, rtol=0)


@pytest.mark.parametrize("fail_at", ["ema.safetensors", "config.json", "training_state.pt",
                                     "checkpoint.json"])
def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path: Path, fail_at: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint"
    save(path, 10, 1.0)
    real = ckpt_mod.atomic_write_bytes
    written: list[str] = []

    def crash(p: Path, data: bytes) -> None:
        if p.name == fail_at:
            raise OSError(28, "No space left on device")
        written.append(p.name)
        real(p, data)

    monkeypatch.setattr(ckpt_mod, "atomic_write_bytes", crash)
    with pytest.raises(OSError, match="No space left"):
        save(path, 20, 2.0)
    assert "model.safetensors" in written  # the new weights were written somewhere...
    assert_is(path, 10, 1.0)  # ...but the last good checkpoint is untouched and loads
    assert has_checkpoint(path)
    monkeypatch.setattr(ckpt_mod, "atomic_write_bytes", real)
    save(path, 30, 3.0)  # the next save succeeds and cleans up the half-written folder
    assert_is(path, 30, 3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


@pytest.mark.parametrize("survivor", ["new", "old"])
def test_crash_between_the_renames_is_repaired(tmp_path: Path, survivor: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after moving the old folder aside, before moving the new one in: the next load
    puts back the complete new folder (or, if that is gone too, the old one)."""
    path = tmp_path / "checkpoint"
    save(path, 10, 1.0)
    real = os.replace
    calls: list[tuple[str, str]] = []

    def die_on_second(src: object, dst: object) -> None:
        calls.append((Path(str(src)).name, Path(str(dst)).name))
        if Path(str(dst)) == path:
            raise KeyboardInterrupt  # the process dies here
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(ckpt_mod.os, "replace", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        save(path, 20, 2.0)
    monkeypatch.setattr(ckpt_mod.os, "replace", real)
    assert not path.exists()
    assert (tmp_path / ".checkpoint.old").is_dir() and (tmp_path / ".checkpoint.new").is_dir()
    if survivor == "old":
        import shutil

        shutil.rmtree(tmp_path / ".checkpoint.new")
        assert_is(path, 10, 1.0)
    else:
        assert_is(path, 20, 2.0)


def test_save_replaces_the_folder_with_exactly_the_new_files(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint"
    save(path, 10, 1.0)
    (path / "denoiser.onnx").write_bytes(b"exported from step 10")
    save(path, 20, 2.0)
    assert_is(path, 20, 2.0)
    assert sorted(p.name for p in path.iterdir()) == [
        "checkpoint.json", "config.json", "ema.safetensors", "model.safetensors",
        "training_state.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
