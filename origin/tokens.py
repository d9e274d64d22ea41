"""Join tokens: minted by the origin, verified by edges without asking it.

A token is a JWT signed with RS256 (RFC 7518 section 3.3). The header's
``kid`` names the signing key; the origin publishes its current public keys
(:meth:`KeyRing.public_keys`), and edges keep a :class:`TokenVerifier` that
refreshes them, so keys can rotate without a restart. Only the origin holds a
private key: an edge can check a token but never mint one.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from liveclass.origin.contract import TOKEN_ALGORITHM, TOKEN_ISSUER, TokenClaims
from liveclass.sdk.protocol import Role


class TokenError(Exception):
    """A join token was refused; the message says why."""


class TokenExpired(TokenError):
    """The token's expiry time has passed; ask the app for a new one."""


class UnknownKey(TokenError):
    """The token names a signing key this verifier does not know."""


@dataclass
class SigningKey:
    """One RSA key pair, named by ``kid``."""

    kid: str
    private: rsa.RSAPrivateKey
    created: float = field(default_factory=time.time)

    @classmethod
    def generate(cls) -> SigningKey:
        """Make a new 2048-bit key; its ``kid`` is a digest of the public key."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid=_kid(private.public_key()), private=private)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Load a PEM private key from ``path``."""
        private = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise TokenError(f"{path}: not an RSA private key")
        # The file was written when the key started signing.
        created = path.stat().st_mtime
        return cls(kid=_kid(private.public_key()), private=private, created=created)

    def save(self, path: Path) -> None:
        """Write the private key to ``path`` as PEM, readable by the owner only."""
        pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.write_bytes(pem)
        path.chmod(0o600)

    def public_pem(self) -> str:
        """The public key as PEM text."""
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
            .decode()
        )


def _kid(public: rsa.RSAPublicKey) -> str:
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


class KeyRing:
    """The origin's signing keys: the newest signs, all recent ones verify."""

    def __init__(self, keys: list[SigningKey] | None = None) -> None:
        self._keys = keys or [SigningKey.generate()]

    @property
    def current(self) -> SigningKey:
        """The key that signs new tokens."""
        return self._keys[-1]

    def retiring_is_safe(self, max_ttl_s: float, now: float | None = None) -> bool:
        """Whether a rotation now drops no key whose tokens may still be
        valid: the key before the current one stopped signing when the
        current one started, and its tokens live ``max_ttl_s`` at most."""
        if len(self._keys) < 2:
            return True
        now = time.time() if now is None else now
        return now - self.current.created >= max_ttl_s

    def rotate(self, keep: int = 2) -> SigningKey:
        """Start signing with a new key; keep the ``keep`` newest for verifying."""
        self._keys.append(SigningKey.generate())
        self._keys = self._keys[-keep:]
        return self.current

    def mint(
        self,
        class_id: str,
        user_id: str,
        name: str,
        role: Role,
        ttl_s: float = 4 * 3600,
        max_members: int | None = None,
    ) -> str:
        """Sign a join token for one member of one class.

        ``max_members`` is the class's size limit, which edges enforce.
        """
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": TOKEN_ISSUER,
            "sub": user_id,
            "cls": class_id,
            "name": name,
            "role": role.value,
            "iat": now,
            "exp": now + int(ttl_s),
            "jti": uuid.uuid4().hex,
        }
        if max_members is not None:
            claims["max"] = max_members
        return jwt.encode(
            claims,
            self.current.private,
            algorithm=TOKEN_ALGORITHM,
            headers={"kid": self.current.kid},
        )

    def public_keys(self) -> dict[str, Any]:
        """The document edges fetch: ``{"keys": [{"kid", "alg", "pem"}]}``."""
        return {
            "keys": [
                {"kid": k.kid, "alg": TOKEN_ALGORITHM, "pem": k.public_pem()}
                for k in self._keys
            ]
        }


class TokenVerifier:
    """Checks join tokens against the origin's published public keys."""

    def __init__(self, keys_document: dict[str, Any] | None = None) -> None:
        self._keys: dict[str, Any] = {}
        if keys_document:
            self.update(keys_document)

    def update(self, keys_document: dict[str, Any]) -> None:
        """Replace the known keys with those of a :meth:`KeyRing.public_keys`
        document."""
        keys = {}
        for entry in keys_document.get("keys", []):
            if entry.get("alg") != TOKEN_ALGORITHM:
                continue
            keys[entry["kid"]] = serialization.load_pem_public_key(
                entry["pem"].encode()
            )
        self._keys = keys

    @property
    def kids(self) -> list[str]:
        """The names of the keys this verifier knows."""
        return list(self._keys)

    def verify(self, token: str) -> TokenClaims:
        """Return the token's claims.

        Raises :class:`TokenExpired`, :class:`UnknownKey` or :class:`TokenError`.
        """
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise TokenError(f"malformed token: {exc}") from None
        key = self._keys.get(str(kid))
        if key is None:
            raise UnknownKey(f"token signed with unknown key {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[TOKEN_ALGORITHM],
                issuer=TOKEN_ISSUER,
                options={"require": ["exp", "iat", "sub", "cls"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("token expired; ask for a new one") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        try:
            return TokenClaims.model_validate(claims)
        except ValueError as exc:
            raise TokenError(f"token claims invalid: {exc}") from None
