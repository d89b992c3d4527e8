"""What every module of the OpenAPI document (openapi*.py) builds with: a schema reference and a
responses object."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def responses(codes: dict[int, tuple[str, str | None]]) -> dict[str, Any]:
    """{status: (description, schema name or None for no body)} as an OpenAPI responses object."""
    out: dict[str, Any] = {}
    for code, (description, schema) in codes.items():
        out[str(code)] = {"description": description}
        if schema is not None:
            out[str(code)]["content"] = {"application/json": {"schema": ref(schema)}}
    return out
