"""Which class is scored: a generator folder's class from its manifest, a one-class synthetic
set scored against the real images of that class (said in the provenance), warnings where the
classes cannot be matched, and the same through the CLI and POST /metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from metrics_helpers import speckle_sample, write_pairs
from sonoaudit.cli.main import app
from sonoaudit.context import AppContext, build_context
from sonoaudit.db.migrate import upgrade
from sonoaudit.db.models import MetricRun
from sonoaudit.db.session import session_scope
from sonoaudit.settings import Settings
from sonoaudit_metrics.config import MetricsSettings
from sonoaudit_metrics.main import create_app
from sonoaudit_metrics.runs import load_sets
from sonoaudit_metrics.samples import SampleError, load_pairs_dir
from typer.testing import CliRunner

REAL_LABELS = ["benign", "benign", "benign", "malignant", "malignant"]


def real_set(root: Path) -> Path:
    return write_pairs(root, [speckle_sample(f"r{i}", i, label=lab)
                              for i, lab in enumerate(REAL_LABELS)])


def generator_folder(root: Path, label: str | None, n: int = 3) -> Path:
    """Files named and listed as ``sonoaudit generate`` writes them (class only in the
    manifest, not in a folder name)."""
    stem = label or "sample"
    samples = [speckle_sample(f"{stem}_{i:05d}", 30 + i) for i in range(n)]
    write_pairs(root, samples)
    manifest = {"generation_run_id": "run1", "class_label": label, "n": n,
                "samples": [{"index": i, "image": f"{stem}_{i:05d}_image.png",
                             "mask": f"{stem}_{i:05d}_mask.png"} for i in range(n)]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_generator_manifest_gives_the_class(tmp_path: Path) -> None:
    syn = generator_folder(tmp_path / "g", "benign")
    write_pairs(syn, [speckle_sample("extra", 99)])  # not in the manifest: no class
    labels = {s.name: s.class_label for s in load_pairs_dir(syn)}
    assert labels == {"benign_00000": "benign", "benign_00001": "benign",
                      "benign_00002": "benign", "extra": None}
    assert {s.class_label for s in load_pairs_dir(generator_folder(tmp_path / "u", None))} \
        == {None}
    (syn / "manifest.json").write_text('{"other": 1}')  # not a generator manifest: ignored
    assert {s.class_label for s in load_pairs_dir(syn)} == {None}
    (syn / "manifest.json").write_text("{broken")
    with pytest.raises(SampleError, match=r"manifest\.json: unreadable generator manifest"):
        load_pairs_dir(syn)


def test_one_class_synthetic_is_scored_against_that_class_and_says_so(tmp_path: Path) -> None:
    real_dir, syn = real_set(tmp_path / "r"), generator_folder(tmp_path / "g", "benign")
    real, synthetic, info = load_sets(None, str(real_dir), str(syn))
    assert sorted(s.name for s in real) == ["benign/r0", "benign/r1", "benign/r2"]
    assert len(synthetic) == 3 and info["class_label"] == "benign"
    assert info["class_scope"] == {
        "class_label": "benign", "chosen": "automatically",
        "reason": "every synthetic image is 'benign' and the real set has several classes "
                  "(benign 3, malignant 2): scored against its 3 'benign' images only, the 2 "
                  "of other classes left out; pass --class to choose"}
    assert info["warnings"] == []


def test_unlabelled_or_unmatched_synthetic_is_scored_against_all_with_a_warning(
        tmp_path: Path) -> None:
    real_dir = real_set(tmp_path / "r")
    plain = write_pairs(tmp_path / "p", [speckle_sample(f"s{i}", 40 + i) for i in range(3)])
    real, _, info = load_sets(None, str(real_dir), str(plain))
    assert len(real) == 5 and info["class_label"] is None and "class_scope" not in info
    assert info["warnings"] == [
        "the synthetic images carry no class label: scored as one set against every real "
        "image (benign 3, malignant 2); pass --class C when the synthetic set is all one class"]

    normal = generator_folder(tmp_path / "n", "normal")
    real, _, info = load_sets(None, str(real_dir), str(normal))
    assert len(real) == 5 and info["class_label"] is None
    assert info["warnings"] == ["every synthetic image is 'normal' but the real set has no "
                                "'normal' images (benign 3, malignant 2): scored against every "
                                "real image"]

    # --class with unlabelled synthetic images: they are taken as that class, with a warning
    real, synthetic, info = load_sets(None, str(real_dir), str(plain), "malignant")
    assert sorted(s.name for s in real) == ["malignant/r3", "malignant/r4"]
    assert len(synthetic) == 3 and info["class_label"] == "malignant"
    assert info["class_scope"]["chosen"] == "given"
    assert info["warnings"] == ["the synthetic images carry no class label: all 3 taken as "
                                "'malignant'"]

    # both classes on both sides: one set overall plus per class, no class chosen
    both = write_pairs(tmp_path / "b", [speckle_sample(f"s{i}", 50 + i, label=lab)
                                        for i, lab in enumerate(REAL_LABELS)])
    real, _, info = load_sets(None, str(real_dir), str(both))
    assert len(real) == 5 and info["class_label"] is None and info["warnings"] == []


def test_cli_and_post_score_a_benign_run_against_benign_real_images(
        tmp_path: Path, sqlite_url: str) -> None:
    real_dir, syn = real_set(tmp_path / "r"), generator_folder(tmp_path / "g", "benign")
    env = {"SONOAUDIT_HOME": str(tmp_path / "cli"), "SONOAUDIT_METRICS_KID_SUBSETS": "5"}
    out = CliRunner().invoke(app, ["metrics", "--real", str(real_dir), "--synthetic", str(syn),
                                   "--no-store"], env=env)
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].startswith("class benign (automatically): every synthetic image is "
                               "'benign'")
    assert lines[1] == "n_real=3  n_synthetic=3"

    upgrade(sqlite_url)
    settings = Settings(home=tmp_path / "home", database_url=sqlite_url)
    ms = MetricsSettings(cache_dir=tmp_path / "cache", kid_subsets=5)
    with TestClient(create_app(settings, ms)) as client:
        r = client.post("/metrics", json={"real_ref": str(real_dir), "synthetic_ref": str(syn)})
        assert r.status_code == 200, r.text
        run = r.json()
    res = run["results"]
    assert (res["n_real"], res["class_label"], run["class_label"]) == (3, "benign", "benign")
    assert "per_class" not in res and res["fid"]["n_real"] == 3
    assert res["provenance"]["class_scope"]["chosen"] == "automatically"
    with session_scope(build_context(settings).sessions) as s:
        assert s.get_one(MetricRun, run["id"]).class_label == "benign"


def store_run(ctx: AppContext, class_label: str | None, n: int = 3) -> str:
    """A generation run in the store as the generator records it (class 'unknown' on the
    images when the run has none)."""
    from sonoaudit.datasets.imageio import png_bytes
    from sonoaudit.db.models import GenerationRun, Image, Model

    with session_scope(ctx.sessions) as s:
        model = Model(name="m", class_label=class_label, backbone="rsu", checkpoint_path="x")
        s.add(model)
        s.flush()
        run = GenerationRun(model_id=model.id, class_label=class_label, n=n, sampler="ddim",
                            steps=1, seed=0, status="done")
        s.add(run)
        s.flush()
        for i in range(n):
            smp = speckle_sample(f"g{i}", 60 + i)
            sha, rel = ctx.store.put(png_bytes(smp.image))
            assert smp.mask is not None
            msha, mrel = ctx.store.put(png_bytes(smp.mask.astype("uint8") * 255))
            s.add(Image(sha256=sha, mask_sha256=msha, source="synthetic",
                        class_label=class_label or "unknown", name=f"{run.id}_{i:05d}",
                        path=rel, mask_path=mrel, width=64, height=64,
                        generation_run_id=run.id, sample_index=i))
        return str(run.id)


def test_store_ids_benign_run_against_a_two_class_dataset(tmp_path: Path,
                                                           sqlite_url: str) -> None:
    from sonoaudit.datasets import import_dataset, scan
    from sonoaudit.datasets.phantom import write_phantom

    upgrade(sqlite_url)
    ctx = build_context(Settings(home=tmp_path / "home", database_url=sqlite_url))
    try:
        ph = write_phantom(tmp_path / "ph", n_per_class=3, size=64)
        counts = scan(ph).counts
        ds = import_dataset(ctx, ph)
        benign, unknown = store_run(ctx, "benign"), store_run(ctx, None)
        real, syn, info = load_sets(ctx, ds.id, benign)
        assert {s.class_label for s in real} == {"benign"} and len(real) == counts["benign"]
        assert info["class_label"] == "benign" and info["class_scope"]["chosen"] == "automatically"
        real, syn, info = load_sets(ctx, ds.id, unknown)
        assert {s.class_label for s in syn} == {None}  # 'unknown' in the store is no class
        assert len(real) == sum(counts.values()) and info["class_label"] is None
        assert info["warnings"][-1].startswith("the synthetic images carry no class label")
    finally:
        ctx.close()
