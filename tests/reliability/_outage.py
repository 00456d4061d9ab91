"""Stopping the database under a working session, for ``test_outage`` and the soak run.

One round: commit a row, open a transaction, stop the server (fast or immediate shutdown), make
the next call, start the server again, and check what a user would: the call failed with the
right error, from the broken connection itself rather than a wait that ran into the connect
timeout; the committed rows are all there and the uncommitted one is not, as a connection of its
own sees them; and the same process logs in and works on without a restart.
"""

from __future__ import annotations

import time
from typing import Any

from ome_session import Session, SessionManager
from ome_session._cluster import Cluster
from ome_session.errors import DatabaseUnavailable, TransactionLost
from tests.helpers import password, query

from . import _setup

CONNECT_TIMEOUT = 5
USER = "olive"


def prepare(cluster: Cluster, tmp_dir: str) -> str:
    """A database on ``cluster`` with the one user the rounds log in as."""
    dsn = _setup.new_database(cluster, prefix="outage")
    _setup.add_users(dsn, [USER], tmp_dir=tmp_dir)
    return dsn


def manager(dsn: str) -> SessionManager:
    return SessionManager(dsn, connect_timeout=CONNECT_TIMEOUT)


def committed_names(dsn: str) -> set[str]:
    """The projects committed, read on a connection of its own."""
    return {name for (name,) in query(dsn, "SELECT name FROM projects")}


def waited_out_a_timeout(error: BaseException) -> bool:
    """Whether a connection error came from running into the connect timeout (a hang cut short),
    rather than from the server refusing or closing the connection."""
    return "timeout expired" in str(error)


def outage_round(cluster: Cluster, dsn: str, number: int, *, mode: str = "fast") -> dict[str, Any]:
    """One stop and start under an open transaction; returns figures and every problem seen."""
    problems: list[str] = []
    logins = manager(dsn)
    session = logins.create_session(USER, password(USER))
    with session.transaction():
        session.factory.new_object("Project", name=f"committed-{number}")
    session.factory.new_object("Project", name=f"uncommitted-{number}")
    cluster.stop(mode=mode)
    try:
        started = time.monotonic()
        try:
            session.factory.new_object("Project", name=f"after-stop-{number}")
            problems.append("a statement succeeded with the server stopped")
        except TransactionLost as exc:
            if waited_out_a_timeout(exc):
                problems.append(f"the lost transaction was reported only after a timeout: {exc}")
        except DatabaseUnavailable as exc:
            problems.append(f"open transaction not reported lost: {type(exc).__name__}: {exc}")
        waited = time.monotonic() - started
        try:
            logins.create_session(USER, password(USER))
            problems.append("a login succeeded with the server stopped")
        except DatabaseUnavailable as exc:
            if str(cluster.socket_dir) not in str(exc):
                problems.append(f"the error does not name the socket directory: {exc}")
            if waited_out_a_timeout(exc):
                problems.append(f"a stopped server was reported only after a timeout: {exc}")
    finally:
        cluster.start()
    session = logins.create_session(USER, password(USER))
    seen = {p.name for p in session.factory.find_objects("Project")}  # type: ignore[attr-defined]
    session.commit_transaction()
    Session.idle()
    logins.logout()
    names = committed_names(dsn)
    expected = {f"committed-{n}" for n in range(number + 1)}
    if missing := expected - names:
        problems.append(f"committed rows lost: {sorted(missing)}")
    if extra := {n for n in names if not n.startswith("committed-")}:
        problems.append(f"uncommitted rows kept or retried: {sorted(extra)}")
    if seen != names:
        problems.append(f"the session after the restart sees {sorted(seen)}, the database holds {sorted(names)}")
    return {"rows_checked": len(names), "seconds_to_error": round(waited, 3), "problems": problems}
