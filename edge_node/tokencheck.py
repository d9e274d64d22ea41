"""A lean join-token check for join storms, equal in effect to PyJWT's.

:class:`~liveclass.origin.tokens.TokenVerifier` goes through PyJWT, whose
generality costs several times the RSA verification itself. An edge admits
thousands of members a second, so it checks the token here with the same
rules (RFC 7519 section 7.2, RFC 7518 section 3.3) and the same outcome for
every token: algorithm RS256 only, a known ``kid``, the signature, then
``iss``, ``exp``, ``iat`` (and ``nbf``, ``aud`` when present) and the
required claims, then the claims model. Error messages differ in wording.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic_core import from_json

from liveclass.origin.contract import TOKEN_ALGORITHM, TOKEN_ISSUER, TokenClaims
from liveclass.origin.tokens import TokenError, TokenExpired, TokenVerifier, UnknownKey

REQUIRED = ("exp", "iat", "sub", "cls")
"""Claims a join token must carry (and not as null), as the verifier asks."""

_PADDING = padding.PKCS1v15()
_SHA256_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
"""The DER DigestInfo header of a SHA-256 digest (RFC 8017 section 9.2)."""
_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64(segment: str) -> bytes:
    # base64url without padding (RFC 7515 section 2) and nothing else: the
    # standard alphabet, padding or stray characters would let one token be
    # written several ways, and PyJWT refuses them.
    if "=" in segment or "+" in segment or "/" in segment:
        raise TokenError("malformed token: bad base64")
    try:
        data = segment.encode("ascii").translate(_URLSAFE)
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4), strict_mode=True)
    except ValueError:  # binascii.Error and UnicodeEncodeError among them
        raise TokenError("malformed token: bad base64") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise TokenError(f"malformed token: {what} is not JSON") from None
    return _as_object(value, what)


def _as_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TokenError(f"malformed token: {what} is not a JSON object")
    return value


def _payload(raw: bytes) -> dict[str, Any]:
    # pydantic's JSON parser takes a third of json.loads' time, and reads
    # the origin's JSON alike: only payloads whose signature held get here.
    try:
        value = from_json(raw)
    except ValueError:
        raise TokenError("malformed token: payload is not JSON") from None
    return _as_object(value, "payload")


def _signature_holds(key: rsa.RSAPublicKey, signature: bytes, signed: bytes) -> bool:
    """RS256 (RSASSA-PKCS1-v1_5 with SHA-256) of ``signed`` under ``key``.

    The check of RFC 8017 section 8.2.2: OpenSSL undoes the signature and
    checks its padding, and what is left must be exactly the encoded digest.
    It is the check ``key.verify`` makes, a sixth cheaper: the library's
    verify sets up a digest context per call.
    """
    if len(signature) != (key.key_size + 7) // 8:
        return False
    try:
        recovered = key.recover_data_from_signature(signature, _PADDING, None)
    except InvalidSignature:
        return False
    expected = _SHA256_INFO + hashlib.sha256(signed).digest()
    return hmac.compare_digest(recovered, expected)


def _number(claims: dict[str, Any], name: str) -> int:
    try:
        return int(claims[name])
    except (TypeError, ValueError, OverflowError):  # OverflowError: infinity
        raise TokenError(f"invalid token: {name} must be an integer") from None


MAX_HEADERS = 64
"""Distinct token headers remembered; every token of one key has the same."""


class LeanTokenVerifier(TokenVerifier):
    """A :class:`TokenVerifier` whose :meth:`verify` skips PyJWT."""

    def __init__(self, keys_document: dict[str, Any] | None = None) -> None:
        # Header segment -> the key it names, for headers that passed the
        # checks against the current keys; emptied when the keys change.
        self._signers: dict[str, rsa.RSAPublicKey] = {}
        super().__init__(keys_document)

    def update(self, keys_document: dict[str, Any]) -> None:
        """Replace the known keys (see :meth:`TokenVerifier.update`)."""
        super().update(keys_document)
        self._signers = {}

    def verify(self, token: str) -> TokenClaims:
        """Return the token's claims.

        Raises :class:`TokenExpired`, :class:`UnknownKey` or :class:`TokenError`.
        """
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("malformed token: not three segments")
        head_b64, body_b64, sig_b64 = parts
        key = self._signers.get(head_b64) or self._signer(head_b64)
        signed = f"{head_b64}.{body_b64}".encode("ascii", "replace")
        if not _signature_holds(key, _b64(sig_b64), signed):
            raise TokenError("invalid token: signature verification failed")
        claims = _payload(_b64(body_b64))
        self._check_claims(claims)
        try:
            return TokenClaims.model_validate(claims)
        except ValueError as exc:
            raise TokenError(f"token claims invalid: {exc}") from None

    def _signer(self, segment: str) -> rsa.RSAPublicKey:
        # The header's checks, once per distinct header: every token of one
        # key has the same, and only the signature proves it.
        header = _json_object(_b64(segment), "header")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed token: kid must be a string")
        key = self._keys.get(str(kid))
        if key is None:
            raise UnknownKey(f"token signed with unknown key {kid!r}")
        if header.get("alg") != TOKEN_ALGORITHM:
            raise TokenError("invalid token: the algorithm is not allowed")
        if "crit" in header or "b64" in header:
            # Extensions the token would have us understand (RFC 7515
            # section 4.1.11, RFC 7797): none is, so none is accepted.
            raise TokenError("invalid token: unsupported critical header")
        assert isinstance(key, rsa.RSAPublicKey)
        if len(self._signers) >= MAX_HEADERS:
            self._signers.clear()
        self._signers[segment] = key
        return key

    @staticmethod
    def _check_claims(claims: dict[str, Any]) -> None:
        # The order of PyJWT's checks: required, iat, nbf, exp, iss, aud.
        for name in REQUIRED:
            if claims.get(name) is None:
                raise TokenError(f'invalid token: missing the "{name}" claim')
        for name in ("sub", "jti"):
            if name in claims and not isinstance(claims[name], str):
                raise TokenError(f"invalid token: {name} must be a string")
        now = time.time()
        if _number(claims, "iat") > now:
            raise TokenError("invalid token: the token is not yet valid (iat)")
        if "nbf" in claims and _number(claims, "nbf") > now:
            raise TokenError("invalid token: the token is not yet valid (nbf)")
        if _number(claims, "exp") <= now:
            raise TokenExpired("token expired; ask for a new one")
        if claims.get("iss") != TOKEN_ISSUER:
            raise TokenError("invalid token: invalid issuer")
        if "aud" in claims:
            # PyJWT refuses an audience when none is expected.
            raise TokenError("invalid token: invalid audience")
