"""Housekeeping of the local database through a logged-in session: dead session rows, timeouts.

Each function runs on the session's own connection and with its user's rights: the rights are
checked here, before any change, because the database credentials themselves allow everything.
The ``ome-session`` command is the main caller; scripts may use these too.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from . import _keys
from .backends.local import LocalHandle, _sql
from .configuration import Configuration
from .errors import PermissionDenied, SessionError
from .session import Session

DEFAULT_BATCH = 1000

# One batch of the rows over for one reason (``_sql.ENDED``): rows a concurrent resume holds
# locked are skipped, never waited for.
_PURGE_BATCH = """
WITH {cfg}
DELETE FROM ome_sessions d USING (
    SELECT s.id FROM ome_sessions s CROSS JOIN cfg WHERE {condition} LIMIT %(batch)s FOR UPDATE OF s SKIP LOCKED
) doomed
WHERE d.id = doomed.id
"""
_PURGE = {reason: _PURGE_BATCH.format(cfg=_sql.CFG, condition=_sql.ended(reason, "s")) for reason in _sql.ENDED}

# Live sessions by the login statements' own rule of liveness (one source: the local backend's,
# read here as the benchmarks read it), each with the session's own group.
# Who sees which: admins every one, anybody else his own (the permission table has no wider read of
# ome_sessions: when others are online is not everybody's business). Never a key: only digests are stored.
_LIVE_SESSIONS = f"""
WITH {_sql.CFG}
SELECT e.ome_name, g.name, s.host, s.agent, s.started, s.last_access, a.ome_name, s.key_digest = %(digest)s
FROM ome_sessions s JOIN experimenters e ON e.id = s.experimenter_id CROSS JOIN cfg
LEFT JOIN groups g ON g.id = coalesce(s.group_id, e.group_id) LEFT JOIN experimenters a ON a.id = s.sudo_by
WHERE {_sql._LIVE} AND (%(everyone)s OR s.experimenter_id = %(me)s)
ORDER BY s.started, s.id
"""


@dataclass(frozen=True)
class LiveSession:
    """A session that lives now, as ``sessions who`` shows it."""

    user: str
    group: str | None  # the session's group (new objects go there)
    host: str | None
    agent: str | None
    started: datetime.datetime
    last_access: datetime.datetime
    sudo_by: str | None
    current: bool  # the session asking


@dataclass
class PurgeReport:
    """How many rows went, by reason, and in how many batches (each committed on its own)."""

    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_sql.ENDED, 0))
    batches: int = 0

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


@dataclass(frozen=True)
class SessionTimes:
    idle_timeout: int  # seconds, in effect; 0 means no idle limit
    own_idle_timeout: int | None  # the session's own, as set (None: the configured default applies)
    last_access: datetime.datetime
    expires_at: datetime.datetime | None
    now: datetime.datetime  # the database's clock, so the client's cannot skew the result

    @property
    def time_left(self) -> datetime.timedelta | None:
        """Until the key dies if left unused; None when neither limit applies."""
        limits = []
        if self.idle_timeout > 0:
            limits.append(self.last_access + datetime.timedelta(seconds=self.idle_timeout) - self.now)
        if self.expires_at is not None:
            limits.append(self.expires_at - self.now)
        return max(min(limits), datetime.timedelta(0)) if limits else None


@contextmanager
def _dbh(session: Session) -> Iterator[psycopg.Connection[Any]]:
    """The session's connection in autocommit mode (each statement commits by itself), with
    driver errors turned into ours. Inside a transaction of the caller the statements join it."""
    factory = session.factory
    factory.obtain_dbh()  # raises SessionIdleError on an idle session
    connection = factory._connection
    with connection.errors(), connection.autocommit() as dbh:
        yield dbh


def _outside_transaction(session: Session, what: str) -> None:
    """Changes here commit as they go: they must not commit the caller's unfinished work too."""
    if session.factory.in_transaction:
        raise SessionError(f"{what} commits as it goes: commit or roll back the open transaction first")


def purge_sessions(session: Session, *, batch: int = DEFAULT_BATCH) -> PurgeReport:
    """Delete closed and expired rows of ``ome_sessions`` (admins and the super user only).

    Works in committed batches of ``batch`` rows so that a large backlog never holds long locks;
    live sessions, the caller's included, are untouched. Deleted keys can never come back.
    """
    if batch < 1:
        raise ValueError(f"batch must be a positive number of rows, not {batch}")
    _outside_transaction(session, "purge_sessions()")
    principal = session.factory.principal
    if not principal.admin:
        raise PermissionDenied(f"{session.user_name} may not purge sessions: only admins and the super user may")
    report = PurgeReport()
    params = {"batch": batch, **_sql.config_defaults()}
    for reason, statement in _PURGE.items():
        while True:
            with _dbh(session) as dbh:
                count = dbh.execute(statement, params).rowcount
            report.deleted[reason] += count
            report.batches += count > 0
            if count < batch:
                break
    return report


def live_sessions(session: Session) -> list[LiveSession]:
    """The live sessions the session's user may see: all for admins, his own for anyone else."""
    principal = session.factory.principal
    key = session.session_key
    params = {"digest": _keys.digest(key) if key else b"", "everyone": principal.admin or principal.trusted,
              "me": session.experimenter_id, **_sql.config_defaults()}
    with _dbh(session) as dbh:
        rows = dbh.execute(_LIVE_SESSIONS, params).fetchall()
    return [LiveSession(*row) for row in rows]


def session_times(session: Session) -> SessionTimes:
    """This session's idle timeout (in effect, and its own), last access and absolute expiry."""
    login = session.login
    if login is None or not isinstance(login.handle, LocalHandle):
        raise PermissionDenied("this needs a logged-in user of the local database, not a bootstrap session")
    with _dbh(session) as dbh:
        params = {"session_id": login.handle.session_id, **_sql.config_defaults()}
        row = dbh.execute(_sql.SESSION_TIMES, params).fetchone()
    assert row is not None  # the session was resumed, so its row exists
    return SessionTimes(*row)


def set_idle_timeout(session: Session, seconds: int) -> None:
    """Set ``session_idle_timeout``, the default of every session without its own (the super user only)."""
    if not session.is_su_session():
        raise PermissionDenied(f"{session.user_name} may not change the idle timeout: only the super user may")
    _outside_transaction(session, "set_idle_timeout()")
    Configuration.update(session.factory, {"session_idle_timeout": seconds})
    session.commit_transaction()


def revoke_key(session: Session, key: str) -> bool:
    """Close another session by its key (e.g. the admin's own, after a sudo); committed at once."""
    digest = _keys.digest(_keys.validate_key(key))
    _outside_transaction(session, "revoke_key()")
    with _dbh(session) as dbh:
        count = dbh.execute(_sql.CLOSE_BY_DIGEST, (digest,)).rowcount
    return count > 0
