"""Helpers of the generator tests (a uniquely named module, so no clash with other areas)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sonoaudit.context import AppContext
from sonoaudit.db.models import Model
from sonoaudit.db.session import session_scope
from sonoaudit_generator.config import Profile, profile
from sonoaudit_generator.training import to_training_tensor


def toy_lesions(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Dark discs on a bright background with their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, masks = [], []
    for _ in range(n):
        cy, cx, r = rng.integers(4, size - 4), rng.integers(4, size - 4), rng.integers(2, 5)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        imgs.append((np.where(m, 40, 180) + rng.integers(0, 20, (size, size))).astype(np.uint8))
        masks.append(m)
    return to_training_tensor(np.stack(imgs), np.stack(masks))


def register_model(ctx: AppContext, checkpoint: Path, class_label: str = "benign") -> str:
    with session_scope(ctx.sessions) as s:
        m = Model(name=f"tiny-{class_label}", class_label=class_label, backbone="rsu_unet",
                  config=profile("tiny").model_dump(mode="json"),
                  checkpoint_path=str(checkpoint))
        s.add(m)
        s.flush()
        return m.id


def tiny_profile(batch_size: int, steps: int) -> Profile:
    """The tiny test profile with another batch size / step count (checkpoint at the end)."""
    p = profile("tiny")
    return p.model_copy(update={"train": p.train.model_copy(update={
        "batch_size": batch_size, "steps": steps, "checkpoint_every": steps})})
