"""Thread scope: one session per thread, each on a connection borrowed from a bounded pool.

Real threads against the real server; what the server holds (rows, owners, backends and their
states) is read on a connection of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ome_session import Session, SessionManager
from ome_session.errors import ConfigurationError, NoSessionError, PoolExhausted, SessionError
from tests.helpers import People, backend_pid, login, password, password_hash, query, wait_for


@pytest.fixture
def scoped(people: People) -> Iterator[People]:
    """The people, with the process in thread scope for this test."""
    Session.set_scope("thread")
    yield people
    Session.delete_instance(force=True)  # the test thread's own; the other threads ended


def in_thread(fn: Callable[[], Any], name: str = "worker") -> Any:
    """Run ``fn`` in a new thread to its end; what it returned, or raise what it raised."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001  (raised again in the test's thread)
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), f"{name} hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def projects(dsn: str) -> list[tuple[str, str]]:
    return [tuple(row) for row in query(dsn, "SELECT p.name, e.ome_name FROM projects p "
                                             "JOIN experimenters e ON e.id = p.owner_id ORDER BY p.name")]


def add_users(people: People, *names: str) -> None:
    with psycopg.connect(people.dsn, autocommit=True) as conn:
        for name in names:
            user = conn.execute("INSERT INTO experimenters (ome_name, first_name, last_name, password_hash, group_id) "
                                "VALUES (%s, %s, 'Tester', %s, %s) RETURNING id",
                                (name, name.title(), password_hash(password(name)), people.groups["lab_b"])).fetchone()
            assert user is not None
            conn.execute("INSERT INTO experimenter_group_map VALUES (%s, %s)", (user[0], people.groups["lab_b"]))
            people.ids[name] = user[0]


# -- choosing the scope --------------------------------------------------------------------------------


def test_the_scope_is_chosen_once_before_the_first_session(people: People) -> None:
    with pytest.raises(ValueError, match="'process' or 'thread'"):
        Session.set_scope("threads")
    session = login(people, "alice")
    with pytest.raises(SessionError, match="chosen once, before the first session"):
        Session.set_scope("thread")
    assert Session.scope() == "process" and Session.instance() is session
    Session.set_scope("process")  # what it is already: nothing to refuse
    Session.delete_instance(force=True)
    Session.set_scope("thread")
    assert Session.scope() == "thread"


def test_the_environment_or_the_settings_file_choose_the_scope_and_the_pool(
        people: People, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Path(os.environ["OME_SESSION_CONFIG"])
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"dsn": people.dsn, "scope": "thread", "pool_size": 3, "pool_timeout": 2.5}))
    settings.chmod(0o600)
    session = SessionManager().create_session("alice", password("alice"))
    assert Session.scope() == "thread"
    assert (session.backend.options["pool_size"], session.backend.options["pool_timeout"]) == (3, 2.5)
    assert in_thread(Session.has_instance) is False  # another thread has none of its own yet
    Session.delete_instance(force=True)
    Session.set_scope("process")
    Session._scope = None  # as at start-up: the environment decides, and wins over the file
    monkeypatch.setenv("OME_SESSION_SCOPE", "process")
    assert Session.scope() == "process"
    Session._scope = None
    monkeypatch.setenv("OME_SESSION_SCOPE", "per-thread")
    with pytest.raises(ConfigurationError, match="OME_SESSION_SCOPE.*'process' or 'thread'"):
        SessionManager().create_session("alice", password("alice"))
    assert not Session.has_instance()
    monkeypatch.setenv("OME_SESSION_SCOPE", "thread")
    for bad in ("0", "many", "nan"):
        monkeypatch.setenv("OME_SESSION_POOL_SIZE", bad)
        with pytest.raises(ConfigurationError, match="OME_SESSION_POOL_SIZE must be a positive integer"):
            SessionManager().create_session("alice", password("alice"))


# -- one session per thread ------------------------------------------------------------------------------


def test_eight_users_in_eight_threads_commit_at_once_on_eight_backends(scoped: People) -> None:
    add_users(scoped, "dora", "erin", "fred")
    names = ["root", "lena", "alice", "bob", "carol", "dora", "erin", "fred"]
    inside, commit = threading.Barrier(len(names) + 1, timeout=120), threading.Barrier(len(names) + 1, timeout=120)
    seen: dict[str, tuple[int, bool]] = {}

    def work(name: str) -> None:
        session = login(scoped, name)
        with session.transaction():
            session.factory.new_object("Project", name=f"{name}'s")
            seen[name] = (backend_pid(session), Session.instance() is session)
            inside.wait()
            commit.wait()
        Session.idle()

    threads = [threading.Thread(target=work, args=(name,), name=name) for name in names]
    for thread in threads:
        thread.start()
    inside.wait()  # every thread is in its transaction now, none committed
    pids = [pid for pid, _ in seen.values()]
    states = query(scoped.dsn, "SELECT state FROM pg_stat_activity WHERE pid = ANY(%s)", pids)
    assert len(set(pids)) == len(names) and [s for (s,) in states] == ["idle in transaction"] * len(names)
    assert projects(scoped.dsn) == []
    commit.wait()
    for thread in threads:
        thread.join(timeout=120)
    assert all(own for _, own in seen.values())
    assert projects(scoped.dsn) == sorted((f"{name}'s", name) for name in names)


def test_instance_delete_and_forget_are_the_calling_threads_own(scoped: People) -> None:
    mine = login(scoped, "alice")

    def other() -> tuple[bool, str | None]:
        had = Session.has_instance()
        theirs = login(scoped, "bob")
        assert Session.instance() is theirs is not mine
        Session.delete_instance(force=True)
        with pytest.raises(NoSessionError):
            Session.instance()
        login(scoped, "carol")
        Session.forget_instance()
        return had, theirs.user_name

    assert in_thread(other) == (False, "bob")
    assert Session.instance() is mine and not mine.is_idle() and mine.user_name == "alice"
    mine.factory.new_object("Project", name="still mine")
    mine.commit_transaction()
    assert projects(scoped.dsn) == [("still mine", "alice")]


def test_a_thread_cannot_use_another_threads_session_either(scoped: People) -> None:
    mine = login(scoped, "alice")
    with pytest.raises(SessionError, match="belongs to thread 'MainThread'"):
        in_thread(lambda: mine.factory.find_objects("Project"))


# -- the pool ----------------------------------------------------------------------------------------------


def _pids_of(dsn: str) -> set[int]:
    return {pid for (pid,) in query(dsn, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                         "AND pid <> pg_backend_pid()")}


def test_idle_and_the_end_of_a_thread_give_the_connection_back(scoped: People) -> None:
    manager = SessionManager(scoped.dsn, pool_size=1, pool_timeout=30)

    def work_and_idle(name: str) -> int:
        session = manager.create_session(name, password(name))
        pid = backend_pid(session)
        Session.idle()
        return pid

    def work_and_end(name: str) -> int:
        session = manager.create_session(name, password(name))
        session.factory.new_object("Project", name="left open by a thread that ended")
        return backend_pid(session)

    first = in_thread(lambda: work_and_idle("alice"))
    assert in_thread(lambda: work_and_idle("bob")) == first  # the one connection, given back at idle
    assert in_thread(lambda: work_and_end("carol")) == first
    assert in_thread(lambda: work_and_idle("lena")) == first  # given back when the thread ended
    assert projects(scoped.dsn) == []  # what the ended thread left open was rolled back
    assert _pids_of(scoped.dsn) == {first}


def test_an_exhausted_pool_is_a_clear_error_after_its_timeout(scoped: People) -> None:
    manager = SessionManager(scoped.dsn, pool_size=1, pool_timeout=0.5)
    mine = manager.create_session("alice", password("alice"))
    mine.factory.new_object("Project", name="holding the only connection")
    with pytest.raises(PoolExhausted, match="all 1 connections of the pool.*0.5 s.*pool_size"):
        in_thread(lambda: manager.create_session("bob", password("bob")))
    assert not mine.is_idle()
    mine.commit_transaction()
    assert projects(scoped.dsn) == [("holding the only connection", "alice")]


# -- fork ------------------------------------------------------------------------------------------------


def test_a_fork_forgets_every_threads_session_and_leaves_the_parents_work_intact(scoped: People) -> None:
    mine = login(scoped, "alice")
    mine.factory.new_object("Project", name="alice before the fork")
    ready, forked = threading.Event(), threading.Event()

    def other() -> None:
        theirs = login(scoped, "bob")
        theirs.factory.new_object("Project", name="bob before the fork")
        ready.set()
        assert forked.wait(timeout=120)
        theirs.commit_transaction()
        Session.idle()

    thread = threading.Thread(target=other, name="other")
    thread.start()
    assert ready.wait(timeout=120)
    pid = os.fork()
    if pid == 0:  # the child: nothing of either thread's session; logs in on a connection of its own
        code = 1
        try:
            seen = [Session.has_instance()]
            seen.append(in_thread(Session.has_instance))
            child = SessionManager().reattach()
            with child.transaction():
                child.factory.new_object("Project", name="the child's")
            code = 0 if seen == [False, False] and child.user_name == "alice" else 2
        finally:
            os._exit(code)
    forked.set()
    _, status = os.waitpid(pid, 0)
    thread.join(timeout=120)
    assert os.waitstatus_to_exitcode(status) == 0
    mine.commit_transaction()
    assert projects(scoped.dsn) == [("alice before the fork", "alice"), ("bob before the fork", "bob"),
                                    ("the child's", "alice")]


# -- asyncio ---------------------------------------------------------------------------------------------


def test_async_code_runs_each_unit_of_work_in_a_worker_thread(scoped: People) -> None:
    """The pattern the README shows: ``asyncio.to_thread`` per unit of work, in thread scope."""
    keys = {}
    for name in ("alice", "bob", "carol"):
        keys[name] = login(scoped, name).session_key
        Session.idle()

    def unit_of_work(key: str, n: int) -> str | None:
        session = SessionManager(scoped.dsn).create_session(key=key)
        try:
            with session.transaction():
                session.factory.new_object("Project", name=f"request {n}")
            return session.user_name
        finally:
            Session.idle()

    async def handle(name: str, n: int) -> tuple[str, str | None]:
        return name, await asyncio.to_thread(unit_of_work, keys[name], n)

    async def main() -> list[tuple[str, str | None]]:
        return await asyncio.gather(*(handle(name, n) for n, name in enumerate(["alice", "bob", "carol"] * 4)))

    results = asyncio.run(main())
    assert all(name == user for name, user in results)
    assert projects(scoped.dsn) == sorted((f"request {n}", name) for n, name in
                                          enumerate(["alice", "bob", "carol"] * 4))
    wait_for("no connection left in a transaction",
             lambda: not query(scoped.dsn, "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                                           "AND state LIKE 'idle in transaction%%'"))
