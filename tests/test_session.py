"""The Session lifecycle: singleton, idle, delete, transactions, deferred tasks, state, temp files."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from ome_session import Session, SessionManager
from ome_session.errors import (
    NoSessionError,
    SessionClosedError,
    SessionError,
    SessionIdleError,
    TransactionLost,
)
from tests.helpers import People, backend_pid, login, query, wait_for


def test_session_cannot_be_constructed_directly() -> None:
    with pytest.raises(SessionError, match="SessionManager"):
        Session()


def test_instance_without_a_session_names_the_caller() -> None:
    def some_worker_function() -> None:
        Session.instance()

    with pytest.raises(NoSessionError, match="some_worker_function"):
        some_worker_function()
    assert not Session.has_instance()


def test_after_idle_the_factory_refuses_until_the_next_login(people: People) -> None:
    session = login(people)
    key = session.session_key
    Session.idle()
    assert Session.instance() is session
    with pytest.raises(SessionIdleError):
        session.factory.find_objects("Project")
    with pytest.raises(SessionIdleError):
        session.factory.obtain_dbh()
    SessionManager(people.dsn).create_session(key=key)
    assert session.factory.find_objects("Project") == []


def test_idle_rolls_back_and_keeps_the_connection(people: People) -> None:
    session = login(people)
    backend = backend_pid(session, ask=True)
    session.factory.new_object("Project", name="never committed")
    Session.idle()
    assert query(people.dsn, "SELECT count(*) FROM projects") == [(0,)]
    assert query(people.dsn, "SELECT state FROM pg_stat_activity WHERE pid = %s", backend) == [("idle",)]
    SessionManager(people.dsn).create_session(key=session.session_key)
    assert backend_pid(session, ask=True) == backend


def test_a_rolled_back_object_is_gone_and_not_cached(people: People) -> None:
    session = login(people)
    project = session.factory.new_object("Project", name="temporary")
    session.rollback_transaction()
    assert session.factory.load_object("Project", project.id) is None
    assert session.factory.find_objects("Project") == []


def test_transaction_commits_on_success_and_rolls_back_on_error(people: People) -> None:
    session = login(people)
    with session.transaction():
        session.factory.new_object("Project", name="kept")
    with pytest.raises(RuntimeError), session.transaction():
        session.factory.new_object("Project", name="dropped")
        raise RuntimeError("boom")
    assert [p.name for p in session.factory.find_objects("Project")] == ["kept"]
    assert query(people.dsn, "SELECT count(*) FROM projects") == [(1,)]


def test_nested_transaction_is_a_savepoint(people: People) -> None:
    session = login(people)
    with session.transaction():
        session.factory.new_object("Project", name="outer")
        with pytest.raises(ValueError), session.transaction():
            session.factory.new_object("Project", name="inner")
            raise ValueError("inner fails")
        with session.transaction():
            session.factory.new_object("Project", name="inner ok")
    names = sorted(p.name for p in session.factory.find_objects("Project"))
    assert names == ["inner ok", "outer"]


def test_deferred_tasks_run_at_idle_and_a_failing_one_does_not_stop_idle(people: People) -> None:
    session = login(people)
    ran: list[str] = []

    def failing() -> None:
        raise RuntimeError("deferred failure")

    session.defer(lambda: ran.append("first"))
    session.defer(failing)
    session.defer(lambda: ran.append(session.factory.new_object("Project", name="by task").name))
    Session.idle()
    assert ran == ["first", "by task"]
    assert session.is_idle()
    assert query(people.dsn, "SELECT count(*) FROM projects") == [(0,)]  # tasks' uncommitted work rolled back


def test_delete_instance_warns_unless_forced_and_closes(people: People) -> None:
    session = login(people)
    backend = backend_pid(session)
    session.commit_transaction()
    with pytest.warns(UserWarning):
        Session.delete_instance()
    assert not Session.has_instance()
    wait_for("the closed session's backend to end",
             lambda: query(people.dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", backend) == [(0,)])
    login(people)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Session.delete_instance(force=True)
    Session.delete_instance(force=True)  # no session: nothing happens


def _other_connections(dsn: str) -> int:
    """Connections to the database other than the one asking, counted by the server."""
    rows = query(dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND pid <> pg_backend_pid()")
    return int(rows[0][0])


def test_a_session_kept_after_delete_instance_is_closed_and_never_reconnects(people: People) -> None:
    session = login(people)
    key = session.session_key
    Session.delete_instance(force=True)
    wait_for("the closed session's connection to end", lambda: _other_connections(people.dsn) == 0)
    assert session.closed and session.is_idle()
    for use in (session.keep_alive, lambda: session.factory.find_objects("Project"), session.commit_transaction,
                lambda: session.transaction().__enter__(), lambda: session.configuration,
                lambda: session.get_temporary_filename(), lambda: session.defer(print), lambda: session.set_group("lab_a")):
        with pytest.raises(SessionClosedError, match="closed"):
            use()
    assert _other_connections(people.dsn) == 0  # nothing opened a connection again
    assert session.session_key == key  # what it was stays readable
    assert query(people.dsn, "SELECT closed_at IS NULL FROM ome_sessions") == [(True,)]  # the key was not revoked


def test_a_logged_out_session_refuses_to_be_logged_out_or_used_again(people: People) -> None:
    session = login(people)
    SessionManager(people.dsn).logout(session)
    assert session.closed and not Session.has_instance()
    with pytest.raises(SessionClosedError):
        SessionManager(people.dsn).logout(session)
    with pytest.raises(SessionClosedError):
        session.keep_alive()


@pytest.mark.parametrize("end", ["commit_transaction", "rollback_transaction"])
@pytest.mark.parametrize("where", ["session", "factory"])
def test_ending_the_transaction_by_hand_inside_a_transaction_block_is_refused(people: People, end: str,
                                                                               where: str) -> None:
    session = login(people)
    target = session if where == "session" else session.factory
    with session.transaction():
        session.factory.new_object("Project", name="outer")
        with pytest.raises(SessionError, match="transaction"):
            getattr(target, end)()  # in the outermost block
        with session.transaction():
            session.factory.new_object("Project", name="inner")
            with pytest.raises(SessionError, match="savepoint"):
                getattr(target, end)()  # in a nested one
        assert query(people.dsn, "SELECT count(*) FROM projects") == [(0,)]  # nothing was committed early
    assert sorted(n for (n,) in query(people.dsn, "SELECT name FROM projects")) == ["inner", "outer"]
    getattr(target, end)()  # outside every block it is the caller's to end


def test_objects_of_a_transaction_lost_with_its_connection_are_not_served_from_memory(people: People) -> None:
    session = login(people)
    project = session.factory.new_object("Project", name="never committed")
    query(people.dsn, "SELECT pg_terminate_backend(%s)", backend_pid(session))
    with pytest.raises(TransactionLost):
        session.factory.find_objects("Project")
    assert session.factory.load_object("Project", project.id) is None  # read again, on a new connection
    assert query(people.dsn, "SELECT count(*) FROM projects") == [(0,)]


def test_forget_instance_drops_the_session_without_closing(people: People) -> None:
    session = login(people)
    dbh = session.factory.obtain_dbh()  # held, as a caller of obtain_dbh() would
    backend = backend_pid(dbh, ask=True)
    Session.forget_instance()
    assert not Session.has_instance()
    assert query(people.dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", backend) == [(1,)]
    assert session.closed  # and the forgotten object refuses from now on
    with pytest.raises(SessionClosedError):
        session.factory.find_objects("Project")


def test_project_and_dataset_persist_across_logins(people: People) -> None:
    session = login(people)
    project = session.factory.new_object("Project", name="current")
    dataset = session.factory.new_object("Dataset", name="current data")
    session.project = project
    session.dataset = dataset
    session.commit_transaction()
    SessionManager(people.dsn).logout()
    again = login(people)
    assert again.project.name == "current"
    assert again.dataset.name == "current data"


def test_new_objects_belong_to_the_session_user_and_group(people: People) -> None:
    session = login(people, "carol")
    project = session.factory.new_object("Project", name="mine")
    assert project.owner_id == people.ids["carol"]
    assert project.group_id == people.groups["lab_b"]


def test_temporary_files_are_created_private_and_finished(people: People) -> None:
    session = login(people)
    path = session.get_temporary_filename("import", "tif")
    scratch = session.get_scratch_dir("unpack", "d")
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600
    assert scratch.is_dir() and (scratch.stat().st_mode & 0o777) == 0o700
    (scratch / "inner.txt").write_text("x")
    session.finish_temporary_file(path)
    session.finish_temporary_file(scratch)
    assert not path.exists() and not scratch.exists()


def test_finishing_a_file_this_process_did_not_create_is_refused(people: People, tmp_path: Path) -> None:
    session = login(people)
    before = Path("/etc/passwd").read_bytes()
    with pytest.raises(ValueError):
        session.finish_temporary_file("/etc/passwd")
    outsider = tmp_path / "someone-elses.txt"
    outsider.write_text("keep me")
    with pytest.raises(ValueError):
        session.finish_temporary_file(outsider)
    assert Path("/etc/passwd").read_bytes() == before
    assert outsider.read_text() == "keep me"


@pytest.mark.parametrize("prog,ext", [("a/b", "txt"), ("..", "txt"), ("x", "../etc"), ("x\x00", "t"), ("ok", "a/b")])
def test_temporary_names_with_paths_are_rejected(people: People, prog: str, ext: str) -> None:
    session = login(people)
    root = session._temp().root
    before = sorted(root.rglob("*")) if root.exists() else []
    with pytest.raises(ValueError):
        session.get_temporary_filename(prog, ext)
    assert (sorted(root.rglob("*")) if root.exists() else []) == before


def test_idle_finishes_leftover_temporary_files_with_a_warning(people: People) -> None:
    session = login(people)
    path = session.get_temporary_filename()
    with pytest.warns(UserWarning, match="left unfinished"):
        Session.idle()
    assert not path.exists()


def test_temporary_file_context_managers_clean_up_on_error(people: People) -> None:
    session = login(people)
    with pytest.raises(KeyError), session.temporary_file("ctx", "txt") as path:
        path.write_text("data")
        raise KeyError("fail")
    assert not path.exists()
    with session.scratch_dir() as scratch:
        (scratch / "f").write_text("x")
    assert not scratch.exists()


def test_the_process_directory_of_a_dead_process_is_reaped_at_login(people: People, tmp_path: Path) -> None:
    root = tmp_path / "tmp" / str(os.getuid())  # this account's, in the configured tmp_dir
    root.mkdir(mode=0o700, parents=True)
    pid = os.fork()
    if pid == 0:  # a child that dies leaving a directory behind
        from ome_session._tempfiles import TempFiles
        TempFiles(root).new_file("orphan", "txt")
        os._exit(0)
    os.waitpid(pid, 0)
    assert [p for p in root.iterdir() if p.name.startswith(f"{pid}-")]
    Session._reaped_roots.discard(root)
    login(people)
    assert not [p for p in root.iterdir() if p.name.startswith(f"{pid}-")]


def test_interpreter_exit_rolls_back_and_closes_cleanly(people: People) -> None:
    code = (
        "import sys; from ome_session import SessionManager\n"
        "s = SessionManager(sys.argv[1]).create_session('alice', 'alice-password')\n"
        "s.factory.new_object('Project', name='left open')\n"
        "print(s.factory.obtain_dbh().info.backend_pid)\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code, people.dsn], capture_output=True, text=True, check=True)
    backend = int(done.stdout.strip())
    assert query(people.dsn, "SELECT count(*) FROM projects") == [(0,)]
    assert "Traceback" not in done.stderr
    # The backend ends when the server has read the client's goodbye.
    wait_for("the exited process's backend to end",
             lambda: query(people.dsn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", backend) == [(0,)])
