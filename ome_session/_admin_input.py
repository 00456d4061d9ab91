"""What the administration API accepts, checked before any SQL: names, passwords, e-mail addresses,
and the one-call unit of work every change of ``ome_session.admin`` runs in.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from .dbobject import DBObject, check_text
from .errors import SessionError
from .session import Session

if TYPE_CHECKING:
    from .factory import Factory

MAX_PASSWORD = 4096  # as for logins: longer passwords are refused before any hashing
MAX_NAME = 255  # bytes: a user name is a directory name in the command's key store

_WROTE = "SELECT pg_current_xact_id_if_assigned() IS NOT NULL"


def check_password(password: Any, name: str = "password") -> str:
    if not isinstance(password, str):
        raise TypeError(f"{name} is a str, not {type(password).__name__}")
    # Not dbobject.check_text: its messages show the value, and a password is never shown.
    if not 0 < len(password) <= MAX_PASSWORD or "\x00" in password:
        raise ValueError(f"{name} must be 1 to {MAX_PASSWORD} characters, without NUL")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} cannot contain lone surrogates") from None
    return password


def check_name(value: Any, what: str, *, empty: bool = False) -> str:
    """Text a person can type and read back: no control character, no surrounding blanks,
    at most ``MAX_NAME`` bytes of UTF-8 (empty only where allowed)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} is a str, not {type(value).__name__}")
    check_text(value, what)  # NUL, lone surrogates
    if not value and not empty:
        raise ValueError(f"{what} cannot be empty")
    if value != value.strip():
        raise ValueError(f"{what} {value!r} starts or ends with blanks")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"{what} {value!r} contains a control character")
    if len(value.encode("utf-8")) > MAX_NAME:
        raise ValueError(f"{what} is longer than {MAX_NAME} bytes")
    return value


def check_user_name(value: Any) -> str:
    """A login name that works everywhere a login goes, the command's key store included."""
    name = check_name(value, "user name")
    if "/" in name or name.startswith("."):
        raise ValueError(f"user name {name!r} cannot contain '/' nor start with '.'")
    return name


def check_group_name(value: Any) -> str:
    """A group name; never all digits, so "a group's name or id" can never mean two groups."""
    name = check_name(value, "group name")
    if name.isdigit():
        raise ValueError(f"group name {name!r} is all digits: groups are named by name or by id")
    return name


def check_email(value: Any) -> str | None:
    if value is None:
        return None
    email = check_name(value, "email")
    if email.count("@") != 1 or any(c.isspace() for c in email) or email.startswith("@") or email.endswith("@"):
        raise ValueError(f"email {email!r} is not an address like name@example.org")
    return email


def check_names(values: Any, what: str, kind: type[DBObject], *, ids: bool = False) -> list[Any]:
    """A list of names (objects of ``kind``, or ids if ``ids``) from one of them or an iterable."""
    items = [values] if isinstance(values, (str, int, DBObject)) else values
    if not isinstance(items, Iterable):
        raise TypeError(f"{what} is a name, a {kind.__name__} or a list of them, not {type(values).__name__}")
    checked: list[Any] = []
    for item in items:
        if isinstance(item, kind) or (ids and isinstance(item, int) and not isinstance(item, bool)):
            checked.append(item)
        elif isinstance(item, str):
            checked.append(check_name(item, what))
        else:
            raise TypeError(f"{what} is a name{', an id' if ids else ''} or a {kind.__name__}, "
                            f"not {type(item).__name__}")
    return checked


@contextmanager
def unit_of_work(what: str) -> Iterator[Factory]:
    """The session's Factory for one administration call: committed when the block ends, rolled
    back when it raises, so the call leaves all of its change or none.

    Work the caller has not committed yet would be committed along with it, so then the call is
    refused (``SessionError``) before it changes anything. A bootstrap session (trusted code: the
    installer) is the exception: there the call joins the open transaction, and the installer
    commits its whole work at once.
    """
    session = Session.instance()
    factory = session.factory
    if session.is_bootstrap():
        yield factory
        return
    if factory.in_transaction and _has_written(factory):
        raise SessionError(f"{what} commits its change: commit or roll back the session's open transaction first")
    try:
        yield factory
    except BaseException:
        with suppress(SessionError):  # a broken connection: the error that broke it says more
            factory.rollback_transaction()
        raise
    factory.commit_transaction()


def _has_written(factory: Factory) -> bool:
    with factory._connection.errors():
        row = factory.obtain_dbh().execute(_WROTE).fetchone()
    return bool(row and row[0])
