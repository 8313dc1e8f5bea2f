"""Routes of the reader study: reader pages (token in the link), admin pages (study admin token),
images as readers receive them, and small JSON endpoints. All logic lives in ``study/``; this
module maps HTTP to it and errors to 4xx pages."""

from __future__ import annotations

import hmac
import json
import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from sonoaudit.context import AppContext
from sonoaudit.db.models import Image
from sonoaudit.runtime import ServiceRuntime
from starlette.concurrency import run_in_threadpool

from sonoaudit_raters.openapi_bodies import body as openapi_body
from sonoaudit_raters.openapi_bodies import form_schema
from sonoaudit_raters.study import export, logs, reading, setup
from sonoaudit_raters.study.errors import AccessDenied, InvalidAnswer, StudyError
from sonoaudit_raters.study.images import render_image, render_mask_outline
from sonoaudit_raters.study.reading import ReaderView
from sonoaudit_raters.study.settings import StudySettings
from sonoaudit_raters.study.tokens import new_item_key

HERE = Path(__file__).parent
STATIC = {"study.css": "text/css", "read.js": "text/javascript"}
READER_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                  "X-Robots-Tag": "noindex"}
T = TypeVar("T")


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(HERE / "templates"),
                       autoescape=select_autoescape(["html"]), trim_blocks=True,
                       lstrip_blocks=True)


def _answer_text(v: Any) -> Any:
    """JSON numbers are taken as their decimal text (40 and 40.0 → "40", as the form sends
    it); true/false and non-finite numbers are refused: no option is spelled like them."""
    if isinstance(v, list):
        return [_answer_text(x) for x in v]
    if isinstance(v, bool):
        raise ValueError("true/false is not an answer; send the option as text")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v} is not an answer")
        return str(int(v)) if v.is_integer() else repr(v)
    return v


_TEXT_OR_NUMBER = {"anyOf": [{"type": "string"}, {"type": "number"}]}
# An answer: the option's text ("40", "benign"); a number where the option is one (40);
# a list for a multi question; null/empty for an optional one left empty.
AnswerValue = Annotated[
    str | list[str] | None, BeforeValidator(_answer_text),
    WithJsonSchema({"anyOf": [*_TEXT_OR_NUMBER["anyOf"],
                              {"type": "array", "items": _TEXT_OR_NUMBER}, {"type": "null"}]}),
]


class AnswerIn(BaseModel):
    item: str
    step: str = "read"
    answers: dict[str, AnswerValue] = Field(default_factory=dict)
    client_event_id: str
    time_on_item_ms: int | None = None


class ReaderIn(BaseModel):
    name: str


class StudyIn(BaseModel):
    """A study over HTTP: explicit image ids, or a dataset / generation runs with sizes."""

    model_config = ConfigDict(extra="forbid")

    name: str
    real_image_ids: list[str] = Field(default_factory=list)
    synthetic_image_ids: list[str] = Field(default_factory=list)
    dataset_id: str | None = None
    generation_run_ids: list[str] = Field(default_factory=list)
    per_class: dict[str, int] | None = None
    n_repeats: int = Field(default=0, ge=0)
    seed: int = Field(default=0, ge=-(2**63), lt=2**63)
    config: dict[str, Any] | None = None
    readers: list[str] = Field(default_factory=list)


def upload_name(filename: str | None) -> str:
    """A printable name for an uploaded file: the client's last path component, control
    characters dropped, at most 100 characters; ``upload.csv`` when nothing usable is left
    (no name, ``.``, ``..``)."""
    base = re.split(r"[/\\]", filename or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()[:100]
    return base if base.strip(".") else "upload.csv"


def build_router(runtime: ServiceRuntime) -> APIRouter:
    router = APIRouter(prefix="/study", tags=["study"])
    # Keep reader tokens (they are in every reader URL) out of the access logs.
    logs.install("sonoaudit.access", "uvicorn.access")
    env = _env()
    creator = StudySettings().creator_token

    def ctx() -> AppContext:
        return runtime.require()

    def page(name: str, status: int = 200, headers: dict[str, str] | None = None,
             **values: Any) -> HTMLResponse:
        html = env.get_template(f"study/{name}").render(**values)
        return HTMLResponse(html, status_code=status, headers=headers or READER_HEADERS)

    def error_page(exc: StudyError) -> HTMLResponse:
        titles = {403: "Access denied", 404: "Not found", 409: "Not allowed now",
                  422: "Invalid answer"}
        return page("error.html", exc.status, title=titles.get(exc.status, "Error"),
                    message=exc.message)

    def json_error(exc: StudyError) -> JSONResponse:
        return JSONResponse({"detail": exc.message, "field": exc.field}, status_code=exc.status,
                            headers=READER_HEADERS)

    async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await run_in_threadpool(fn, *args, **kwargs)

    # ---- static files (no CDN: hospital networks are often offline) ----
    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            return Response(status_code=404)
        return Response((HERE / "static" / "study" / name).read_bytes(), media_type=STATIC[name],
                        headers={"Cache-Control": "public, max-age=300"})

    # ---- reader pages ----
    def reader_base(token: str) -> str:
        return f"/study/r/{token}"

    @router.get("/r/{token}", response_class=HTMLResponse)
    def reader_home(token: str) -> Response:
        try:
            view = reading.view_for_token(ctx(), token)
        except StudyError as exc:
            return error_page(exc)
        nxt = view.first_incomplete
        base = reader_base(token)
        target = f"{base}/done" if nxt is None else f"{base}/item/{nxt + 1}"
        return RedirectResponse(target, status_code=303, headers=READER_HEADERS)

    @router.get("/r/{token}/done", response_class=HTMLResponse)
    def reader_done(token: str) -> Response:
        try:
            view = reading.view_for_token(ctx(), token)
        except StudyError as exc:
            return error_page(exc)
        return page("done.html", view=view, base=reader_base(token))

    def render_item(token: str, view: ReaderView, n: int, *, status: int = 200,
                    error: str | None = None, draft: dict[str, Any] | None = None) -> Response:
        state = view.items[n - 1]
        reveal = None
        if state.read_locked and state.has_llm:
            reveal = view.llm[state.image_id]
        if not state.read_locked:
            step = "read"
        elif state.has_llm:
            step = "llm"
        else:
            step = "read"  # no LLM answer: the reader may still correct their reading
        with ctx().sessions() as s:
            has_mask = bool(s.get_one(Image, state.image_id).mask_path)
        first = view.first_incomplete
        return page(
            "read.html", status, view=view, state=state, n=n, step=step, reveal=reveal,
            base=reader_base(token), error=error, answers=draft or state.answers,
            has_mask=has_mask, client_event_id=new_item_key() + new_item_key(),
            can_next=first is None or n - 1 < first, cfg=view.config,
            read_locked_view=state.read_locked and state.has_llm,
        )

    @router.get("/r/{token}/item/{n}", response_class=HTMLResponse)
    def reader_item(token: str, n: int) -> Response:
        try:
            view = reading.view_for_token(ctx(), token)
        except StudyError as exc:
            return error_page(exc)
        first = view.first_incomplete
        limit = view.total if first is None else first + 1
        if n < 1 or n > limit:
            # No skipping ahead: resume where the reader is.
            return RedirectResponse(reader_base(token), status_code=303, headers=READER_HEADERS)
        return render_item(token, view, n)

    @router.post("/r/{token}/item/{n}", response_class=HTMLResponse, openapi_extra=openapi_body(
        form=form_schema(["item_key", "step", "client_event_id"], {
            "item_key": {"type": "string"}, "step": {"type": "string", "enum": ["read", "llm"]},
            "client_event_id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,32}$"},
            "time_on_item_ms": {"type": "string", "pattern": "^[0-9]*$",
                                "description": "whole milliseconds, or empty"},
        }, extra=True)))
    async def reader_submit(token: str, n: int, request: Request) -> Response:
        form = await request.form()
        values: dict[str, str | list[str] | None] = {}
        keys = {k for k in form if k not in ("item_key", "step", "client_event_id",
                                             "time_on_item_ms")}
        for k in keys:
            got = [v for v in form.getlist(k) if isinstance(v, str)]
            values[k] = got if len(got) != 1 else got[0]
        ms_raw = form.get("time_on_item_ms")
        ms: int | None = None
        bad_ms: StudyError | None = None
        if isinstance(ms_raw, str) and ms_raw.strip():
            # Whole milliseconds only (read.js sends Math.round); '1e3', '1.5', 'abc' → 422.
            if re.fullmatch(r"[0-9]{1,12}", ms_raw.strip()):
                ms = int(ms_raw)
            else:
                bad_ms = InvalidAnswer(
                    f"time_on_item_ms must be a whole number of milliseconds, got "
                    f"{ms_raw[:40]!r}", field="time_on_item_ms")
        try:
            if bad_ms is not None:
                raise bad_ms
            result = await call(
                reading.submit, ctx(), token, str(form.get("item_key") or ""),
                str(form.get("step") or ""), values,
                client_event_id=str(form.get("client_event_id") or ""), time_on_item_ms=ms)
        except AccessDenied as exc:
            return error_page(exc)
        except StudyError as exc:
            try:
                view = await call(reading.view_for_token, ctx(), token)
                state = view.by_key(str(form.get("item_key") or ""))
            except StudyError:
                return error_page(exc)
            # Keep what the reader chose so a correction needs one change, not a new form.
            draft = {k: ";".join(v) if isinstance(v, list) else v for k, v in values.items() if v}
            return render_item(token, view, state.position + 1, status=exc.status,
                               error=exc.message, draft=state.answers | draft)
        if result.complete:
            return RedirectResponse(reader_base(token), status_code=303, headers=READER_HEADERS)
        # Stage 1 locked and an LLM step follows: show the same item with the reveal.
        return RedirectResponse(f"{reader_base(token)}/item/{n}", status_code=303,
                                headers=READER_HEADERS)

    def item_image(token: str, item_key: str, outline: bool) -> Response:
        c = ctx()
        try:
            view = reading.view_for_token(c, token)
            state = view.by_key(item_key)
        except AccessDenied as exc:
            return error_page(exc)
        except StudyError:
            return Response(status_code=404, headers=READER_HEADERS)
        with c.sessions() as s:
            img = s.get_one(Image, state.image_id)
        if outline:
            if not img.mask_path:
                return Response(status_code=404, headers=READER_HEADERS)
            data = render_mask_outline(c.store, img.mask_path, view.config.display)
        else:
            data = render_image(c.store, img.path, view.config.display)
        return Response(data, media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600",
                                 "Referrer-Policy": "no-referrer"})

    @router.get("/r/{token}/image/{item_key}.png")
    def reader_image(token: str, item_key: str) -> Response:
        return item_image(token, item_key, outline=False)

    @router.get("/r/{token}/outline/{item_key}.png")
    def reader_outline(token: str, item_key: str) -> Response:
        return item_image(token, item_key, outline=True)

    # ---- reader JSON API (same rules as the pages) ----
    @router.get("/r/{token}/api/state")
    def api_state(token: str) -> Response:
        try:
            view = reading.view_for_token(ctx(), token)
        except StudyError as exc:
            return json_error(exc)
        nxt = view.first_incomplete
        return JSONResponse({
            "study": view.study_name, "reader": view.reader_name, "done": view.done,
            "total": view.total,
            "next": None if nxt is None else {"position": nxt + 1,
                                              "item": view.items[nxt].item_key},
            "items": [{"position": i.position + 1, "item": i.item_key, "complete": i.complete,
                       "locked": i.read_locked} for i in view.items],
        }, headers=READER_HEADERS)

    @router.post("/r/{token}/api/answers")
    async def api_answer(token: str, body: AnswerIn) -> Response:
        try:
            result = await call(reading.submit, ctx(), token, body.item, body.step, body.answers,
                                client_event_id=body.client_event_id,
                                time_on_item_ms=body.time_on_item_ms)
        except StudyError as exc:
            return json_error(exc)
        return JSONResponse({"recorded": result.recorded, "duplicate": result.duplicate,
                             "complete": result.complete, "item": result.item_key},
                            headers=READER_HEADERS)

    @router.get("/r/{token}/api/answers")
    def api_own_answers(token: str) -> Response:
        try:
            return JSONResponse(reading.own_answers(ctx(), token), headers=READER_HEADERS)
        except StudyError as exc:
            return json_error(exc)

    @router.get("/r/{token}/api/llm/{item_key}")
    def api_llm(token: str, item_key: str) -> Response:
        try:
            rev = reading.reveal_llm(ctx(), token, item_key)
        except StudyError as exc:
            return json_error(exc)
        return JSONResponse({"label": rev.label, "rationale": rev.rationale,
                             "confidence": rev.confidence}, headers=READER_HEADERS)

    # ---- admin ----
    def admin_token(request: Request, study_id: str) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.cookies.get(f"sonoaudit_admin_{study_id}")

    def require_admin(request: Request, study_id: str) -> Any:
        with ctx().sessions() as s:
            return setup.check_admin(s, study_id, admin_token(request, study_id))

    def admin_denied(study_id: str, exc: StudyError) -> HTMLResponse:
        return page("admin_login.html", 403, study_id=study_id, message=exc.message)

    @router.post("/admin/studies", status_code=201, openapi_extra=openapi_body(json=StudyIn))
    async def admin_create_study(request: Request) -> Response:
        """Create a study (needs ``SONOAUDIT_STUDY_CREATOR_TOKEN`` as bearer); returns the new
        study's admin token once, plus invitation links for ``readers``."""
        given = admin_token(request, "")
        if creator is None or not given or not hmac.compare_digest(
                given.encode(), creator.get_secret_value().encode()):
            return json_error(AccessDenied(
                "creating studies over HTTP needs the creator token (SONOAUDIT_STUDY_CREATOR_TOKEN"
                "); or use `sonoaudit study create`"))
        try:
            body = StudyIn.model_validate(await request.json())
        except (ValidationError, ValueError) as exc:
            return JSONResponse({"detail": f"body: {exc}"}, status_code=422)

        def create() -> dict[str, Any]:
            c = ctx()
            real, synth = list(body.real_image_ids), list(body.synthetic_image_ids)
            if body.dataset_id or body.generation_run_ids:
                r2, s2 = setup.select_images(c, dataset_id=body.dataset_id,
                                             generation_run_ids=body.generation_run_ids,
                                             per_class=body.per_class, seed=body.seed)
                real, synth = real + r2, synth + s2
            study, admin = setup.create_study(c, body.name, real, synth, config=body.config,
                                              n_repeats=body.n_repeats, seed=body.seed)
            base = str(request.base_url)
            links = {n: setup.reader_link(base, setup.add_reader(c, study.id, n))
                     for n in body.readers}
            return {"study_id": study.id, "admin_token": admin, "n_real": len(real),
                    "n_synthetic": len(synth), "reader_links": links,
                    "admin_url": f"{base.rstrip('/')}/study/admin/{study.id}"}

        try:
            return JSONResponse(await call(create), status_code=201)
        except StudyError as exc:
            return json_error(exc)
        except ValidationError as exc:  # a bad study config
            return JSONResponse({"detail": f"config: {exc}", "field": "config"}, status_code=422)

    @router.post("/admin/{study_id}/login", response_class=HTMLResponse,
                 openapi_extra=openapi_body(form=form_schema(["token"], {
                     "token": {"type": "string"}})))
    async def admin_login(study_id: str, request: Request) -> Response:
        form = await request.form()
        token = str(form.get("token") or "")
        try:
            with ctx().sessions() as s:
                setup.check_admin(s, study_id, token)
        except AccessDenied as exc:
            return admin_denied(study_id, exc)
        resp = RedirectResponse(f"/study/admin/{study_id}", status_code=303)
        resp.set_cookie(f"sonoaudit_admin_{study_id}", token, httponly=True, samesite="strict",
                        path=f"/study/admin/{study_id}")
        return resp

    @router.get("/admin/{study_id}", response_class=HTMLResponse)
    def admin_page(study_id: str, request: Request) -> Response:
        try:
            study = require_admin(request, study_id)
        except AccessDenied as exc:
            return admin_denied(study_id, exc)
        c = ctx()
        with c.sessions() as s:
            counts = setup.study_counts(s, study_id)
        return page("admin.html", study=study, readers=reading.progress(c, study_id),
                    counts=counts, new_link=None)

    @router.get("/admin/{study_id}/progress.json")
    def admin_progress(study_id: str, request: Request) -> Response:
        try:
            require_admin(request, study_id)
        except AccessDenied as exc:
            return json_error(exc)
        return JSONResponse(reading.progress(ctx(), study_id))

    @router.post("/admin/{study_id}/readers", openapi_extra=openapi_body(
        json=ReaderIn, form=form_schema(["name"], {"name": {"type": "string"}})))
    async def admin_add_reader(study_id: str, request: Request) -> Response:
        wants_json = "application/json" in request.headers.get("content-type", "")
        try:
            await call(require_admin, request, study_id)
        except AccessDenied as exc:
            return json_error(exc) if wants_json else admin_denied(study_id, exc)
        if wants_json:
            try:
                name = ReaderIn.model_validate(await request.json()).name
            except (ValueError, json.JSONDecodeError) as exc:
                return JSONResponse({"detail": f"body: expected {{'name': str}} ({exc})"}, 422)
        else:
            name = str((await request.form()).get("name") or "")
        try:
            token = await call(setup.add_reader, ctx(), study_id, name)
        except StudyError as exc:
            return json_error(exc) if wants_json else page(
                "error.html", exc.status, title="Cannot add reader", message=exc.message)
        link = setup.reader_link(str(request.base_url), token)
        if wants_json:
            return JSONResponse({"name": name.strip(), "token": token, "link": link},
                                status_code=201)
        c = ctx()
        with c.sessions() as s:
            study = setup.check_admin(s, study_id, admin_token(request, study_id))
            counts = setup.study_counts(s, study_id)
        return page("admin.html", 201, study=study, readers=reading.progress(c, study_id),
                    counts=counts, new_link={"name": name.strip(), "link": link})

    @router.post("/admin/{study_id}/readers/{reader_id}/revoke")
    def admin_revoke(study_id: str, reader_id: str, request: Request) -> Response:
        try:
            require_admin(request, study_id)
            setup.revoke_reader(ctx(), study_id, reader_id)
        except AccessDenied as exc:
            return admin_denied(study_id, exc)
        except StudyError as exc:
            return json_error(exc)
        return RedirectResponse(f"/study/admin/{study_id}", status_code=303)

    @router.get("/admin/{study_id}/export.csv")
    def admin_export_csv(study_id: str, request: Request) -> Response:
        try:
            require_admin(request, study_id)
        except AccessDenied as exc:
            return json_error(exc)
        text = export.rows_to_csv(export.export_answers(ctx(), study_id))
        return Response(text, media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="study-{study_id}-answers.csv"',
            "Cache-Control": "no-store"})

    @router.get("/admin/{study_id}/export.json")
    def admin_export_json(study_id: str, request: Request) -> Response:
        try:
            require_admin(request, study_id)
        except AccessDenied as exc:
            return json_error(exc)
        return Response(export.export_json_text(ctx(), study_id), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    @router.post("/admin/{study_id}/import", openapi_extra=openapi_body(
        multipart=form_schema(["file"], {"file": {"type": "string", "format": "binary"}})))
    async def admin_import(study_id: str, request: Request) -> Response:
        # The admin page's form wants a page back; scripts (Accept: JSON or */*) get JSON.
        wants_html = "text/html" in request.headers.get("accept", "")
        try:
            await call(require_admin, request, study_id)
        except AccessDenied as exc:
            return admin_denied(study_id, exc) if wants_html else json_error(exc)
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            problem = StudyError("file: expected a CSV upload in form field 'file'",
                                 field="file")
            return error_page(problem) if wants_html else json_error(problem)
        # The client's file name is only shown (messages, import meta), never used as a path.
        name = upload_name(upload.filename)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "upload.csv"
            path.write_bytes(await upload.read())
            try:
                rep = await call(export.import_answers, ctx(), study_id, path, name=name)
            except export.ImportProblems as exc:
                if wants_html:
                    return page("error.html", 422, title="Nothing imported",
                                message=exc.message.splitlines()[0], problems=exc.problems,
                                back=f"/study/admin/{study_id}")
                return JSONResponse({"detail": exc.message, "problems": exc.problems},
                                    status_code=422)
            except StudyError as exc:
                return error_page(exc) if wants_html else json_error(exc)
        result = {"rows": rep.rows, "recorded": rep.recorded, "duplicates": rep.duplicates,
                  "readers_created": rep.readers_created}
        if not wants_html:
            return JSONResponse(result)
        c = ctx()
        with c.sessions() as s:
            study = setup.check_admin(s, study_id, admin_token(request, study_id))
            counts = setup.study_counts(s, study_id)
        return page("admin.html", study=study, readers=reading.progress(c, study_id),
                    counts=counts, new_link=None, imported=result | {"file": name})

    return router
