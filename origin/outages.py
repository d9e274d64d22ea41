"""Outages of the database and the class log, as the reconcilers meet them.

Every live class has its own reconciler, and during an outage each of them
fails and retries on its own. An operator needs one line when the database
goes away and one when it is back, not one per class and retry:
:class:`Outages` gathers what the reconcilers report and logs only the
changes, and the health endpoint reads its state.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError

logger = logging.getLogger(__name__)


class Dependency(StrEnum):
    """What the reconcilers need besides the origin's own process."""

    STORE = "database"
    CLASS_LOG = "class log"


_MEANING = {
    Dependency.STORE: "classes go on, their events wait in the class logs and "
    "are stored when it is back",
    Dependency.CLASS_LOG: "nothing is stored until it is back",
}


class Reachability(StrEnum):
    """Whether the reconcilers reach a dependency."""

    OK = "ok"
    UNREACHABLE = "unreachable"


UNREACHABLE_SQLSTATES = ("08", "57P")
"""SQLSTATE classes of a server that cannot serve: connection exceptions
(08) and operator intervention (57P: shutting down, starting up)."""


def is_unreachable(error: BaseException) -> bool:
    """Whether a database error means the server could not be reached or
    cannot serve now (a refused or dropped connection, a timeout, a server
    shutting down), rather than that it refused what was asked."""
    if isinstance(error, OSError | TimeoutError | InterfaceError | OperationalError):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    # The driver's own error, however many times it was wrapped.
    cause: BaseException | None = error
    for _ in range(5):
        if cause is None:
            break
        state = getattr(cause, "sqlstate", None)
        if isinstance(state, str) and state.startswith(UNREACHABLE_SQLSTATES):
            return True
        cause = getattr(cause, "orig", None) or cause.__cause__
    return False


def describe(error: BaseException) -> str:
    """The first line of the error's message, or its type's name when it has
    none. Of a failed statement, only the driver's message: SQLAlchemy adds
    the statement and its parameters, which may hold what members wrote."""
    if isinstance(error, StatementError) and error.orig is not None:
        error = error.orig
    return str(error).split("\n", 1)[0] or type(error).__name__


class Outages:
    """Which dependencies are unreachable, for which classes, since when.

    A dependency is down from the first class that cannot reach it until
    every class that could not reaches it again (or stops); each of the two
    changes is logged once, as a WARNING, for the whole origin.
    """

    def __init__(self) -> None:
        self._waiting: dict[Dependency, set[str]] = {dep: set() for dep in Dependency}
        self._since: dict[Dependency, float] = {}

    def unreachable(self, dep: Dependency, class_id: str, error: BaseException) -> None:
        """Note that ``class_id``'s reconciler cannot reach ``dep``."""
        waiting = self._waiting[dep]
        if dep not in self._since:
            self._since[dep] = time.monotonic()
            logger.warning(
                "%s unreachable (%s); %s",
                dep,
                describe(error),
                _MEANING[dep],
                extra={"dependency": dep.name.lower()},
            )
        waiting.add(class_id)

    def reached(self, dep: Dependency, class_id: str) -> None:
        """Note that ``class_id``'s reconciler reached ``dep``."""
        waiting = self._waiting[dep]
        waiting.discard(class_id)
        if not waiting and dep in self._since:
            down_s = time.monotonic() - self._since.pop(dep)
            logger.warning(
                "%s reachable again after %.1f s; catching up",
                dep,
                down_s,
                extra={"dependency": dep.name.lower()},
            )

    def forget(self, class_id: str) -> None:
        """Forget a class whose reconciler stopped. When it was the last one
        waiting, the outage is forgotten without a recovery line: nobody
        knows whether the dependency is back."""
        for dep, waiting in self._waiting.items():
            waiting.discard(class_id)
            if not waiting:
                self._since.pop(dep, None)

    def state(self, dep: Dependency) -> Reachability:
        """Whether the reconcilers reach ``dep``."""
        return Reachability.UNREACHABLE if dep in self._since else Reachability.OK

    def down_for(self, dep: Dependency) -> float | None:
        """Seconds since ``dep`` became unreachable, None if it is not."""
        since = self._since.get(dep)
        return None if since is None else time.monotonic() - since
