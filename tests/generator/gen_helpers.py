"""Helpers of the generator tests (a uniquely named module, so no clash with other areas)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sonoaudit.context import AppContext
from sonoaudit.db.models import Model
from sonoaudit.db.session import session_scope
from sonoaudit_generator.checkpoint import load_checkpoint, save_checkpoint
from sonoaudit_generator.config import Profile, profile
from sonoaudit_generator.training import to_training_tensor, train_loop


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


def register_model(ctx: AppContext, checkpoint: Path, class_label: str | None = "benign",
                   class_names: list[str] | None = None) -> str:
    """A ``Model`` row for ``checkpoint``; ``class_label=None`` and ``class_names`` for a
    class-conditional one (as ``train_model`` records it)."""
    config = {**profile("tiny").model_dump(mode="json"),
              **({"class_names": class_names} if class_names else {})}
    with session_scope(ctx.sessions) as s:
        m = Model(name=f"tiny-{class_label or 'conditional'}", class_label=class_label,
                  backbone="rsu_unet", config=config, checkpoint_path=str(checkpoint))
        s.add(m)
        s.flush()
        return m.id


def tiny_profile(batch_size: int, steps: int) -> Profile:
    """The tiny test profile with another batch size / step count (checkpoint at the end)."""
    p = profile("tiny")
    return p.model_copy(update={"train": p.train.model_copy(update={
        "batch_size": batch_size, "steps": steps, "checkpoint_every": steps})})


def conditional_profile(steps: int) -> Profile:
    """The tiny profile as a 2-class conditional model (batch 8)."""
    p = tiny_profile(8, steps)
    return p.model_copy(update={"model": p.model.model_copy(update={"num_classes": 2}),
                                # a short run: an EMA of 0.995 would still be mostly step 0
                                "train": p.train.model_copy(update={"ema_decay": 0.9})})


def perturbed(ckpt_dir: Path, seed: int = 0, scale: float = 0.05) -> None:
    """Randomise a trained checkpoint's EMA weights (a few training steps leave the zero-init
    output near 0 and the class embedding without effect, so no parity or label check could
    fail); saved as a proper checkpoint, class names kept."""
    ck = load_checkpoint(ckpt_dir, with_state=True)
    g = torch.Generator().manual_seed(seed)
    ema = {k: v + torch.randn(v.shape, generator=g) * scale if v.is_floating_point() else v
           for k, v in ck.ema.items()}
    save_checkpoint(ckpt_dir, profile=ck.profile, class_label=ck.class_label, step=ck.step,
                    weights=ck.weights, ema=ema, state=ck.state, meta=ck.meta,
                    class_names=ck.class_names)


def conditional_checkpoint(out: Path) -> Path:
    """A tiny trained benign/malignant conditional checkpoint whose classes sample differently."""
    data = toy_lesions(6)
    res = train_loop(data, data[:2], conditional_profile(2), out, seed=0, class_label=None,
                     progress=False, labels=torch.tensor([0, 1, 0, 1, 0, 1]),
                     val_labels=torch.tensor([0, 1]), class_names=["benign", "malignant"])
    perturbed(res.checkpoint, scale=0.1)
    return res.checkpoint


def row_count(home: Path, table: type) -> int:
    """Rows of ``table`` in the embedded store under ``home``."""
    from sonoaudit.context import build_context
    from sonoaudit.settings import Settings
    from sqlalchemy import func, select

    ctx = build_context(Settings(home=home))
    try:
        with ctx.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(table)) or 0)
    finally:
        ctx.close()
