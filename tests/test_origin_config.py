"""The origin's settings and its signing keys on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from liveclass.origin.classlog import DEFAULT_RETENTION
from liveclass.origin.config import OriginConfig
from liveclass.origin.keys import load_keyring, previous_path, save_keys
from liveclass.origin.tokens import TokenVerifier
from liveclass.sdk.protocol import Role


def test_defaults() -> None:
    config = OriginConfig.from_env({})
    assert config.port == 8800
    assert config.database_url == "sqlite+aiosqlite:///liveclass-data/origin.db"
    assert config.log_url is None
    assert config.log_retention == DEFAULT_RETENTION
    assert config.edge_timeout_s == 10.0


def test_from_env() -> None:
    config = OriginConfig.from_env(
        {
            "LIVECLASS_ORIGIN_HOST": "0.0.0.0",
            "LIVECLASS_ORIGIN_PORT": "9000",
            "LIVECLASS_ORIGIN_API_KEY": "a",
            "LIVECLASS_ORIGIN_EDGE_KEY": "e",
            "LIVECLASS_ORIGIN_DATABASE_URL": "postgresql+asyncpg://db/x",
            "LIVECLASS_ORIGIN_LOG_URL": "redis://127.0.0.1:6379/0",
            "LIVECLASS_ORIGIN_LOG_RETENTION": "5000",
            "LIVECLASS_ORIGIN_GEOIP_DB": "/data/city.mmdb",
            "LIVECLASS_ORIGIN_TRUSTED_PROXIES": "10.0.0.0/8, ::1/128",
            "LIVECLASS_ORIGIN_KEY_FILE": "/keys/origin.pem",
            "LIVECLASS_ORIGIN_TLS_CERT": "/tls/cert.pem",
            "LIVECLASS_ORIGIN_TLS_KEY": "/tls/key.pem",
            "LIVECLASS_ORIGIN_EDGE_TIMEOUT_S": "2.5",
        }
    )
    assert (config.host, config.port, config.api_key) == ("0.0.0.0", 9000, "a")
    assert config.trusted_proxies == ["10.0.0.0/8", "::1/128"]
    assert config.geoip_db == Path("/data/city.mmdb")
    assert config.tls_key == Path("/tls/key.pem")
    assert config.edge_timeout_s == 2.5
    assert config.log_retention == 5000


@pytest.mark.parametrize(
    "name, value",
    [
        ("PORT", "eighty"),
        ("EDGE_TIMEOUT_S", "soon"),
        ("LOG_RETENTION", "lots"),
        ("LOG_RETENTION", "0"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("TLS_CERT", "/only/cert.pem"),
    ],
)
def test_bad_env(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        OriginConfig.from_env({f"LIVECLASS_ORIGIN_{name}": value})


def test_key_file_survives_restart_and_rotation(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "origin.pem"
    first = load_keyring(key_file)
    assert key_file.exists()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    token = first.mint("c1", "u1", "Ada", Role.STUDENT)

    previous = first.current
    save_keys(key_file, previous, first.rotate())
    assert previous_path(key_file).exists()

    restarted = load_keyring(key_file)
    assert restarted.current.kid == first.current.kid
    assert TokenVerifier(restarted.public_keys()).verify(token).sub == "u1"
