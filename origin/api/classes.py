"""Creating, listing, starting and ending classes."""

from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web

from liveclass.origin.api.http import Auth, Operation, body, reply, state
from liveclass.origin.api.models import ClassCreate, ClassInfo, ClassList, ClassStatus
from liveclass.origin.classlog import ClassLogError
from liveclass.origin.contract import Audience, LogEvent
from liveclass.origin.errors import conflict, not_found, unavailable
from liveclass.origin.store import ClassExists

logger = logging.getLogger(__name__)


async def load_class(request: web.Request) -> ClassInfo:
    """The class named by the path. Raises 404 when there is none."""
    class_id = request.match_info["class_id"]
    info = await state(request).store.get_class(class_id)
    if info is None:
        raise not_found(f"class {class_id!r}")
    return info


async def create_class(request: web.Request) -> web.Response:
    """POST /v1/classes: create a class in status ``created``."""
    wanted = await body(request, ClassCreate)
    info = ClassInfo(
        id=wanted.class_id or f"cls-{uuid.uuid4().hex[:16]}",
        title=wanted.title,
        status=ClassStatus.CREATED,
        max_members=wanted.max_members,
        created_at=time.time(),
    )
    try:
        await state(request).store.create_class(info)
    except ClassExists:
        raise conflict(f"class {info.id!r} already exists; pick another id") from None
    logger.info("class %s created", info.id, extra={"class_id": info.id})
    return reply(info, 201)


async def list_classes(request: web.Request) -> web.Response:
    """GET /v1/classes: every class, newest first."""
    return reply(ClassList(classes=await state(request).store.list_classes()))


async def get_class(request: web.Request) -> web.Response:
    """GET /v1/classes/{class_id}."""
    return reply(await load_class(request))


async def start_class(request: web.Request) -> web.Response:
    """POST /v1/classes/{class_id}/start: go live and start reconciling.

    Starting a live class again changes nothing; an ended class cannot
    start again (409).
    """
    origin = state(request)
    info = await load_class(request)
    if info.status is ClassStatus.ENDED:
        raise conflict(f"class {info.id!r} has ended; create a new class")
    if info.status is ClassStatus.CREATED and await origin.store.transition(
        info.id, ClassStatus.CREATED, ClassStatus.LIVE
    ):
        logger.info("class %s is live", info.id, extra={"class_id": info.id})
    origin.reconcilers.start(info.id)
    return reply(await load_class(request))


async def end_class(request: web.Request) -> web.Response:
    """POST /v1/classes/{class_id}/end: end the class for every member.

    The end is announced in the class log first (edges close their
    members' connections on it), and only then recorded in the store: if the
    log cannot be reached, nothing changed and the call can be repeated
    (503). The reconciler stops after persisting the end.
    """
    origin = state(request)
    info = await load_class(request)
    before = info.status
    if before is ClassStatus.ENDED:
        raise conflict(f"class {info.id!r} has already ended")
    ended = LogEvent(type="class.ended", edge_id="origin", audience=Audience.ALL)
    try:
        await origin.log.append(info.id, [ended])
    except ClassLogError as exc:
        logger.warning(
            "class %s: cannot end, class log unreachable: %s",
            info.id,
            exc,
            extra={"class_id": info.id},
        )
        raise unavailable(
            f"the class log is unreachable ({exc}); the class is still "
            f"{before.value}, try again"
        ) from None
    # The reconciler may have stored the end from the entry just appended;
    # either way the class is ended now.
    await origin.store.transition(info.id, before, ClassStatus.ENDED)
    logger.info("class %s ended", info.id, extra={"class_id": info.id})
    return reply(await load_class(request))


OPERATIONS = [
    Operation(
        "POST",
        "/v1/classes",
        create_class,
        "Create a class",
        Auth.ADMIN,
        ClassInfo,
        body=ClassCreate,
        status=201,
        errors=(400, 401, 409, 422),
    ),
    Operation(
        "GET",
        "/v1/classes",
        list_classes,
        "List classes",
        Auth.ADMIN,
        ClassList,
        errors=(401,),
    ),
    Operation(
        "GET",
        "/v1/classes/{class_id}",
        get_class,
        "Get a class",
        Auth.ADMIN,
        ClassInfo,
        errors=(401, 404),
    ),
    Operation(
        "POST",
        "/v1/classes/{class_id}/start",
        start_class,
        "Start a class",
        Auth.ADMIN,
        ClassInfo,
        errors=(401, 404, 409),
    ),
    Operation(
        "POST",
        "/v1/classes/{class_id}/end",
        end_class,
        "End a class",
        Auth.ADMIN,
        ClassInfo,
        errors=(401, 404, 409, 503),
    ),
]
"""The class operations of the API."""
