"""Medical checks (memorisation, MS-SSIM diversity, mask realism, image/mask alignment) on
drawn images with hand-computed answers, and the bad-input errors of the sample loaders."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from metrics_helpers import speckle_sample, truncated_dataset, write_pairs
from PIL import Image as PILImage
from sonoaudit_metrics.checks import diversity, memorisation
from sonoaudit_metrics.distances import inception_score
from sonoaudit_metrics.inception import file_sha256
from sonoaudit_metrics.masks import alignment, mask_realism, mask_shape
from sonoaudit_metrics.samples import ImageSample, SampleError, load_dir, load_ref
from sonoaudit_metrics.scoring import (
    NonFiniteError,
    ScoreOptions,
    _check_finite,
    _guard,
    _is,
    load_is_logits_weight,
    validate_sets,
)


def rect(size: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    for y, x, h, w in boxes:
        m[y:y + h, x:x + w] = True
    return m


def with_mask(mask: np.ndarray, inside: int = 50, outside: int = 100) -> ImageSample:
    img = np.where(mask, inside, outside).astype(np.uint8)
    return ImageSample("m", img, mask)


def test_mask_shape_hand_computed() -> None:
    one = mask_shape(rect(100, [(10, 10, 10, 20)]))
    assert one["area_fraction"] == pytest.approx(200 / 10_000)
    assert one["component_count"] == 1.0
    two = mask_shape(rect(100, [(10, 10, 10, 20), (50, 50, 5, 5)]))
    assert two["component_count"] == 2.0 and two["area_fraction"] == pytest.approx(225 / 10_000)
    # 8-connectivity: diagonal neighbours are one lesion
    diag = np.zeros((10, 10), dtype=bool)
    diag[2, 2] = diag[3, 3] = True
    assert mask_shape(diag)["component_count"] == 1.0
    yy, xx = np.mgrid[:128, :128]
    disc = mask_shape((yy - 64) ** 2 + (xx - 64) ** 2 <= 30 ** 2)["compactness"]
    square = mask_shape(rect(128, [(20, 20, 60, 60)]))["compactness"]
    sliver = mask_shape(rect(128, [(20, 20, 2, 100)]))["compactness"]
    # continuous values: disc 1, square π/4 ≈ 0.785, 2×100 strip 4π·200/204² ≈ 0.060
    assert disc is not None and square is not None and sliver is not None
    assert disc > 0.9 and abs(square - np.pi / 4) < 0.1 and sliver < 0.1
    empty = mask_shape(np.zeros((20, 20), dtype=bool))
    assert empty == {"area_fraction": 0.0, "compactness": None, "component_count": 0.0}


def test_mask_realism_distances_and_empty_rate() -> None:
    real = [with_mask(rect(100, [(0, 0, 10, 20)])), with_mask(rect(100, [(0, 0, 20, 20)]))]
    syn = [with_mask(rect(100, [(0, 0, 10, 20)])), with_mask(rect(100, [(0, 0, 40, 20)])),
           with_mask(np.zeros((100, 100), dtype=bool))]
    res = mask_realism(real, syn)
    area = res["features"]["area_fraction"]
    # real {0.02, 0.04}; synthetic {0.02, 0.08, 0}: W1 of the sorted samples' quantile functions
    # = ∫|F_r⁻¹ - F_s⁻¹| = 1/3·|0.02-0| + 1/6·|0.02-0.02| + 1/6·|0.04-0.02| + 1/3·|0.04-0.08|
    assert area["wasserstein"] == pytest.approx(0.02 / 3 + 0.02 / 6 + 0.04 / 3)
    assert area["real"]["mean"] == pytest.approx(0.03)
    assert res["empty_rate"] == {"real": 0.0, "synthetic": pytest.approx(1 / 3)}
    assert res["features"]["component_count"]["synthetic"]["n"] == 3
    assert res["features"]["compactness"]["synthetic"]["n"] == 2  # empty mask has none
    few = mask_realism(real[:1], syn)
    assert few["value"] is None and "at least 2 masks" in few["reason"]


def test_alignment_inside_vs_outside() -> None:
    m = rect(50, [(10, 10, 10, 10)])
    res = alignment([with_mask(m, 40, 120), with_mask(m, 60, 100)], [with_mask(m, 200, 100)])
    assert res["real"]["inside_mean"] == pytest.approx(50.0)
    assert res["real"]["outside_mean"] == pytest.approx(110.0)
    assert res["real"]["contrast_mean"] == pytest.approx(-60.0)
    assert res["real"]["hypoechoic_fraction"] == 1.0
    assert res["synthetic"]["hypoechoic_fraction"] == 0.0  # a bright "lesion" is not realistic
    assert alignment([ImageSample("x", np.zeros((20, 20), np.uint8))], [])["real"]["value"] is None


def test_memorisation_flags_an_exact_copy_only() -> None:
    real = [speckle_sample(f"r{i}", i, size=64) for i in range(8)]
    syn = [speckle_sample(f"s{i}", 100 + i, size=64) for i in range(4)]
    copy = ImageSample("copy", real[5].image.copy(), real[5].mask)
    syn.append(copy)
    rng = np.random.default_rng(0)
    fr = rng.normal(size=(8, 32))
    fs = np.vstack([rng.normal(size=(4, 32)), fr[5:6]])
    res = memorisation(real, syn, fr, fs)
    assert res["n_flagged"] == 1 and res["fraction_flagged"] == pytest.approx(1 / 5)
    top = res["top_pairs"][0]
    assert (top["synthetic_name"], top["real_name"], top["flagged"]) == ("copy", "r5", True)
    assert top["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert top["feature_cosine"] == pytest.approx(1.0)
    assert all(not p["flagged"] and p["ssim"] < 0.5 for p in res["top_pairs"][1:])
    # an intensity-shifted copy is still caught by SSIM (its features are left distinct)
    shifted = ImageSample("brighter", np.clip(real[2].image.astype(int) + 6, 0, 255)
                          .astype(np.uint8))
    fs2 = np.vstack([fs[:4], rng.normal(size=(1, 32))])
    res2 = memorisation(real, [*syn[:4], shifted], fr, fs2)
    assert res2["n_flagged"] == 1 and res2["top_pairs"][0]["real_name"] == "r2"


def test_diversity_identical_set_vs_varied_set() -> None:
    varied = [speckle_sample(f"r{i}", i, size=96) for i in range(6)]
    clones = [ImageSample(f"c{i}", varied[0].image) for i in range(6)]
    res = diversity(varied, clones)
    assert res["synthetic"]["mean"] == pytest.approx(1.0, abs=1e-5)  # MS-SSIM(x, x) = 1
    assert res["synthetic"]["n_pairs"] == res["real"]["n_pairs"] == 15  # 6·5/2
    assert res["real"]["mean"] < 0.6
    assert res["ratio"] == pytest.approx(1.0 / res["real"]["mean"])
    assert "too small for standard MS-SSIM" in res["params"]["note"]  # 96 px < 5-scale minimum


def test_set_validation_errors_and_degradations(tmp_path: Path) -> None:
    a = [speckle_sample("a", 1), speckle_sample("b", 2)]
    with pytest.raises(SampleError, match="the synthetic set has 1 image"):
        validate_sets(a, a[:1])
    warnings = validate_sets(a, [speckle_sample("c", 3, size=80), speckle_sample("d", 4)])
    assert "mixed image sizes" in warnings[0]


def test_folder_errors_name_the_file(tmp_path: Path) -> None:
    root = write_pairs(tmp_path / "syn", [speckle_sample("x0", 0), speckle_sample("x1", 1)])
    samples, kind = load_dir(root)
    assert kind == "pairs" and [s.name for s in samples] == ["x0", "x1"]
    assert samples[0].mask is not None and samples[0].mask.dtype == bool
    bad = root / "x2_image.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(SampleError, match=r"x2_image\.png"):
        load_dir(root)
    bad.unlink()
    PILImage.fromarray(np.zeros((10, 12), np.uint8)).save(root / "x1_mask.png")
    with pytest.raises(SampleError, match=r"x1_mask\.png: mask is"):
        load_dir(root)
    (tmp_path / "empty").mkdir()
    # the error text, not the folder name (which is "empty" too)
    with pytest.raises(SampleError) as err:
        load_dir(tmp_path / "empty")
    assert str(err.value) == (
        f"{tmp_path / 'empty'}: no readable images ({tmp_path / 'empty'}: no known dataset "
        "layout: expected BUS-BRA (Images/, Masks/, bus_data.csv), UDIAT Dataset B (original/, "
        "GT/, DatasetB.xlsx) or BUSI (benign/, malignant/, normal/); or a folder of generator "
        "pairs: <name>_image.png with an optional <name>_mask.png, searched recursively)")
    with pytest.raises(SampleError, match=re.escape(
            f"{tmp_path / 'nope'}: no such folder (and no results store to look the id up in)")):
        load_ref(str(tmp_path / "nope"))


def test_a_dataset_folder_that_fails_validation_is_refused_naming_the_file(
        tmp_path: Path) -> None:
    """One truncated PNG among 6: an error naming it, not a score of the other 5."""
    root, bad = truncated_dataset(tmp_path / "ds")
    with pytest.raises(SampleError) as err:
        load_dir(root)
    msg = str(err.value)
    assert msg.startswith(f"{root}: the busbra dataset fails validation, 1 problem(s): "
                          f"{bad}: unreadable image (")
    assert "truncated" in msg.lower() and f"sonoaudit datasets inspect {root}" in msg
    with pytest.raises(SampleError, match=re.escape(f"{bad}: unreadable image")):
        load_ref(str(root), size=64)  # the preprocessed read refuses it too
    bad.unlink()  # a missing image listed in bus_data.csv is a problem as well
    with pytest.raises(SampleError, match=re.escape(f"{root}: the busbra dataset fails")):
        load_dir(root)


def is_weights_file(path: Path, weight: torch.Tensor, nested: bool = False) -> Path:
    """A state dict shaped like pt_inception-2015-12-05 as far as IS reads it."""
    state = {"Mixed_7c.conv.weight": torch.ones(2, 2), "fc.weight": weight,
             "fc.bias": torch.zeros(1008)}
    torch.save({"state_dict": state} if nested else state, path)
    return path


def test_is_refuses_a_zeroed_logits_layer_and_scores_a_real_one(tmp_path: Path) -> None:
    feats = np.random.default_rng(0).normal(size=(20, 2048)).astype(np.float32)
    zero = is_weights_file(tmp_path / "zero.pt", torch.zeros(1008, 2048))
    with pytest.raises(SampleError, match=re.escape(
            f"{zero}: fc.weight is all zeros (placeholder weights), IS would be 1.0")):
        load_is_logits_weight(zero)
    # in a run IS becomes unavailable with that reason instead of a fake 1.0
    block = _guard(lambda: _is(feats, ScoreOptions(is_weights_path=zero)), "IS")
    assert block == {"value": None, "reason": f"IS: {zero}: fc.weight is all zeros "
                                              "(placeholder weights), IS would be 1.0"}
    wrong = is_weights_file(tmp_path / "wrong.pt", torch.ones(1000, 2048))
    with pytest.raises(SampleError, match="no fc.weight of shape \\(1008, 2048\\)"):
        load_is_logits_weight(wrong)

    w = torch.from_numpy(np.random.default_rng(1).normal(scale=0.02, size=(1008, 2048)))
    good = is_weights_file(tmp_path / "good.pt", w.float(), nested=True)
    res = _is(feats, ScoreOptions(is_weights_path=good, seed=3))
    want = inception_score(feats.astype(np.float64) @ w.float().double().numpy().T, splits=10,
                           seed=3)
    assert res["value"] == res["mean"] == pytest.approx(want["mean"], rel=1e-12)
    assert res["value"] > 1.0 and res["weights_sha256"] == file_sha256(good)


@pytest.mark.parametrize(("value", "where", "what"), [
    (float("nan"), "results.fid.value", "is not finite (nan)"),
    (float("inf"), "results.fid.value", "is not finite (inf)"),
    (-float("inf"), "results.fid.value", "is not finite (-inf)"),
    (complex(1.0, 2.0), "results.fid.value", "is complex ((1+2j))"),
])
def test_nan_infinity_and_complex_are_refused_with_where(value: object, where: str,
                                                        what: str) -> None:
    with pytest.raises(NonFiniteError, match=re.escape(f"{where} {what}")):
        _check_finite({"fid": {"value": value}, "n": 3})
    nested = {"per_class": {"benign": {"top_pairs": [{"ssim": 1.0}, {"ssim": value}]}}}
    with pytest.raises(ArithmeticError,
                       match=re.escape(f"results.per_class.benign.top_pairs[1].ssim {what}")):
        _check_finite(nested)
    _check_finite({"fid": {"value": 1e308, "warning": "x", "ok": True, "none": None},
                   "list": [0, -1.5, "nan"]})  # finite numbers, strings and None pass

