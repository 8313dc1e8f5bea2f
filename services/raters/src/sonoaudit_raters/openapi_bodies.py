"""OpenAPI request bodies of the routes that parse their body by hand (JSON or form, to answer
their own 4xx pages/JSON): declared with ``openapi_extra`` so the contract, the docs page and
the schemathesis fuzz test (tests/ops) see what each route takes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    # openapi_extra is merged into the operation only: a nested model ($defs) would leave a
    # dangling $ref, so bodies declared this way stay flat.
    assert "$defs" not in schema, f"{model.__name__}: nested models need components"
    return schema


def body(*, json: type[BaseModel] | None = None, form: dict[str, Any] | None = None,
         multipart: dict[str, Any] | None = None, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` with a requestBody: a JSON model, and/or form / multipart schemas."""
    content: dict[str, Any] = {}
    if json is not None:
        content["application/json"] = {"schema": schema_of(json)}
    if form is not None:
        content["application/x-www-form-urlencoded"] = {"schema": form}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": multipart}
    return {"requestBody": {"required": required, "content": content}}


def form_schema(required: list[str], properties: dict[str, Any],
                extra: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "required": required, "properties": properties}
    if extra:
        out["additionalProperties"] = {"type": "string"}
    return out
