"""Administration through the session: what the Factory does not do by itself.

Passwords are never written through the Factory (``password_hash`` is a private column): they
change here, hashed with argon2id, under these rules:

- for oneself, with the old password (admins and the super user too);
- by an admin for another user, but for the super user only by the super user;
- never by a guest, nor in a group leader's sudo session as a member;
- by trusted code (a bootstrap session, such as the installer's) for anyone.

Changes run in the session's current transaction: commit it to keep them.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from . import _passwords, _permissions
from .errors import AuthenticationError, PermissionDenied
from .model import Experimenter
from .session import Session

MAX_PASSWORD = 4096  # as for logins: longer passwords are refused before any hashing

_STORED_HASH = "SELECT password_hash FROM experimenters WHERE id = %s FOR UPDATE"
_SET_HASH = sql.SQL("UPDATE experimenters SET password_hash = %s WHERE id = %s AND {}")


def set_password(user: Experimenter | str, new_password: str, *, old_password: str | None = None) -> None:
    """Set the password of ``user`` (an Experimenter or a user name) in the current session.

    ``PermissionDenied`` when the rules above refuse, ``AuthenticationError`` for a wrong old
    password, ``TypeError``/``ValueError`` for a password that cannot be one; nothing is written then.
    """
    _check_password(new_password, "new_password")
    if old_password is not None:
        _check_password(old_password, "old_password")
    session = Session.instance()
    factory = session.factory
    principal = factory.principal
    target = _user_id(factory, user)
    condition: _permissions.Fragment = (sql.SQL("TRUE"), [])
    if principal.trusted:
        pass
    elif principal.is_guest or principal.confined_to is not None:
        raise _refused(principal, "guests and sessions opened by a group leader as a member change no password")
    elif target == principal.user_id:
        if old_password is None:
            raise _refused(principal, "changing one's own password needs the old one (old_password=...)")
        _verify_old(factory, target, old_password)
    elif not principal.admin:
        raise _refused(principal, "only admins set the passwords of other users")
    elif not principal.is_super:
        condition = (sql.SQL("%s IS DISTINCT FROM " + _permissions.SUPER_USER_SQL), [target])
    dbh = factory.obtain_dbh()
    with factory._connection.errors():
        done = dbh.execute(_SET_HASH.format(condition[0]),
                           [_passwords.hash_password(new_password), target, *condition[1]]).rowcount
    if not done:
        raise _refused(principal, "only the super user sets the super user's password")


def _check_password(password: Any, name: str) -> None:
    if not isinstance(password, str):
        raise TypeError(f"{name} is a str, not {type(password).__name__}")
    if not 0 < len(password) <= MAX_PASSWORD or "\x00" in password:
        raise ValueError(f"{name} must be 1 to {MAX_PASSWORD} characters, without NUL")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} cannot contain lone surrogates") from None


def _user_id(factory: Any, user: Experimenter | str) -> int:
    if isinstance(user, Experimenter):
        return int(user.id)
    if not isinstance(user, str):
        raise TypeError(f"set_password() takes an Experimenter or a user name, not {type(user).__name__}")
    found = factory.find_object(Experimenter, ome_name=user)
    if found is None:
        raise ValueError(f"there is no user {user!r}")
    return int(found.id)


def _verify_old(factory: Any, user_id: int, old_password: str) -> None:
    dbh = factory.obtain_dbh()
    with factory._connection.errors():
        row = dbh.execute(_STORED_HASH, (user_id,)).fetchone()
    ok, _ = _passwords.verify_password(row[0] if row else None, old_password)
    if not ok:
        raise AuthenticationError("the old password is wrong")


def _refused(principal: _permissions.Principal, why: str) -> PermissionDenied:
    return PermissionDenied(f"{principal.name} ({principal.role}) may not set that password: {why}")
