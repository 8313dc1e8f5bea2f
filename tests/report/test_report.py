"""The study report on a real Postgres with a complete study: every section filled, numbers equal
to `sonoaudit agreement` on the study's export, the admin-protected endpoint, and the page in
headless Chromium (screenshot kept under test-artifacts/)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from report_study import ADMIN_TOKEN, BuiltStudy, build_empty_phantom_study, build_study
from sonoaudit.context import AppContext, build_context
from sonoaudit.settings import Settings

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
B = 300


@pytest.fixture(scope="module")
def ctx(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppContext]:
    home = tmp_path_factory.mktemp("report")
    c = build_context(Settings(database_url=postgres_url, home=home, store_dir=home / "store"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def built(ctx: AppContext, busbra_sample: Path) -> BuiltStudy:
    return build_study(ctx, busbra_sample)


@pytest.fixture(scope="module")
def report(ctx: AppContext, built: BuiltStudy):  # type: ignore[no-untyped-def]
    from sonoaudit_raters.report.render import build_report

    return build_report(ctx, built.study_id, n_boot=B, seed=0)


@pytest.mark.integration
def test_every_section_is_filled(report, built: BuiltStudy) -> None:  # type: ignore[no-untyped-def]
    j = report.json
    assert j["not_run"] == []
    assert j["simulated"] is True
    assert j["n_items"] == built.n_items
    ca = j["class_agreement"]
    assert {"all", "source=real", "source=synthetic", "ground_truth=benign",
            "ground_truth=malignant"} <= set(ca["strata"])
    assert ca["strata"]["all"]["fleiss_kappa"]["value"] is not None
    assert len(ca["strata"]["all"]["cohen_kappa_pairwise"]) == 6
    diff = ca["real_minus_synthetic"]["all"]["fleiss_kappa"]
    assert diff["value"] == pytest.approx(ca["strata"]["source=real"]["fleiss_kappa"]["value"]
                                          - ca["strata"]["source=synthetic"]["fleiss_kappa"]
                                          ["value"])
    assert diff["ci95"] is not None
    conf = j["confidence_agreement"]["strata"]["all"]
    assert set(conf["krippendorff_alpha_by_level"]) == {"nominal", "ordinal", "interval"}
    assert "quadratic" in conf["cohen_kappa_pairwise"][0]["weighted"]
    acc = j["reader_accuracy"]["strata"]["all"]
    assert set(acc["raters"]) == set(built.readers)
    assert acc["majority_vote"]["tie_policy"] == "wrong"
    (llm,) = j["llm"].values()
    assert llm["status_counts"]["abstain"] > 0
    cons = llm["accuracy"]["strata"]["all"]["raters"]
    assert {"replicate 0", "replicate 1", "consensus"} <= set(cons)
    assert cons["replicate 0"]["n_no_answer"] > 0
    assert cons["replicate 0"]["confusion"]["cols_answer"][-1] == "no answer"
    assert len(llm["reader_vs_llm"]) == 4
    assert j["llm_match"]["all"]["n"] > 0
    assert j["llm_match"]["ground_truth=benign"]["n"] > 0
    assert llm["replicate_agreement"]["krippendorff_alpha"]["value"] is not None
    assert set(llm["reader_vs_llm_by_source"]) == {"real", "synthetic"}
    rvl = llm["reader_vs_llm_strata"]
    assert {"ground_truth=benign", "ground_truth=malignant&source=real"} <= set(rvl["strata"])
    d = rvl["real_minus_synthetic"]["all"]["pairs/reader 1~LLM"]
    r1 = [rvl["strata"][f"source={s}"]["pairs"][0]["value"] for s in ("real", "synthetic")]
    assert d["value"] == pytest.approx(r1[0] - r1[1]) and d["ci95"] is not None
    assert "ground_truth=benign" in llm["replicate_agreement_strata"]["strata"]
    assert acc["majority_vote"]["confusion"]["cols_answer"][-1] == "tie (no majority)"
    # Answers on repeated items are second readings: left out of the summary, and counted.
    assert j["llm_match"]["all"]["n_repeat_answers_left_out"] == 4 * 4
    intra = j["intra_reader"]
    assert intra["pooled"]["n"] == sum(p["n"] for p in intra["readers"].values()) > 0
    assert intra["n_images"] == 4
    assert intra["strata"]["strata"]["all"]["pooled"]["value"] == intra["pooled"]["value"]
    assert "source=real" in intra["strata"]["strata"]
    assert j["n_repeat_items"] == 4
    # Repeats stay out of the inter-reader statistics.
    assert j["class_agreement"]["n_items"]["all"] == built.n_items
    assert j["metrics"][0]["fid"] == 63.2 and j["metrics"][0]["is"] is None
    assert [(m["dataset"], m["class"], m["fid"]) for m in j["metrics"]] == [
        ("BUS-BRA sample", "all", 63.2), ("BUS-BRA sample", "benign", 80.1)]
    assert {"image_grid", "memorisation_pairs", "confidence_histogram",
            "class_agreement_forest", "accuracy_real_vs_synthetic",
            "confusion_majority", "confusion_llm1"} <= set(report.figures)
    for png in report.figures.values():
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(j, allow_nan=False)
    rows = list(csv.DictReader(report.csv.splitlines()))
    assert any(r["stratum"].startswith("real-synthetic") for r in rows)
    assert any(r["section"].startswith("reader_vs_llm:") and r["stratum"] == "real-synthetic:all"
               for r in rows)
    assert all(r["n"] != "" for r in rows)
    html = report.html
    assert "SIMULATED reader panel" in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from outside


@pytest.mark.integration
def test_every_json_table_is_in_the_csv(report) -> None:  # type: ignore[no-untyped-def]
    from sonoaudit_raters.report.render import NOT_TABLES

    j = report.json
    rows = list(csv.DictReader(report.csv.splitlines()))
    assert all(r["n"] != "" for r in rows)
    cell = {(r["section"], r["stratum"], r["statistic"]): r for r in rows}

    def val(section: str, stratum: str, stat: str) -> float | None:
        v = cell[(section, stratum, stat)]["value"]
        return None if v == "" else float(v)

    (key,) = j["llm"]
    # every table of the JSON (each top-level key that is not metadata) has CSV rows
    section_of = {"items_by_stratum": ["items"], "class_agreement": ["class_agreement"],
                  "confidence_agreement": ["confidence_agreement"],
                  "reader_accuracy": ["reader_accuracy", "reader_accuracy:confusion"],
                  "confidence_histogram": ["confidence_histogram"],
                  "intra_reader": ["intra_reader", "intra_reader_pooled"],
                  "llm": [f"llm_counts:{key}", f"llm_accuracy:{key}",
                          f"llm_accuracy:{key}:confusion", f"reader_vs_llm:{key}",
                          f"llm_replicate_agreement:{key}"],
                  "llm_match": ["llm_match"], "metrics": ["image_metrics"]}
    tables = [k for k in j if k not in NOT_TABLES]
    assert sorted(tables) == sorted(section_of), "a JSON table without CSV rows (or mapping)"
    sections = {r["section"] for r in rows}
    for k in tables:
        assert set(section_of[k]) <= sections, k
    # ... with the JSON's numbers
    for m in j["metrics"]:
        stratum = f"run={m['run']}&dataset={m['dataset']}&class={m['class']}"
        for stat in ("fid", "kid_mean", "kid_std", "is", "n_real", "n_synthetic"):
            assert val("image_metrics", stratum, stat) == m[stat], (stratum, stat)
        if m["is"] is None:
            assert cell[("image_metrics", stratum, "is")]["reason"] == (m["is_reason"] or "")
    assert val("image_metrics", next(r["stratum"] for r in rows
                                     if r["section"] == "image_metrics"), "fid") == 63.2
    for label, hist in j["confidence_histogram"].items():
        for level, c in hist.items():
            assert val("confidence_histogram", label, f"count/{level}") == c
    assert sum(1 for r in rows if r["section"] == "confidence_histogram") == sum(
        len(h) for h in j["confidence_histogram"].values())
    for label, summary in j["llm_match"].items():
        for answer, c in summary["counts"].items():
            assert val("llm_match", label, f"count/{answer}") == c
            assert val("llm_match", label, f"share/{answer}") == pytest.approx(
                summary["shares"][answer])
            assert cell[("llm_match", label, f"count/{answer}")]["n"] == str(summary["n"])
    assert val("llm_match", "all", "n_repeat_answers_left_out") == 16
    for label, n in j["items_by_stratum"].items():
        assert val("items", label, "n_items") == n
    llm = j["llm"][key]
    assert val(f"llm_counts:{key}", "all", "n_items_without_llm") == llm["n_items_without_llm"]
    for status, c in llm["status_counts"].items():
        assert val(f"llm_counts:{key}", "all", f"status/{status}") == c
    for section, block in (("reader_accuracy", j["reader_accuracy"]),
                           (f"llm_accuracy:{key}", llm["accuracy"])):
        for label, res in block["strata"].items():
            who = dict(res["raters"]) | (
                {"majority vote": res["majority_vote"]} if "majority_vote" in res else {})
            for rater, r in who.items():
                cm = r["confusion"]
                for t, line in zip(cm["rows_truth"], cm["counts"], strict=True):
                    for a, c in zip(cm["cols_answer"], line, strict=True):
                        assert val(f"{section}:confusion", label,
                                   f"{rater}/truth={t}/answer={a}") == c


@pytest.mark.integration
def test_agreement_cli_on_the_export_gives_the_service_numbers(
        ctx: AppContext, built: BuiltStudy, report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sonoaudit.cli.main import app
    from sonoaudit_raters.study.export import export_answers, rows_to_csv
    from typer.testing import CliRunner

    # The study's long export, class answers, repeated readings left out (as the report does).
    rows = [r for r in export_answers(ctx, built.study_id)
            if r["question"] == "class" and not r["repeat_of"]]
    path = tmp_path / "export.csv"
    path.write_text(rows_to_csv(rows))
    res = CliRunner().invoke(app, ["agreement", str(path), "--item", "item", "--rater", "reader",
                                   "--value", "answer", "--scale", "benign,malignant,normal",
                                   "--json", "-B", str(B)])
    assert res.exit_code == 0, res.output
    cli = json.loads(res.output)
    svc = report.json["class_agreement"]["strata"]["all"]
    for key in ("percent_agreement", "fleiss_kappa", "krippendorff_alpha", "gwet_ac1"):
        assert cli[key]["value"] == pytest.approx(svc[key]["value"], abs=1e-12), key
        assert cli[key]["ci95"] == pytest.approx(svc[key]["ci95"], abs=1e-12), key
    assert [p["value"] for p in cli["cohen_kappa_pairwise"]] == pytest.approx(
        [p["value"] for p in svc["cohen_kappa_pairwise"]])


@pytest.mark.integration
def test_report_endpoint_requires_the_admin_token(postgres_url: str, built: BuiltStudy,
                                                  tmp_path: Path) -> None:
    import time

    from fastapi.testclient import TestClient
    from sonoaudit_raters.main import create_app

    app = create_app(Settings(database_url=postgres_url, home=tmp_path,
                              store_dir=tmp_path / "store"))
    with TestClient(app) as client:
        for _ in range(100):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.1)
        url = f"/studies/{built.study_id}/report"
        assert client.get(url).status_code == 403
        assert client.get(url, headers={"authorization": "Bearer wrong"}).status_code == 403
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        r = client.get(url, params={"format": "json", "bootstrap": 50}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["class_agreement"]["strata"]["all"]["fleiss_kappa"]["n"] > 0
        r = client.get(url, params={"format": "csv", "bootstrap": 50}, headers=auth)
        assert r.status_code == 200 and r.text.startswith("section,stratum,statistic")
        assert client.get(url, params={"format": "pdf"}, headers=auth).status_code == 422
        assert client.get(url, params={"bootstrap": -1}, headers=auth).status_code == 422


@pytest.mark.integration
@pytest.mark.browser
def test_report_renders_in_headless_chromium(report, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():  # fail, as the study's browser tests do: a skip would pass CI
        pytest.fail("Debian chromium missing: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    out = tmp_path / "report"
    report.write(out)
    ARTIFACTS.mkdir(exist_ok=True)
    external: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda req: external.append(req.url)
                if not req.url.startswith(("file:", "data:")) else None)
        page.goto((out / "report.html").as_uri())
        for section in ("not-run", "metrics", "agreement", "confidence", "accuracy", "llm",
                        "intra", "memorisation", "images", "provenance"):
            assert page.locator(f"#{section}").count() == 1, section
        assert page.locator("#banner").inner_text().startswith("SIMULATED reader panel")
        broken = page.evaluate("Array.from(document.images).filter("
                               "i => !i.complete || i.naturalWidth === 0).length")
        n_images = page.evaluate("document.images.length")
        assert n_images >= 7 and broken == 0
        page.screenshot(path=str(ARTIFACTS / "agreement-report.png"), full_page=True)
        browser.close()
    assert external == []
    assert (ARTIFACTS / "agreement-report.png").stat().st_size > 10_000


@pytest.mark.integration
def test_unread_phantom_study_says_what_was_not_run(ctx: AppContext,
                                                    busbra_sample: Path) -> None:
    from sonoaudit_raters.report.render import build_report

    study_id = build_empty_phantom_study(ctx, busbra_sample)
    rep = build_report(ctx, study_id, n_boot=50, not_run=[
        {"section": "LLM classification", "why": "no LLM backend configured"}])
    assert rep.json["not_run"][0] == {"section": "LLM classification",
                                      "why": "no LLM backend configured"}
    assert "no LLM backend configured" in rep.html
    sections = {x["section"] for x in rep.json["not_run"]}
    assert {"reader agreement and accuracy", "confidence agreement and histograms",
            "LLM accuracy and reader-vs-LLM agreement", "does the LLM match you",
            "image metrics (FID/KID/IS)", "memorisation pairs"} <= sections
    assert rep.json["phantom"] is True
    assert "PHANTOM data" in rep.html
    assert "no reader has answered the class question yet" in rep.html
    assert "image_grid" in rep.figures


@pytest.mark.integration
def test_report_command_writes_all_files(ctx: AppContext, built: BuiltStudy, postgres_url: str,
                                         tmp_path: Path) -> None:
    from sonoaudit.cli.main import app
    from typer.testing import CliRunner

    env = {"SONOAUDIT_DATABASE_URL": postgres_url, "SONOAUDIT_HOME": str(tmp_path),
           "SONOAUDIT_STORE_DIR": str(ctx.settings.resolved_store_dir)}
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["report", built.study_id, "--out", str(out), "-B", "50"],
                             env=env)
    assert res.exit_code == 0, res.output
    for name in ("report.html", "report.json", "report.csv", "figures/image_grid.png",
                 "figures/confusion_majority.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "report.json").read_text())
    assert data["provenance"]["n_boot"] == 50 and data["provenance"]["study_id"] == built.study_id
    missing = CliRunner().invoke(app, ["report", "no-such-study", "--out", str(out)], env=env)
    assert missing.exit_code == 2 and "not found" in missing.output
