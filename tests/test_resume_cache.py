"""The resume cache: a warm key costs no round trip, and every change that decides who may be in, or
what he may see, reaches a warm worker in another process before its next resume.

Each change is made the way a deployment makes it (the library in this process, or plain SQL on a
connection of its own); the worker is another process that resumed the key from memory before.
The test waits (a bounded poll) until the database's message waits on the worker's socket, then
the worker's first resume must refuse, or see less.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

from ome_session import Configuration, Session, SessionManager
from ome_session._resume_cache import ResumeCache
from ome_session.errors import SessionKeyError
from tests.helpers import People, ServerLog, Worker, backend_pid, login, query, wait_for


@pytest.fixture
def lab(people: People) -> People:
    """One project per lab: alice's in lab_a, carol's in lab_b, root's in system."""
    for owner, group in (("alice", "lab_a"), ("carol", "lab_b"), ("root", "system")):
        query(people.dsn, "INSERT INTO projects (name, owner_id, group_id) VALUES (%s, %s, %s)",
              f"{owner}'s", people.ids[owner], people.groups[group])
    return people


@pytest.fixture
def worker(lab: People) -> Iterator[Worker]:
    found = Worker(lab.dsn)
    yield found
    found.close()


def key_of(people: People, name: str) -> str:
    """A new session key of ``name``, logged in here; the process's session is closed again, so
    the next manager makes a backend with its own options."""
    key = login(people, name).session_key
    Session.delete_instance(force=True)
    return key


def refused(answer: dict[str, object]) -> bool:
    return answer.get("error") == "SessionKeyError"


# -- the key refused -----------------------------------------------------------------------------------

def test_logout_in_another_process(lab: People, worker: Worker) -> None:
    key = key_of(lab, "alice")
    assert worker.warm(key)["projects"] == ["alice's"]
    SessionManager(lab.dsn).create_session(key=key)
    SessionManager(lab.dsn).logout()
    worker.wait_for_news()
    assert refused(worker.resume(key))


def test_session_row_closed_by_plain_sql(lab: People, worker: Worker) -> None:
    key = key_of(lab, "alice")
    worker.warm(key)
    query(lab.dsn, "UPDATE ome_sessions SET closed_at = now()")
    worker.wait_for_news()
    assert refused(worker.resume(key))


def test_user_deactivated(lab: People, worker: Worker) -> None:
    key = key_of(lab, "alice")
    worker.warm(key)
    query(lab.dsn, "UPDATE experimenters SET active = false WHERE ome_name = 'alice'")
    worker.wait_for_news()
    assert refused(worker.resume(key))


def test_guest_access_withdrawn(lab: People, worker: Worker) -> None:
    query(lab.dsn, "INSERT INTO configuration VALUES ('allow_guest_access', 'true')")
    key = key_of(lab, "guest")
    worker.warm(key)
    query(lab.dsn, "UPDATE configuration SET value = 'false' WHERE name = 'allow_guest_access'")
    worker.wait_for_news()
    assert refused(worker.resume(key))


def test_idle_timeout_shortened(lab: People, worker: Worker) -> None:
    key = key_of(lab, "alice")
    worker.warm(key)
    query(lab.dsn, "INSERT INTO configuration VALUES ('session_idle_timeout', '1')")
    wait_for("the session to be unused longer than the new timeout", lambda: query(
        lab.dsn, "SELECT last_access < now() - interval '1.5 seconds' FROM ome_sessions")[0][0])
    worker.wait_for_news()
    assert refused(worker.resume(key))
    assert query(lab.dsn, "SELECT closed_at IS NOT NULL FROM ome_sessions") == [(True,)]


def test_session_made_older_by_plain_sql(lab: People, worker: Worker) -> None:
    key = key_of(lab, "alice")
    worker.warm(key)
    query(lab.dsn, "UPDATE ome_sessions SET last_access = now() - interval '1 hour'")  # idle timeout: 30 min
    worker.wait_for_news()
    assert refused(worker.resume(key))


def test_key_revoked_while_the_workers_connection_was_gone(lab: People, worker: Worker) -> None:
    key = key_of(lab, "alice")
    pid = worker.warm(key)["pid"]
    query(lab.dsn, "SELECT pg_terminate_backend(%s)", pid)
    wait_for("the worker's server process to end",
             lambda: not query(lab.dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", pid))
    query(lab.dsn, "UPDATE ome_sessions SET closed_at = now()")  # nobody could tell the worker
    assert refused(worker.resume(key))
    other = key_of(lab, "carol")  # and the worker goes on, on a new connection
    assert worker.resume(other)["projects"] == ["carol's"]


# -- the rights narrowed ---------------------------------------------------------------------------------

def test_admin_flag_removed(lab: People, worker: Worker) -> None:
    query(lab.dsn, "UPDATE experimenters SET is_admin = true WHERE ome_name = 'alice'")
    key = key_of(lab, "alice")
    assert worker.warm(key)["projects"] == ["alice's", "carol's", "root's"]
    query(lab.dsn, "UPDATE experimenters SET is_admin = false WHERE ome_name = 'alice'")
    worker.wait_for_news()
    answer = worker.resume(key)
    assert (answer["admin"], answer["projects"]) == (False, ["alice's"])


def test_group_membership_removed_narrows_the_reads(lab: People, worker: Worker) -> None:
    query(lab.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", lab.ids["alice"], lab.groups["lab_b"])
    key = key_of(lab, "alice")
    assert worker.warm(key)["projects"] == ["alice's", "carol's"]
    query(lab.dsn, "DELETE FROM experimenter_group_map WHERE experimenter_id = %s AND group_id = %s",
          lab.ids["alice"], lab.groups["lab_b"])
    worker.wait_for_news()
    assert worker.resume(key)["projects"] == ["alice's"]


def test_group_leader_changed(lab: People, worker: Worker) -> None:
    query(lab.dsn, "UPDATE groups SET leader_id = %s WHERE name = 'lab_b'", lab.ids["lena"])
    key = key_of(lab, "lena")
    answer = worker.warm(key)
    assert (answer["leads"], answer["projects"]) == (sorted([lab.groups["lab_a"], lab.groups["lab_b"]]),
                                                     ["alice's", "carol's"])
    query(lab.dsn, "UPDATE groups SET leader_id = %s WHERE name = 'lab_b'", lab.ids["carol"])
    worker.wait_for_news()
    answer = worker.resume(key)
    assert (answer["leads"], answer["projects"]) == ([lab.groups["lab_a"]], ["alice's"])


def test_super_user_changed(lab: People, worker: Worker) -> None:
    query(lab.dsn, "INSERT INTO experimenters (ome_name, is_admin) VALUES ('adam', true)")
    key = key_of(lab, "root")
    assert worker.warm(key)["super"] is True
    query(lab.dsn, "UPDATE configuration SET value = to_jsonb((SELECT id FROM experimenters WHERE ome_name = 'adam')) "
                   "WHERE name = 'super_user'")
    worker.wait_for_news()
    answer = worker.resume(key)
    assert (answer["super"], answer["admin"]) == (False, True)


def test_a_change_to_another_user_keeps_the_key_warm(lab: People, worker: Worker) -> None:
    key = key_of(lab, "alice")
    worker.warm(key)
    query(lab.dsn, "UPDATE experimenters SET active = false WHERE ome_name = 'carol'")
    worker.wait_for_news()
    assert worker.resume(key)["warm"] is True


# -- what the cache costs, and what empties it --------------------------------------------------------

def test_a_warm_resume_sends_nothing(lab: People, server_log: ServerLog) -> None:
    manager = SessionManager(lab.dsn)
    key = key_of(lab, "alice")
    backend = backend_pid(manager.create_session(key=key))
    Session.idle()
    server_log.mark()
    for _ in range(3):
        manager.create_session(key=key)
        Session.idle()
    assert server_log.statements(backend) == []


def test_the_cache_switched_off_asks_the_database_every_time(lab: People, server_log: ServerLog) -> None:
    manager = SessionManager(lab.dsn, resume_cache=0)
    key = key_of(lab, "alice")
    backend = backend_pid(manager.create_session(key=key))
    Session.idle()
    server_log.mark()
    for _ in range(3):
        manager.create_session(key=key)
        Session.idle()
    assert len(server_log.statements(backend)) == 3
    assert Session.instance().backend.resume_cache is None  # type: ignore[attr-defined]


def test_the_cache_holds_at_most_its_size(lab: People) -> None:
    manager = SessionManager(lab.dsn, resume_cache=2)
    keys = [key_of(lab, name) for name in ("alice", "bob", "carol")]
    for key in keys:
        manager.create_session(key=key)
        Session.idle()
    cache = Session.instance().backend.resume_cache  # type: ignore[attr-defined]
    assert (len(cache), keys[0] in cache, keys[2] in cache) == (2, False, True)


def _news_waiting(cache: ResumeCache) -> bool:
    """Whether a message waits on the cache's listening socket (asked without reading it)."""
    source = cache.listening
    assert source is not None
    poller = select.poll()
    poller.register(source.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


def _warmed(manager: SessionManager, key: str) -> ResumeCache:
    manager.create_session(key=key)
    Session.idle()
    cache: ResumeCache = Session.instance().backend.resume_cache  # type: ignore[attr-defined]
    assert key in cache
    return cache


def test_configuration_flush_empties_the_cache(lab: People) -> None:
    key = key_of(lab, "alice")
    cache = _warmed(SessionManager(lab.dsn), key)
    Configuration.flush()
    assert key not in cache


def test_an_unreadable_message_empties_the_cache(lab: People) -> None:
    bob = key_of(lab, "bob")
    manager = SessionManager(lab.dsn)
    _warmed(manager, bob)
    cache = _warmed(manager, key_of(lab, "alice"))
    query(lab.dsn, "SELECT pg_notify('ome_session', 'u:no such user')")
    wait_for("the message to arrive", lambda: _news_waiting(cache))
    assert cache.get(bob) is None and len(cache) == 0


def test_a_new_server_session_empties_the_cache(lab: People) -> None:
    key = key_of(lab, "alice")
    cache = _warmed(SessionManager(lab.dsn), key)
    connection = Session.instance().factory._connection
    connection.revive()  # nothing wrong with it: kept
    assert key in cache
    old = connection.raw
    connection.open()  # another server session, which may have missed news
    old.close()
    assert key not in cache


def test_a_forked_child_starts_with_an_empty_cache(lab: People) -> None:
    manager = SessionManager(lab.dsn)
    key = key_of(lab, "alice")
    manager.create_session(key=key)
    Session.idle()
    cache = Session.instance().backend.resume_cache  # type: ignore[attr-defined]
    assert key in cache
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        try:
            empty = key not in cache and len(cache) == 0
            resumed = SessionManager().reattach().user_name == "alice"
            os.write(write, f"{empty} {resumed}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = pipe.read()
    os.waitpid(child, 0)
    assert report == "True True"
    assert key in cache  # the parent's is the parent's


def test_a_session_used_only_from_memory_stays_alive_in_the_database(lab: People) -> None:
    query(lab.dsn, "INSERT INTO configuration VALUES ('session_idle_timeout', '10')")  # written every second
    manager = SessionManager(lab.dsn)
    key = key_of(lab, "alice")
    manager.create_session(key=key)
    Session.idle()
    [(before,)] = query(lab.dsn, "SELECT last_access FROM ome_sessions")

    def written_behind() -> bool:
        manager.create_session(key=key)
        Session.idle()
        return bool(query(lab.dsn, "SELECT last_access > %s FROM ome_sessions", before)[0][0])

    wait_for("last_access to be written behind", written_behind)
    assert key in Session.instance().backend.resume_cache  # type: ignore[attr-defined]


def test_settings_refuse_a_bad_cache_size(lab: People) -> None:
    from ome_session.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="resume_cache"):
        SessionManager(lab.dsn, resume_cache=-1).create_session("alice", "alice-password")
    with pytest.raises(ConfigurationError, match="listen_dsn"):
        SessionManager(lab.dsn, listen_dsn="").create_session("alice", "alice-password")
    assert not Session.has_instance()


def test_a_dedicated_listener_serves_the_cache(lab: People) -> None:
    manager = SessionManager(lab.dsn, listen_dsn=lab.dsn)
    key = key_of(lab, "alice")
    cache = _warmed(manager, key)
    assert cache.listening is not None and cache.listening is not Session.instance().factory._connection.raw
    query(lab.dsn, "UPDATE ome_sessions SET closed_at = now()")
    wait_for("the listener to hear of it", lambda: _news_waiting(cache))
    with pytest.raises(SessionKeyError):
        manager.create_session(key=key)


def test_the_triggers_fold_a_bulk_change_into_one_message(lab: People) -> None:
    with psycopg.connect(lab.dsn, autocommit=True) as listener:
        listener.execute("LISTEN ome_session")
        with psycopg.connect(lab.dsn) as conn:
            conn.execute("INSERT INTO experimenters (ome_name) SELECT 'user' || n FROM generate_series(1, 500) n")
            conn.execute("UPDATE experimenters SET first_name = 'x' WHERE ome_name LIKE 'user%'")
            conn.execute("UPDATE experimenters SET email = 'a@b' WHERE ome_name = 'alice'")
            conn.execute("UPDATE experimenters SET email = 'a@b' WHERE ome_name = 'alice'")  # no change
            conn.execute("UPDATE ome_sessions SET last_access = now()")  # none: a session used
        query(lab.dsn, "SELECT pg_notify('ome_session', 'end')")  # delivered after the above
        messages = []
        for notify in listener.notifies(timeout=60):
            if notify.payload == "end":
                break
            messages.append(notify.payload)
    assert messages == ["*", f"u:{lab.ids['alice']}"]


def test_idle_expiry_counts_in_memory_too(lab: People) -> None:
    query(lab.dsn, "INSERT INTO configuration VALUES ('session_idle_timeout', '1')")
    manager = SessionManager(lab.dsn)
    key = key_of(lab, "alice")
    _warmed(manager, key)
    wait_for("the session to be idle longer than its timeout", lambda: query(
        lab.dsn, "SELECT last_access < now() - interval '1.5 seconds' FROM ome_sessions")[0][0])
    with pytest.raises(SessionKeyError):
        manager.create_session(key=key)


# -- thread scope: the process's one cache, on a listening connection of its own --------------------------

def _in_new_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a thread to its end (its session, in thread scope, ends with it)."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # raised again in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the thread hung"
    if failures:
        raise failures[0]


def test_in_thread_scope_a_key_warm_in_one_thread_resumes_in_any_other_with_nothing_sent(
        lab: People, server_log: ServerLog) -> None:
    Session.set_scope("thread")
    manager = SessionManager(lab.dsn)
    key = key_of(lab, "alice")

    def request() -> None:
        with manager.create_session(key=key) as session:
            assert session.user_name == "alice"

    def first_request() -> None:
        with manager.create_session(key=key) as session:
            # What a threaded server does at start-up: else each new thread's session reads the
            # configuration once for itself.
            Configuration.preload(session.factory)

    _in_new_thread(first_request)  # the key's first sight, and the process's listener opened
    server_log.mark()
    for _ in range(3):
        _in_new_thread(request)
    assert server_log.statements() == []


def test_in_thread_scope_a_logout_in_another_process_reaches_every_thread(lab: People) -> None:
    worker = Worker(lab.dsn, scope="thread")
    try:
        key = key_of(lab, "alice")
        assert worker.warm(key)["projects"] == ["alice's"]
        assert worker.resume_in_thread(key)["warm"] is True
        SessionManager(lab.dsn).create_session(key=key)
        SessionManager(lab.dsn).logout()
        worker.wait_for_news()
        assert refused(worker.resume_in_thread(key))
        assert refused(worker.resume(key))
    finally:
        worker.close()


def test_in_thread_scope_a_forked_child_listens_on_its_own_and_leaves_the_parents_listener_alone(
        lab: People) -> None:
    Session.set_scope("thread")
    manager = SessionManager(lab.dsn)
    alice, bob = key_of(lab, "alice"), key_of(lab, "bob")
    for key in (alice, bob):
        manager.create_session(key=key)
        Session.idle()
    cache: ResumeCache = Session.instance().backend.resume_cache  # type: ignore[attr-defined]
    listening = cache.listening
    assert listening is not None and alice in cache and bob in cache
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        try:
            empty = len(cache) == 0 and cache.listening is None
            SessionManager(lab.dsn).create_session(key=alice)
            Session.idle()
            own = cache.listening is not None and cache.listening is not listening and alice in cache
            os.write(write, f"{empty} {own}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = pipe.read()
    os.waitpid(child, 0)
    assert report == "True True"
    # The parent's listener was never touched by the child: it still hears, and nothing emptied the cache.
    query(lab.dsn, "UPDATE ome_sessions SET closed_at = now() WHERE experimenter_id = %s", lab.ids["alice"])
    wait_for("the parent's listener to hear of it", lambda: _news_waiting(cache))
    with pytest.raises(SessionKeyError):
        manager.create_session(key=alice)
    assert cache.listening is listening and bob in cache
