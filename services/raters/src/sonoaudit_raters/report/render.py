"""Build the study report: analysis → JSON, CSV (one row per number), PNG figures and one
self-contained HTML page (figures and images embedded as data URIs; no network needed)."""

from __future__ import annotations

import base64
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sonoaudit.context import AppContext

from sonoaudit_raters.report import figures
from sonoaudit_raters.report.analysis import analyse_study
from sonoaudit_raters.report.study_data import StudyData, load_study
from sonoaudit_raters.stats import public
from sonoaudit_raters.stats.bootstrap import Estimate
from sonoaudit_raters.stats.strata import flatten_estimates

TEMPLATES = Path(__file__).resolve().parents[1] / "templates" / "report"
CSV_COLUMNS = ("section", "stratum", "statistic", "value", "ci95_low", "ci95_high", "n",
               "reason", "bootstrap_B", "bootstrap_undefined")
GRID_PER_GROUP = 3


@dataclass
class Report:
    json: dict[str, Any]
    csv: str
    html: str
    figures: dict[str, bytes] = field(default_factory=dict)

    def write(self, out: Path) -> list[Path]:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, data in (("report.html", self.html.encode()),
                           ("report.json", json.dumps(self.json, indent=1, allow_nan=False,
                                                      default=str).encode()),
                           ("report.csv", self.csv.encode())):
            (out / name).write_bytes(data)
            written.append(out / name)
        fig_dir = out / "figures"
        fig_dir.mkdir(exist_ok=True)
        for name, png in self.figures.items():
            (fig_dir / f"{name}.png").write_bytes(png)
            written.append(fig_dir / f"{name}.png")
        return written


# JSON keys of the report that are metadata, not tables; every other key has CSV rows.
NOT_TABLES = ("study", "simulated", "phantom", "n_items", "n_repeat_items", "readers",
              "datasets", "not_run", "provenance", "questions", "metric_runs", "figures")
METRIC_STATS = (("fid", "fid_reason"), ("kid_mean", "kid_reason"), ("kid_std", "kid_reason"),
                ("is", "is_reason"), ("n_real", None), ("n_synthetic", None),
                ("memorised", None), ("diversity_ratio", None))


def csv_rows(analysis: dict[str, Any], metrics: list[dict[str, Any]] | None = None
             ) -> list[dict[str, Any]]:
    """One row per number of the report's tables: every estimate (with CI), every count (answer
    counts, confidence histograms, confusion matrices, LLM status counts) and the image metrics
    (``metrics``: :func:`metric_rows`)."""
    rows: list[dict[str, Any]] = []

    def count(section: str, stratum: str, stat: str, value: Any, n: Any,
              reason: str | None = None) -> None:
        rows.append({"section": section, "stratum": stratum, "statistic": stat, "value": value,
                     "n": n, "reason": reason})

    def confusions(section: str, block: dict[str, Any]) -> None:
        for label, res in block["strata"].items():
            who = dict(res.get("raters", {}))
            if "majority_vote" in res:
                who["majority vote"] = res["majority_vote"]
            for rater, r in who.items():
                cm = r["confusion"]
                total = sum(map(sum, cm["counts"]))
                for truth, line in zip(cm["rows_truth"], cm["counts"], strict=True):
                    for answer, c in zip(cm["cols_answer"], line, strict=True):
                        count(f"{section}:confusion", label,
                              f"{rater}/truth={truth}/answer={answer}", c, total)

    def add(section: str, stratum: str, est: dict[str, Estimate]) -> None:
        for stat, e in est.items():
            ci = e.ci95()
            rows.append({"section": section, "stratum": stratum, "statistic": stat,
                         "value": e.value, "ci95_low": ci[0] if ci else None,
                         "ci95_high": ci[1] if ci else None, "n": e.n, "reason": e.reason,
                         "bootstrap_B": e.n_boot, "bootstrap_undefined": e.n_undefined})

    def add_strata(section: str, block: dict[str, Any]) -> None:
        for label, res in block["strata"].items():
            add(section, label, flatten_estimates(res))
        for label, diffs in block["real_minus_synthetic"].items():
            add(section, f"real-synthetic:{label}", diffs)

    for label, n in analysis.get("items_by_stratum", {}).items():
        count("items", label, "n_items", n, n)
    for section in ("class_agreement", "confidence_agreement", "reader_accuracy"):
        if section in analysis:
            add_strata(section, analysis[section])
    if "reader_accuracy" in analysis:
        confusions("reader_accuracy", analysis["reader_accuracy"])
    for label, hist in analysis.get("confidence_histogram", {}).items():
        total = sum(hist.values())
        for level, c in hist.items():
            count("confidence_histogram", label, f"count/{level}", c, total)
    for key, entry in analysis.get("llm", {}).items():
        n_items = entry["n_items"]
        count(f"llm_counts:{key}", "all", "n_classifications", entry["n_classifications"],
              n_items)
        for status, c in entry["status_counts"].items():
            count(f"llm_counts:{key}", "all", f"status/{status}", c, n_items)
        count(f"llm_counts:{key}", "all", "n_items", n_items, n_items)
        count(f"llm_counts:{key}", "all", "n_items_without_llm", entry["n_items_without_llm"],
              n_items)
        add_strata(f"llm_accuracy:{key}", entry["accuracy"])
        confusions(f"llm_accuracy:{key}", entry["accuracy"])
        if "reader_vs_llm_strata" in entry:
            add_strata(f"reader_vs_llm:{key}", entry["reader_vs_llm_strata"])
        if "replicate_agreement_strata" in entry:
            add_strata(f"llm_replicate_agreement:{key}", entry["replicate_agreement_strata"])
    intra = analysis.get("intra_reader")
    if intra:
        add("intra_reader", "all", {"kappa/pooled": intra["pooled"]["_estimate"]})
        add("intra_reader", "all", {f"kappa/{r}": p["_estimate"]
                                    for r, p in intra["readers"].items()})
        add_strata("intra_reader_pooled", intra["strata"])
    for label, summary in analysis.get("llm_match", {}).items():
        n = summary["n"]
        for answer, c in summary["counts"].items():
            count("llm_match", label, f"count/{answer}", c, n)
            count("llm_match", label, f"share/{answer}", summary["shares"][answer], n)
        count("llm_match", label, "n_missing", summary["n_missing"], n)
        if "n_repeat_answers_left_out" in summary:
            count("llm_match", label, "n_repeat_answers_left_out",
                  summary["n_repeat_answers_left_out"], n)
    for m in metrics or []:
        stratum = f"run={m['run']}&dataset={m['dataset']}&class={m['class']}"
        n_images = (m["n_real"] or 0) + (m["n_synthetic"] or 0)
        for stat, why in METRIC_STATS:
            count("image_metrics", stratum, stat, m[stat], n_images, m[why] if why else None)
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in CSV_COLUMNS})
    return buf.getvalue()


def _data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode()


def _grid_pairs(ctx: AppContext, data: StudyData, ids: list[str], label_of: dict[str, str]
                ) -> list[tuple[str, Path | None, Path | None]]:
    out: list[tuple[str, Path | None, Path | None]] = []
    for iid in ids:
        img = data.images.get(iid)
        if img is None:
            continue
        ip: Path | None
        mp: Path | None
        try:
            ip = ctx.store.path(img["path"])
            mp = ctx.store.path(img["mask_path"]) if img.get("mask_path") else None
        except ValueError:
            ip = mp = None
        out.append((label_of.get(iid, img["name"])[:24], ip, mp))
    return out


def _image_figures(ctx: AppContext, data: StudyData, banner: str | None) -> dict[str, bytes]:
    figs: dict[str, bytes] = {}
    seen: set[str] = set()
    chosen: list[str] = []
    labels: dict[str, str] = {}
    classes = sorted({i["ground_truth"] for i in data.items})
    for cls in classes:
        for src in ("real", "synthetic"):
            ids = [i["image_id"] for i in data.items
                   if i["ground_truth"] == cls and i["source"] == src and not i["repeat_of"]]
            for iid in ids[:GRID_PER_GROUP]:
                if iid not in seen:
                    seen.add(iid)
                    chosen.append(iid)
                    labels[iid] = f"{src} {cls}"
    grid = figures.image_grid(_grid_pairs(ctx, data, chosen, labels),
                              "Synthetic image/mask pairs beside real ones (mask tinted red)"
                              + (f" — {banner}" if banner else ""), cols=2 * GRID_PER_GROUP)
    if grid:
        figs["image_grid"] = grid
    pairs: list[tuple[str, Path | None, Path | None]] = []
    for run in data.metric_runs:
        mem = (run.get("results") or {}).get("memorisation") or {}
        for p in (mem.get("top_pairs") or [])[:4]:
            for key, tag in (("synthetic_id", "synthetic"), ("real_id", "nearest real")):
                img = data.images.get(p.get(key, ""))
                path = None
                if img is None and p.get(key):
                    img = _lookup_image(ctx, p[key])
                if img is not None:
                    path = ctx.store.path(img["path"])
                pairs.append((f"{tag} ssim={p.get('ssim', float('nan')):.2f}", path, None))
    if pairs:
        mem_png = figures.image_grid(pairs, "Memorisation: closest synthetic/real pairs", cols=4)
        if mem_png:
            figs["memorisation_pairs"] = mem_png
    return figs


def _lookup_image(ctx: AppContext, image_id: str) -> dict[str, Any] | None:
    from sonoaudit.db.models import Image

    with ctx.sessions() as s:
        img = s.get(Image, image_id)
        return None if img is None else {"path": img.path, "name": img.name}


def metric_rows(data: StudyData) -> list[dict[str, Any]]:
    """FID/KID/IS (and friends) per run and class, whatever subset the run holds."""

    def val(d: Any, *keys: str) -> Any:
        for k in keys:
            if not isinstance(d, dict):
                return None
            d = d.get(k)
        return d

    names = {d["id"]: d["name"] for d in data.datasets}
    rows = []
    for run in data.metric_runs:
        res = run.get("results") or {}
        blocks = [("all" if res.get("class_label") is None else res["class_label"], res)]
        blocks += sorted((res.get("per_class") or {}).items())
        for cls, b in blocks:
            rows.append({
                "run": run["id"], "class": cls, "status": run["status"],
                # real_ref is a dataset id (or a folder): name the dataset when it is one.
                "dataset": names.get(run["real_ref"], run["real_ref"]),
                "real_ref": run["real_ref"], "synthetic_ref": run["synthetic_ref"],
                "n_real": b.get("n_real"), "n_synthetic": b.get("n_synthetic"),
                "fid": val(b, "fid", "value"), "fid_reason": val(b, "fid", "reason"),
                "kid_mean": val(b, "kid", "mean"), "kid_std": val(b, "kid", "std"),
                "kid_reason": val(b, "kid", "reason"),
                "is": val(b, "is", "value"), "is_reason": val(b, "is", "reason"),
                "memorised": val(b, "memorisation", "n_flagged"),
                "diversity_ratio": val(b, "diversity", "ratio"),
                "extractor": val(res, "provenance", "extractor"),
                "weights_sha256": val(res, "provenance", "weights_sha256"),
                "warnings": b.get("warnings") or [],
            })
    return rows


def build_report(ctx: AppContext, study_id: str, *, n_boot: int = 2000, seed: int = 0,
                 tie_policy: str = "wrong", positive: str = "malignant",
                 not_run: list[dict[str, str]] | None = None) -> Report:
    """``not_run``: ``{"section", "why"}`` entries from the caller (e.g. the pipeline: "no LLM
    backend configured"), shown first in the report's "not run" section."""
    data = load_study(ctx, study_id)
    analysis = analyse_study(data, n_boot=n_boot, seed=seed, positive=positive,
                             tie_policy=tie_policy)  # type: ignore[arg-type]
    if not_run:
        analysis["not_run"][:0] = [{"section": str(x["section"]), "why": str(x["why"])}
                                   for x in not_run]
    flags = []
    if data.simulated:
        flags.append("SIMULATED reader panel")
    if data.phantom:
        flags.append("PHANTOM data")
    banner = " · ".join(flags) or None
    figs: dict[str, bytes] = {}
    for key, title, keys in (("class_agreement", "Class agreement", figures.AGREEMENT_KEYS),
                             ("confidence_agreement", "Confidence agreement",
                              figures.CONFIDENCE_KEYS)):
        if key in analysis:
            strata = public(analysis[key]["strata"])
            for lab in strata:
                strata[lab]["n_items"] = analysis[key]["n_items"][lab]
            figs[f"{key}_forest"] = figures.forest(strata, title, banner, keys)
    acc_rows: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    if "reader_accuracy" in analysis:
        st = public(analysis["reader_accuracy"]["strata"])
        for r in st["all"]["raters"]:
            acc_rows.append((r, st.get("source=real", {}).get("raters", {}).get(r, {})
                             .get("accuracy"),
                             st.get("source=synthetic", {}).get("raters", {}).get(r, {})
                             .get("accuracy")))
        acc_rows.append(("majority vote",
                         st.get("source=real", {}).get("majority_vote", {}).get("accuracy"),
                         st.get("source=synthetic", {}).get("majority_vote", {}).get("accuracy")))
        figs["confusion_majority"] = figures.confusion(st["all"]["majority_vote"]["confusion"],
                                                       "Readers' majority vote")
    for k, (key, entry) in enumerate(analysis.get("llm", {}).items()):
        st = public(entry["accuracy"]["strata"])
        if "consensus" in st["all"]["raters"]:
            acc_rows.append((f"LLM {k + 1} consensus",
                             st.get("source=real", {}).get("raters", {}).get("consensus", {})
                             .get("accuracy"),
                             st.get("source=synthetic", {}).get("raters", {}).get("consensus", {})
                             .get("accuracy")))
            figs[f"confusion_llm{k + 1}"] = figures.confusion(
                st["all"]["raters"]["consensus"]["confusion"], f"LLM {k + 1}: {key}")
    if acc_rows:
        figs["accuracy_real_vs_synthetic"] = figures.accuracy_bars(acc_rows, banner)
    if "confidence_histogram" in analysis:
        hist = analysis["confidence_histogram"]
        figs["confidence_histogram"] = figures.confidence_histogram(
            {src: hist[src] for src in ("real", "synthetic")}, banner)
        for cls in sorted({k.split("/")[0] for k in hist if "/" in k}):
            pair = {src: hist[f"{cls}/{src}"] for src in ("real", "synthetic")}
            if sum(sum(v.values()) for v in pair.values()):
                figs[f"confidence_histogram_{cls}"] = figures.confidence_histogram(
                    pair, banner, title=f"Confidence, {cls}: real vs synthetic")
    figs.update(_image_figures(ctx, data, banner))
    if "memorisation_pairs" not in figs:
        analysis["not_run"].append({"section": "memorisation pairs",
                                    "why": "no metric run with memorisation pairs for this study"})
    metrics = metric_rows(data)
    rows = csv_rows(analysis, metrics)
    out_json = public(analysis)
    out_json["metrics"] = metrics
    out_json["metric_runs"] = [dict(r) for r in data.metric_runs]
    out_json["figures"] = sorted(figs)
    html = render_html(out_json, figs, banner)
    return Report(out_json, to_csv(rows), html, figs)


def fmt(e: Any, digits: int = 3) -> str:
    """'0.743 [0.399, 1.000]' or 'undefined (reason)'."""
    if not isinstance(e, dict):
        return "—"
    if e.get("value") is None:
        return f"undefined ({e.get('reason', 'n/a')})"
    ci = e.get("ci95")
    ci_s = f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else " [CI undefined]"
    return f"{e['value']:.{digits}f}{ci_s}"


def render_html(report: dict[str, Any], figs: dict[str, bytes], banner: str | None) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                      autoescape=select_autoescape(["html", "j2"]))
    env.filters["est"] = fmt
    env.filters["num"] = lambda v, d=3: "—" if v is None else (
        f"{v:.{d}f}" if isinstance(v, float) else str(v))
    return env.get_template("report.html.j2").render(
        r=report, banner=banner, figs={k: _data_uri(v) for k, v in figs.items()},
        prov_json=json.dumps(report["provenance"], indent=1, default=str))
