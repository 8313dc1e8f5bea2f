"""The class-conditional option: one model for both classes, the class given as an embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from gen_helpers import tiny_profile, toy_lesions
from sonoaudit_generator.checkpoint import load_checkpoint, load_weights
from sonoaudit_generator.denoiser import build_denoiser
from sonoaudit_generator.schedules import training_scheduler
from sonoaudit_generator.training import diffusion_loss, draw_noise, train_loop

torch.set_num_threads(1)


def conditional(steps: int) -> object:
    p = tiny_profile(8, steps)
    return p.model_copy(update={"model": p.model.model_copy(update={"num_classes": 2}),
                                # a short run: an EMA of 0.995 would still be mostly step 0
                                "train": p.train.model_copy(update={"ema_decay": 0.9})})


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
