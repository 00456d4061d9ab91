"""Password hashing: argon2id for everything new, legacy OME ``crypt()`` hashes verified once.

The original stored DES ``crypt()`` hashes (only 8 characters counted). We verify those on login
and the caller re-hashes the password with argon2id, so legacy hashes disappear as people log in.
"""

from __future__ import annotations

import hmac
import warnings
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
_ARGON2_PREFIX = "$argon2"
# Verified against when the user does not exist, so a missing user costs as much as a wrong password.
_DUMMY_HASH = _HASHER.hash("ome-session: no such user")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> tuple[bool, bool]:
    """Check ``password`` against ``stored_hash``: returns (ok, needs_rehash).

    ``needs_rehash`` is true for a legacy crypt() hash or outdated argon2 parameters; the caller
    stores ``hash_password(password)`` then. A missing hash never verifies, but costs the same.
    """
    if not stored_hash:
        _verify_argon2(_DUMMY_HASH, password)
        return False, False
    if stored_hash.startswith(_ARGON2_PREFIX):
        ok = _verify_argon2(stored_hash, password)
        return ok, ok and _HASHER.check_needs_rehash(stored_hash)
    ok = _verify_crypt(stored_hash, password)
    return ok, ok


def _verify_argon2(stored_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _crypt_function() -> Any:
    """The platform ``crypt(3)``: the stdlib module where it exists, else the ``crypt-r`` package."""
    try:
        with warnings.catch_warnings():  # deprecated in 3.11, removed in 3.13
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt as module
    except ImportError:
        try:
            import crypt_r as module  # type: ignore[no-redef]
        except ImportError:
            return None
    return module.crypt


def _verify_crypt(stored_hash: str, password: str) -> bool:
    """Verify a legacy OME crypt() hash (DES or any scheme the C library knows)."""
    crypt = _crypt_function()
    if crypt is None or "\x00" in password:
        return False
    try:
        computed = crypt(password, stored_hash)
    except (OSError, ValueError):
        return False
    return computed is not None and hmac.compare_digest(computed, stored_hash)
