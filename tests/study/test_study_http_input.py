"""The raters app over real HTTP against hostile or sloppy input: upload names that are no file
names, uploads that are no CSV, and the ops endpoints a reader-facing app must not open to
anyone."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sonoaudit.db.models import Answer, DeadLetter
from sonoaudit.db.session import session_scope
from sonoaudit_raters.study import add_reader, create_study, rows_to_csv
from sonoaudit_raters.study.reading import view_for_token
from sonoaudit_raters.study_api import upload_name
from sqlalchemy import select


def _study(store: Any) -> tuple[str, str, str]:
    study, admin = create_study(store.ctx, "input", store.real_ids(2), [], seed=1)
    return study.id, admin, add_reader(store.ctx, study.id, "R1")


def test_upload_name_is_only_a_label() -> None:
    assert upload_name("ratings.csv") == "ratings.csv"
    assert upload_name("../../etc/ratings.csv") == "ratings.csv"
    assert upload_name("C:\\Users\\dr\\ratings.csv") == "ratings.csv"
    for nothing in (None, "", ".", "..", "a/..", "   ", "\x00\x01"):
        assert upload_name(nothing) == "upload.csv"
    assert upload_name("x\ny.csv") == "xy.csv"
    assert len(upload_name("a" * 500 + ".csv")) == 100


def test_import_upload_names_and_bad_uploads(store: Any, live: Any) -> None:
    sid, admin, t1 = _study(store)
    items = [i.item_key for i in view_for_token(store.ctx, t1).items]
    rows = [{"study": sid, "item": k, "reader": "external", "question": "class",
             "answer": "benign"} for k in items]
    good = rows_to_csv(rows).encode()
    bad = rows_to_csv(rows[:1] + [rows[1] | {"answer": "cyst"}]).encode()
    auth = {"Authorization": f"Bearer {admin}"}
    url = f"/study/admin/{sid}/import"
    with httpx.Client(base_url=live.url) as c:
        # before the fix: '..' and '.' were joined to the temp dir → IsADirectoryError → 500
        for fn, shown in (("..", "upload.csv"), (".", "upload.csv"),
                          ("../../x/evil.csv", "evil.csv")):
            r = c.post(url, headers=auth, files={"file": (fn, bad, "text/csv")})
            assert r.status_code == 422, (fn, r.text)
            body = r.json()
            assert body["problems"] == [f"{shown}:3: answer: class: 'cyst' not allowed; "
                                        "expected one of ['benign', 'malignant', 'normal']"]
            assert "/tmp" not in r.text and "tmp" not in body["detail"]
        # a part with an empty file name arrives as a plain form field: no upload, 422
        r = c.post(url, headers=auth, files={"file": ("", good, "text/csv")})
        assert r.status_code == 422 and r.json()["field"] == "file"
        r = c.post(url, headers=auth, files={"file": ("..", good, "text/csv")})
        assert r.status_code == 200 and r.json()["recorded"] == len(items) == 4
        # not UTF-8, no header, a field past the csv module's limit: 422 naming the upload
        for content, expect in (
                (b"\xff\xfe\x00bad", "mine.csv: not UTF-8 text"),
                (b"a,b\n1,2\n", "mine.csv: missing column(s) ['item', 'reader', 'question', "
                                "'answer']"),
                (b'item,reader,question,answer\n"' + b"x" * 200_000 + b'",R,class,benign\n',
                 "mine.csv:2: not readable as CSV (field larger than field limit")):
            r = c.post(url, headers=auth, files={"file": ("mine.csv", content, "text/csv")})
            assert r.status_code == 422, r.text
            assert r.json()["problems"][0].startswith(expect), r.json()
            assert "/tmp" not in r.text
        # the admin page's form (HTML) shows the upload's name too
        page = c.post(url, headers=auth | {"Accept": "text/html"},
                      files={"file": ("..", bad, "text/csv")})
        assert page.status_code == 422 and "upload.csv:3" in page.text and "/tmp" not in page.text
    with store.ctx.sessions() as s:
        metas = [a.meta for a in s.scalars(select(Answer).where(Answer.study_id == sid))]
    assert [m["source_file"] for m in metas] == ["upload.csv"] * 4


def test_dead_letters_need_the_creator_token_on_raters(store: Any, live: Any,
                                                       creator_token: str) -> None:
    sid, admin, t1 = _study(store)
    with session_scope(store.ctx.sessions) as s:
        s.add(DeadLetter(subject="sonoaudit.generate.request", message_id="m1", deliveries=1,
                         error="poison", data='{"secret": "payload"}'))
    with httpx.Client(base_url=live.url) as c:
        for headers in ({}, {"Authorization": f"Bearer {t1}"},
                        {"Authorization": f"Bearer {admin}"},
                        {"Authorization": "Bearer wrong"}):
            r = c.get("/dead-letters", headers=headers)
            assert r.status_code == 403 and "payload" not in r.text
            assert "SONOAUDIT_STUDY_CREATOR_TOKEN" in r.json()["detail"]
        ok = c.get("/dead-letters", headers={"Authorization": f"Bearer {creator_token}"})
        assert ok.status_code == 200
        assert [(d["subject"], d["data"]) for d in ok.json()] == [
            ("sonoaudit.generate.request", '{"secret": "payload"}')]
        spec = c.get("/openapi.json").json()
        assert "403" in spec["paths"]["/dead-letters"]["get"]["responses"]


def test_dead_letters_closed_without_a_creator_token(store: Any, monkeypatch: Any) -> None:
    from fastapi.testclient import TestClient
    from sonoaudit_raters.main import create_app

    monkeypatch.delenv("SONOAUDIT_STUDY_CREATOR_TOKEN", raising=False)
    with TestClient(create_app(store.settings)) as c:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
            r = c.get("/dead-letters", headers=headers)
            assert r.status_code == 403 and "is not set" in r.json()["detail"]


def test_time_on_item_must_be_whole_milliseconds(store: Any, live: Any) -> None:
    sid, _, t1 = _study(store)
    key = view_for_token(store.ctx, t1).items[0].item_key
    form = {"item_key": key, "step": "read", "class": "benign", "confidence": "40"}
    with httpx.Client(base_url=live.url) as c:
        for n, bad in enumerate(("abc", "1e3", "1.5", "-5", "12 34")):
            r = c.post(f"/study/r/{t1}/item/1", data=form | {
                "client_event_id": f"cid-ms-bad-{n}", "time_on_item_ms": bad})
            assert r.status_code == 422, bad
            assert "time_on_item_ms must be a whole number of milliseconds" in r.text
        # the reader's choice is kept on the re-rendered form
        assert re.search(r'name="class" value="benign"\s+checked', r.text)
        with store.ctx.sessions() as s:
            assert s.scalars(select(Answer).where(Answer.study_id == sid)).first() is None
        ok = c.post(f"/study/r/{t1}/item/1", data=form | {
            "client_event_id": "cid-ms-good", "time_on_item_ms": " 1500 "},
            follow_redirects=False)
        assert ok.status_code == 303
        empty = c.post(f"/study/r/{t1}/item/1", data=form | {
            "client_event_id": "cid-ms-none", "time_on_item_ms": ""}, follow_redirects=False)
        assert empty.status_code == 303  # no timing (no JavaScript) stays allowed
    with store.ctx.sessions() as s:
        ms = {a.question: a.time_on_item_ms
              for a in s.scalars(select(Answer).where(Answer.study_id == sid))}
    assert ms == {"class": 1500, "confidence": 1500}


def test_names_are_at_most_200_characters(store: Any, live: Any, creator_token: str) -> None:
    sid, admin, t1 = _study(store)
    auth = {"Authorization": f"Bearer {admin}"}
    url = f"/study/admin/{sid}/readers"
    with httpx.Client(base_url=live.url) as c:
        r = c.post(url, json={"name": "x" * 5000}, headers=auth)
        assert r.status_code == 422 and r.json()["field"] == "name"
        assert r.json()["detail"] == "reader name is 5000 characters long; at most 200 allowed"
        page = c.post(url, data={"name": "y" * 201}, headers=auth)
        assert page.status_code == 422 and "201 characters long" in page.text
        assert c.post(url, json={"name": "z" * 200}, headers=auth).status_code == 201
        study = c.post("/study/admin/studies", headers={
            "Authorization": f"Bearer {creator_token}"},
            json={"name": "s" * 201, "real_image_ids": store.real_ids(1)})
        assert study.status_code == 422 and study.json()["field"] == "name"
        # an imported reader: the problem names the CSV line, nothing is written
        key = view_for_token(store.ctx, t1).items[0].item_key
        rows = [{"item": key, "reader": "r" * 300, "question": "class", "answer": "benign"}]
        imp = c.post(f"/study/admin/{sid}/import", headers=auth,
                     files={"file": ("long.csv", rows_to_csv(rows).encode(), "text/csv")})
        assert imp.status_code == 422
        assert imp.json()["problems"] == [
            "long.csv:2: reader name is 300 characters long; at most 200 allowed"]
    progress = [p["name"] for p in c_progress(store, sid)]
    assert progress == ["R1", "z" * 200]


def c_progress(store: Any, sid: str) -> list[dict[str, Any]]:
    from sonoaudit_raters.study import progress

    return list(progress(store.ctx, sid))


@pytest.mark.integration
def test_200_character_names_fit_the_postgres_columns(pg_store: Any) -> None:
    """The limit is the column length (VARCHAR(200) counts characters, not bytes)."""
    from sonoaudit_raters.study import StudyError

    name = "é" * 200
    study, _ = create_study(pg_store.ctx, name, pg_store.real_ids(1), [], seed=0)
    add_reader(pg_store.ctx, study.id, name)
    with pytest.raises(StudyError, match="201 characters long"):
        add_reader(pg_store.ctx, study.id, "é" * 201)
    assert [p["name"] for p in c_progress(pg_store, study.id)] == [name]


def test_json_answers_take_numbers_where_unambiguous(store: Any, live: Any) -> None:
    sid, _, t1 = _study(store)
    keys = [i.item_key for i in view_for_token(store.ctx, t1).items]
    api = f"/study/r/{t1}/api/answers"
    with httpx.Client(base_url=live.url) as c:
        def post(item: str, conf: Any, cid: str) -> httpx.Response:
            return c.post(api, json={"item": item, "answers": {"class": "benign",
                                                               "confidence": conf},
                                     "client_event_id": cid})

        assert post(keys[0], 40, "cid-num-int").status_code == 200
        assert post(keys[1], 60.0, "cid-num-float").status_code == 200
        assert post(keys[2], "80", "cid-num-text").status_code == 200
        off = post(keys[3], 30, "cid-num-off")  # a number off the scale: the scale's 422
        assert off.status_code == 422 and off.json()["field"] == "confidence"
        half = post(keys[3], 40.5, "cid-num-half")
        assert half.status_code == 422 and "'40.5' not allowed" in half.json()["detail"]
        for bad in (True, False):  # no option is spelled true/false
            r = post(keys[3], bad, f"cid-num-{bad}")
            assert r.status_code == 422
            assert r.json()["detail"][0]["loc"] == ["body", "answers", "confidence"]
    with store.ctx.sessions() as s:
        stored = sorted(a.value for a in s.scalars(select(Answer).where(
            Answer.study_id == sid, Answer.question == "confidence")))
    assert stored == ["40", "60", "80"]


def test_openapi_declares_every_hand_parsed_body(store: Any, live: Any) -> None:
    with httpx.Client(base_url=live.url) as c:
        paths = c.get("/openapi.json").json()["paths"]

    def content(path: str) -> dict[str, Any]:
        return paths[path]["post"]["requestBody"]["content"]

    create = content("/study/admin/studies")["application/json"]["schema"]
    assert create["required"] == ["name"] and create["additionalProperties"] is False
    assert {"name", "dataset_id", "generation_run_ids", "per_class", "readers",
            "seed"} <= set(create["properties"])
    readers = content("/study/admin/{study_id}/readers")
    assert readers["application/json"]["schema"]["required"] == ["name"]
    assert readers["application/x-www-form-urlencoded"]["schema"]["required"] == ["name"]
    upload = content("/study/admin/{study_id}/import")["multipart/form-data"]["schema"]
    assert upload["properties"]["file"] == {"type": "string", "format": "binary"}
    login = content("/study/admin/{study_id}/login")
    assert login["application/x-www-form-urlencoded"]["schema"]["required"] == ["token"]
    panel = content("/study/admin/{study_id}/simulate-panel")["application/json"]["schema"]
    assert set(panel["properties"]) == {"n_readers", "accuracy", "seed"}
    form = content("/study/r/{token}/item/{n}")["application/x-www-form-urlencoded"]["schema"]
    assert form["required"] == ["item_key", "step", "client_event_id"]
    answer = paths["/study/r/{token}/api/answers"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/AnswerIn"}


def test_seed_must_fit_the_column(store: Any) -> None:
    from sonoaudit_raters.study import StudyError

    with pytest.raises(StudyError, match="64 bits") as exc:
        create_study(store.ctx, "big seed", store.real_ids(1), [], seed=2**63)
    assert exc.value.field == "seed"
