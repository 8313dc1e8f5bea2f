"""`sonoaudit agreement` and `sonoaudit plan-study` end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agreement_data import krippendorff_rows
from sonoaudit.cli.main import app
from typer.testing import CliRunner


def write_csv(path: Path, rows: list[dict]) -> Path:
    cols = list(rows[0])
    lines = [",".join(cols)] + [",".join("" if r[c] is None else str(r[c]) for c in cols)
                                for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_agreement_json_on_krippendorff_2011(tmp_path: Path) -> None:
    rows = [{"unit": r["item"], "coder": r["rater"], "score": r["value"]}
            for r in krippendorff_rows()]
    path = write_csv(tmp_path / "k.csv", rows)
    res = CliRunner().invoke(app, ["agreement", str(path), "--item", "unit", "--rater", "coder",
                                   "--value", "score", "--level", "interval",
                                   "--scale", "1,2,3,4,5", "--json", "-B", "200"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_items"] == 12 and out["n_raters"] == 4
    assert out["krippendorff_alpha"]["value"] == pytest.approx(0.849, abs=5e-4)
    for key in ("percent_agreement", "fleiss_kappa", "krippendorff_alpha", "gwet_ac1"):
        assert set(out[key]) >= {"value", "ci95"}
    assert len(out["cohen_kappa_pairwise"]) == 6
    assert out["provenance"]["seed"] == 0


@pytest.mark.parametrize(("args", "content", "message"), [
    (["--value", "nope"], "item,rater,value\n1,a,x\n", "column 'nope' missing"),
    ([], "item,rater,value\n", "empty"),
    (["--scale", "0,20,40"], "item,rater,value\n1,a,20\n1,b,30\n", "row 3"),
    (["--level", "ratio"], "item,rater,value\n1,a,20\n", "--level"),
    # the bad level is in --scale, not in the CSV: --scale is named, the column is not
    (["--level", "interval", "--scale", "0,20,40,60,80,100,x"],
     "item,rater,value\n1,a,20\n1,b,40\n",
     "error: --scale: --level interval needs numeric levels; 'x' is not a finite number"),
    # a non-numeric value without --scale: the CSV row (header = row 1) is named
    (["--level", "interval"], "item,rater,value\n1,a,1\n1,b,2\n2,a,x\n2,b,3\n",
     "bad.csv: row 4: column 'value' has 'x', not a finite number"),
    (["--level", "interval"], "item,rater,value\n1,a,1\n1,b,inf\n",
     "bad.csv: row 3: column 'value' has 'inf', not a finite number"),
])
def test_agreement_bad_input_exits_2_with_a_clear_error(tmp_path: Path, args: list[str],
                                                        content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    res = CliRunner().invoke(app, ["agreement", str(path), *args])
    assert res.exit_code == 2
    assert message in res.output


def test_plan_study_is_labelled_simulated_and_narrows_with_more_data() -> None:
    res = CliRunner().invoke(app, ["plan-study", "--images", "30,240", "--readers", "3",
                                   "--simulations", "4", "-B", "100", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["simulated"] is True
    small, big = out["rows"]
    # CI width shrinks roughly with sqrt(n): 8x the images → about a third of the width.
    assert big["ci_width_fleiss_kappa"] < 0.6 * small["ci_width_fleiss_kappa"]
    assert big["ci_width_accuracy_difference"] < 0.6 * small["ci_width_accuracy_difference"]


def test_ordinal_text_levels_without_scale_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("item,rater,value\n1,a,low\n1,b,high\n2,a,mid\n2,b,mid\n")
    res = CliRunner().invoke(app, ["agreement", str(path), "--level", "ordinal"])
    assert res.exit_code == 2 and "needs --scale" in res.output
    ok = CliRunner().invoke(app, ["agreement", str(path), "--level", "ordinal",
                                  "--scale", "low,mid,high", "-B", "50", "--json"])
    assert ok.exit_code == 0, ok.output
    pair = json.loads(ok.output)["cohen_kappa_pairwise"][0]
    # low/high disagree at distance 2 of 2, mid/mid agree: hand-worked quadratic kappa.
    # observed Σw·o = 4·1 (one item) ; rows a: low, mid ; cols b: high, mid ; n = 2
    # expected Σw·e = (w(low,high)·1·1 + w(low,mid)·1·1 + w(mid,high)·1·1 + 0)/2 = (4+1+1)/2
    assert pair["weighted"]["quadratic"]["value"] == pytest.approx(1 - 4 / 3)


def test_simulated_panel_matches_its_spec() -> None:
    import numpy as np
    from sonoaudit_raters.stats import agreement
    from sonoaudit_raters.stats.simulate import PanelSpec, simulate_panel

    rng = np.random.default_rng(0)
    t = simulate_panel(PanelSpec(accuracy=0.8, accuracy_drop=0.2), 4000, 3, rng)
    truth = np.array([["benign", "malignant", "normal"].index(g) for g in t.attrs["ground_truth"]])
    real = np.array(t.attrs["source"]) == "real"
    acc = t.codes == truth[:, None]
    assert acc[real].mean() == pytest.approx(0.8, abs=0.02)
    assert acc[~real].mean() == pytest.approx(0.6, abs=0.02)
    correlated = simulate_panel(PanelSpec(accuracy=0.8, accuracy_drop=0.2,
                                          error_correlation=1.0), 4000, 3, rng)
    k0 = agreement(t, n_boot=0)["fleiss_kappa"].value
    k1 = agreement(correlated, n_boot=0)["fleiss_kappa"].value
    assert k1 > k0 + 0.05
    with pytest.raises(ValueError, match="class mix"):
        PanelSpec(class_mix=(0.5, 0.6, 0.1))


def test_agreement_text_output_says_why_there_is_no_ci(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("item,rater,value\n1,A,x\n1,B,y\n2,A,x\n2,C,x\n3,A,y\n3,C,y\n")
    res = CliRunner().invoke(app, ["agreement", str(path), "-B", "50"])
    assert res.exit_code == 0, res.output
    assert "kappa A~B: 0.000 [no CI: fewer_than_two_items]  n=1" in res.output
    res = CliRunner().invoke(app, ["agreement", str(path), "-B", "0"])
    assert "percent_agreement" in res.output and "[no CI: no_bootstrap_replicates]" in res.output
