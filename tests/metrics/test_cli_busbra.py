"""Done-when of issue 4 on the real BUS-BRA sample, through `sonoaudit metrics --json`: two
halves split by patient are close (KID near 0, FID reported with its n warning); phantom images
score clearly worse; a memorised training image planted among them, as a model would emit it
(the padded square at the model's size), is flagged against the real dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from metrics_helpers import busbra_dataset_of, write_pairs
from sonoaudit.cli.main import app
from sonoaudit.datasets.pairs import preprocess
from sonoaudit.datasets.phantom import write_phantom
from sonoaudit_metrics.samples import ImageSample, load_dataset_dir
from typer.testing import CliRunner


def run_cli(home: Path, real: Path, synthetic: Path) -> dict[str, Any]:
    env = {"SONOAUDIT_HOME": str(home), "SONOAUDIT_METRICS_KID_SUBSETS": "50"}
    result = CliRunner().invoke(app, ["metrics", "--real", str(real), "--synthetic",
                                      str(synthetic), "--json", "--no-store"], env=env)
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def busbra_cases(src: Path, dst: Path, cases: set[int]) -> Path:
    """The BUS-BRA images of the given patients (files and bus_data.csv rows) as a dataset."""
    return busbra_dataset_of(src, dst, lambda _, r: int(r["Case"]) in cases)


@pytest.mark.slow
def test_busbra_halves_vs_phantom_with_a_planted_copy(busbra_sample: Path,
                                                      tmp_path: Path) -> None:
    samples = load_dataset_dir(busbra_sample)
    cases = sorted({s.meta["case_id"] for s in samples})
    half_a = set(cases[0::2])
    a = [s for s in samples if s.meta["case_id"] in half_a]
    b = [s for s in samples if s.meta["case_id"] not in half_a]
    assert len(a) == len(b) == 40 and not {s.meta["case_id"] for s in b} & half_a
    dir_a, dir_b = write_pairs(tmp_path / "a", a), write_pairs(tmp_path / "b", b)
    # half A as a dataset (what a model is trained on) for the synthetic run
    data_a = busbra_cases(busbra_sample, tmp_path / "data_a", {int(c) for c in half_a})
    phantom = load_dataset_dir(write_phantom(tmp_path / "ph", n_per_class=20, size=128))
    # a model at 128 px that memorised a[7] emits its padded square, not the raw original
    planted = ImageSample("planted", *preprocess(a[7].image, a[7].mask, 128), a[7].class_label)
    dir_p = write_pairs(tmp_path / "p", [*phantom, planted])
    home = tmp_path / "home"

    same = run_cli(home, dir_a, dir_b)
    other = run_cli(home, data_a, dir_p)

    assert (same["n_real"], same["n_synthetic"], other["n_synthetic"]) == (40, 40, 41)
    assert abs(same["kid"]["mean"]) < 0.01
    assert other["kid"]["mean"] > 0.05 and other["kid"]["mean"] > 10 * abs(same["kid"]["mean"])
    assert other["fid"]["value"] > 2 * same["fid"]["value"]
    assert "n < 2048" in same["fid"]["warning"] and same["fid"]["n_real"] == 40
    assert same["is"] == {"value": None, "reason": same["is"]["reason"]}
    assert set(same["per_class"]) == {"benign", "malignant"}
    assert same["provenance"]["weights_sha256"].startswith("7ff4a85c")
    # half A scored as the generator sees it: its 128 px padded squares, not the originals
    # (other pixels, so not the raw half A's cached features)
    assert other["provenance"]["real_geometry"] == {
        **other["provenance"]["real_geometry"], "mode": "preprocessed", "size": 128,
        "computed": 40}
    assert other["provenance"]["real_kind"] == "dataset"
    assert other["provenance"]["real_features_cached"] is False
    assert same["provenance"]["real_geometry"]["mode"] == "as given"

    assert same["memorisation"]["n_flagged"] == 0  # different patients are not copies
    mem = other["memorisation"]
    top = mem["top_pairs"][0]
    assert mem["n_flagged"] == 1 and top["flagged"]
    assert top["synthetic_name"].endswith("planted") and top["real_name"].endswith(a[7].name)
    # real lesions are darker than their surroundings
    assert same["alignment"]["real"]["hypoechoic_fraction"] > 0.8


def test_cli_text_summary_and_errors(tmp_path: Path) -> None:
    from metrics_helpers import speckle_sample

    real = write_pairs(tmp_path / "r", [speckle_sample(f"r{i}", i) for i in range(3)])
    syn = write_pairs(tmp_path / "s", [speckle_sample(f"s{i}", 9 + i) for i in range(3)])
    env = {"SONOAUDIT_HOME": str(tmp_path / "home"), "SONOAUDIT_METRICS_KID_SUBSETS": "5"}
    ok = CliRunner().invoke(app, ["metrics", "--real", str(real), "--synthetic", str(syn),
                                  "--no-store"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "n_real=3  n_synthetic=3" in ok.stdout and "IS   unavailable (" in ok.stdout
    assert "warning: small sets (n_real=3" in ok.stdout
    bad = CliRunner().invoke(app, ["metrics", "--real", str(tmp_path / "missing"),
                                   "--synthetic", str(syn), "--no-store"], env=env)
    assert bad.exit_code == 2
    assert bad.stderr == (f"error: {str(tmp_path / 'missing')!r} is neither a folder nor a "
                          "dataset or generation run id\n")


def test_cli_unknown_or_absent_class_names_the_classes_there(tmp_path: Path) -> None:
    from metrics_helpers import speckle_sample

    real = write_pairs(tmp_path / "r", [speckle_sample(f"r{i}", i, label=lab) for i, lab in
                                        enumerate(["benign", "benign", "malignant"])])
    syn = write_pairs(tmp_path / "s", [speckle_sample(f"s{i}", 9 + i) for i in range(3)])
    env = {"SONOAUDIT_HOME": str(tmp_path / "home"), "SONOAUDIT_METRICS_KID_SUBSETS": "5"}
    base = ["metrics", "--real", str(real), "--synthetic", str(syn), "--no-store"]
    foo = CliRunner().invoke(app, [*base, "--class", "foo"], env=env)
    assert foo.exit_code == 2 and foo.stdout == ""
    assert foo.stderr == ("error: unknown class 'foo' (classes here: real benign 2, malignant 1; "
                          "synthetic none (its images carry no class label); a class is one of "
                          "benign, malignant, normal)\n")
    normal = CliRunner().invoke(app, [*base, "--class", "normal"], env=env)
    assert normal.exit_code == 2
    assert normal.stderr == (f"error: no 'normal' images in the real set {real} (classes here: "
                             "real benign 2, malignant 1; synthetic none (its images carry no "
                             "class label))\n")


@pytest.mark.parametrize("store", ["--store", "--no-store"])
def test_cli_real_dataset_with_a_truncated_png_is_an_error_not_a_smaller_set(
        tmp_path: Path, store: str) -> None:
    from metrics_helpers import speckle_sample, truncated_dataset

    real, bad = truncated_dataset(tmp_path / "ds")
    syn = write_pairs(tmp_path / "s", [speckle_sample(f"s{i}", 9 + i) for i in range(3)])
    env = {"SONOAUDIT_HOME": str(tmp_path / "home"), "SONOAUDIT_METRICS_KID_SUBSETS": "5"}
    res = CliRunner().invoke(app, ["metrics", "--real", str(real), "--synthetic", str(syn),
                                   "--json", store], env=env)
    assert res.exit_code == 2 and res.stdout == "" and "Traceback" not in res.output
    last = res.stderr.splitlines()[-1]
    assert last.startswith(f"error: {real}: the busbra dataset fails validation, 1 problem(s): "
                           f"{bad}: unreadable image (")


@pytest.mark.parametrize("store", ["--store", "--no-store"])
def test_cli_weights_missing_and_nan_results_are_one_line_errors(
        tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from metrics_helpers import speckle_sample

    real = write_pairs(tmp_path / "r", [speckle_sample(f"r{i}", i) for i in range(3)])
    syn = write_pairs(tmp_path / "s", [speckle_sample(f"s{i}", 9 + i) for i in range(3)])
    missing = tmp_path / "no_weights.pt"
    env = {"SONOAUDIT_HOME": str(tmp_path / "home"), "SONOAUDIT_METRICS_KID_SUBSETS": "5"}
    args = ["metrics", "--real", str(real), "--synthetic", str(syn), store]
    res = CliRunner().invoke(app, args, env={**env,
                                             "SONOAUDIT_METRICS_INCEPTION_WEIGHTS": str(missing)})
    assert res.exit_code == 2 and res.stdout == "" and "Traceback" not in res.output
    assert res.stderr.splitlines()[-1] == (f"error: metrics weights unavailable: FID Inception "
                                           f"weights file {missing} does not exist")

    import sonoaudit_metrics.scoring as scoring

    def nan_kid(*a: Any, **k: Any) -> dict[str, Any]:
        return {"mean": float("nan"), "std": 0.0}

    monkeypatch.setattr(scoring, "kid", nan_kid)
    res = CliRunner().invoke(app, args, env=env)
    assert res.exit_code == 2 and res.stdout == "" and "Traceback" not in res.output
    assert res.stderr.splitlines()[-1] == ("error: the sets cannot be scored: results.kid.mean "
                                           "is not finite (nan)")
    # (the lines above it are the feature progress bars, also on stderr)
