"""The raters app over real HTTP (uvicorn): access rules, 4xx on bad input, blinded images,
admin export/import."""

from __future__ import annotations

import io
import re
from typing import Any

import httpx
import numpy as np
from PIL import Image as PILImage
from sonoaudit.db.models import Answer, Image
from sonoaudit_raters.study import add_reader, create_study, export_answers, rows_to_csv
from sonoaudit_raters.study.reading import view_for_token
from sqlalchemy import func, select


def _study(store: Any, add_llm: Any) -> tuple[str, str, str, str]:
    real, synth = store.real_ids(2), store.synthetic_ids(2)
    study, admin = create_study(store.ctx, "http", real, synth, seed=1)
    add_llm(store.ctx, real[:2])
    return study.id, admin, add_reader(store.ctx, study.id, "R1"), add_reader(store.ctx, study.id,
                                                                              "R2")


def test_tokens_and_admin_routes(store: Any, live: Any, add_llm: Any) -> None:
    sid, admin, t1, t2 = _study(store, add_llm)
    with httpx.Client(base_url=live.url, follow_redirects=False) as c:
        assert c.get("/study/r/not-a-token").status_code == 403
        assert "unknown or has been revoked" in c.get("/study/r/not-a-token/item/1").text
        r = c.get(f"/study/r/{t1}")
        assert r.status_code == 303 and r.headers["location"].endswith("/item/1")
        page = c.get(f"/study/r/{t1}/item/1")
        assert page.status_code == 200 and page.headers["referrer-policy"] == "no-referrer"
        # a reader token opens no admin route, by header or by cookie
        for path in ("", "/progress.json", "/export.csv", "/export.json", "/report"):
            assert c.get(f"/study/admin/{sid}{path}",
                         headers={"Authorization": f"Bearer {t1}"}).status_code == 403
            with httpx.Client(base_url=live.url, cookies={f"sonoaudit_admin_{sid}": t1}) as cc:
                assert cc.get(f"/study/admin/{sid}{path}").status_code == 403
            assert c.get(f"/study/admin/{sid}{path}").status_code == 403
        assert c.post(f"/study/admin/{sid}/readers", json={"name": "X"},
                      headers={"Authorization": f"Bearer {t2}"}).status_code == 403
        assert c.post(f"/study/admin/{sid}/login", data={"token": t1}).status_code == 403
        # the admin token works, and the login form sets a cookie scoped to this study
        auth = {"Authorization": f"Bearer {admin}"}
        prog = c.get(f"/study/admin/{sid}/progress.json", headers=auth).json()
        assert [p["name"] for p in prog] == ["R1", "R2"] and prog[0]["total"] == 8
        assert c.get(f"/studies/{sid}/report",
                     headers={"Authorization": f"Bearer {t1}"}).status_code == 403
        login = c.post(f"/study/admin/{sid}/login", data={"token": admin})
        assert login.status_code == 303
        admin_page = c.get(f"/study/admin/{sid}")
        assert admin_page.status_code == 200
        assert f'href="/study/admin/{sid}/report"' in admin_page.text
        # the report opens with the cookie set by the login form (no header) ...
        rep = c.get(f"/study/admin/{sid}/report", params={"bootstrap": 20})
        assert rep.status_code == 200 and 'id="agreement"' in rep.text
        rep_json = c.get(f"/study/admin/{sid}/report",
                         params={"format": "json", "bootstrap": 20}).json()
        assert rep_json["study"]["id"] == sid and rep_json["n_items"] == 8
        # ... the cookie is scoped to the admin path; /studies/{id}/report takes the header
        assert c.get(f"/studies/{sid}/report").status_code == 403
        assert c.get(f"/studies/{sid}/report", params={"format": "json", "bootstrap": 20},
                     headers={"Authorization": f"Bearer {admin}"}).json()["study"]["id"] == sid
        new = c.post(f"/study/admin/{sid}/readers", json={"name": "R3"}, headers=auth).json()
        assert new["link"].startswith(live.url) and new["token"] in new["link"]
        # revoke: the link turns into a 403 page
        rid = next(p["reader_id"] for p in prog if p["name"] == "R2")
        assert c.post(f"/study/admin/{sid}/readers/{rid}/revoke", headers=auth).status_code == 303
        assert c.get(f"/study/r/{t2}/item/1").status_code == 403
        # another study's admin token is no admin token here, and a reader of one study cannot
        # open the other study's items
        other, other_admin = create_study(store.ctx, "other", store.real_ids(1), [], seed=0)
        assert c.get(f"/study/admin/{sid}/export.csv",
                     headers={"Authorization": f"Bearer {other_admin}"}).status_code == 403
        t_other = add_reader(store.ctx, other.id, "O")
        other_key = view_for_token(store.ctx, t_other).items[0].item_key
        assert c.get(f"/study/r/{t_other}/image/{other_key}.png").status_code == 200
        assert c.get(f"/study/r/{t1}/image/{other_key}.png").status_code == 404
        assert c.post(f"/study/r/{t1}/api/answers", json={
            "item": other_key, "step": "read", "answers": {"class": "benign", "confidence": "0"},
            "client_event_id": "cross-study-1"}).status_code == 422


def test_bad_answers_are_422_and_double_submit_is_one_event(store: Any, live: Any,
                                                            add_llm: Any) -> None:
    sid, _, t1, t2 = _study(store, add_llm)
    view = view_for_token(store.ctx, t1)
    key = view.items[0].item_key
    api = f"/study/r/{t1}/api/answers"
    with httpx.Client(base_url=live.url) as c:
        def post(answers: dict[str, Any], cid: str, item: str = key) -> httpx.Response:
            return c.post(api, json={"item": item, "step": "read", "answers": answers,
                                     "client_event_id": cid, "time_on_item_ms": 1500})

        bad_conf = post({"class": "benign", "confidence": "30"}, "cid-conf-30")
        assert bad_conf.status_code == 422 and bad_conf.json()["field"] == "confidence"
        bad_cls = post({"class": "cyst", "confidence": "40"}, "cid-class-x")
        assert bad_cls.status_code == 422 and bad_cls.json()["field"] == "class"
        assert post({"class": "benign", "confidence": "40"}, "cid-unassigned",
                    item="ffffffffffffffff").status_code == 422
        # form post with an off-scale value: the page comes back with 422 and the error
        form = c.post(f"/study/r/{t1}/item/1", data={
            "item_key": key, "step": "read", "client_event_id": "cid-form-bad",
            "class": "benign", "confidence": "50"})
        assert form.status_code == 422 and "confidence" in form.text and 'role="alert"' in form.text
        ok = [post({"class": "benign", "confidence": "40"}, "cid-twice") for _ in range(3)]
        assert [r.json()["duplicate"] for r in ok] == [False, True, True]
        with store.ctx.sessions() as s:
            n = s.scalar(select(func.count()).select_from(Answer)
                         .where(Answer.reader_id == view.reader_id))
        assert n == 2  # class + confidence, once
        # the second reader sees none of the first reader's answers
        assert c.get(f"/study/r/{t2}/api/answers").json() == []
        mine = c.get(f"/study/r/{t1}/api/answers").json()
        assert {a["question"] for a in mine} == {"class", "confidence"}
        page1 = c.get(f"/study/r/{t1}/item/1").text
        page2 = c.get(f"/study/r/{t2}/item/1").text
        # shown as a checked radio, or as a locked answer when the item has an LLM step
        radio_checked = re.compile(
            r'name="(class|confidence)" value="[^"]+"\s+checked|class="locked-class">benign')
        assert radio_checked.search(page1)  # the check below would catch a leak
        assert not radio_checked.search(page2)
        # LLM answer: 409 before the reader's own lock, visible after
        llm_key = next(i.item_key for i in view.items[1:] if i.has_llm)  # items[0] is locked
        assert c.get(f"/study/r/{t1}/api/llm/{llm_key}").status_code == 409
        assert post({"class": "malignant", "confidence": "60"}, "cid-lock-llm",
                    item=llm_key).status_code == 200
        assert c.get(f"/study/r/{t1}/api/llm/{llm_key}").json()["label"] == "malignant"
        assert c.get(f"/study/r/{t2}/api/llm/{llm_key}").status_code == 409


def test_images_are_blinded(store: Any, live: Any, add_llm: Any) -> None:
    sid, _, t1, _ = _study(store, add_llm)
    view = view_for_token(store.ctx, t1)
    with store.ctx.sessions() as s:
        images = {i.id: i for i in s.scalars(select(Image))}
    sizes = set()
    with httpx.Client(base_url=live.url) as c:
        for n, item in enumerate(view.items, start=1):
            html = c.get(f"/study/r/{t1}/item/{n}" if n == 1 else f"/study/r/{t1}/api/state").text
            img = images[item.image_id]
            for secret in (img.sha256, img.id, img.name, img.source):
                assert secret not in html
            r = c.get(f"/study/r/{t1}/image/{item.item_key}.png")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            png = PILImage.open(io.BytesIO(r.content))
            assert png.mode == "L" and not png.info.get("dpi") and not getattr(png, "text", {})
            assert not re.search(rb"(tEXt|iTXt|zTXt|eXIf|iCCP)", r.content)
            sizes.add(png.size)
            outline = PILImage.open(io.BytesIO(
                c.get(f"/study/r/{t1}/outline/{item.item_key}.png").content))
            assert outline.mode == "RGBA" and outline.size == png.size
            alpha = outline.getchannel("A")
            lit = int((np.asarray(alpha) > 0).sum())
            assert 0 < lit < png.size[0] * png.size[1] // 4
        assert sizes == {(256, 256)}  # real (non-square) and synthetic (128²) look alike
        assert c.get(f"/study/r/{t1}/image/{view.items[0].image_id}.png").status_code == 404
        assert c.get(f"/study/r/nope/image/{view.items[0].item_key}.png").status_code == 403


def test_http_import(store: Any, live: Any, add_llm: Any, tmp_path: Any) -> None:
    sid, admin, t1, _ = _study(store, add_llm)
    view = view_for_token(store.ctx, t1)
    rows = [{"study": sid, "item": i.item_key, "reader": "external", "question": "class",
             "answer": "benign"} for i in view.items]
    auth = {"Authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=live.url) as c:
        good = c.post(f"/study/admin/{sid}/import", headers=auth,
                      files={"file": ("ext.csv", rows_to_csv(rows).encode(), "text/csv")})
        assert good.status_code == 200 and good.json()["recorded"] == 8
        bad_rows = rows[:1] + [rows[1] | {"answer": "cyst"}]
        bad = c.post(f"/study/admin/{sid}/import", headers=auth,
                     files={"file": ("bad.csv", rows_to_csv(bad_rows).encode(), "text/csv")})
        assert bad.status_code == 422 and any("bad.csv:3" in p for p in bad.json()["problems"])
        assert c.post(f"/study/admin/{sid}/import", headers={"Authorization": f"Bearer {t1}"},
                      files={"file": ("ext.csv", b"x", "text/csv")}).status_code == 403
        csv_text = c.get(f"/study/admin/{sid}/export.csv", headers=auth).text
    assert csv_text.splitlines()[0].startswith(
        "study,item,reader,question,answer,time,source,ground_truth")
    assert len(export_answers(store.ctx, sid)) == 8


def test_http_study_creation(store: Any, live: Any, creator_token: str) -> None:
    body = {"name": "via http", "dataset_id": store.dataset_id,
            "generation_run_ids": list(store.runs.values()),
            "per_class": {"benign": 2, "malignant": 2}, "n_repeats": 1, "seed": 4,
            "readers": ["A", "B"]}
    with httpx.Client(base_url=live.url) as c:
        assert c.post("/study/admin/studies", json=body).status_code == 403
        sid, admin, t1, _ = "", "", "", ""
        r = c.post("/study/admin/studies", json=body,
                   headers={"Authorization": f"Bearer {creator_token}"})
        assert r.status_code == 201, r.text
        out = r.json()
        assert (out["n_real"], out["n_synthetic"]) == (4, 4) and set(out["reader_links"]) == {
            "A", "B"}
        sid, admin = out["study_id"], out["admin_token"]
        t1 = out["reader_links"]["A"].rsplit("/", 1)[1]
        # neither a study admin token nor a reader token may create studies
        for tok in (admin, t1):
            assert c.post("/study/admin/studies", json=body,
                          headers={"Authorization": f"Bearer {tok}"}).status_code == 403
        auth = {"Authorization": f"Bearer {creator_token}"}
        empty = c.post("/study/admin/studies", json={"name": "empty"}, headers=auth)
        assert empty.status_code == 422 and "has no images" in empty.json()["detail"]
        bad_cfg = c.post("/study/admin/studies", headers=auth, json={
            "name": "bad", "real_image_ids": store.real_ids(1),
            "config": {"questions": [{"key": "q", "kind": "scale", "stage": "read",
                                      "prompt": "?", "min": 0, "max": 10, "step": 3}]}})
        assert bad_cfg.status_code == 422 and "divisible" in bad_cfg.text
        bad_cond = c.post("/study/admin/studies", headers=auth, json={
            "name": "bad cond", "real_image_ids": store.real_ids(1),
            "config": {"llm": {"condition": "image+mask"}}})
        assert bad_cond.status_code == 422 and bad_cond.json()["field"] == "config"
        assert "llm.condition" in bad_cond.json()["detail"]
        assert c.post("/study/admin/studies", headers=auth,
                      json={"name": "x", "colour": "red"}).status_code == 422
        prog = c.get(f"/study/admin/{sid}/progress.json",
                     headers={"Authorization": f"Bearer {admin}"}).json()
        assert [p["total"] for p in prog] == [9, 9]


def test_reader_tokens_stay_out_of_the_access_log(store: Any, live: Any, add_llm: Any,
                                                  caplog: Any) -> None:
    import logging

    _, _, t1, _ = _study(store, add_llm)
    with caplog.at_level(logging.INFO, logger="sonoaudit.access"):
        with httpx.Client(base_url=live.url) as c:
            assert c.get(f"/study/r/{t1}/item/1").status_code == 200
            assert c.get(f"/study/r/{t1}/api/state").status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "sonoaudit.access"]
    assert "GET /study/r/<token>/item/1 200" in " ".join(lines)
    assert len([m for m in lines if "/study/r/" in m]) == 2
    assert not any(t1 in m for m in lines)
