"""The study's numbers: agreement, accuracy (readers, majority vote, LLM), reader-vs-LLM kappa,
"does the LLM match you" answers and confidence distributions — each by stratum (all, real vs
synthetic, class, dataset, class × source) with real − synthetic differences."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from sonoaudit.provenance import provenance

from sonoaudit_raters.report.study_data import StudyData
from sonoaudit_raters.stats import agreement, from_long, pairwise_kappa
from sonoaudit_raters.stats.accuracy import TIE_POLICIES, TiePolicy, accuracy, match_summary
from sonoaudit_raters.stats.strata import by_strata
from sonoaudit_raters.stats.table import RatingTable, RatingTableError

ATTRS = ("source", "ground_truth", "dataset")
DEFAULT_CLASSES = ["benign", "malignant", "normal"]
DEFAULT_CONFIDENCE = [str(v) for v in range(0, 101, 20)]


def _questions(data: StudyData) -> dict[str, dict[str, Any]]:
    """The study's class, confidence and LLM-match questions: the protocol's keys when present,
    else the first read-stage choice / read-stage scale / llm-stage choice question."""
    qs = list(data.study.get("config", {}).get("questions", []))
    by_key = {q["key"]: q for q in qs}

    def pick(key: str, stage: str, kind: str) -> dict[str, Any] | None:
        if key in by_key:
            return by_key[key]
        return next((q for q in qs if q.get("stage") == stage and q.get("kind") == kind), None)

    found = {"class": pick("class", "read", "choice"),
             "confidence": pick("confidence", "read", "scale"),
             "llm_match": pick("llm_match", "llm", "choice")}
    return {k: v for k, v in found.items() if v is not None}


def _class_scale(q: dict[str, Any] | None) -> list[str]:
    return list(q["options"]) if q and q.get("options") else DEFAULT_CLASSES


def _confidence_scale(q: dict[str, Any] | None) -> list[str]:
    if q and q.get("kind") == "scale":
        return [str(v) for v in range(int(q["min"]), int(q["max"]) + 1, int(q["step"]))]
    return DEFAULT_CONFIDENCE


def question_table(data: StudyData, question: str, scale: list[str], level: str,
                   not_run: list[dict[str, str]] | None = None) -> RatingTable | None:
    """Reader answers to one question as a rating table over the study's non-repeat items.
    An answer outside the question's scale is reported in ``not_run`` (never dropped)."""
    base = {i["item"]: i for i in data.items if not i["repeat_of"]}
    rows = [{"item": a["item"], "rater": a["reader"], "value": a["answer"],
             **{k: base[a["item"]][k] for k in ATTRS}}
            for a in data.answers if a["question"] == question and a["item"] in base]
    if not rows:
        return None
    try:
        return from_long(rows, level=level, scale=scale, attrs=ATTRS,  # type: ignore[arg-type]
                         source=f"study {data.study['id']} question {question!r}")
    except RatingTableError as exc:
        if not_run is None:
            raise
        not_run.append({"section": f"statistics of question {question!r}",
                        "why": f"the stored answers do not fit the question: {exc}"})
        return None


def llm_configs(data: StudyData) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in data.llm:
        key = f"{c['backend']}:{c['model']} prompt {c['prompt_version']} / {c['condition']}"
        out.setdefault(key, []).append(c)
    return out


def llm_table(data: StudyData, rows: list[dict[str, Any]], scale: list[str]
              ) -> tuple[RatingTable, list[str]]:
    """One rater per replicate plus the replicates' consensus (modal label; tie → no answer),
    and the keys of the items this configuration never classified. Items with an
    abstention/invalid answer, and items with no classification at all, stay in as missing:
    counted wrong ("no answer"), never dropped from n."""
    base = {i["image_id"]: i for i in data.items if not i["repeat_of"]}
    by_img_rep: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:  # oldest first: the latest attempt per replicate wins
        by_img_rep[(row["image_id"], int(row["replicate"]))] = row
    long: list[dict[str, Any]] = []
    reps = sorted({r for _, r in by_img_rep})
    never: list[str] = []
    for img, item in base.items():
        labels = []
        for r in reps:
            found = by_img_rep.get((img, r))
            if found is None:
                continue
            c = found
            ok = c["status"] == "ok" and c["label"] in scale
            labels.append(c["label"] if ok else None)
            long.append({"item": item["item"], "rater": f"replicate {r}",
                         "value": c["label"] if ok else None,
                         **{k: item[k] for k in ATTRS}})
        top = None
        if labels:
            counts = Counter(x for x in labels if x is not None).most_common()
            top = counts[0][0] if counts and (len(counts) == 1 or counts[0][1] > counts[1][1]) \
                else None
        else:
            never.append(item["item"])
        long.append({"item": item["item"], "rater": "consensus", "value": top,
                     **{k: item[k] for k in ATTRS}})
    return from_long(long, scale=scale, attrs=ATTRS, source="LLM classifications"), never


def _truth(t: RatingTable) -> list[str | None]:
    return list(t.attrs["ground_truth"])


def analyse_study(data: StudyData, *, n_boot: int = 2000, seed: int = 0,
                  positive: str = "malignant", tie_policy: TiePolicy = "wrong") -> dict[str, Any]:
    qs = _questions(data)
    cls_q = qs.get("class")
    conf_q = qs.get("confidence")
    classes = _class_scale(cls_q)
    out: dict[str, Any] = {
        "study": {k: data.study[k] for k in ("id", "name", "simulated", "seed", "created_at")},
        "simulated": data.simulated, "phantom": data.phantom,
        "n_items": sum(1 for i in data.items if not i["repeat_of"]),
        "n_repeat_items": sum(1 for i in data.items if i["repeat_of"]),
        "readers": data.readers, "datasets": data.datasets,
        "items_by_stratum": dict(Counter(f"{i['source']}/{i['ground_truth']}"
                                         for i in data.items if not i["repeat_of"])),
        "not_run": [],
        "provenance": provenance(kind="study-report", study_id=data.study["id"], seed=seed,
                                 n_boot=n_boot, ci="percentile bootstrap over items, stratified "
                                 "by group for real − synthetic differences",
                                 tie_policy=tie_policy, tie_policy_text=TIE_POLICIES[tie_policy],
                                 positive_class=positive,
                                 study_provenance=data.study.get("provenance")),
    }
    not_run: list[dict[str, str]] = out["not_run"]
    keys = {k: q["key"] for k, q in qs.items()}
    keys.setdefault("class", "class")
    keys.setdefault("confidence", "confidence")
    keys.setdefault("llm_match", "llm_match")
    out["questions"] = keys
    n_before = len(not_run)
    cls_t = question_table(data, keys["class"], classes, "nominal", not_run)
    if cls_t is None and len(not_run) == n_before:
        not_run.append({"section": "reader agreement and accuracy",
                        "why": "no reader has answered the class question yet"})
    elif cls_t is not None:
        out["class_agreement"] = by_strata(
            cls_t, lambda t, s: agreement(t, n_boot=n_boot, seed=s), seed)
        out["reader_accuracy"] = by_strata(
            cls_t, lambda t, s: accuracy(t, _truth(t), positive=positive, tie_policy=tie_policy,
                                         n_boot=n_boot, seed=s), seed)
        if cls_t.n_raters < 2:
            not_run.append({"section": "inter-reader agreement",
                            "why": f"only {cls_t.n_raters} reader has answered"})
    n_before = len(not_run)
    conf_t = question_table(data, keys["confidence"], _confidence_scale(conf_q), "ordinal",
                            not_run)
    if conf_t is None and len(not_run) == n_before:
        not_run.append({"section": "confidence agreement and histograms",
                        "why": "no confidence answers (question absent or not answered yet)"})
    elif conf_t is not None:
        out["confidence_agreement"] = by_strata(
            conf_t, lambda t, s: agreement(t, n_boot=n_boot, seed=s), seed)
        hist: dict[str, dict[str, int]] = {}
        groups = [(src, None) for src in ("real", "synthetic")] + [
            (src, cls) for cls in classes for src in ("real", "synthetic")]
        for src, cls in groups:
            m = np.array([x == src and (cls is None or g == cls) for x, g in
                          zip(conf_t.attrs["source"], conf_t.attrs["ground_truth"], strict=True)])
            vals = conf_t.codes[m][conf_t.codes[m] >= 0]
            label = src if cls is None else f"{cls}/{src}"
            hist[label] = {c: int((vals == k).sum()) for k, c in enumerate(conf_t.categories)}
        out["confidence_histogram"] = hist
    if out["n_repeat_items"]:
        intra = intra_reader(data, keys["class"], classes, n_boot, seed)
        if intra is not None:
            out["intra_reader"] = intra
        else:
            not_run.append({"section": "intra-reader agreement",
                            "why": "no reader has answered both readings of a repeated item"})
    configs = llm_configs(data)
    if not configs:
        not_run.append({"section": "LLM accuracy and reader-vs-LLM agreement",
                        "why": "no LLM classification of the study's images is stored (no LLM "
                               "backend configured, or `sonoaudit classify` was not run)"})
    out["llm"] = {}
    for key, rows in configs.items():
        t, never = llm_table(data, rows, classes)
        statuses = Counter(r["status"] for r in rows)
        entry: dict[str, Any] = {
            "n_classifications": len(rows), "status_counts": dict(statuses),
            "n_items": t.n_items,
            # Never classified by this configuration: in n, counted as "no answer" (wrong).
            "n_items_without_llm": len(never), "items_without_llm": never,
            "accuracy": by_strata(t, lambda tt, s: accuracy(
                tt, _truth(tt), positive=positive, missing="wrong", majority=False,
                n_boot=n_boot, seed=s), seed),
        }
        reps = [r for r in t.raters if r.startswith("replicate ")]
        if len(reps) >= 2:
            # Agreement between replicates is about the items the LLM was asked about.
            unasked = set(never)
            classified = np.array([it not in unasked for it in t.items], dtype=bool)
            rep_strata = by_strata(t.select_raters(reps).subset(classified),
                                   lambda tt, s: agreement(tt, n_boot=n_boot, seed=s), seed)
            entry["replicate_agreement_strata"] = rep_strata
            entry["replicate_agreement"] = rep_strata["strata"]["all"]
        if cls_t is not None and "consensus" in t.raters:
            combined = _with_llm_column(cls_t, t)
            rvl = by_strata(combined, _reader_vs_llm_analysis(cls_t.raters, n_boot), seed)
            entry["reader_vs_llm_strata"] = rvl
            entry["reader_vs_llm"] = rvl["strata"]["all"]["pairs"]
            entry["reader_vs_llm_by_source"] = {
                src: rvl["strata"][f"source={src}"]["pairs"] for src in ("real", "synthetic")
                if f"source={src}" in rvl["strata"]}
        out["llm"][key] = entry
    # Repeated items are a second reading of an image already counted: left out, as in the
    # inter-reader statistics, so that no image weighs twice.
    base = {i["item"]: i for i in data.items if not i["repeat_of"]}
    match_all = [a for a in data.answers if a["question"] == keys["llm_match"]]
    match = [a for a in match_all if a["item"] in base]
    if match:
        summary: dict[str, Any] = {"all": match_summary([a["answer"] for a in match])}
        summary["all"]["n_repeat_answers_left_out"] = len(match_all) - len(match)
        for src in ("real", "synthetic"):
            summary[f"source={src}"] = match_summary(
                [a["answer"] for a in match if base[a["item"]]["source"] == src])
        for cls in classes:
            summary[f"ground_truth={cls}"] = match_summary(
                [a["answer"] for a in match if base[a["item"]]["ground_truth"] == cls])
        for right in (True, False):
            summary["llm_correct" if right else "llm_wrong"] = match_summary(
                [a["answer"] for a in match if a.get("llm_label")
                 and (a["llm_label"] == base[a["item"]]["ground_truth"]) == right])
        out["llm_match"] = summary
    else:
        not_run.append({"section": "does the LLM match you",
                        "why": "no answers to the llm_match question (LLM answers not revealed "
                               "to readers, or not answered yet)"})
    if not data.metric_runs:
        not_run.append({"section": "image metrics (FID/KID/IS)",
                        "why": "no metric run refers to this study's datasets or generation runs "
                               "(run `sonoaudit metrics` first)"})
    return out


def _reader_vs_llm_analysis(readers: list[str], n_boot: int
                            ) -> Callable[[RatingTable, int], dict[str, Any]]:
    pairs = [(r, "LLM") for r in readers]
    return lambda t, seed: {"pairs": pairwise_kappa(t, pairs=pairs, n_boot=n_boot, seed=seed)}


def _with_llm_column(readers: RatingTable, llm: RatingTable) -> RatingTable:
    """The readers' table plus one rater "LLM" (the replicates' consensus; no answer = missing),
    for Cohen's kappa of each reader against the LLM on the items both answered."""
    cons = dict(zip(llm.items, llm.codes[:, llm.raters.index("consensus")].tolist(),
                    strict=True))
    col = np.array([cons.get(it, -1) for it in readers.items], dtype=np.int64)
    return RatingTable(list(readers.items), [*readers.raters, "LLM"], list(readers.categories),
                       np.column_stack([readers.codes, col]), "nominal", dict(readers.attrs))


def intra_reader(data: StudyData, question: str, classes: list[str], n_boot: int,
                 seed: int) -> dict[str, Any] | None:
    """Each reader against themself on repeated items (first reading vs repeat), per reader
    and pooled over readers (units = reader × image). The pooled CIs resample whole images
    (a cluster bootstrap): one image's units for several readers are not independent. Pooled
    kappa is also given by stratum (source, class, dataset) with real − synthetic."""
    originals = {i["item"]: i for i in data.items if not i["repeat_of"]}
    key_of_original = {i["item"]: i["repeat_of"] for i in data.items if i["repeat_of"]}
    answers = {(a["reader"], a["item"]): a["answer"] for a in data.answers
               if a["question"] == question}
    rows: list[dict[str, Any]] = []
    for (reader, item), value in answers.items():
        original = key_of_original.get(item)
        if original is None or (reader, original) not in answers:
            continue
        unit = f"{reader}|{original}"
        attrs = {"reader": reader, "image": original,
                 **{k: originals[original][k] if original in originals else None
                    for k in ATTRS}}
        rows.append({"item": unit, "rater": "first reading",
                     "value": answers[(reader, original)], **attrs})
        rows.append({"item": unit, "rater": "repeat", "value": value, **attrs})
    if not rows:
        return None
    pooled = from_long(rows, scale=classes, attrs=("reader", "image", *ATTRS),
                       source="repeated items")
    out: dict[str, Any] = {
        "pooled": pairwise_kappa(pooled, n_boot=n_boot, seed=seed, cluster_attr="image")[0],
        "n_images": len(set(pooled.attrs["image"])),
        "readers": {},
        "strata": by_strata(pooled, lambda t, s: {"pooled": pairwise_kappa(
            t, n_boot=n_boot, seed=s, cluster_attr="image")[0]}, seed)}
    readers = np.array(pooled.attrs["reader"])
    for k, reader in enumerate(sorted({str(r) for r in pooled.attrs["reader"]})):
        sub = pooled.subset(readers == reader)
        out["readers"][str(reader)] = pairwise_kappa(sub, n_boot=n_boot, seed=seed + 1 + k)[0]
    return out
