"""Who may fetch a class's media: a join token once, then signed URLs.

A player shows its join token (``?token=``) on its first request. The edge
verifies it locally and rewrites every URI inside the playlists it returns to
carry a signature instead: ``?u=<user>&te=<token expiry>&exp=<expiry>&sig=``,
an HMAC-SHA256 with a secret this edge drew at start. Segment requests then
cost one HMAC, not an RSA verification, and the token never travels again.

A signature covers one class and one user and expires ``ttl_s`` after it was
issued; every playlist fetched with a valid signature carries a fresh one, so
a member who keeps watching keeps access, but never beyond the expiry of the
join token it came from (``te``). Signatures are valid on the edge that made
them only: a player that moves to another edge shows its token again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from liveclass.origin.tokens import TokenError, TokenVerifier


class AccessDenied(Exception):
    """A media request was refused; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    """A checked right of one user to fetch one class's media."""

    class_id: str
    user: str
    token_exp: int
    token: str | None = None
    """The join token, when the request carried one (forwarded upstream)."""


class MediaAccess:
    """Checks media requests and signs the URIs of the playlists it serves."""

    def __init__(
        self,
        verifier: TokenVerifier,
        secret: bytes | None = None,
        ttl_s: float = 300.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._verifier = verifier
        self._secret = secret or os.urandom(32)
        self._ttl_s = ttl_s
        self._now = clock or time.time

    def check(self, class_id: str, query: dict[str, str]) -> Grant:
        """Return the grant a request's query carries for ``class_id``.

        Raises :class:`AccessDenied` (401 without credentials or with a bad
        or expired one, 403 for a member of another class).
        """
        token = query.get("token")
        if token:
            return self._check_token(class_id, token)
        if "sig" in query:
            return self._check_signature(class_id, query)
        raise AccessDenied(401, "no credentials: add ?token=<join token>")

    def _check_token(self, class_id: str, token: str) -> Grant:
        try:
            claims = self._verifier.verify(token)
        except TokenError as exc:
            raise AccessDenied(401, str(exc)) from None
        if claims.cls != class_id:
            raise AccessDenied(403, "the token is for another class")
        return Grant(class_id, claims.sub, claims.exp, token)

    def _check_signature(self, class_id: str, query: dict[str, str]) -> Grant:
        try:
            user = query["u"]
            token_exp = int(query["te"])
            exp = int(query["exp"])
            sig = query["sig"]
        except (KeyError, ValueError):
            raise AccessDenied(401, "incomplete signed URL") from None
        expected = self._sign(class_id, user, token_exp, exp)
        if not hmac.compare_digest(expected, sig):
            raise AccessDenied(401, "bad signature; fetch the playlist with a token")
        if exp < self._now():
            raise AccessDenied(401, "signed URL expired; show the join token again")
        return Grant(class_id, user, token_exp)

    def signed_query(self, grant: Grant) -> str:
        """A fresh query string that grants what ``grant`` does."""
        exp = int(min(self._now() + self._ttl_s, grant.token_exp))
        sig = self._sign(grant.class_id, grant.user, grant.token_exp, exp)
        return urlencode(
            {"u": grant.user, "te": grant.token_exp, "exp": exp, "sig": sig}
        )

    def _sign(self, class_id: str, user: str, token_exp: int, exp: int) -> str:
        message = f"{class_id}\n{user}\n{token_exp}\n{exp}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
