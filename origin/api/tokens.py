"""Minting join tokens and publishing the keys that verify them."""

from __future__ import annotations

import asyncio
import logging

import jwt
from aiohttp import web

from liveclass.origin.api.classes import load_class
from liveclass.origin.api.http import Auth, Operation, body, reply, state
from liveclass.origin.api.models import (
    MAX_TTL_S,
    BulkToken,
    BulkTokenIssued,
    BulkTokenRequest,
    ClassInfo,
    ClassStatus,
    PublicKeys,
    TokenIssued,
    TokenRequest,
)
from liveclass.origin.errors import conflict
from liveclass.origin.keys import save_keys
from liveclass.origin.tokens import KeyRing

logger = logging.getLogger(__name__)

_CHUNK = 200
"""Tokens signed per worker-thread call: RSA signing takes about a
millisecond, so a bulk request must not hold the event loop for seconds."""


async def _open_class(request: web.Request) -> ClassInfo:
    info = await load_class(request)
    if info.status is ClassStatus.ENDED:
        raise conflict(f"class {info.id!r} has ended; no new tokens for it")
    return info


def _mint(
    keyring: KeyRing, info: ClassInfo, wanted: list[TokenRequest]
) -> list[tuple[str, int]]:
    """Sign tokens; each with its ``exp`` as signed, not as guessed.

    The class's size limit travels in each token, so that edges enforce it
    without asking the origin.
    """
    signed = []
    for w in wanted:
        token = keyring.mint(
            info.id, w.user_id, w.name, w.role, w.ttl_s, max_members=info.max_members
        )
        claims = jwt.decode(token, options={"verify_signature": False})
        signed.append((token, int(claims["exp"])))
    return signed


async def mint_token(request: web.Request) -> web.Response:
    """POST /v1/classes/{class_id}/tokens: one join token."""
    wanted = await body(request, TokenRequest)
    info = await _open_class(request)
    [(token, expires)] = _mint(state(request).keyring, info, [wanted])
    return reply(TokenIssued(token=token, expires_at=expires))


async def mint_tokens(request: web.Request) -> web.Response:
    """POST /v1/classes/{class_id}/tokens/bulk: one join token per member."""
    wanted = await body(request, BulkTokenRequest)
    info = await _open_class(request)
    keyring = state(request).keyring
    tokens: list[BulkToken] = []
    for start in range(0, len(wanted.members), _CHUNK):
        chunk = wanted.members[start : start + _CHUNK]
        signed = await asyncio.to_thread(_mint, keyring, info, chunk)
        tokens.extend(
            BulkToken(user_id=w.user_id, token=token, expires_at=expires)
            for w, (token, expires) in zip(chunk, signed, strict=True)
        )
    logger.info(
        "minted %d tokens for class %s",
        len(tokens),
        info.id,
        extra={"class_id": info.id},
    )
    return reply(BulkTokenIssued(tokens=tokens))


async def public_keys(request: web.Request) -> web.Response:
    """GET /v1/keys: the public keys edges verify join tokens with."""
    return reply(state(request).keyring.public_keys())


async def rotate_keys(request: web.Request) -> web.Response:
    """POST /v1/keys/rotate: sign with a new key; the previous one still
    verifies, so tokens already handed out stay good."""
    origin = state(request)
    force = request.query.get("force") in ("1", "true")
    if not force and not origin.keyring.retiring_is_safe(MAX_TTL_S):
        raise conflict(
            "the key before the current one may still have valid tokens out "
            f"(tokens live up to {MAX_TTL_S // 3600} h); rotating again now "
            "would make edges refuse them. Retry with ?force=true to do it anyway"
        )
    previous = origin.keyring.current
    current = origin.keyring.rotate()
    key_file = origin.config.key_file
    if key_file is not None:
        # Keep both on disk: a restart must still verify what the old key
        # signed until those tokens expire.
        await asyncio.to_thread(save_keys, key_file, previous, current)
    logger.info("signing key rotated to %s", current.kid)
    return reply(origin.keyring.public_keys())


OPERATIONS = [
    Operation(
        "POST",
        "/v1/classes/{class_id}/tokens",
        mint_token,
        "Mint a join token",
        Auth.ADMIN,
        TokenIssued,
        body=TokenRequest,
        errors=(400, 401, 404, 409, 422),
    ),
    Operation(
        "POST",
        "/v1/classes/{class_id}/tokens/bulk",
        mint_tokens,
        "Mint join tokens in bulk",
        Auth.ADMIN,
        BulkTokenIssued,
        body=BulkTokenRequest,
        errors=(400, 401, 404, 409, 413, 422),
    ),
    Operation(
        "GET", "/v1/keys", public_keys, "Token public keys", Auth.NONE, PublicKeys
    ),
    Operation(
        "POST",
        "/v1/keys/rotate",
        rotate_keys,
        "Rotate the signing key",
        Auth.ADMIN,
        PublicKeys,
        errors=(401, 409),
    ),
]
"""The token operations of the API."""
