"""The edge's lean token check gives PyJWT's verdict on every token.

Each case is a token, forged or malformed in one way, checked by both
:class:`LeanTokenVerifier` and the PyJWT-based :class:`TokenVerifier` with
the same keys: both accept it, or both refuse it with the same error class.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from liveclass.edge_node.tokencheck import LeanTokenVerifier
from liveclass.origin.tokens import (
    KeyRing,
    TokenError,
    TokenExpired,
    TokenVerifier,
    UnknownKey,
)
from liveclass.sdk.protocol import Role

RING = KeyRing()
OTHER = KeyRing()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def good() -> str:
    return RING.mint("class-1", "ann", "Ann", Role.STUDENT)


def signed(
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    hash_: hashes.HashAlgorithm | None = None,
    ring: KeyRing = RING,
) -> str:
    """A token with the given header and claims (merged over a good
    token's), signed with ``ring``'s key and ``hash_`` (SHA-256)."""
    head_b64, body_b64, _ = good().split(".")
    head = json.loads(unb64(head_b64)) | (header or {})
    body = {
        k: v
        for k, v in (json.loads(unb64(body_b64)) | (claims or {})).items()
        if v is not ...
    }
    data = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(body).encode())}"
    signature = ring.current.private.sign(
        data.encode(), padding.PKCS1v15(), hash_ or hashes.SHA256()
    )
    return f"{data}.{b64(signature)}"


def with_signature(token: str, change: Callable[[bytes], bytes]) -> str:
    data, _, sig = token.rpartition(".")
    return f"{data}.{b64(change(unb64(sig)))}"


def flip_last_bit(sig: bytes) -> bytes:
    return sig[:-1] + bytes([sig[-1] ^ 1])


def standard_alphabet(token: str) -> str:
    # The same signature bytes, written with "+" and "/" (a signature that
    # has neither is signed again until it has).
    while True:
        data, _, sig = token.rpartition(".")
        if "-" in sig or "_" in sig:
            return f"{data}.{sig.replace('-', '+').replace('_', '/')}"
        token = good()


def other_body(token: str) -> str:
    # A good token's signature over another good token's header and body.
    head, _, sig = token.split(".")
    return f"{head}.{good().split('.')[1]}.{sig}"


NOW = int(time.time())

CASES: dict[str, Callable[[], str]] = {
    "good": good,
    "good, re-signed": lambda: signed(),
    "with a size limit": lambda: signed(claims={"max": 30}),
    "signature of another body": lambda: other_body(good()),
    "one bit of the signature flipped": lambda: with_signature(good(), flip_last_bit),
    "signature one byte short": lambda: with_signature(good(), lambda s: s[1:]),
    "signature with a leading zero byte": lambda: with_signature(
        good(), lambda s: b"\0" + s
    ),
    "signature empty": lambda: with_signature(good(), lambda s: b""),
    "signature all ones": lambda: with_signature(good(), lambda s: b"\xff" * len(s)),
    "signed with SHA-1": lambda: signed(hash_=hashes.SHA1()),
    "signed with SHA-512": lambda: signed(hash_=hashes.SHA512()),
    "signed by another key under our kid": lambda: signed(
        header={"kid": RING.current.kid}, ring=OTHER
    ),
    "unknown kid": lambda: signed(ring=OTHER, header={"kid": OTHER.current.kid}),
    "alg none": lambda: signed(header={"alg": "none"}),
    "alg HS256": lambda: signed(header={"alg": "HS256"}),
    "expired": lambda: signed(claims={"exp": NOW - 10}),
    "issued in the future": lambda: signed(claims={"iat": NOW + 3600}),
    "not valid before a future time": lambda: signed(claims={"nbf": NOW + 3600}),
    "wrong issuer": lambda: signed(claims={"iss": "someone-else"}),
    "with an audience": lambda: signed(claims={"aud": "edges"}),
    "no exp": lambda: signed(claims={"exp": ...}),
    "no sub": lambda: signed(claims={"sub": ...}),
    "sub not a string": lambda: signed(claims={"sub": 7}),
    "unknown role": lambda: signed(claims={"role": "principal"}),
    "size limit zero": lambda: signed(claims={"max": 0}),
    "two segments": lambda: ".".join(good().split(".")[:2]),
    "four segments": lambda: good() + ".x",
    "bad base64 signature": lambda: good()[:-4] + "!!!!",
    "signature in the standard alphabet": lambda: standard_alphabet(good()),
    "signature padded": lambda: with_signature(good(), lambda s: s) + "=",
    "signature with data after its padding": lambda: good() + "==AA",
    "exp infinite": lambda: signed(claims={"exp": float("inf")}),
    "iat infinite": lambda: signed(claims={"iat": float("-inf")}),
    "a critical header": lambda: signed(header={"crit": ["exp"]}),
    "an unencoded payload": lambda: signed(header={"b64": False}),
    "header not JSON": lambda: b64(b"{nope") + "." + good().split(".", 1)[1],
    "empty": lambda: "",
}


def verdict(verify: Callable[[str], Any], token: str) -> str:
    try:
        claims = verify(token)
    except TokenExpired:
        return "expired"
    except UnknownKey:
        return "unknown key"
    except TokenError:
        return "refused"
    return f"accepted {claims.sub} max={claims.max}"


@pytest.mark.parametrize("case", list(CASES))
def test_lean_check_gives_pyjwts_verdict(case: str) -> None:
    token = CASES[case]()
    keys = RING.public_keys()
    lean = verdict(LeanTokenVerifier(keys).verify, token)
    assert lean == verdict(TokenVerifier(keys).verify, token)
    if case.startswith(("good", "with a size limit")):
        assert lean.startswith("accepted ann")
    else:
        assert not lean.startswith("accepted")


def test_a_refused_signature_does_not_poison_the_next_check() -> None:
    # The key is remembered per header: a forged token under a good header
    # must not make the next good one fail, nor a good one let a forged in.
    verifier = LeanTokenVerifier(RING.public_keys())
    forged = with_signature(good(), flip_last_bit)
    for token, accepted in [(good(), True), (forged, False), (good(), True)]:
        assert verdict(verifier.verify, token).startswith("accepted") is accepted
