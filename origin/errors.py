"""The admin API's errors: one JSON shape, one status per kind.

Every refusal is ``{"error": {"code": ..., "message": ...}}``; ``code`` is an
:class:`APIErrorCode`, stable for programs, and ``message`` says what was
wrong and what to do about it, for people.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import ValidationError


class APIErrorCode(StrEnum):
    """Why the origin refused a request."""

    BAD_JSON = "bad_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_FIELD = "unknown_field"
    INVALID = "invalid"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


STATUS: dict[APIErrorCode, int] = {
    APIErrorCode.BAD_JSON: 400,
    APIErrorCode.MISSING_FIELD: 422,
    APIErrorCode.WRONG_TYPE: 422,
    APIErrorCode.UNKNOWN_FIELD: 422,
    APIErrorCode.INVALID: 422,
    APIErrorCode.UNAUTHORIZED: 401,
    APIErrorCode.NOT_FOUND: 404,
    APIErrorCode.METHOD_NOT_ALLOWED: 405,
    APIErrorCode.CONFLICT: 409,
    APIErrorCode.TOO_LARGE: 413,
    APIErrorCode.UNAVAILABLE: 503,
    APIErrorCode.INTERNAL: 500,
}
"""The HTTP status of each error code."""


class APIError(Exception):
    """A request the origin refuses; the middleware turns it into JSON."""

    def __init__(self, code: APIErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status this error is answered with."""
        return STATUS[self.code]

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return {"error": {"code": self.code.value, "message": self.message}}


def not_found(what: str) -> APIError:
    """An error for a resource that does not exist."""
    return APIError(APIErrorCode.NOT_FOUND, f"{what} does not exist")


def conflict(message: str) -> APIError:
    """An error for a request the resource's current state forbids."""
    return APIError(APIErrorCode.CONFLICT, message)


def unavailable(message: str) -> APIError:
    """An error for a request a dependency (class log, store) cannot serve
    now; the same request may succeed later."""
    return APIError(APIErrorCode.UNAVAILABLE, message)


def unauthorized(message: str) -> APIError:
    """An error for missing or wrong credentials."""
    return APIError(APIErrorCode.UNAUTHORIZED, message)


def from_validation(exc: ValidationError) -> APIError:
    """Turn the first problem pydantic found into an error naming the field."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    kind = first["type"]
    if kind == "missing":
        return APIError(APIErrorCode.MISSING_FIELD, f"field {where!r} is required")
    if kind == "extra_forbidden":
        return APIError(
            APIErrorCode.UNKNOWN_FIELD, f"field {where!r} is not part of this request"
        )
    if kind.endswith(("_type", "_parsing")) or kind == "model_attributes_type":
        return APIError(APIErrorCode.WRONG_TYPE, f"field {where!r}: {first['msg']}")
    return APIError(APIErrorCode.INVALID, f"field {where!r}: {first['msg']}")
