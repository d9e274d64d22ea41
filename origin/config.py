"""The origin's settings, from arguments or ``LIVECLASS_ORIGIN_*`` variables."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from liveclass.origin.classlog.base import DEFAULT_RETENTION

ENV_PREFIX = "LIVECLASS_ORIGIN_"

_N = TypeVar("_N", int, float)


@dataclass
class OriginConfig:
    """Everything the origin needs to start.

    ``api_key`` guards the admin API and ``edge_key`` the edge registry; an
    empty key turns that part of the API off (every call gets 401) rather
    than leaving it open. ``log_url`` selects the class log: None for in
    process, ``redis://...`` for Redis; ``log_retention`` is how many of a
    class's entries it keeps (give the edges the same). ``trusted_proxies``
    lists the CIDRs whose ``X-Forwarded-For`` header is believed.
    ``key_file`` holds the RSA signing key; it is generated and saved there
    when missing, and None keeps a key in memory only (tokens die with the
    process).
    """

    host: str = "127.0.0.1"
    port: int = 8800
    api_key: str = ""
    edge_key: str = ""
    database_url: str = "sqlite+aiosqlite:///liveclass-data/origin.db"
    log_url: str | None = None
    log_retention: int = DEFAULT_RETENTION
    geoip_db: Path | None = None
    trusted_proxies: list[str] = field(default_factory=list)
    key_file: Path | None = field(
        default_factory=lambda: Path("liveclass-data/origin-key.pem")
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None
    edge_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        # Fail at start, not at the first forwarded request.
        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"trusted proxy {cidr!r} is not a CIDR") from None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        if self.log_retention < 1:
            raise ValueError(
                f"class log retention {self.log_retention}: give 1 or more"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OriginConfig:
        """Build a config from ``LIVECLASS_ORIGIN_*`` variables.

        ``HOST``, ``PORT``, ``API_KEY``, ``EDGE_KEY``, ``DATABASE_URL``,
        ``LOG_URL``, ``LOG_RETENTION``, ``GEOIP_DB``, ``TRUSTED_PROXIES``
        (comma separated), ``KEY_FILE``, ``TLS_CERT``, ``TLS_KEY``,
        ``EDGE_TIMEOUT_S``. Unset variables keep the defaults. Raises
        ValueError on a malformed value.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value if value else None

        config = cls()
        if (value := get("HOST")) is not None:
            config.host = value
        if (value := get("PORT")) is not None:
            config.port = _number(int, "PORT", value)
        if (value := get("API_KEY")) is not None:
            config.api_key = value
        if (value := get("EDGE_KEY")) is not None:
            config.edge_key = value
        if (value := get("DATABASE_URL")) is not None:
            config.database_url = value
        config.log_url = get("LOG_URL")
        if (value := get("LOG_RETENTION")) is not None:
            config.log_retention = _number(int, "LOG_RETENTION", value)
        if (value := get("GEOIP_DB")) is not None:
            config.geoip_db = Path(value)
        if (value := get("TRUSTED_PROXIES")) is not None:
            config.trusted_proxies = [p.strip() for p in value.split(",") if p.strip()]
        if (value := get("KEY_FILE")) is not None:
            config.key_file = Path(value)
        if (value := get("TLS_CERT")) is not None:
            config.tls_cert = Path(value)
        if (value := get("TLS_KEY")) is not None:
            config.tls_key = Path(value)
        if (value := get("EDGE_TIMEOUT_S")) is not None:
            config.edge_timeout_s = _number(float, "EDGE_TIMEOUT_S", value)
        config.__post_init__()
        return config


def _number(kind: type[_N], name: str, value: str) -> _N:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(
            f"{ENV_PREFIX}{name}={value!r} is not a {kind.__name__}"
        ) from None
