"""The report's analysis on in-memory study data (no database): bad stored answers are reported,
not dropped or crashed on; LLM abstentions count as wrong; strata agree with direct calls."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sonoaudit_raters.report.analysis import analyse_study
from sonoaudit_raters.report.study_data import StudyData
from sonoaudit_raters.stats import agreement, from_long
from sonoaudit_raters.study.config import StudyConfig

C = ["benign", "malignant", "normal"]


def study(n: int = 30, bad: bool = False) -> StudyData:
    rng = np.random.default_rng(0)
    items = [{"item": f"k{i}", "item_id": f"i{i}", "image_id": f"img{i}",
              "source": "real" if i % 2 else "synthetic", "ground_truth": C[i % 2],
              "dataset": "d", "repeat_of": None} for i in range(n)]
    answers: list[dict[str, Any]] = []
    for it in items:
        for r in range(3):
            v = it["ground_truth"] if rng.random() < 0.8 else C[int(rng.integers(3))]
            answers.append({"item": it["item"], "reader": f"r{r}", "question": "class",
                            "answer": v, "llm_label": None})
    if bad:
        answers[0]["answer"] = "maybe"
    llm = [{"image_id": it["image_id"], "backend": "b", "model": "m", "prompt_version": "v",
            "condition": "c", "replicate": 0, "status": "abstain" if k == 0 else "ok",
            "label": None if k == 0 else it["ground_truth"]} for k, it in enumerate(items)]
    return StudyData({"id": "s", "name": "n", "simulated": False, "seed": 0,
                      "config": StudyConfig().model_dump(mode="json"), "created_at": "t",
                      "provenance": {}}, items,
                     [{"name": f"r{r}", "simulated": False} for r in range(3)], answers, llm,
                     {}, [], [], [])


def test_answer_outside_the_scale_is_reported_not_dropped() -> None:
    out = analyse_study(study(bad=True), n_boot=20)
    (entry,) = [x for x in out["not_run"] if "'class'" in x["section"]]
    assert "'maybe'" in entry["why"] and "row" in entry["why"]
    assert "class_agreement" not in out


def test_all_stratum_equals_direct_call_and_abstention_counts_wrong() -> None:
    data = study()
    out = analyse_study(data, n_boot=100, seed=4)
    rows = [{"item": a["item"], "rater": a["reader"], "value": a["answer"]}
            for a in data.answers]
    direct = agreement(from_long(rows, scale=C), n_boot=100, seed=4)
    got = out["class_agreement"]["strata"]["all"]
    for key in ("fleiss_kappa", "krippendorff_alpha", "gwet_ac1"):
        assert got[key].value == pytest.approx(direct[key].value, abs=1e-12)
        assert got[key].ci95() == pytest.approx(direct[key].ci95(), abs=1e-12)
    (llm,) = out["llm"].values()
    rep = llm["accuracy"]["strata"]["all"]["raters"]["replicate 0"]
    assert rep["n"] == 30 and rep["n_no_answer"] == 1
    assert rep["accuracy"].value == pytest.approx(29 / 30)  # all others are right
