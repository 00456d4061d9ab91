"""Threads and asyncio tasks in process scope: a unit of work belongs to the thread (and task) that
opened it; any other gets a clear error naming the owner, and nothing of the owner's work is lost,
switched to another user or shared. What the server holds is read on a connection of its own."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from ome_session import Session, SessionManager
from ome_session.errors import SessionError, SessionIdleError
from tests.helpers import REPO, People, backend_pid, command_env, login, password, query


def in_thread(fn: Callable[[], Any], name: str = "intruder") -> BaseException | None:
    """Run ``fn`` in a new thread of that name to its end; what it raised, if anything."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001  (handed to the test)
            raised.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), f"{name} hung"
    return raised[0] if raised else None


def refused_naming(exc: BaseException | None, owner: str) -> str:
    """The refusal's message, after checking it is one (a SessionError naming ``owner``)."""
    assert type(exc) is SessionError, f"expected a refusal, got {exc!r}"
    assert f"belongs to thread '{owner}'" in str(exc), str(exc)
    return str(exc)


def projects(dsn: str) -> list[tuple[str, str]]:
    """Every project and its owner's name, as the server has them (committed only)."""
    return [tuple(row) for row in query(dsn, "SELECT p.name, e.ome_name FROM projects p "
                                             "JOIN experimenters e ON e.id = p.owner_id ORDER BY p.name")]


def open_sessions_of(dsn: str, name: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM ome_sessions s JOIN experimenters e ON e.id = s.experimenter_id "
                          "WHERE e.ome_name = %s AND s.closed_at IS NULL", name)[0][0])


# -- the reproductions -------------------------------------------------------------------------------


def test_a_login_from_another_thread_during_a_transaction_is_refused_and_loses_nothing(people: People) -> None:
    session = login(people, "alice")
    with session.transaction():
        session.factory.new_object("Project", name="first")
        refusal = in_thread(lambda: SessionManager(people.dsn).create_session("bob", password("bob")))
        session.factory.new_object("Project", name="second")
    message = refused_naming(refusal, "MainThread")
    assert "intruder" in message and "log in" in message
    assert session.user_name == "alice" and session.factory.owner_id == people.ids["alice"]
    assert projects(people.dsn) == [("first", "alice"), ("second", "alice")]
    assert open_sessions_of(people.dsn, "bob") == 0  # refused before anything was sent


def test_a_transaction_of_another_thread_is_refused_and_cannot_end_the_owners(people: People) -> None:
    session = login(people, "alice")
    pid = backend_pid(session)
    with pytest.raises(RuntimeError, match="changed my mind"), session.transaction():
        session.factory.new_object("Project", name="half done")

        def second_block() -> None:
            with session.transaction():
                session.factory.new_object("Project", name="from the other thread")

        refused_naming(in_thread(second_block), "MainThread")
        refused_naming(in_thread(session.commit_transaction), "MainThread")
        refused_naming(in_thread(session.factory.rollback_transaction), "MainThread")
        assert projects(people.dsn) == []  # nothing of the owner's was committed by the others
        assert query(people.dsn, "SELECT state FROM pg_stat_activity WHERE pid = %s", pid) == [("idle in transaction",)]
        raise RuntimeError("changed my mind")
    assert projects(people.dsn) == []
    with session.transaction():
        session.factory.new_object("Project", name="kept")
    assert projects(people.dsn) == [("kept", "alice")]


def test_the_sessions_factory_objects_and_transitions_are_refused_to_another_thread(people: People) -> None:
    session = login(people, "alice")
    project = session.factory.new_object("Project", name="draft")
    session.commit_transaction()
    session.factory.new_object("Project", name="uncommitted")
    project.name = "renamed by the intruder"
    for use in (lambda: session.factory.find_objects("Project"), project.store, session.keep_alive,
                lambda: session.configuration, session.get_temporary_filename, Session.idle,
                lambda: SessionManager(people.dsn).logout(), lambda: Session.delete_instance(force=True),
                Session.forget_instance, lambda: list(session.factory.iter_objects("Project"))):
        refused_naming(in_thread(use), "MainThread")
    assert Session.instance() is session and not session.is_idle()
    session.commit_transaction()
    assert projects(people.dsn) == [("draft", "alice"), ("uncommitted", "alice")]
    assert open_sessions_of(people.dsn, "alice") == 1


def test_one_thread_after_another_each_resuming_working_and_idling_just_works(people: People) -> None:
    keys = {}
    for name in ("alice", "bob"):
        keys[name] = login(people, name).session_key
        Session.idle()

    def request(name: str) -> None:
        session = SessionManager(people.dsn).create_session(key=keys[name])
        with session.transaction():
            session.factory.new_object("Project", name=f"{name} {threading.current_thread().name}")
        Session.idle()

    for turn in range(3):
        for name in ("alice", "bob"):
            assert in_thread(lambda name=name: request(name), name=f"worker-{turn}") is None  # type: ignore[misc]
    assert projects(people.dsn) == sorted((f"{name} worker-{turn}", name) for turn in range(3)
                                          for name in ("alice", "bob"))


def test_a_unit_of_work_left_open_by_a_thread_that_ended_is_nobodys(people: People) -> None:
    def forgets_to_idle() -> None:
        session = login(people, "bob")
        session.factory.new_object("Project", name="never committed")

    assert in_thread(forgets_to_idle, name="careless") is None
    with pytest.raises(SessionError, match="'careless'.*ended without Session.idle"):
        Session.instance().factory.find_objects("Project")  # not as bob, from here
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the takeover is logged, not warned
        session = login(people, "alice")
    assert session.user_name == "alice" and session.factory.find_objects("Project") == []
    assert projects(people.dsn) == []


def test_concurrent_logins_each_get_the_session_or_a_clear_refusal(people: People) -> None:
    names = ["alice", "bob", "carol", "lena"] * 2
    start = threading.Barrier(len(names))
    worked: list[tuple[str, str | None, bool]] = []
    refusals: list[SessionError] = []
    errors: list[BaseException] = []

    def log_in(name: str) -> None:
        start.wait()
        try:
            session = login(people, name)
            user = session.user
            worked.append((name, user.ome_name if user else None, session.factory.owner_id == people.ids[name]))
            Session.idle()
        except SessionError as exc:
            refusals.append(exc)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=log_in, args=(n,), name=f"login-{i}") for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert worked and all(name == seen and right_owner for name, seen, right_owner in worked)
    assert all(type(exc) is SessionError and "belongs to thread 'login-" in str(exc) for exc in refusals)
    assert len(worked) + len(refusals) == len(names)


def test_a_server_side_cursor_is_not_read_on_after_its_unit_of_work_ended(people: People) -> None:
    session = login(people, "alice")
    for i in range(3):
        session.factory.new_object("Project", name=f"p{i}")
    session.commit_transaction()
    rows = session.factory.iter_objects("Project")
    assert next(rows).name == "p0"
    Session.idle()
    with pytest.raises(SessionIdleError):
        list(rows)


def test_idle_or_a_login_inside_a_transaction_block_commits_nothing_of_it(people: People) -> None:
    session = login(people, "alice")
    with pytest.raises(SessionError, match="ended inside"), session.transaction():
        session.factory.new_object("Project", name="lost at idle")
        Session.idle()
    login(people, "bob")
    assert projects(people.dsn) == []


# -- asyncio -------------------------------------------------------------------------------------------


def test_a_task_cannot_log_in_or_idle_while_another_tasks_unit_of_work_is_open(people: People) -> None:
    seen: dict[str, BaseException] = {}

    async def owner(paused: asyncio.Event, resume: asyncio.Event) -> None:
        session = login(people, "alice")
        with session.transaction():
            session.factory.new_object("Project", name="before the pause")
            paused.set()
            await resume.wait()
            session.factory.new_object("Project", name="after the pause")
        Session.idle()

    async def intruder(paused: asyncio.Event, resume: asyncio.Event) -> None:
        await paused.wait()
        for name, use in (("login", lambda: login(people, "bob")), ("idle", Session.idle),
                          ("use", lambda: Session.instance().factory.find_objects("Project"))):
            try:
                use()
            except BaseException as exc:  # noqa: BLE001
                seen[name] = exc
        resume.set()

    async def main() -> None:
        paused, resume = asyncio.Event(), asyncio.Event()
        await asyncio.gather(asyncio.create_task(owner(paused, resume), name="owner-task"),
                             asyncio.create_task(intruder(paused, resume), name="intruder-task"))

    asyncio.run(main())
    assert set(seen) == {"login", "idle", "use"}
    for exc in seen.values():
        assert type(exc) is SessionError and "task 'owner-task'" in str(exc) and "task 'intruder-task'" in str(exc)
    assert projects(people.dsn) == [("after the pause", "alice"), ("before the pause", "alice")]
    assert open_sessions_of(people.dsn, "bob") == 0


def test_a_block_opened_by_a_task_belongs_to_it_even_if_the_login_was_outside_any_task(people: People) -> None:
    session = login(people, "alice")
    refused: list[BaseException] = []

    async def in_block(inside: asyncio.Event, done: asyncio.Event) -> None:
        with session.transaction():
            session.factory.new_object("Project", name="in the block")
            inside.set()
            await done.wait()

    async def other(inside: asyncio.Event, done: asyncio.Event) -> None:
        await inside.wait()
        try:
            session.factory.new_object("Project", name="slipped in")
        except SessionError as exc:
            refused.append(exc)
        done.set()

    async def main() -> None:
        inside, done = asyncio.Event(), asyncio.Event()
        await asyncio.gather(asyncio.create_task(in_block(inside, done), name="block-task"),
                             asyncio.create_task(other(inside, done), name="other-task"))

    asyncio.run(main())
    assert len(refused) == 1 and "task 'block-task'" in str(refused[0])
    assert projects(people.dsn) == [("in the block", "alice")]


# -- many threads at once ------------------------------------------------------------------------------


def test_eight_threads_mixing_every_operation_get_only_clear_errors_and_lose_nothing(people: People) -> None:
    """The stress run is a program of its own (``tests/thread_stress.py``): a crash (a signal) or a
    hang (its watchdog ends it, with every thread's stack) fails this test instead of the run."""
    keys = {}
    for name in ("alice", "bob", "carol", "lena"):
        keys[name] = login(people, name).session_key
        Session.idle()
    Session.delete_instance(force=True)
    done = subprocess.run([sys.executable, "-m", "tests.thread_stress", people.dsn, json.dumps(keys)],
                          capture_output=True, text=True, env=command_env(), cwd=REPO, timeout=600, check=False)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["unexpected"] == [], report["unexpected"]
    assert report["operations"] == 8 * report["per_thread"]
    assert report["counts"]["committed"] > 0 and report["counts"]["refused"] > 0, report["counts"]
    # Every block that committed is there, under the user it was written as; nothing else is.
    assert projects(people.dsn) == sorted((name, owner) for name, owner in report["committed"].items())
