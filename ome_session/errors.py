"""The errors of ome-session: one small hierarchy, so callers catch ours, never a driver's.

Every public call raises one of these (or ``ValueError`` / ``TypeError`` for arguments that are
wrong in themselves, such as a temporary-file name with a path separator). Messages say what to do.
"""

from __future__ import annotations


class SessionError(Exception):
    """Base class of every error ome-session raises on purpose."""


class NoSessionError(SessionError):
    """``Session.instance()`` was called while this process has no session."""


class AuthenticationError(SessionError):
    """Username or password not accepted (the message never says which)."""


class SessionKeyError(SessionError):
    """A session key is malformed, unknown, expired or revoked."""


class PermissionDenied(SessionError):
    """The session's user may not do this (sudo, guest login, ...)."""


class BootstrapError(SessionError):
    """A bootstrap session was misused (one already exists, or uncommitted work would be lost)."""


class SessionIdleError(SessionError):
    """The session is idle: log in again (``create_session``) before using its Factory."""


class SessionClosedError(SessionIdleError):
    """The session was closed for good (``delete_instance``, ``logout``, ``finish_bootstrap``).

    It never reconnects by itself: log in again for a new one. A ``SessionIdleError``, since a
    closed session, like an idle one, refuses to work until the next login.
    """


class DatabaseUnavailable(SessionError):
    """The database cannot be reached, or the connection broke; the message names where and why."""


class ConfigurationError(SessionError):
    """Configuration is missing or invalid (unknown name, bad value, no database configured)."""


class DatabaseError(SessionError):
    """A statement failed in the database (constraint, bad value, lock timeout).

    ``sqlstate`` holds the PostgreSQL error code; the driver's exception is the ``__cause__``.
    The transaction is in error: roll it back (or leave the ``transaction()`` block) to go on.
    """

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class IntegrityError(DatabaseError):
    """A constraint refused the change (duplicate unique value, missing referenced row, ...)."""


class TransactionLost(DatabaseUnavailable):
    """The connection broke with a transaction open: its uncommitted changes are gone.

    Raised once, so the caller knows to redo the unit of work; the next call reconnects.
    """


class PoolExhausted(DatabaseUnavailable):
    """Thread scope: every connection of the pool stayed lent out for the whole pool timeout."""


__all__ = [
    "AuthenticationError",
    "BootstrapError",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailable",
    "IntegrityError",
    "NoSessionError",
    "PermissionDenied",
    "PoolExhausted",
    "SessionClosedError",
    "SessionError",
    "SessionIdleError",
    "SessionKeyError",
    "TransactionLost",
]
