"""Round trips counted by the server: resuming by key is one statement, idle with nothing open is none."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from ome_session import Session, SessionManager
from ome_session._cluster import Cluster
from tests.conftest import People

_LOGGED = re.compile(r"\[(\d+)\] LOG:  (?:statement|execute [^:]*): (.*)")


class StatementLog:
    """Reads the statements the server logged for one backend since a mark."""

    def __init__(self, cluster: Cluster) -> None:
        self._path = cluster.log_file
        self._offset = 0

    def mark(self) -> None:
        self._offset = self._path.stat().st_size

    def statements(self, backend_pid: int) -> list[str]:
        with self._path.open("rb") as handle:
            handle.seek(self._offset)
            text = handle.read().decode(errors="replace")
        return [m[2] for m in _LOGGED.finditer(text) if int(m[1]) == backend_pid]


@pytest.fixture
def statement_log(people: People, pg_cluster: Cluster) -> Iterator[StatementLog]:
    dbname = psycopg.conninfo.conninfo_to_dict(people.dsn)["dbname"]
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET log_statement = 'all'").format(sql.Identifier(dbname)))
    yield StatementLog(pg_cluster)


def _backend_pid(session: Session) -> int:
    pid = session.factory.obtain_dbh().info.backend_pid
    return int(pid)


def test_resuming_by_key_is_one_statement(people: People, statement_log: StatementLog) -> None:
    manager = SessionManager(people.dsn)
    session = manager.create_session("alice", "alice-password")
    backend = _backend_pid(session)
    Session.idle()
    statement_log.mark()
    manager.create_session(key=session.session_key)
    manager.create_session(key=session.session_key)
    statements = statement_log.statements(backend)
    assert len(statements) == 2, statements  # one per resume: no BEGIN, no COMMIT, no lookups


def test_idle_without_an_open_transaction_costs_no_round_trip(people: People, statement_log: StatementLog) -> None:
    manager = SessionManager(people.dsn)
    session = manager.create_session("alice", "alice-password")
    backend = _backend_pid(session)
    statement_log.mark()
    Session.idle()
    assert statement_log.statements(backend) == []
    manager.create_session(key=session.session_key)
    session.factory.find_objects("Project")
    statement_log.mark()
    Session.idle()
    assert statement_log.statements(backend) == ["ROLLBACK"]


def test_a_resume_soon_after_the_last_one_writes_nothing(people: People) -> None:
    manager = SessionManager(people.dsn)
    key = manager.create_session("alice", "alice-password").session_key

    def row_version() -> tuple:
        with psycopg.connect(people.dsn) as conn:
            return conn.execute("SELECT xmin::text, last_access FROM ome_sessions").fetchone()

    before = row_version()
    for _ in range(3):
        Session.idle()
        manager.create_session(key=key)
    assert row_version() == before  # no new row version: no write, no WAL flush per request
    with psycopg.connect(people.dsn, autocommit=True) as conn:
        conn.execute("UPDATE ome_sessions SET last_access = last_access - interval '5 minutes'")
    aged = row_version()
    Session.idle()
    manager.create_session(key=key)
    assert row_version()[1] > aged[1]  # a stale last_access is slid forward
