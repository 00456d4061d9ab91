"""Session keys: how they are made, what a valid one looks like, and how they are stored.

This module is the single source of truth for the key formats. A key is 32 lowercase hex
characters (128 random bits, the OME format). The database only ever sees ``digest(key)``, so a
leaked table does not leak live sessions, and lookups compare digests in SQL, never in Python.
The OMERO backend's keys are OMERO's session UUIDs, issued by its server.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from .errors import SessionKeyError

_KEY_PATTERN = re.compile(r"[0-9a-f]{32}")
_OMERO_KEY_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # as issued


def new_key() -> str:
    """A fresh session key from the operating system's CSPRNG."""
    return secrets.token_hex(16)


def validate_key(key: object) -> str:
    """Return ``key`` if it has the OME key format, else raise ``SessionKeyError``.

    Called before any database access, so garbage never reaches SQL. The message never echoes the
    value: a key is a secret even when malformed (it may be a real key with a typo).
    """
    if not isinstance(key, str):
        raise SessionKeyError(f"a session key must be a string, not {type(key).__name__}")
    if _KEY_PATTERN.fullmatch(key) is None:
        raise SessionKeyError(
            f"malformed session key ({len(key)} characters): a key is 32 lowercase hex characters"
        )
    return key


def validate_omero_key(key: object) -> str:
    """Return an OMERO session key (a UUID, in any letter case) in the lowercase form OMERO
    issues; ``SessionKeyError`` otherwise, before any call to a server."""
    if not isinstance(key, str):
        raise SessionKeyError(f"an OMERO session key must be a string, not {type(key).__name__}")
    lowered = key.lower()  # no character outside ASCII lowers to a hex digit or '-'
    if _OMERO_KEY_PATTERN.fullmatch(lowered) is None:
        raise SessionKeyError(f"malformed OMERO session key ({len(key)} characters): it is a UUID "
                              "such as 0a1b2c3d-0000-4000-8000-00aa00bb00cc")
    return lowered


def is_key(key: object) -> bool:
    """Whether ``key`` has the OME key format."""
    return isinstance(key, str) and _KEY_PATTERN.fullmatch(key) is not None


def is_omero_key(key: object) -> bool:
    """Whether ``key`` is an OMERO session key exactly as OMERO issues it (lowercase)."""
    return isinstance(key, str) and _OMERO_KEY_PATTERN.fullmatch(key) is not None


def digest(key: str) -> bytes:
    """What the database stores and looks up instead of the key."""
    return hashlib.sha256(key.encode("ascii")).digest()


def key_prefix(key: str) -> str:
    """A short, non-secret way to name a key in listings and logs."""
    return key[:8]
