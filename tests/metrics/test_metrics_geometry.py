"""A real dataset is scored at the generator's geometry: its padded square copies at the size of
the synthetic images (what the model trained on and emits), recorded in the provenance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from metrics_helpers import busbra_dataset_of, speckle_sample, write_pairs
from sonoaudit.context import build_context
from sonoaudit.datasets import import_dataset
from sonoaudit.datasets.pairs import load_pair, preprocess
from sonoaudit.datasets.scan import scan
from sonoaudit.db.migrate import upgrade
from sonoaudit.settings import Settings
from sonoaudit_metrics.checks import memorisation
from sonoaudit_metrics.runs import load_sets
from sonoaudit_metrics.samples import ImageSample


def busbra_subset(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` BUS-BRA images (with masks and their bus_data.csv rows) as a dataset."""
    return busbra_dataset_of(src, dst, lambda i, _: i < n)


def model_output_like(real_dir: Path, size: int, planted: int) -> list[ImageSample]:
    """What a generator at ``size`` px emits: squares; one is a memorised (copied) training
    image, i.e. that image's padded preprocessed square, not its raw original."""
    rec = sorted(scan(real_dir).records, key=lambda r: r.name)[planted]
    img, msk = preprocess(*load_pair(rec), size)
    noise = [speckle_sample(f"s{i}", 40 + i, size=size) for i in range(3)]
    return [*noise, ImageSample("copy", img, msk)]


def test_dataset_folder_is_read_as_padded_squares_and_a_copy_is_flagged(
        busbra_sample: Path, tmp_path: Path) -> None:
    real_dir = busbra_subset(busbra_sample, tmp_path / "bb", 6)
    syn_dir = write_pairs(tmp_path / "syn", model_output_like(real_dir, 64, planted=2))
    real, syn, info = load_sets(None, str(real_dir), str(syn_dir))
    recs = sorted(scan(real_dir).records, key=lambda r: r.name)
    shapes = {load_pair(r)[0].shape for r in recs}
    assert len(shapes) > 1 and all(h != w for h, w in shapes)  # the originals are not squares
    by_name = {s.name: s for s in real}
    for rec in recs:
        want_img, want_msk = preprocess(*load_pair(rec), 64)
        np.testing.assert_array_equal(by_name[rec.name].image, want_img)
        np.testing.assert_array_equal(by_name[rec.name].mask, want_msk)
    assert info["real_geometry"]["mode"] == "preprocessed"
    assert info["real_geometry"]["size"] == 64 and info["real_geometry"]["computed"] == 6
    # no geometry warning; only that the (unlabelled) synthetic set is scored against both classes
    counts = scan(real_dir).counts
    assert info["warnings"] == [
        "the synthetic images carry no class label: scored as one set against every real image "
        f"(benign {counts['benign']}, malignant {counts['malignant']}); pass --class C when the "
        "synthetic set is all one class"]

    rng = np.random.default_rng(0)  # features that match nothing: the flag must come from SSIM
    fr, fs = rng.normal(size=(len(real), 8)), rng.normal(size=(len(syn), 8))
    mem = memorisation(real, syn, fr, fs)
    assert mem["n_flagged"] == 1
    top = mem["top_pairs"][0]
    assert top["synthetic_name"] == "copy" and top["real_name"] == recs[2].name
    assert top["ssim"] == pytest.approx(1.0, abs=1e-6)

    # the raw originals (what was compared before) miss the same copy
    raw = [ImageSample(r.name, *load_pair(r)) for r in recs]
    assert memorisation(raw, syn, fr, fs)["n_flagged"] == 0


def test_dataset_id_uses_the_stored_preprocessed_copies(busbra_sample: Path, tmp_path: Path,
                                                        sqlite_url: str) -> None:
    upgrade(sqlite_url)
    ctx = build_context(Settings(home=tmp_path / "home", database_url=sqlite_url))
    try:
        real_dir = busbra_subset(busbra_sample, tmp_path / "bb", 4)
        ds = import_dataset(ctx, real_dir, size=32)
        syn_dir = write_pairs(tmp_path / "syn", model_output_like(real_dir, 32, planted=1))
        real, _, info = load_sets(ctx, ds.id, str(syn_dir))
        assert info["real_kind"] == "dataset"
        assert info["real_geometry"] == {**info["real_geometry"], "mode": "preprocessed",
                                         "size": 32, "stored_copies": 4, "computed": 0}
        by_name = {r.name: r for r in scan(real_dir).records}
        for s in real:
            want_img, want_msk = preprocess(*load_pair(by_name[s.name]), 32)
            np.testing.assert_array_equal(s.image, want_img)
            np.testing.assert_array_equal(s.mask, want_msk)
        # at a size the import did not store, the copy is computed the same way
        syn48 = write_pairs(tmp_path / "syn48", model_output_like(real_dir, 48, planted=1))
        real48, _, info48 = load_sets(ctx, ds.id, str(syn48))
        assert info48["real_geometry"]["computed"] == 4
        assert {s.image.shape for s in real48} == {(48, 48)}
    finally:
        ctx.close()


def test_mixed_synthetic_sizes_keep_the_original_geometry_with_a_warning(
        busbra_sample: Path, tmp_path: Path) -> None:
    real_dir = busbra_subset(busbra_sample, tmp_path / "bb", 3)
    syn_dir = write_pairs(tmp_path / "syn", [speckle_sample("a", 1, size=64),
                                             speckle_sample("b", 2, size=48)])
    real, _, info = load_sets(None, str(real_dir), str(syn_dir))
    recs = {r.name: r for r in scan(real_dir).records}
    for s in real:
        np.testing.assert_array_equal(s.image, load_pair(recs[s.name])[0])
    assert info["real_geometry"]["mode"] == "original"
    assert "original geometry" in info["warnings"][0]
    # a pairs folder as the real set is taken as it is
    real_pairs = write_pairs(tmp_path / "rp", [speckle_sample("r", 3, size=80)])
    _, _, info = load_sets(None, str(real_pairs), str(syn_dir))
    assert info["real_geometry"]["mode"] == "as given"
