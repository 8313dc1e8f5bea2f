"""Training: reproducible, resumable to the same loss curve, checkpoints verified."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sonoaudit_generator.checkpoint import CheckpointError, load_checkpoint
from sonoaudit_generator.config import profile
from sonoaudit_generator.training import _batch, to_training_tensor, train_loop

torch.set_num_threads(1)
TINY = profile("tiny")


def blobs(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Dark discs on a bright background with their masks (a toy lesion set)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, masks = [], []
    for _ in range(n):
        cy, cx, r = rng.integers(4, size - 4), rng.integers(4, size - 4), rng.integers(2, 5)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = np.where(m, 40, 180) + rng.integers(0, 20, (size, size))
        imgs.append(img.astype(np.uint8))
        masks.append(m)
    return to_training_tensor(np.stack(imgs), np.stack(masks))


def test_training_tensor_scaling() -> None:
    x = to_training_tensor(np.array([[[0, 255]]], dtype=np.uint8), np.array([[[True, False]]]))
    assert x.tolist() == [[[[-1.0, 1.0]], [[1.0, -1.0]]]]


def test_flip_is_shared_by_image_and_mask() -> None:
    data = blobs(4)
    gen = torch.Generator().manual_seed(0)
    xb = _batch(data, 64, gen, flip=True)
    flipped = 0
    for x in xb:
        match = [i for i in range(4) if torch.equal(x, data[i])]
        mirrored = [i for i in range(4) if torch.equal(x, data[i].flip(-1))]
        # each sample is its source pair, either untouched or with BOTH channels mirrored
        assert match or mirrored
        flipped += bool(mirrored and not match)
    assert 0 < flipped < 64


def test_same_seed_same_curve_and_resume_matches_uninterrupted(tmp_path: Path) -> None:
    data = blobs()
    full = train_loop(data, data[:2], TINY, tmp_path / "a", seed=3, class_label="benign",
                      progress=False)
    again = train_loop(data, data[:2], TINY, tmp_path / "b", seed=3, class_label="benign",
                       progress=False)
    part = train_loop(data, data[:2], TINY, tmp_path / "c", seed=3, class_label="benign",
                      progress=False, stop_after=3)
    assert part.step == 3
    resumed = train_loop(data, data[:2], TINY, tmp_path / "c", seed=3, class_label="benign",
                         progress=False, resume=True)
    losses = [c["loss"] for c in full.loss_curve]
    assert len(losses) == TINY.train.steps
    # same thread count on both sides, so we expect bit-equality; 1e-6 relative is the stated
    # tolerance for float reordering.
    np.testing.assert_allclose([c["loss"] for c in again.loss_curve], losses, rtol=1e-6)
    np.testing.assert_allclose([c["loss"] for c in resumed.loss_curve], losses, rtol=1e-6)
    a = load_checkpoint(full.checkpoint)
    c = load_checkpoint(resumed.checkpoint)
    for k, v in a.ema.items():
        torch.testing.assert_close(c.ema[k], v, rtol=1e-5, atol=1e-6)
    other = train_loop(data, data[:2], TINY, tmp_path / "d", seed=4, class_label="benign",
                       progress=False)
    assert [c["loss"] for c in other.loss_curve] != losses


def test_training_reduces_loss_on_toy_lesions(tmp_path: Path) -> None:
    p = TINY.model_copy(update={"train": TINY.train.model_copy(update={"steps": 60,
                                                                       "checkpoint_every": 60})})
    res = train_loop(blobs(8), blobs(2, seed=9), p, tmp_path, seed=0, class_label="benign",
                     progress=False)
    first = np.mean([c["loss"] for c in res.loss_curve[:10]])
    last = np.mean([c["loss"] for c in res.loss_curve[-10:]])
    assert last < 0.7 * first
    assert np.isfinite(res.loss_curve[-1]["val_loss"])


def test_corrupt_checkpoint_is_refused_with_the_file_name(tmp_path: Path) -> None:
    res = train_loop(blobs(), blobs(2), TINY, tmp_path, seed=0, class_label="benign",
                     progress=False)
    weights = res.checkpoint / "ema.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="ema.safetensors.*sha256"):
        load_checkpoint(res.checkpoint)
    (res.checkpoint / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="checkpoint.json.*JSON"):
        load_checkpoint(res.checkpoint)
    (res.checkpoint / "checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match="not a complete"):
        load_checkpoint(res.checkpoint)


def test_resume_with_other_profile_or_class_is_refused(tmp_path: Path) -> None:
    train_loop(blobs(), blobs(2), TINY, tmp_path, seed=0, class_label="benign", progress=False,
               stop_after=3)
    wider = TINY.model_copy(update={"model": TINY.model.model_copy(update={"widths": (8, 24)})})
    with pytest.raises(CheckpointError, match="trained with profile"):
        train_loop(blobs(), blobs(2), wider, tmp_path, seed=0, class_label="benign",
                   progress=False, resume=True)
    with pytest.raises(CheckpointError, match="class 'benign', not 'malignant'"):
        train_loop(blobs(), blobs(2), TINY, tmp_path, seed=0, class_label="malignant",
                   progress=False, resume=True)
    manifest = json.loads((tmp_path / "checkpoint" / "checkpoint.json").read_text())
    assert manifest["step"] == 3


def test_wrong_image_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32px but the model expects 16px"):
        train_loop(torch.zeros(2, 2, 32, 32), torch.zeros(0, 2, 32, 32), TINY, tmp_path,
                   seed=0, class_label="benign", progress=False)
