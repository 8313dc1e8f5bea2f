"""Reading in real headless Chromium, the ways readers actually break forms: the browser's Back
button, reloading with an unsent choice, double clicks; and the pages checked against WCAG 2.x
AA rules by axe-core (the reference engine, bundled by axe-playwright-python, no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sonoaudit.db.models import Answer
from sonoaudit_raters.study import add_reader, create_study, export_answers
from sonoaudit_raters.study.reading import view_for_token
from sqlalchemy import select

pytestmark = [pytest.mark.browser]


def _events(store: Any, reader_id: str) -> list[tuple[str, str, str]]:
    with store.ctx.sessions() as s:
        return [(a.item_id, a.question, a.value) for a in s.scalars(
            select(Answer).where(Answer.reader_id == reader_id).order_by(Answer.id))]


def test_back_button_edit_reload_draft_and_double_click(store: Any, live: Any,
                                                         browser: Any) -> None:
    study, _ = create_study(store.ctx, "UX", store.real_ids(1), store.synthetic_ids(1), seed=5)
    token = add_reader(store.ctx, study.id, "Dr Back")
    view = view_for_token(store.ctx, token)
    items = view.items
    bctx = browser.new_context()
    page = bctx.new_page()
    page.goto(f"{live.url}/study/r/{token}")
    # item 1: benign / 40, then the browser's Back button and a correction to malignant
    page.keyboard.press("1")
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/item/2")
    page.go_back()
    assert page.url.endswith("/item/1")
    assert page.locator("input[name=class][value=benign]").is_checked()
    page.keyboard.press("2")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/item/2"), "an edit after Back must be sent, not swallowed"
    first = [(q, v) for i, q, v in _events(store, view.reader_id) if i == items[0].item_id]
    # events in the form's question order, the correction appended (never an update)
    assert first == [("class", "benign"), ("confidence", "40"), ("class", "malignant")]

    # item 2: a choice made but not sent survives a reload, and the time spent before the
    # reload counts toward time on item
    page.keyboard.press("2")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")  # 20
    page.wait_for_timeout(700)
    page.reload()
    assert page.url.endswith("/item/2")
    assert page.locator("input[name=class][value=malignant]").is_checked()
    assert page.locator("input[name=confidence][value='20']").is_checked()
    # double click on submit (and a stray second Enter) still records one answer each
    page.locator("button[type=submit]").dblclick()
    page.wait_for_url("**/item/3")
    second = [(q, v) for i, q, v in _events(store, view.reader_id) if i == items[1].item_id]
    assert second == [("class", "malignant"), ("confidence", "20")]
    with store.ctx.sessions() as s:
        ms = s.scalar(select(Answer.time_on_item_ms).where(
            Answer.reader_id == view.reader_id, Answer.item_id == items[1].item_id,
            Answer.question == "class"))
    assert ms is not None and ms >= 700
    # the draft is gone once sent: item 3 starts empty
    assert page.locator("input[type=radio]:checked").count() == 0
    # mask outline and zoom preferences follow the reader from image to image
    page.keyboard.press("m")
    page.keyboard.press("+")
    page.keyboard.press("3")
    page.keyboard.press("ArrowRight")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith("/item/4")
    page.goto(f"{live.url}/study/r/{token}/item/3")
    assert not page.locator("img.mask").is_visible()
    assert page.locator("#zoom-level").inner_text() == "125%"
    rows = export_answers(store.ctx, study.id)
    assert {(r["item"], r["question"]): r["answer"] for r in rows} == {
        (items[0].item_key, "class"): "malignant", (items[0].item_key, "confidence"): "40",
        (items[1].item_key, "class"): "malignant", (items[1].item_key, "confidence"): "20",
        (items[2].item_key, "class"): "normal", (items[2].item_key, "confidence"): "0"}
    assert [r["edited"] for r in rows if r["item"] == items[0].item_key] == [True, False]
    bctx.close()


def _axe(page: Any) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    res = Axe().run(page, options={"runOnly": {"type": "tag", "values": [
        "wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]}})
    return [f"{v['id']}: {[n['target'] for n in v['nodes']]}" for v in res.response["violations"]]


def test_pages_pass_axe_wcag_aa(store: Any, live: Any, add_llm: Any, browser: Any,
                                artifacts: Path) -> None:
    study, admin = create_study(store.ctx, "Axe", store.real_ids(1), store.synthetic_ids(1),
                                seed=2)
    token = add_reader(store.ctx, study.id, "Dr Axe")
    items = view_for_token(store.ctx, token).items
    add_llm(store.ctx, [items[0].image_id])
    bctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = bctx.new_page()
    found: dict[str, list[str]] = {}
    page.goto(f"{live.url}/study/r/{token}")
    found["read"] = _axe(page)
    resp = page.request.post(f"{live.url}/study/r/{token}/item/1", form={
        "item_key": items[0].item_key, "step": "read", "client_event_id": "axe-bad-post",
        "class": "benign", "confidence": "30"})
    assert resp.status == 422
    page.set_content(resp.text())  # the 422 re-render with its error message
    found["read-422"] = _axe(page)
    page.goto(f"{live.url}/study/r/{token}/item/1")
    page.keyboard.press("1")
    page.keyboard.press("ArrowRight")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.locator("#llm-reveal").is_visible()
    found["llm"] = _axe(page)
    page.goto(f"{live.url}/study/r/not-a-token")
    found["403"] = _axe(page)
    page.goto(f"{live.url}/study/admin/{study.id}")
    found["admin-login"] = _axe(page)
    page.get_by_label("Admin token").fill(admin)
    page.get_by_role("button", name="Sign in").click()
    found["admin"] = _axe(page)
    page.set_viewport_size({"width": 360, "height": 800})  # a phone, or 400 % zoom (1.4.10)
    page.goto(f"{live.url}/study/r/{token}/item/1")
    found["read-narrow"] = _axe(page)
    # reflow: nothing wider than the window, so no sideways scrolling of the whole page
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    assert page.locator("img.us").bounding_box()["width"] <= 360
    page.screenshot(path=str(artifacts / "reading-narrow.png"), full_page=True)
    assert {k: v for k, v in found.items() if v} == {}
    bctx.close()


def test_admin_imports_csv_from_the_page(store: Any, live: Any, browser: Any,
                                         tmp_path: Path) -> None:
    study, admin = create_study(store.ctx, "Import UI", store.real_ids(1), [], seed=1)
    token = add_reader(store.ctx, study.id, "Dr Local")
    keys = [i.item_key for i in view_for_token(store.ctx, token).items]
    good = tmp_path / "elsewhere.csv"
    good.write_text("item,reader,question,answer\n" + "".join(
        f"{k},Dr Away,class,malignant\n{k},Dr Away,confidence,80\n" for k in keys))
    bad = tmp_path / "broken.csv"
    bad.write_text(f"item,reader,question,answer\n{keys[0]},Dr Away,confidence,75\n"
                   f"deadbeef,Dr Away,class,benign\n")
    bctx = browser.new_context()
    page = bctx.new_page()
    page.goto(f"{live.url}/study/admin/{study.id}")
    page.get_by_label("Admin token").fill(admin)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Import ratings gathered elsewhere (long CSV)").set_input_files(str(bad))
    with page.expect_navigation():
        page.get_by_role("button", name="Import", exact=True).click()
    assert "Nothing imported" in page.locator("h1").inner_text()
    problems = page.locator("ul.problems li").all_inner_texts()
    assert len(problems) == 2
    assert problems[0].startswith("broken.csv:2: answer: confidence: '75' not allowed")
    assert problems[1].startswith("broken.csv:3: item 'deadbeef'")
    assert export_answers(store.ctx, study.id) == []  # nothing written
    page.get_by_role("link", name="Back to the study").click()
    page.get_by_label("Import ratings gathered elsewhere (long CSV)").set_input_files(str(good))
    with page.expect_navigation():
        page.get_by_role("button", name="Import", exact=True).click()
    result = page.locator("#import-result").inner_text()
    assert f"Imported {2 * len(keys)} answer(s) from elsewhere.csv" in result
    assert "new readers: Dr Away" in result
    row = page.locator("tbody tr", has_text="Dr Away")
    assert f"{len(keys)} / {len(keys)}" in row.inner_text() and "imported" in row.inner_text()
    rows = export_answers(store.ctx, study.id)
    assert len(rows) == 2 * len(keys) and all(r["imported"] for r in rows)
    bctx.close()


def test_drafts_never_cross_readers_on_a_shared_tab(store: Any, live: Any, browser: Any) -> None:
    # one image: both readers' item 1 has the same item key
    study, _ = create_study(store.ctx, "Shared PC", store.real_ids(1)[:1], [], seed=0)
    ta, tb = add_reader(store.ctx, study.id, "Dr A"), add_reader(store.ctx, study.id, "Dr B")
    bctx = browser.new_context()
    page = bctx.new_page()
    page.goto(f"{live.url}/study/r/{ta}")
    page.keyboard.press("2")
    page.keyboard.press("ArrowRight")
    page.goto(f"{live.url}/study/r/{tb}")  # same tab, same sessionStorage, same item key
    assert page.locator("#answer-form").get_attribute("data-item") == view_for_token(
        store.ctx, ta).items[0].item_key
    assert page.locator("input[type=radio]:checked").count() == 0
    page.goto(f"{live.url}/study/r/{ta}")  # A's own draft is still there
    assert page.locator("input[name=class][value=malignant]").is_checked()
    assert page.locator("input[name=confidence][value='0']").is_checked()
    bctx.close()
