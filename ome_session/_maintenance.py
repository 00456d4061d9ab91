"""Housekeeping that acts on a logged-in session: purging dead session rows, groups, timeouts.

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
from psycopg import sql

from . import _keys, _permissions
from .configuration import Configuration
from .errors import PermissionDenied, SessionError
from .model import Experimenter
from .session import Session

DEFAULT_BATCH = 1000

# Dead rows, one condition per reason so that each phase can use its partial index (see the
# initial migration): closed (logged out, or found dead by a resume), idle too long, too old.
_CLOSED = sql.SQL("closed_at IS NOT NULL")
_IDLE = sql.SQL(
    "closed_at IS NULL AND %(idle)s > 0 AND last_access < now() - %(idle)s * interval '1 second'"
)
_EXPIRED = sql.SQL("closed_at IS NULL AND expires_at <= now()")
_PURGE_CONDITIONS = (("closed", _CLOSED), ("idle", _IDLE), ("expired", _EXPIRED))

# One batch: rows a concurrent resume holds locked are skipped, never waited for.
_PURGE_BATCH = sql.SQL("""
DELETE FROM ome_sessions s USING (
    SELECT id FROM ome_sessions WHERE {condition} LIMIT %(batch)s FOR UPDATE SKIP LOCKED
) doomed
WHERE s.id = doomed.id
""")

_IS_ADMIN = "SELECT is_admin AND active FROM experimenters WHERE id = %s"

_USER_GROUPS = """
SELECT g.id, g.name, g.id = e.group_id, g.leader_id IS NOT DISTINCT FROM e.id
FROM experimenters e JOIN groups g ON g.id = e.group_id OR g.id IN (
    SELECT m.group_id FROM experimenter_group_map m WHERE m.experimenter_id = e.id)
WHERE e.id = %s
ORDER BY g.name
"""

_FIND_GROUP = "SELECT id, name FROM groups WHERE name = %(name)s OR id = %(id)s ORDER BY name = %(name)s DESC LIMIT 1"

# The permission gate's condition (membership of the new group, for a user) is checked in the
# same statement as the change, so no removal can slip in between.
_SET_PRIMARY_GROUP = sql.SQL("UPDATE experimenters AS {} SET group_id = %s WHERE {}.id = %s AND {}")

_SESSION_TIMES = "SELECT last_access, expires_at, now() FROM ome_sessions WHERE key_digest = %s"

_REVOKE = "UPDATE ome_sessions SET closed_at = now() WHERE key_digest = %s AND closed_at IS NULL"


@dataclass(frozen=True)
class GroupInfo:
    id: int
    name: str
    current: bool  # the user's primary group: new objects go there
    leads: bool


@dataclass
class PurgeReport:
    """How many rows went, by reason, and in how many batches (each committed on its own)."""

    deleted: dict[str, int] = field(default_factory=lambda: {r: 0 for r, _ in _PURGE_CONDITIONS})
    batches: int = 0

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


@dataclass(frozen=True)
class SessionTimes:
    idle_timeout: int  # seconds; 0 means no idle limit
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


def _login_id(session: Session) -> int:
    user_id = session.experimenter_id
    if user_id is None:
        raise PermissionDenied("this needs a logged-in user, not a bootstrap session")
    return user_id


def is_admin(session: Session) -> bool:
    """The super user, or an active experimenter flagged as admin."""
    if session.is_su_session():
        return True
    with _dbh(session) as dbh:
        row = dbh.execute(_IS_ADMIN, (_login_id(session),)).fetchone()
    return bool(row and row[0])


def purge_sessions(session: Session, *, batch: int = DEFAULT_BATCH) -> PurgeReport:
    """Delete closed and expired rows of ``ome_sessions`` (admins and the super user only).

    Works in committed batches of ``batch`` rows so that a large backlog never holds long locks;
    live sessions, the caller's included, are untouched. Deleted keys can never come back.
    """
    if batch < 1:
        raise ValueError(f"batch must be a positive number of rows, not {batch}")
    _outside_transaction(session, "purge_sessions()")
    if not is_admin(session):
        raise PermissionDenied(f"{session.user_name} may not purge sessions: only admins and the super user may")
    report = PurgeReport()
    params = {"idle": session.configuration.session_idle_timeout, "batch": batch}
    for reason, condition in _PURGE_CONDITIONS:
        statement = _PURGE_BATCH.format(condition=condition)
        while True:
            with _dbh(session) as dbh:
                count = dbh.execute(statement, params).rowcount
            report.deleted[reason] += count
            report.batches += count > 0
            if count < batch:
                break
    return report


def user_groups(session: Session) -> list[GroupInfo]:
    """The session user's groups (memberships and primary group), by name."""
    with _dbh(session) as dbh:
        rows = dbh.execute(_USER_GROUPS, (_login_id(session),)).fetchall()
    return [GroupInfo(*row) for row in rows]


def switch_group(session: Session, group: str) -> GroupInfo:
    """Make ``group`` (a name, or an id) the user's primary group; committed at once.

    Only a group the user is a member of: the primary group is also part of what the user may
    see, so switching to any other group would widen their rights.
    """
    if not group or "\x00" in group:
        raise ValueError("a group is named by its name or its id")
    user_id = _login_id(session)
    _outside_transaction(session, "switch_group()")
    group_id = int(group) if group.isdigit() and len(group) < 19 else None
    with _dbh(session) as dbh:
        found = dbh.execute(_FIND_GROUP, {"name": group, "id": group_id}).fetchone()
        if found is None:
            raise ValueError(f"there is no group {group!r}; `ome-session whoami` lists yours")
        condition = _permissions.may_write(session.factory.principal, "update", Experimenter,
                                           {"group_id": found[0]}, (user_id,)) or (sql.SQL("TRUE"), [])
        row = sql.Identifier(_permissions.ROW)
        switched = dbh.execute(_SET_PRIMARY_GROUP.format(row, row, condition[0]),
                               [found[0], user_id, *condition[1]]).rowcount
    if not switched:
        raise PermissionDenied(f"{session.user_name} is not a member of group {found[1]!r}; "
                               "ask one of its leaders or an admin to add you")
    session.factory.group_id = found[0]  # new objects of this session go there too
    return GroupInfo(found[0], found[1], True, False)


def session_times(session: Session) -> SessionTimes:
    """The idle timeout and this session's last access and absolute expiry."""
    key = session.session_key
    if key is None:
        raise PermissionDenied("this needs a logged-in user, not a bootstrap session")
    with _dbh(session) as dbh:
        row = dbh.execute(_SESSION_TIMES, (_keys.digest(key),)).fetchone()
    assert row is not None  # the session was resumed, so its row exists
    return SessionTimes(session.configuration.session_idle_timeout, *row)


def set_idle_timeout(session: Session, seconds: int) -> None:
    """Set ``session_idle_timeout`` for every session (the super user only)."""
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
        count = dbh.execute(_REVOKE, (digest,)).rowcount
    return count > 0
