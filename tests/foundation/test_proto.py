"""proto/ is generated from the pydantic models; it must not drift."""

from __future__ import annotations

from pathlib import Path

from sonoaudit.messages.schemas import render

PROTO = Path(__file__).resolve().parents[2] / "proto"


def test_proto_is_up_to_date() -> None:
    expected = render()
    for rel, content in expected.items():
        path = PROTO / rel
        assert path.exists(), f"{path} missing: run `make schemas`"
        assert path.read_text() == content, f"{path} is stale: run `make schemas`"
    on_disk = {p.relative_to(PROTO).as_posix() for p in PROTO.rglob("*.json")}
    assert on_disk == {k for k in expected if k.endswith(".json")}, "stray schema files in proto/"


def test_envelope_schema_has_required_fields() -> None:
    import json

    schema = json.loads(render()["schemas/generate.request.v1.schema.json"])
    assert set(schema["required"]) >= {
        "message_id", "correlation_id", "type", "schema_version", "created_at", "payload"
    }
    assert schema["additionalProperties"] is False
