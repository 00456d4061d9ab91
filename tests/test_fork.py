"""Fork safety, with real forks and a real server.

The parent logs in and leaves a transaction open with an uncommitted row; children are forked
and do what children do (exit in every way there is, close what they inherited, log in again).
Afterwards the parent must be on the same backend, still in its transaction, and its commit must
land exactly one row, counted from a separate connection.

Children that must exit *normally* (``sys.exit``: atexit handlers and interpreter teardown) are
forked from a separate interpreter running this module as a script (``python -m tests.test_fork``),
so that a normal exit does not mean running the rest of pytest in the child.
"""

from __future__ import annotations

import ctypes
import gc
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest
from psycopg import pq

from ome_session import Session, SessionManager, _connection
from ome_session import session as session_module
from ome_session.errors import NoSessionError, SessionIdleError
from tests.helpers import People, backend_pid, login, query

ROOT = Path(__file__).resolve().parent.parent
PARENT_ROW = "row of the parent's open transaction"


# -- helpers -------------------------------------------------------------------------------------

def _open_transaction(session: Session) -> tuple[psycopg.Connection[Any], int]:
    """Leave an uncommitted INSERT open in the session's transaction; returns (dbh, backend pid)."""
    session.factory.new_object("Project", name=PARENT_ROW)
    dbh = session.factory.obtain_dbh()
    return dbh, backend_pid(dbh, ask=True)


def _state(dsn: str, backend: int) -> str | None:
    """The backend's state in pg_stat_activity, read on a separate connection; None when it is gone."""
    rows = query(dsn, "SELECT state FROM pg_stat_activity WHERE pid = %s", backend)
    return rows[0][0] if rows else None


def _parent_rows(dsn: str) -> int:
    """How many rows of the parent's transaction are committed, counted on a separate connection."""
    return int(query(dsn, "SELECT count(*) FROM projects WHERE name = %s", PARENT_ROW)[0][0])


def _assert_parent_intact(dsn: str, session: Session, dbh: psycopg.Connection[Any], backend: int) -> None:
    """Same backend, still in the transaction (server side too), and the commit lands one row."""
    assert _state(dsn, backend) == "idle in transaction"
    assert backend_pid(dbh, ask=True) == backend
    assert dbh.info.transaction_status == pq.TransactionStatus.INTRANS
    assert _parent_rows(dsn) == 0  # not committed yet
    session.commit_transaction()
    assert _parent_rows(dsn) == 1
    assert _state(dsn, backend) == "idle"


def _in_child(fn: Callable[[], Any], fork: Callable[[], int] = os.fork) -> Any:
    """Run ``fn`` in a forked child that ends with ``os._exit``; return its JSON-able result.

    An exception in the child is raised here as an AssertionError carrying its text.
    """
    read_end, write_end = os.pipe()
    pid = fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                report = {"result": fn()}
            except BaseException as exc:
                report = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(report, default=str).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        data = reader.read()
    os.waitpid(pid, 0)
    report = json.loads(data)
    if "error" in report:
        raise AssertionError(f"in the child: {report['error']}")
    return report["result"]


# -- the child's view --------------------------------------------------------------------------

def test_child_has_no_session_and_instance_raises(people: People) -> None:
    login(people.dsn)

    def child() -> dict[str, Any]:
        try:
            Session.instance()
            raised = ""
        except NoSessionError as exc:
            raised = str(exc)
        return {"has_instance": Session.has_instance(), "raised": raised}

    seen = _in_child(child)
    assert seen["has_instance"] is False
    assert "no session in this process" in seen["raised"]
    assert Session.has_instance()


def test_child_reattach_sees_the_same_user_on_another_backend(people: People) -> None:
    session = login(people.dsn, "bob")
    dbh, backend = _open_transaction(session)

    def child() -> dict[str, Any]:
        again = SessionManager().reattach()  # no DSN given: the parent's database is used
        return {"user": again.user_name, "backend": backend_pid(again.factory.obtain_dbh(), ask=True),
                "key_matches": again.session_key == session.session_key}

    seen = _in_child(child)
    assert seen["user"] == "bob"
    assert seen["key_matches"]
    assert seen["backend"] != backend
    _assert_parent_intact(people.dsn, session, dbh, backend)


def test_inherited_session_objects_refuse_to_work_in_the_child(people: People) -> None:
    session = login(people.dsn)
    dbh, backend = _open_transaction(session)

    def child() -> list[str]:
        refused = []
        for attempt in (session.factory.obtain_dbh, lambda: session.factory.count_objects("Project"),
                        session.commit_transaction, session.keep_alive):
            try:
                attempt()
            except SessionIdleError:
                refused.append("refused")
        return refused

    assert _in_child(child) == ["refused"] * 4
    _assert_parent_intact(people.dsn, session, dbh, backend)


# -- close paths in the child ------------------------------------------------------------------

@pytest.mark.parametrize("close", [
    "delete_instance", "forget_instance", "factory_close", "dbh_close", "dbh_with_block", "parked_dropped",
])
def test_closing_inherited_objects_in_the_child_keeps_the_parent_backend(people: People, close: str) -> None:
    session = login(people.dsn)
    dbh, backend = _open_transaction(session)

    def child() -> None:
        if close == "delete_instance":
            Session.delete_instance(force=True)
        elif close == "forget_instance":
            Session.forget_instance()
        elif close == "factory_close":
            session.factory.close()
        elif close == "dbh_close":
            dbh.close()  # psycopg itself, no pid check: the socket is /dev/null by now
        elif close == "dbh_with_block":
            try:
                with dbh:  # leaving it commits, then closes: both must miss the parent's backend
                    pass
            except psycopg.Error:
                pass  # /dev/null never answers the COMMIT
        else:  # what interpreter teardown does to the parked connection (our references stay)
            _connection._INHERITED.clear()
            gc.collect()

    _in_child(child)
    _assert_parent_intact(people.dsn, session, dbh, backend)


def test_leaving_a_transaction_block_in_the_child_does_not_commit_the_parents_work(people: People) -> None:
    session = login(people.dsn)
    with session.transaction():
        _, backend = _open_transaction(session)

        def child() -> str:
            try:
                with session.transaction():
                    pass
            except SessionIdleError:
                return "refused"
            return "committed"

        assert _in_child(child) == "refused"
        assert _state(people.dsn, backend) == "idle in transaction"
        assert _parent_rows(people.dsn) == 0
    assert _parent_rows(people.dsn) == 1


def test_a_factory_outside_the_session_gets_its_own_connection_in_the_child(people: People) -> None:
    """A Factory the at-fork hook cannot reach still never talks on the parent's socket."""
    from ome_session import Factory

    session = login(people.dsn)
    dbh, backend = _open_transaction(session)
    loose = Factory(people.dsn)
    loose_backend = backend_pid(loose.obtain_dbh(), ask=True)
    loose.obtain_dbh().execute("SELECT 1")  # leaves a transaction open on the loose connection too

    def child() -> int:
        count = loose.count_objects("Project")
        assert count == 0  # the parent's row is not committed
        loose.rollback_transaction()
        loose.close()
        return backend_pid(Factory(people.dsn).obtain_dbh(), ask=True)

    assert _in_child(child) not in (backend, loose_backend)
    assert _state(people.dsn, loose_backend) == "idle in transaction"
    assert backend_pid(loose.obtain_dbh(), ask=True) == loose_backend
    loose.close()
    _assert_parent_intact(people.dsn, session, dbh, backend)


def test_child_never_touches_the_parents_temporary_files(people: People) -> None:
    session = login(people.dsn)
    kept = session.get_temporary_filename("parent", "txt")
    read_end, write_end = os.pipe()
    pid = -1
    try:
        with session.scratch_dir("parent", "d") as scratch:
            (scratch / "inner").write_text("the parent's")
            pid = os.fork()
            if pid == 0:  # the child finishes what it can reach, then leaves the block too
                try:
                    session.finish_temporary_file(kept)
                    refused = False
                except ValueError:
                    refused = True
                own = session.get_temporary_filename("child", "txt")
                SessionManager().reattach()
                Session.idle()  # finishes the child's own leftovers only
                Session.delete_instance(force=True)
                os.write(write_end, json.dumps({"refused": refused, "own": str(own)}).encode())
    finally:
        if pid == 0:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        seen = json.loads(reader.read())
    os.waitpid(pid, 0)
    assert seen["refused"]
    assert Path(seen["own"]).parent != kept.parent  # a directory of the child's own
    assert kept.exists()
    assert not scratch.exists()  # the parent's block cleaned up, in the parent only
    with pytest.warns(UserWarning, match="left unfinished"):
        Session.idle()  # the parent still owns (and finishes) its file
    assert not kept.exists()


def test_child_leaving_a_scratch_dir_block_leaves_the_directory_to_the_parent(people: People) -> None:
    session = login(people.dsn)
    pid = -1
    try:
        with session.scratch_dir("parent", "d") as scratch:
            (scratch / "inner").write_text("the parent's")
            pid = os.fork()
            if pid > 0:
                os.waitpid(pid, 0)  # the child has left the block and ended
                assert (scratch / "inner").read_text() == "the parent's"
    finally:
        if pid == 0:
            os._exit(0)
    assert not scratch.exists()


# -- many children -----------------------------------------------------------------------------

def test_200_sequential_children_exiting_in_every_way_leave_the_parent_intact(people: People) -> None:
    report = _drive(people.dsn, "sequential", 200)
    assert report["exit_codes"] == {"0": 200}
    assert report["styles"] == sorted(_EXIT_STYLES)
    _assert_driver_parent_intact(people.dsn, report)


def test_16_concurrent_children_released_together_leave_the_parent_intact(people: People) -> None:
    report = _drive(people.dsn, "concurrent", 16)
    assert report["exit_codes"] == {"0": 16}
    _assert_driver_parent_intact(people.dsn, report)


def _assert_driver_parent_intact(dsn: str, report: dict[str, Any]) -> None:
    assert report["backend_after"] == report["backend_before"]
    assert report["state_after_children"] == "idle in transaction"
    assert report["rows_before_commit"] == 0
    assert report["rows_after_commit"] == 1
    assert _parent_rows(dsn) == 1


def _drive(dsn: str, mode: str, count: int) -> dict[str, Any]:
    """Run the fork scenario in a fresh interpreter (see ``_main``); returns its JSON report."""
    done = subprocess.run([sys.executable, "-m", "tests.test_fork", json.dumps([dsn, mode, count])],
                          cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- multiprocessing ---------------------------------------------------------------------------

# "barrier" is set before a pool forks its workers, so that they inherit it: every worker's first
# task waits there until all workers run one, which puts the first tasks on as many workers as
# there are. The rest is each worker's own.
_worker_state: dict[str, Any] = {}


def _spread_first_tasks() -> None:
    if not _worker_state.get("started"):
        _worker_state["started"] = True
        _worker_state["barrier"].wait(timeout=120)


def _task_reattach_and_query(n: int) -> tuple[int, int, str, int]:
    session = SessionManager().reattach()
    _spread_first_tasks()
    dbh = session.factory.obtain_dbh()
    row = dbh.execute("SELECT %s::int * 2", (n,)).fetchone()
    assert row is not None
    return os.getpid(), backend_pid(dbh, ask=True), str(session.user_name), int(row[0])


def test_a_fork_pool_of_8_runs_64_tasks_on_8_backends(people: People) -> None:
    session = login(people.dsn, "carol")
    dbh, backend = _open_transaction(session)
    ctx = multiprocessing.get_context("fork")
    _worker_state["barrier"] = ctx.Barrier(8)
    with ctx.Pool(8) as pool:
        results = pool.map(_task_reattach_and_query, range(64), chunksize=1)
        workers = {pid for pid, *_ in results}
        backends = {(pid, b) for pid, b, *_ in results}
        assert len(workers) == 8
        assert len(backends) == 8  # one connection per worker, reused by its later tasks
        assert len({b for _, b in backends}) == 8
        assert backend not in {b for _, b in backends}
        assert all(_state(people.dsn, b) is not None for _, b in backends)
    assert {user for _, _, user, _ in results} == {"carol"}
    assert [doubled for *_, doubled in results] == [2 * n for n in range(64)]
    _assert_parent_intact(people.dsn, session, dbh, backend)


def celery_style_worker_init() -> None:
    """A worker process starts: attach it to the parent's session on a connection of its own.

    With Celery this is a ``worker_process_init`` handler; with ``multiprocessing`` the pool's
    ``initializer``. Each task then resumes it (``reattach()``, one round trip after an idle)
    before running and idles it afterwards (Celery: ``task_prerun`` / ``task_postrun``).
    """
    session = SessionManager().reattach()
    _worker_state["init_backend"] = backend_pid(session.factory.obtain_dbh(), ask=True)
    Session.idle()


def _celery_style_task(n: int) -> dict[str, Any]:
    session = SessionManager().reattach()  # task_prerun
    try:
        _spread_first_tasks()
        dbh = session.factory.obtain_dbh()
        session.factory.count_objects("Project")  # opens a transaction, which idle() rolls back
        return {"worker": os.getpid(), "backend": backend_pid(dbh, ask=True),
                "init_backend": _worker_state["init_backend"], "user": session.user_name,
                "in_transaction": session.factory.in_transaction}
    finally:
        Session.idle()  # task_postrun


def test_celery_style_worker_init_attaches_each_worker_once_and_tasks_idle(people: People) -> None:
    session = login(people.dsn, "lena")
    dbh, backend = _open_transaction(session)
    ctx = multiprocessing.get_context("fork")
    _worker_state["barrier"] = ctx.Barrier(4)
    with ctx.Pool(4, initializer=celery_style_worker_init) as pool:
        results = pool.map(_celery_style_task, range(32), chunksize=1)
        backends = {r["backend"] for r in results}
        assert len({r["worker"] for r in results}) == 4
        assert len(backends) == 4 and backend not in backends
        assert all(r["backend"] == r["init_backend"] for r in results)  # the worker's one connection
        assert all(r["in_transaction"] for r in results)
        assert {_state(people.dsn, b) for b in backends} == {"idle"}  # every task idled its worker
    assert {r["user"] for r in results} == {"lena"}
    _assert_parent_intact(people.dsn, session, dbh, backend)


# -- other kinds of children -------------------------------------------------------------------

def test_subprocess_with_preexec_fn_leaves_the_parent_intact(people: People, tmp_path: Path) -> None:
    session = login(people.dsn)
    dbh, backend = _open_transaction(session)
    seen = tmp_path / "seen-by-preexec"

    def preexec() -> None:  # runs in the forked child, after the at-fork hook, before exec
        seen.write_text(str(Session.has_instance()))

    subprocess.run(["true"], preexec_fn=preexec, check=True)
    assert seen.read_text() == "False"
    _assert_parent_intact(people.dsn, session, dbh, backend)


def test_a_fork_from_c_is_caught_when_the_child_first_asks_for_the_session(people: People) -> None:
    """fork() called from C (as uWSGI does) runs no at-fork hook: the pid check catches it."""
    session = login(people.dsn)
    dbh, backend = _open_transaction(session)
    c_fork = ctypes.PyDLL(None).fork  # PyDLL: the GIL stays held across the call

    def child() -> dict[str, Any]:
        has = Session.has_instance()
        again = SessionManager().reattach()
        return {"has_instance": has, "user": again.user_name,
                "backend": backend_pid(again.factory.obtain_dbh(), ask=True)}

    seen = _in_child(child, fork=c_fork)
    assert seen["has_instance"] is False
    assert seen["user"] == "alice"
    assert seen["backend"] != backend
    _assert_parent_intact(people.dsn, session, dbh, backend)



def test_a_fork_from_c_while_another_thread_logs_in_leaves_the_child_free_to_log_in(people: People) -> None:
    """A parent's thread in the middle of a login holds the session lock at fork time; that thread
    does not exist in the child, so the child must not wait for it (its login replaces the lock)."""
    session = login(people.dsn)
    dbh, backend = _open_transaction(session)
    c_fork = ctypes.PyDLL(None).fork
    held, release = threading.Event(), threading.Event()

    def mid_login() -> None:
        with session_module._current.lock:  # what a login in progress holds
            held.set()
            release.wait()

    thread = threading.Thread(target=mid_login)
    thread.start()
    held.wait()

    key = session.session_key

    def child() -> str:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not the parent's handler (pytest-timeout's)
        signal.alarm(30)  # a child stuck on the parent's lock dies, and reports nothing
        return SessionManager(people.dsn).create_session(key=key).user_name

    try:
        assert _in_child(child, fork=c_fork) == "alice"
    finally:
        release.set()
        thread.join()
    _assert_parent_intact(people.dsn, session, dbh, backend)


# -- the script side: children that exit normally ------------------------------------------------

# Every way a child can end; the children take them in turn.
_EXIT_STYLES = ("sys_exit", "os_exit", "delete_instance", "forget_instance", "factory_close",
                "dbh_close", "parked_dropped", "reattach")


def _child(style: str, session: Session, dbh: psycopg.Connection[Any], parent_backend: int) -> NoReturn:
    """A forked child: check it has no session, end in ``style``. Exit code 0 means all held."""
    if Session.has_instance():
        os._exit(10)
    try:
        Session.instance()
        os._exit(11)
    except NoSessionError:
        pass
    if style == "os_exit":
        os._exit(0)
    if style == "delete_instance":
        Session.delete_instance(force=True)
    elif style == "factory_close":
        session.factory.close()
    elif style == "dbh_close":
        dbh.close()
    elif style == "forget_instance":
        Session.forget_instance()
    elif style == "parked_dropped":  # unwinding frees the inherited connection before teardown
        _connection._INHERITED.clear()
        gc.collect()
    elif style == "reattach":
        again = SessionManager().reattach()
        if again.user_name != "alice" or backend_pid(again.factory.obtain_dbh(), ask=True) == parent_backend:
            sys.exit(12)
        # left open on purpose: the atexit handler closes the child's own connection
    sys.exit(0)  # unwinds the script's frames, runs atexit handlers, tears the interpreter down


def _main(dsn: str, mode: str, count: int) -> dict[str, Any]:
    session = login(dsn)
    dbh, backend = _open_transaction(session)
    sys.stdout.flush()  # nothing buffered may be written again by the children
    go_read, go_write = os.pipe()
    codes: dict[str, int] = {}
    children = []
    for i in range(count):
        style = _EXIT_STYLES[i % len(_EXIT_STYLES)]
        pid = os.fork()
        if pid == 0:
            os.close(go_write)
            if mode == "concurrent":
                os.read(go_read, 1)  # EOF for all children at once, when the parent closes its end
            _child(style, session, dbh, backend)
        if mode == "sequential":
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            codes[str(code)] = codes.get(str(code), 0) + 1
        else:
            children.append(pid)
    os.close(go_write)  # releases every concurrent child together
    os.close(go_read)
    for pid in children:
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        codes[str(code)] = codes.get(str(code), 0) + 1
    report: dict[str, Any] = {"exit_codes": codes, "styles": sorted(set(_EXIT_STYLES[: min(count, len(_EXIT_STYLES))]))}
    report["backend_before"] = backend
    report["state_after_children"] = _state(dsn, backend)
    report["backend_after"] = backend_pid(dbh, ask=True)
    report["rows_before_commit"] = _parent_rows(dsn)
    session.commit_transaction()
    report["rows_after_commit"] = _parent_rows(dsn)
    return report


if __name__ == "__main__":
    _dsn, _mode, _count = json.loads(sys.argv[1])
    print(json.dumps(_main(_dsn, _mode, int(_count))), flush=True)
