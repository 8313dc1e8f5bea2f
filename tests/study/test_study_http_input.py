"""The raters app over real HTTP against hostile or sloppy input: upload names that are no file
names, uploads that are no CSV, and the ops endpoints a reader-facing app must not open to
anyone."""

from __future__ import annotations

from typing import Any

import httpx
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
