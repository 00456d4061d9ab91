"""A local session's properties, ``update(message=...)``, the session as a context manager, and
``create_session(KEY)``; the session row, read on a separate connection, is the oracle."""

from __future__ import annotations

import datetime

import pytest

from ome_session import Session, SessionManager
from ome_session.errors import PermissionDenied, SessionIdleError, SessionKeyError
from tests.helpers import People, ServerLog, key_digest, login, password, query


def row(people: People, key: str | None, columns: str) -> tuple[object, ...]:
    assert key is not None
    return query(people.dsn, f"SELECT {columns} FROM ome_sessions WHERE key_digest = %s", key_digest(key))[0]


def test_the_properties_are_the_session_rows(people: People) -> None:
    query(people.dsn, "INSERT INTO configuration VALUES ('session_max_lifetime', '7200')")
    session = SessionManager(people.dsn, agent="props-test", host="bench-7").create_session("alice", password("alice"))
    started, last_access, expires_at, agent, host = row(people, session.session_key,
                                                        "started, last_access, expires_at, agent, host")
    assert (session.started, session.last_access, session.expires_at) == (started, last_access, expires_at)
    assert session.time_to_live == datetime.timedelta(hours=2) == expires_at - started  # type: ignore[operator]
    assert session.time_to_idle == datetime.timedelta(minutes=30)
    assert (session.agent, session.host) == (agent, host) == ("props-test", "bench-7")
    assert session.message is None and session.closed_at is None
    key = session.session_key
    SessionManager(people.dsn).logout(session)
    assert session.closed_at == row(people, key, "closed_at")[0]
    assert session.closed and session.started == started  # still readable after the end


def test_no_lifetime_means_no_expiry_and_no_time_to_live(people: People) -> None:
    query(people.dsn, "INSERT INTO configuration VALUES ('session_max_lifetime', '0')")
    session = login(people, "alice")
    assert (session.expires_at, session.time_to_live) == (None, None)


def test_a_message_is_kept_on_that_session_and_read_at_its_resume(people: People) -> None:
    session = login(people, "alice")
    key = session.session_key
    session.update(message="nightly import, ask alice")
    assert session.message == "nightly import, ask alice"
    assert row(people, key, "message") == ("nightly import, ask alice",)
    other = login(people, "alice")
    assert other.message is None
    assert SessionManager(people.dsn).create_session(key=key).message == "nightly import, ask alice"
    Session.instance().update(message=None, time_to_idle=900)
    assert row(people, key, "message, idle_timeout") == (None, 900)


@pytest.mark.parametrize("bad", [42, b"bytes", "nul\x00inside", "\ud800", "x" * 4097])
def test_a_bad_message_is_refused_and_nothing_is_changed(people: People, bad: object) -> None:
    session = login(people, "alice")
    with pytest.raises((TypeError, ValueError), match="message"):
        session.update(message=bad, time_to_idle=600)  # type: ignore[arg-type]
    assert row(people, session.session_key, "message, idle_timeout") == (None, None)  # not half of it


def test_a_guest_leaves_no_message(people: People) -> None:
    query(people.dsn, "INSERT INTO configuration VALUES ('allow_guest_access', 'true')")
    guest = login(people, "guest")
    with pytest.raises(PermissionDenied, match="guest"):
        guest.update(message="hello")
    assert row(people, guest.session_key, "message") == (None,)


def test_the_session_is_a_context_manager_that_idles_on_the_way_out(people: People) -> None:
    manager = SessionManager(people.dsn)
    with manager.create_session("alice", password("alice")) as session:
        session.factory.new_object("Project", name="left uncommitted")
    assert session.is_idle() and not session.closed
    with pytest.raises(SessionIdleError):
        session.factory.find_objects("Project")
    with pytest.raises(RuntimeError), manager.create_session(key=session.session_key) as again:
        again.factory.new_object("Project", name="failed work")
        raise RuntimeError("the work failed")
    assert again.is_idle()
    assert query(people.dsn, "SELECT count(*) FROM projects") == [(0,)]  # both rolled back
    assert row(people, session.session_key, "closed_at") == (None,)  # idle, not logged out


def test_create_session_with_one_key_resumes_it(people: People) -> None:
    key = login(people, "alice").session_key
    login(people, "bob")
    assert SessionManager(people.dsn).create_session(key).user_name == "alice"


@pytest.mark.parametrize("not_a_key", ["alice", "A" * 32, "0" * 31, "alice-password"])
def test_one_argument_that_is_not_a_key_is_never_a_login(people: People, server_log: ServerLog,
                                                         not_a_key: str) -> None:
    manager = SessionManager(people.dsn)
    with pytest.raises(TypeError, match="32 lowercase hexadecimal characters") as refused:
        manager.create_session(not_a_key)
    assert not_a_key not in str(refused.value)  # it may have been a password
    assert server_log.statements() == []  # nothing was sent: no login attempt, no lookup
    with pytest.raises(SessionKeyError):
        manager.create_session("0" * 32)  # a key's form, but no such session
