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


@pytest.mark.filterwarnings("ignore:.*cohen_kappa_score. is undefined")
def test_reader_vs_llm_kappa_equals_sklearn_per_stratum_with_difference() -> None:
    from sklearn.metrics import cohen_kappa_score

    data = study(n=40)
    # A second replicate that disagrees on every third item: consensus ties there -> no answer.
    extra = [dict(c, replicate=1, label=C[(C.index(c["label"]) + 1) % 3] if k % 3 == 0
                  else c["label"]) for k, c in enumerate(data.llm) if c["status"] == "ok"]
    data.llm.extend(extra)
    out = analyse_study(data, n_boot=50, seed=1)
    (llm,) = out["llm"].values()
    truth = {it["image_id"]: it for it in data.items}
    consensus: dict[str, str | None] = {}
    for it in data.items:
        labels = [c["label"] for c in data.llm if c["image_id"] == it["image_id"]
                  and c["status"] == "ok"]
        consensus[it["item"]] = labels[0] if labels and len(set(labels)) == 1 else None
    assert sum(v is None for v in consensus.values()) > 5  # ties and the abstention
    rvl = llm["reader_vs_llm_strata"]
    for label, src in (("all", None), ("source=real", "real"), ("source=synthetic", "synthetic")):
        for p in rvl["strata"][label]["pairs"]:
            ans = {a["item"]: a["answer"] for a in data.answers if a["reader"] == p["rater_a"]}
            both = [i for i, v in consensus.items() if v is not None and i in ans
                    and (src is None or truth[f"img{i[1:]}"]["source"] == src)]
            ref = cohen_kappa_score([ans[i] for i in both], [consensus[i] for i in both],
                                    labels=C)
            assert p["n"] == len(both)
            if np.isnan(ref):  # real items here are all malignant: one category, undefined
                assert p["_estimate"].value is None and p["reason"] == "single_category"
            else:
                assert p["_estimate"].value == pytest.approx(ref, abs=1e-12), (label, p["rater_a"])
    for k, p in enumerate(rvl["strata"]["all"]["pairs"]):
        d = rvl["real_minus_synthetic"]["all"][f"pairs/{p['rater_a']}~LLM"]
        real = rvl["strata"]["source=real"]["pairs"][k]["_estimate"]
        synth = rvl["strata"]["source=synthetic"]["pairs"][k]["_estimate"]
        if real.value is None or synth.value is None:
            assert d.value is None and "group" in d.reason
        else:
            assert d.value == pytest.approx(real.value - synth.value, abs=1e-12)
            assert d.n == real.n + synth.n and d.n_boot == 50


def test_majority_vote_ties_get_their_own_column() -> None:
    from sonoaudit_raters.stats.accuracy import accuracy

    rows = [{"item": "1", "rater": "a", "value": "benign"},
            {"item": "1", "rater": "b", "value": "malignant"},
            {"item": "2", "rater": "a", "value": "benign"},
            {"item": "2", "rater": "b", "value": "benign"}]
    res = accuracy(from_long(rows, scale=C), ["malignant", "benign"], n_boot=0)
    cm = res["majority_vote"]["confusion"]
    assert cm["cols_answer"] == [*C, "tie (no majority)"]
    assert cm["counts"] == [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert res["majority_vote"]["accuracy"].value == pytest.approx(1 / 2)


def test_images_never_classified_count_as_no_answer_in_json_and_html() -> None:
    from sonoaudit_raters.report.render import render_html
    from sonoaudit_raters.stats import public

    data = study(n=30)
    # No LLM row at all for items 1, 2, 3 (1 and 3 real/malignant, 2 synthetic/benign); item 0
    # abstained; the other 26 answered right. A second replicate repeats every answer given.
    data.llm[:] = [c for c in data.llm if c["image_id"] not in ("img1", "img2", "img3")]
    data.llm.extend(dict(c, replicate=1) for c in list(data.llm) if c["status"] == "ok")
    out = analyse_study(data, n_boot=20, seed=0)
    (llm,) = out["llm"].values()
    assert llm["n_items"] == 30
    assert llm["n_items_without_llm"] == 3 and sorted(llm["items_without_llm"]) == ["k1", "k2",
                                                                                   "k3"]
    strata = llm["accuracy"]["strata"]
    for rater in ("replicate 0", "replicate 1", "consensus"):
        res = strata["all"]["raters"][rater]
        assert (res["n"], res["n_correct"], res["n_no_answer"]) == (30, 26, 4), rater
        assert res["accuracy"].value == pytest.approx(26 / 30)
    # real: 15 items, 1 and 3 never classified; synthetic: 15 items, 0 abstained, 2 unclassified
    for src in ("real", "synthetic"):
        res = strata[f"source={src}"]["raters"]["consensus"]
        assert (res["n"], res["n_correct"]) == (15, 13)
    cm = strata["all"]["raters"]["consensus"]["confusion"]
    assert cm["cols_answer"][-1] == "no answer"
    assert [row[-1] for row in cm["counts"]] == [2, 2, 0]  # benign: 0, 2; malignant: 1, 3
    # replicate agreement is about the 27 items the LLM was asked about
    assert llm["replicate_agreement"]["n_items"] == 27
    html = render_html(public(out) | {"metrics": [], "metric_runs": [], "figures": []}, {}, None)
    assert "3 of the 30 items were never classified" in html
