"""End to end in real headless Chromium (Debian's, driven by Playwright): readers answer with the
keyboard, resume after a reload, see the LLM answer only after locking, and cannot reach admin
routes or other readers' answers; in the "done when" run `sonoaudit agreement` on the admin's
export gives the report endpoint's numbers. Screenshots go to test-artifacts/study/."""

from __future__ import annotations

import csv
import io
import json
import math
from itertools import combinations
from pathlib import Path
from typing import Any

import httpx
import pytest
from sonoaudit.db.models import Answer, Image, StudyItem
from sonoaudit_raters.study import add_reader, create_study
from sonoaudit_raters.study.reading import view_for_token
from sqlalchemy import select

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CLASS_KEYS = {"benign": "1", "malignant": "2", "normal": "3"}


def answer_current(page: Any, cls: str, arrows: int, llm_key: str = "1") -> tuple[str, bool]:
    """Answer the item on screen with the keyboard only; returns (item key, had an LLM step)."""
    form = page.locator("#answer-form")
    item = form.get_attribute("data-item")
    assert form.get_attribute("data-step") == "read"
    page.keyboard.press(CLASS_KEYS[cls])
    for _ in range(arrows):
        page.keyboard.press("ArrowRight")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    llm = page.locator("#llm-reveal")
    if llm.count():
        assert page.locator("#answer-form").get_attribute("data-item") == item
        page.keyboard.press(llm_key)
        with page.expect_navigation():
            page.keyboard.press("Enter")
        return str(item), True
    return str(item), False


def _conf(arrows: int) -> str:
    return str(20 * (arrows - 1))  # first ArrowRight selects 0, each further one adds 20


def test_keyboard_resume_llm_reveal_and_blinding(store: Any, live: Any, add_llm: Any,
                                                  browser: Any, artifacts: Path) -> None:
    real, synth = store.real_ids(2), store.synthetic_ids(2)
    study, admin = create_study(store.ctx, "Browser study", real, synth, seed=11)
    t1 = add_reader(store.ctx, study.id, "Reader one")
    t2 = add_reader(store.ctx, study.id, "Reader two")
    order = view_for_token(store.ctx, t1).items
    # the LLM answered the first two images of reader one's list
    add_llm(store.ctx, [order[0].image_id, order[1].image_id])
    ctx1 = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx1.new_page()
    page.goto(f"{live.url}/study/r/{t1}")
    assert page.url.endswith("/item/1")
    assert page.get_by_role("progressbar").count() == 1
    # accessibility basics: every control has a name, a skip link comes first in tab order
    unnamed = page.eval_on_selector_all(
        "input:not([type=hidden]), textarea, button, progress",
        "els => els.filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label')"
        " || e.textContent.trim())).map(e => e.outerHTML)")
    assert unnamed == []
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.locator("body").click(position={"x": 5, "y": 300})
    # stage 1: no trace of the LLM answer anywhere on the page
    assert "LLM-RATIONALE" not in page.content() and page.locator("#llm-reveal").count() == 0
    page.screenshot(path=str(artifacts / "reading-stage1.png"), full_page=True)
    # mask outline toggles with M; zoom with +
    assert page.locator("img.mask").is_visible()
    page.keyboard.press("m")
    assert not page.locator("img.mask").is_visible()
    page.keyboard.press("m")
    width = page.locator("#stage").bounding_box()["width"]
    page.keyboard.press("+")
    assert page.locator("#stage").bounding_box()["width"] > width * 1.2
    page.keyboard.press("z")
    # lock with the keyboard: the LLM answer appears only now
    page.keyboard.press("2")
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.locator("#llm-reveal").is_visible()
    assert "LLM-RATIONALE-0" in page.locator("#llm-reveal").inner_text()
    assert page.locator(".locked-class").inner_text() == "malignant"
    assert page.locator(".locked-confidence").inner_text() == "60"
    page.screenshot(path=str(artifacts / "reading-llm-reveal.png"), full_page=True)
    page.keyboard.press("3")  # disagree
    page.locator("#q-comment").fill("margin looks smoothed")
    page.locator("#q-comment").press("Tab")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/item/2")
    key2, had_llm = answer_current(page, "benign", 2)
    assert had_llm
    key3, had_llm = answer_current(page, "malignant", 6)
    assert not had_llm
    assert page.url.endswith("/item/4")
    page.reload()
    assert page.url.endswith("/item/4")
    page.goto(f"{live.url}/study/r/{t1}")  # the invitation link resumes at the first unanswered
    assert page.url.endswith("/item/4")
    assert page.locator("#answer-form").get_attribute("data-item") == order[3].item_key
    page.goto(f"{live.url}/study/r/{t1}/item/7")  # no skipping ahead
    assert page.url.endswith("/item/4")
    page.screenshot(path=str(artifacts / "reading-resumed.png"), full_page=True)

    with store.ctx.sessions() as s:
        ev = {(a.item_id, a.question): a for a in s.scalars(
            select(Answer).join(StudyItem, StudyItem.id == Answer.item_id)
            .where(Answer.study_id == study.id))}
        keys = {i.item_key: i.id for i in s.scalars(select(StudyItem))}
    first = order[0].item_id
    assert ev[(first, "class")].value == "malignant" and ev[(first, "confidence")].value == "60"
    assert ev[(first, "llm_match")].value == "disagree"
    assert ev[(first, "comment")].value == "margin looks smoothed"
    assert ev[(first, "class")].time_on_item_ms and ev[(first, "class")].time_on_item_ms > 0
    assert ev[(keys[key2], "confidence")].value == _conf(2)
    assert ev[(keys[key3], "confidence")].value == _conf(6)
    assert ev[(keys[key3], "class")].value == "malignant"

    # reader two: own blank answers only, LLM hidden, no admin access
    ctx2 = browser.new_context(extra_http_headers={"Authorization": f"Bearer {t2}"})
    p2 = ctx2.new_page()
    p2.goto(f"{live.url}/study/r/{t2}")
    assert p2.url.endswith("/item/1")
    assert "LLM-RATIONALE" not in p2.content()
    assert p2.locator("input[type=radio]:checked").count() == 0
    r = p2.goto(f"{live.url}/study/r/{t2}/api/answers")
    assert r is not None and r.status == 200 and r.json() == []
    r = p2.goto(f"{live.url}/study/r/{t2}/api/llm/{order[0].item_key}")
    assert r is not None and r.status == 409
    for path in ("", "/export.csv", "/export.json", "/progress.json"):
        r = p2.goto(f"{live.url}/study/admin/{study.id}{path}")
        assert r is not None and r.status == 403, path
    r = p2.goto(f"{live.url}/study/r/made-up-token")
    assert r is not None and r.status == 403
    p2.screenshot(path=str(artifacts / "reader-403.png"))
    ctx2.close()
    ctx1.close()


CLASSES = ("benign", "malignant", "normal")
CONFIDENCE = tuple(str(v) for v in range(0, 101, 20))
PARITY_B = 200  # bootstrap replicates for both sides of the CLI-vs-service comparison


def _close(cli: Any, svc: Any, where: str) -> None:
    """Deep equality of two JSON values, floats to 1e-12 (the same code on the same table)."""
    if isinstance(cli, float) or isinstance(svc, float):
        assert isinstance(cli, (int, float)) and isinstance(svc, (int, float)), where
        assert math.isclose(cli, svc, rel_tol=0, abs_tol=1e-12), (where, cli, svc)
    elif isinstance(cli, dict):
        assert isinstance(svc, dict) and sorted(cli) == sorted(svc), (where, cli, svc)
        for k in cli:
            _close(cli[k], svc[k], f"{where}.{k}")
    elif isinstance(cli, list):
        assert isinstance(svc, list) and len(cli) == len(svc), (where, cli, svc)
        for n, (a, b) in enumerate(zip(cli, svc, strict=True)):
            _close(a, b, f"{where}[{n}]")
    else:
        assert cli == svc, (where, cli, svc)


def _cli_agreement(rows: list[dict[str, str]], question: str, tmp: Path,
                   args: list[str]) -> dict[str, Any]:
    """``sonoaudit agreement --json`` on the export's rows of one question (repeats left out,
    as the report does), written to their own CSV: the command reads one question per table."""
    from sonoaudit.cli.main import app
    from typer.testing import CliRunner

    path = tmp / f"export-{question}.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["question"] == question and not r["repeat_of"])
    res = CliRunner().invoke(app, ["agreement", str(path), "--item", "item", "--rater", "reader",
                                   "--value", "answer", *args, "--json",
                                   "-B", str(PARITY_B), "--seed", "0"])
    assert res.exit_code == 0, res.output
    out: dict[str, Any] = json.loads(res.output)
    return out


def _agreement_parity(rows: list[dict[str, str]], typed: dict[tuple[str, str], tuple[str, str]],
                      server_url: str, admin: str, study_id: str, tmp: Path) -> None:
    """Issue 7's "done when": `sonoaudit agreement` on the real sample's export gives the
    service's numbers (the report JSON over HTTP, same B and seed), and both equal independent
    computations (by hand, scikit-learn, `krippendorff`) on what the readers typed."""
    import krippendorff
    import numpy as np
    from sklearn.metrics import cohen_kappa_score

    cli_cls = _cli_agreement(rows, "class", tmp, ["--level", "nominal",
                                                  "--scale", ",".join(CLASSES)])
    cli_conf = _cli_agreement(rows, "confidence", tmp, ["--level", "ordinal",
                                                        "--scale", ",".join(CONFIDENCE)])
    with httpx.Client(base_url=server_url, timeout=120,
                      headers={"Authorization": f"Bearer {admin}"}) as c:
        r = c.get(f"/study/admin/{study_id}/report",
                  params={"format": "json", "bootstrap": PARITY_B, "seed": 0})
    assert r.status_code == 200, r.text
    rep = r.json()
    svc_cls = rep["class_agreement"]["strata"]["all"]
    svc_conf = rep["confidence_agreement"]["strata"]["all"]
    for cli, svc, level in ((cli_cls, svc_cls, "nominal"), (cli_conf, svc_conf, "ordinal")):
        assert (cli["n_items"], cli["n_raters"], cli["n_ratings"]) == (40, 3, 120)
        assert cli["level"] == level
        for key in ("percent_agreement", "fleiss_kappa", "krippendorff_alpha", "gwet_ac1"):
            assert cli[key]["value"] is not None and cli[key]["ci95"] is not None, key
            assert cli[key]["bootstrap"] == {"B": PARITY_B, "undefined": 0}, key
            _close(cli[key], svc[key], f"{level}.{key}")
        pairs = [(p["rater_a"], p["rater_b"], p["n"]) for p in cli["cohen_kappa_pairwise"]]
        assert pairs == [("Radiologist A", "Radiologist B", 40),
                         ("Radiologist A", "Radiologist C", 40),
                         ("Radiologist B", "Radiologist C", 40)]
        _close(cli["cohen_kappa_pairwise"], svc["cohen_kappa_pairwise"], f"{level}.pairwise")
        # ... and every other number of the object (alpha per level, weighted kappas, Light's)
        _close({k: v for k, v in cli.items() if k not in ("input", "provenance")}, svc, level)
    assert set(cli_conf["krippendorff_alpha_by_level"]) == {"nominal", "ordinal", "interval"}
    assert set(cli_conf["cohen_kappa_pairwise"][0]["weighted"]) == {"linear", "quadratic"}

    # independent values from what the readers typed in the browser
    readers = sorted({name for name, _ in typed})
    items = sorted({key for _, key in typed})
    cls = {(n, k): v[0] for (n, k), v in typed.items()}
    conf = {(n, k): int(v[1]) for (n, k), v in typed.items()}
    pa = np.mean([sum(a == b for a, b in combinations([cls[(n, k)] for n in readers], 2)) / 3
                  for k in items])
    assert math.isclose(cli_cls["percent_agreement"]["value"], pa, abs_tol=1e-12)
    for p in cli_cls["cohen_kappa_pairwise"]:
        want = cohen_kappa_score([cls[(p["rater_a"], k)] for k in items],
                                 [cls[(p["rater_b"], k)] for k in items], labels=list(CLASSES))
        assert math.isclose(p["value"], want, abs_tol=1e-12), p
    for p in cli_conf["cohen_kappa_pairwise"]:
        for w in ("linear", "quadratic"):
            # over the declared scale 0..100, not only the levels used
            want = cohen_kappa_score([conf[(p["rater_a"], k)] for k in items],
                                     [conf[(p["rater_b"], k)] for k in items],
                                     labels=[int(v) for v in CONFIDENCE], weights=w)
            assert math.isclose(p["weighted"][w]["value"], want, abs_tol=1e-12), (p, w)
    code = {c: n for n, c in enumerate(CLASSES)}
    want_alpha = krippendorff.alpha(
        reliability_data=[[code[cls[(n, k)]] for k in items] for n in readers],
        level_of_measurement="nominal")
    assert math.isclose(cli_cls["krippendorff_alpha"]["value"], want_alpha, abs_tol=1e-12)
    for lv in ("ordinal", "interval"):
        want_alpha = krippendorff.alpha(
            reliability_data=[[conf[(n, k)] for k in items] for n in readers],
            value_domain=[int(v) for v in CONFIDENCE], level_of_measurement=lv)
        assert math.isclose(cli_conf["krippendorff_alpha_by_level"][lv]["value"], want_alpha,
                            abs_tol=1e-12), lv


def _done_when(st: Any, server_url: str, browser: Any, add_llm: Any, artifacts: Path,
               tag: str, creator: str, tmp: Path) -> None:
    real, synth = st.real_ids(10), st.synthetic_ids(10)
    assert len(real) == 20 and len(synth) == 20
    add_llm(st.ctx, real[:2] + synth[:2])
    # the admin creates the study over HTTP, then invites three readers
    with httpx.Client(base_url=server_url) as c:
        r = c.post("/study/admin/studies", json={
            "name": f"Done-when {tag}", "real_image_ids": real, "synthetic_image_ids": synth,
            # only this test's LLM answers: the session's Postgres store also holds other
            # tests' classifications of the same BUS-BRA images
            "seed": 42, "config": {"llm": {"model": "fake-llm"}}},
            headers={"Authorization": f"Bearer {creator}"})
        assert r.status_code == 201, r.text
        created = r.json()
    admin = created["admin_token"]
    study_id = created["study_id"]
    tokens = {}
    with httpx.Client(base_url=server_url,
                      headers={"Authorization": f"Bearer {admin}"}) as c:
        for name in ("Radiologist A", "Radiologist B", "Radiologist C"):
            r = c.post(f"/study/admin/{study_id}/readers", json={"name": name})
            assert r.status_code == 201
            tokens[name] = r.json()["link"]
    typed: dict[tuple[str, str], tuple[str, str]] = {}
    for k, (name, link) in enumerate(tokens.items()):
        bctx = browser.new_context()
        page = bctx.new_page()
        page.goto(link)
        for n in range(40):
            assert page.url.endswith(f"/item/{n + 1}")
            cls = "benign" if (n + k) % 3 else "malignant"
            arrows = 1 + (n + k) % 6
            key, _ = answer_current(page, cls, arrows)
            typed[(name, key)] = (cls, _conf(arrows))
        assert page.url.endswith("/done")
        if k == 0:
            page.screenshot(path=str(artifacts / f"done-{tag}.png"))
        bctx.close()
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {admin}"}) as c:
        text = c.get(f"/study/admin/{study_id}/export.csv").text
        prog = c.get(f"/study/admin/{study_id}/progress.json").json()
    assert [(p["done"], p["total"]) for p in prog] == [(40, 40)] * 3
    rows = list(csv.DictReader(io.StringIO(text)))
    with st.ctx.sessions() as s:
        images = {i.id: i for i in s.scalars(select(Image).where(Image.id.in_(real + synth)))}
        items = {i.item_key: i for i in s.scalars(select(StudyItem)
                                                  .where(StudyItem.study_id == study_id))}
    by_q: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_q.setdefault(row["question"], []).append(row)
    assert len(by_q["class"]) == 40 * 3 and len(by_q["confidence"]) == 40 * 3
    assert len(by_q["llm_match"]) == 4 * 3
    assert {(r["reader"], r["item"]) for r in by_q["class"]} == set(typed)
    for row in by_q["class"] + by_q["confidence"]:
        img = images[items[row["item"]].image_id]
        assert row["study"] == study_id
        assert row["source"] == img.source  # hidden columns come from the store, not the page
        assert row["ground_truth"] == img.class_label
        want = typed[(row["reader"], row["item"])]
        assert row["answer"] == (want[0] if row["question"] == "class" else want[1])
        assert row["time"] and int(row["time_on_item_ms"]) > 0
    assert sum(r["source"] == "real" for r in by_q["class"]) == 60
    _agreement_parity(rows, typed, server_url, admin, study_id, tmp)


def test_done_when_three_readers_complete_40_items(store: Any, live: Any, add_llm: Any,
                                                   browser: Any, artifacts: Path,
                                                   creator_token: str, tmp_path: Path) -> None:
    _done_when(store, live.url, browser, add_llm, artifacts, "sqlite", creator_token, tmp_path)


@pytest.mark.integration
def test_done_when_on_postgres(pg_store: Any, add_llm: Any, browser: Any, artifacts: Path,
                               serve: Any, creator_token: str, tmp_path: Path) -> None:
    with serve(pg_store.settings) as server:
        _done_when(pg_store, server.url, browser, add_llm, artifacts, "postgres", creator_token,
                   tmp_path)


def test_admin_pages_in_browser(store: Any, live: Any, browser: Any, artifacts: Path) -> None:
    study, admin = create_study(store.ctx, "Admin UI", store.real_ids(1), store.synthetic_ids(1),
                                seed=3)
    bctx = browser.new_context()
    page = bctx.new_page()
    r = page.goto(f"{live.url}/study/admin/{study.id}")
    assert r is not None and r.status == 403
    page.get_by_label("Admin token").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").is_visible()
    page.get_by_label("Admin token").fill(admin)
    page.get_by_role("button", name="Sign in").click()
    assert page.url.endswith(f"/study/admin/{study.id}")
    # the report link opens with the cookie of this sign-in
    with page.expect_navigation():
        page.get_by_role("link", name="Study report").click()
    assert page.url.endswith(f"/study/admin/{study.id}/report")
    assert page.locator("#agreement").count() == 1 and page.locator("#llm").count() == 1
    page.go_back()
    page.get_by_label("Reader name").fill("Dr Web")
    page.get_by_role("button", name="Create invitation link").click()
    link = page.get_by_label("Invitation link").input_value()
    assert link.startswith(f"{live.url}/study/r/")
    assert page.locator("tbody th", has_text="Dr Web").count() == 1
    page.screenshot(path=str(artifacts / "admin.png"), full_page=True)
    # the new reader answers one image with an invalid form post (no JS), then validly
    rp = bctx.new_page()
    rp.goto(link)
    assert rp.url.endswith("/item/1")
    key = rp.locator("#answer-form").get_attribute("data-item")
    resp = rp.request.post(f"{link}/item/1", form={
        "item_key": str(key), "step": "read", "client_event_id": "bad-form-post",
        "class": "benign", "confidence": "70", "flag": "artefact"})
    assert resp.status == 422 and "confidence" in resp.text()
    answer_current(rp, "benign", 3)
    page.goto(f"{live.url}/study/admin/{study.id}")
    row = page.locator("tbody tr", has_text="Dr Web")
    assert "1 / 4" in row.inner_text()
    with page.expect_navigation():
        row.get_by_role("button", name="Revoke link").click()
    assert "revoked" in page.locator("tbody tr", has_text="Dr Web").inner_text()
    r = rp.goto(link)
    assert r is not None and r.status == 403
    # downloads need the admin cookie: a fresh context without it is refused
    other = browser.new_context()
    r = other.new_page().goto(f"{live.url}/study/admin/{study.id}/export.csv")
    assert r is not None and r.status == 403
    other.close()
    bctx.close()
