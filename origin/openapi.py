"""The OpenAPI 3.1 document of the origin's API, built from its operations.

Schemas come from the pydantic models the handlers validate with, so the
document describes what the code does rather than what someone remembered
to write down.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from liveclass.origin.api.http import Auth, Operation
from liveclass.origin.api.models import ErrorBody

VERSION = "0.1.0"

_SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    Auth.ADMIN: [{"apiKey": []}],
    Auth.EDGE: [{"edgeKey": []}],
    Auth.JOIN_TOKEN: [{"joinToken": []}],
    Auth.NONE: [],
}

_REASONS = {
    400: "The body is not a JSON object",
    401: "Missing or wrong credentials",
    404: "No such resource",
    409: "The resource's state forbids this",
    413: "The body is too large",
    422: "A field is missing, unknown or invalid",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation_id(operation: Operation) -> str:
    return operation.handler.__name__


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", path)
    ]


def build_document(operations: Sequence[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing ``operations``."""
    models: set[type[BaseModel]] = {ErrorBody}
    for op in operations:
        models.add(op.response)
        if op.body is not None:
            models.add(op.body)
    ordered = sorted(models, key=lambda m: m.__name__)
    _, schema = models_json_schema(
        [(model, "validation") for model in ordered],
        ref_template="#/components/schemas/{model}",
        by_alias=True,
    )

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        entry: dict[str, Any] = {
            "operationId": _operation_id(op),
            "summary": op.summary,
            "description": (op.handler.__doc__ or "").strip(),
            "security": _SECURITY[op.auth],
            "responses": {
                str(op.status): {
                    "description": "Success",
                    "content": {"application/json": {"schema": _ref(op.response)}},
                },
                **{
                    str(code): {
                        "description": _REASONS.get(code, "Error"),
                        "content": {"application/json": {"schema": _ref(ErrorBody)}},
                    }
                    for code in op.errors
                },
            },
        }
        if parameters := _path_parameters(op.path):
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(op.body)}},
            }
        paths.setdefault(op.path, {})[op.method.lower()] = entry

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "liveclass origin API",
            "version": VERSION,
            "description": "Classes, join tokens, the edge registry, routing "
            "and reports. Times are seconds since the Unix epoch.",
        },
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "edgeKey": {"type": "http", "scheme": "bearer"},
                "joinToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                },
            },
        },
    }
