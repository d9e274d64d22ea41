"""Keeping the origin's signing keys on disk across restarts.

``key_file`` holds the signing key; ``<key_file>.prev`` the one before the
last rotation, kept so that tokens it signed still verify after a restart.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from liveclass.origin.tokens import KeyRing, SigningKey

logger = logging.getLogger(__name__)


def previous_path(key_file: Path) -> Path:
    """Where the key before the last rotation is kept."""
    return key_file.with_name(key_file.name + ".prev")


def load_keyring(key_file: Path | None) -> KeyRing:
    """The key ring kept in ``key_file``; a new key is made and saved there
    when the file is missing. None gives a key ring in memory only."""
    if key_file is None:
        return KeyRing()
    if not key_file.exists():
        key = SigningKey.generate()
        key_file.parent.mkdir(parents=True, exist_ok=True)
        _write(key_file, key)
        logger.info("generated signing key %s in %s", key.kid, key_file)
        return KeyRing([key])
    keys = [SigningKey.load(key_file)]
    previous = previous_path(key_file)
    if previous.exists():
        keys.insert(0, SigningKey.load(previous))
    logger.info("loaded signing key %s from %s", keys[-1].kid, key_file)
    return KeyRing(keys)


def save_keys(key_file: Path, previous: SigningKey, current: SigningKey) -> None:
    """Keep ``current`` in ``key_file`` and ``previous`` beside it."""
    key_file.parent.mkdir(parents=True, exist_ok=True)
    _write(previous_path(key_file), previous)
    _write(key_file, current)


def _write(path: Path, key: SigningKey) -> None:
    # Write then rename: a crash must not leave a half-written key behind.
    partial = path.with_name(path.name + ".tmp")
    key.save(partial)
    os.replace(partial, path)
