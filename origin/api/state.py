"""What every handler reaches through the application: the origin's parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from liveclass.origin.classlog import ClassLog
from liveclass.origin.clientaddr import Network
from liveclass.origin.config import OriginConfig
from liveclass.origin.reconcile import Reconcilers
from liveclass.origin.registry import EdgeRegistry
from liveclass.origin.store import Store
from liveclass.origin.tokens import KeyRing, TokenVerifier

if TYPE_CHECKING:
    from liveclass.routing.geoip import GeoIPReader


@dataclass
class OriginState:
    """The parts of a running origin, shared by its handlers."""

    config: OriginConfig
    store: Store
    log: ClassLog
    keyring: KeyRing
    registry: EdgeRegistry
    reconcilers: Reconcilers
    geoip: GeoIPReader | None = None
    proxies: list[Network] = field(default_factory=list)
    owns_log: bool = False
    _verifier: TokenVerifier | None = field(default=None, repr=False)
    _verifier_kids: tuple[str, ...] = ()

    def verifier(self) -> TokenVerifier:
        """A verifier of the key ring's current keys, rebuilt after rotation."""
        kids = tuple(key["kid"] for key in self.keyring.public_keys()["keys"])
        if self._verifier is None or kids != self._verifier_kids:
            self._verifier = TokenVerifier(self.keyring.public_keys())
            self._verifier_kids = kids
        return self._verifier


STATE = web.AppKey("liveclass_origin_state", OriginState)
"""The application key of the :class:`OriginState`."""
