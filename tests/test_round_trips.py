"""Round trips counted by the server: resuming by key is one statement, idle with nothing open is none."""

from __future__ import annotations

from typing import Any

from ome_session import Session, SessionManager
from tests.helpers import People, ServerLog, backend_pid, query


def test_resuming_a_key_is_one_statement_then_none(people: People, server_log: ServerLog) -> None:
    manager = SessionManager(people.dsn)
    key = manager.create_session("alice", "alice-password").session_key
    backend = backend_pid(manager.create_session("bob", "bob-password"))
    manager.create_session(key=Session.instance().session_key)  # from its first resume on, it listens
    Session.idle()
    server_log.mark()
    manager.create_session(key=key)
    assert len(server_log.statements(backend)) == 1  # first sight: no BEGIN, no COMMIT, no lookups
    Session.idle()
    server_log.mark()
    manager.create_session(key=key)
    assert server_log.statements(backend) == []  # seen before: from memory


def test_idle_without_an_open_transaction_costs_no_round_trip(people: People, server_log: ServerLog) -> None:
    manager = SessionManager(people.dsn)
    session = manager.create_session("alice", "alice-password")
    backend = backend_pid(session)
    server_log.mark()
    Session.idle()
    assert server_log.statements(backend) == []
    manager.create_session(key=session.session_key)
    session.factory.find_objects("Project")
    server_log.mark()
    Session.idle()
    assert server_log.statements(backend) == ["ROLLBACK"]


def test_a_resume_soon_after_the_last_one_writes_nothing(people: People) -> None:
    manager = SessionManager(people.dsn, resume_cache=0)  # every resume runs the statement
    key = manager.create_session("alice", "alice-password").session_key

    def row_version() -> tuple[Any, ...]:
        [row] = query(people.dsn, "SELECT xmin::text, last_access FROM ome_sessions")
        return row

    before = row_version()
    for _ in range(3):
        Session.idle()
        manager.create_session(key=key)
    assert row_version() == before  # no new row version: no write, no WAL flush per request
    query(people.dsn, "UPDATE ome_sessions SET last_access = last_access - interval '5 minutes'")
    aged = row_version()
    Session.idle()
    manager.create_session(key=key)
    assert row_version() == aged  # the request's one statement only reads
    Session.idle()
    assert row_version()[1] > aged[1]  # a stale last_access is slid forward behind it, at idle
