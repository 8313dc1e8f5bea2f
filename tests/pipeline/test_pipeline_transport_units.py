"""Small, service-free checks of the distributed transport (the full distributed run is
tests/pipeline/test_distributed.py, minutes of four services): calls are answered by an httpx
MockTransport."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sonoaudit.context import build_context
from sonoaudit.pipeline.config import RunConfig
from sonoaudit.pipeline.distributed import DistributedTransport, ServiceError
from sonoaudit.pipeline.runner import Pipeline
from sonoaudit.pipeline.transport import EmbeddedTransport, StudyHandle, Transport
from sonoaudit.settings import Settings


def _transport(seen: list[tuple[str, str, str | None]], **settings: Any) -> DistributedTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("authorization")))
        return httpx.Response(201, json={"token": "reader-token-1"})

    ctx: Any = SimpleNamespace(settings=Settings(**settings))
    return DistributedTransport(ctx, echo=lambda _: None,
                                client=httpx.Client(transport=httpx.MockTransport(answer)))


def test_a_reused_study_enrols_readers_with_its_stored_admin_token() -> None:
    seen: list[tuple[str, str, str | None]] = []
    t = _transport(seen, raters_url="http://raters.example:8004/")
    with pytest.raises(ServiceError, match="reader-links.txt"):
        t.add_reader("study-1", "dr-b")
    assert seen == []
    t.attach_study(StudyHandle("study-1", "admin-token-1"))
    assert t.add_reader("study-1", "dr-b") == "reader-token-1"
    assert seen == [("POST", "/study/admin/study-1/readers", "Bearer admin-token-1")]


def _study_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, distributed: bool,
                    **study: Any) -> tuple[list[str], Path]:
    """The study step of a pipeline on an empty store: prints (and writes) the reader links."""
    monkeypatch.setenv("SONOAUDIT_STUDY_CREATOR_TOKEN", "creator-1")

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/study/admin/studies":
            return httpx.Response(201, json={"study_id": "study-1", "admin_token": "admin-1"})
        return httpx.Response(201, json={"token": "reader-token-1"})

    settings = Settings(home=tmp_path / "home", raters_url="http://raters.example:8004/")
    ctx = build_context(settings)
    transport: Transport = (
        DistributedTransport(ctx, echo=lambda _: None,
                             client=httpx.Client(transport=httpx.MockTransport(answer)))
        if distributed else EmbeddedTransport(ctx))
    printed: list[str] = []
    cfg = RunConfig(name="links", study={"readers": ["dr-a"], **study})
    pipe = Pipeline(ctx, transport, cfg, tmp_path / "out", echo=printed.append)
    pipe.out.mkdir(parents=True)
    try:
        if distributed:
            pipe.step_study({"import": {"dataset_id": "none"}, "generate": {"runs": {}}})
        else:
            assert pipe._base_url() == "http://127.0.0.1:8000"
    finally:
        ctx.close()
    return printed, tmp_path / "out" / "reader-links.txt"


def test_distributed_reader_links_point_at_the_raters_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    printed, links = _study_pipeline(tmp_path, monkeypatch, distributed=True)
    link = "dr-a: http://raters.example:8004/study/r/reader-token-1"
    assert f"    reader link — {link}" in printed
    assert links.read_text().splitlines()[-1] == link


def test_configured_base_url_wins_and_embedded_keeps_the_local_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    printed, links = _study_pipeline(tmp_path / "a", monkeypatch, distributed=True,
                                     base_url="https://study.example.org")
    assert "    reader link — dr-a: https://study.example.org/study/r/reader-token-1" in printed
    _study_pipeline(tmp_path / "b", monkeypatch, distributed=False)
