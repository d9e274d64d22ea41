"""What the origin persisted about a class, in one document."""

from __future__ import annotations

from aiohttp import web

from liveclass.origin.api.http import Auth, Operation, reply, state
from liveclass.origin.api.models import ClassReport
from liveclass.origin.errors import not_found


async def report(request: web.Request) -> web.Response:
    """GET /v1/classes/{class_id}/report: attendance, chat, polls, quizzes
    and the recording, as far as the reconciler has persisted them."""
    class_id = request.match_info["class_id"]
    found = await state(request).store.report(class_id)
    if found is None:
        raise not_found(f"class {class_id!r}")
    return reply(found)


OPERATIONS = [
    Operation(
        "GET",
        "/v1/classes/{class_id}/report",
        report,
        "Report on a class",
        Auth.ADMIN,
        ClassReport,
        errors=(401, 404),
    ),
]
"""The report operation of the API."""
