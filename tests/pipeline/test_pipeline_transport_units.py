"""Small, service-free checks of the distributed transport (the full distributed run is
tests/pipeline/test_distributed.py): calls are answered by an httpx MockTransport."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sonoaudit.pipeline.distributed import DistributedTransport, ServiceError
from sonoaudit.pipeline.transport import StudyHandle
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
