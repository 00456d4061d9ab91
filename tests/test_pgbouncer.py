"""Behind pgbouncer in transaction pooling mode: many clients, few server connections.

Each test starts its own pgbouncer (Debian's ``pgbouncer`` package; ``scripts/install-test-pgbouncer``
installs it) in front of the test cluster's socket, with a private configuration: transaction
pooling and a pool of one to three server connections, so that every client's transactions really
run on server connections other clients used before. pgbouncer hands out server connections
most-recently-used first and opens one only when none is free; the tests that say which server
connection a client gets rely on exactly that. Readiness is pgbouncer's own ``READY=1`` on a
notify socket, not a guess. The module is skipped, with the reason, when pgbouncer is missing (or
fails, when the run requires pgbouncer: see ``helpers.missing``).

With ``prepare_threshold=None`` everything works. With psycopg's default threshold, a statement
executed often enough is prepared on whichever server connection ran it, and a later execution on
another one fails; the two failure tests show the errors a deployment would meet (they need a
pgbouncer without prepared-statement support, or with ``max_prepared_statements = 0``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ome_session import Session, SessionManager
from ome_session._cluster import Cluster
from ome_session.errors import AuthenticationError, DatabaseError, SessionKeyError
from tests.helpers import People, backend_pid, login, missing, query, wait_for

_PGBOUNCER = shutil.which("pgbouncer") or next(
    (path for path in ("/usr/sbin/pgbouncer",) if os.access(path, os.X_OK)), None)
if _PGBOUNCER is None:
    missing("pgbouncer", "pgbouncer is not installed")

PORT = 6432  # only names the socket file, in a directory of its own: nothing else can take it
READY_WITHIN = 30.0  # seconds for pgbouncer to say READY=1; only ever reached when it is broken
# psycopg prepares a statement once it ran more than 5 times (its default prepare_threshold) on
# one connection: a worker resuming this often is well past it.
RESUMES = 8


# -- a private pgbouncer ---------------------------------------------------------------------------

@functools.cache
def _version() -> tuple[int, ...]:
    assert _PGBOUNCER is not None
    out = subprocess.run([_PGBOUNCER, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", out)
    assert found, f"unexpected `pgbouncer --version` output: {out!r}"
    return tuple(int(part or 0) for part in found.groups())


def _prepared_statement_support() -> bool:
    """PgBouncer 1.21 tracks protocol-level prepared statements; psycopg relies on 1.22's fixes."""
    return _version() >= (1, 22)


@dataclass
class Bouncer:
    """One running pgbouncer: where clients connect, and how many server connections it shares."""

    dsn: str
    pool_size: int


class _Running:
    """Starts pgbouncer as the account that runs the cluster (pgbouncer refuses root) and stops it."""

    def __init__(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="ome-session-pgbouncer-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = self._workdir / "pgbouncer.log"

    def start(self, cluster: Cluster, dbname: str, *, pool_size: int, prepared_statements: int) -> Bouncer:
        owner = cluster.socket_dir.stat()  # the server's account can surely reach its socket
        account: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = {"user": owner.st_uid, "group": owner.st_gid, "extra_groups": []}
        settings = {
            "pool_mode": "transaction",
            "listen_addr": "",
            "listen_port": str(PORT),
            "unix_socket_dir": str(self._workdir),
            "auth_type": "trust",
            "auth_file": str(self._workdir / "users.txt"),
            "max_client_conn": "20",
            "default_pool_size": str(pool_size),
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "server_round_robin": "0",
            "query_wait_timeout": "60",  # a client starved of server connections fails, not hangs
            "logfile": str(self.log),
            "log_connections": "0",
            "log_disconnections": "0",
        }
        if _version() >= (1, 21):  # older versions do not know the setting (and prepare nothing)
            settings["max_prepared_statements"] = str(prepared_statements)
        target = make_conninfo(host=str(cluster.socket_dir), port=cluster.port, dbname=dbname)
        lines = ["[databases]", f"{dbname} = {target}", "[pgbouncer]"]
        lines += [f"{name} = {value}" for name, value in settings.items()]
        (self._workdir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        (self._workdir / "users.txt").write_text(f'"{cluster.superuser}" ""\n')
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify_path = self._workdir / "notify.sock"
            notify.bind(str(notify_path))
            if account:
                for path in (self._workdir, *self._workdir.iterdir()):
                    os.chown(path, owner.st_uid, owner.st_gid)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NOTIFY_SOCKET": str(notify_path)}
            self._proc = subprocess.Popen([_PGBOUNCER or "pgbouncer", str(self._workdir / "pgbouncer.ini")],
                                          env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, **account)
            self._await_ready(notify)
        return Bouncer(dsn=make_conninfo(host=str(self._workdir), port=PORT, dbname=dbname, user=cluster.superuser),
                       pool_size=pool_size)

    def _await_ready(self, notify: socket.socket) -> None:
        """Wait until pgbouncer listens: its READY=1 (builds with systemd support send it once the
        socket is open), or the socket taking a connection (for builds without); fail at once if
        it exits instead."""
        assert self._proc is not None
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self._proc.returncode} before it was ready:\n"
                                   f"{self.log_tail()}")
            readable, _, _ = select.select([notify], [], [], 0.5)  # the timeout only re-checks the rest
            if (readable and b"READY=1" in notify.recv(4096).split(b"\n")) or self._listening():
                return
        raise RuntimeError(f"pgbouncer was not listening within {READY_WITHIN:.0f} s:\n{self.log_tail()}")

    def _listening(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self._workdir / f".s.PGSQL.{PORT}"))
            except OSError:
                return False
        return True

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop pgbouncer and remove its files; its log goes to the test's captured output."""
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        finally:
            print(f"pgbouncer log, last lines:\n{self.log_tail()}")
            shutil.rmtree(self._workdir, ignore_errors=True)


StartBouncer = Callable[..., Bouncer]


@pytest.fixture
def bouncer(pg_cluster: Cluster, people: People) -> Iterator[StartBouncer]:
    """Starts pgbouncers in front of the people database; every one is stopped after the test."""
    dbname = conninfo_to_dict(people.dsn)["dbname"]
    with ExitStack() as stack:
        def start(pool_size: int = 2, prepared_statements: int = 0) -> Bouncer:
            running = _Running()
            stack.callback(running.stop)
            return running.start(pg_cluster, str(dbname), pool_size=pool_size,
                                 prepared_statements=prepared_statements)

        yield start
        Session.delete_instance(force=True)  # close our clients before their pgbouncer goes


# -- helpers ---------------------------------------------------------------------------------------

@contextmanager
def _holding(dsn: str, clients: int) -> Iterator[list[int]]:
    """Other clients, each in an open transaction with an uncommitted row: each pins a server
    connection until the block ends (then they roll back). Yields their server processes."""
    with ExitStack() as stack:
        pids = []
        for n in range(clients):
            conn = stack.enter_context(psycopg.connect(dsn, prepare_threshold=None))
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            pids.append(int(row[0]))
            conn.execute("INSERT INTO projects (name) VALUES (%s)", (f"uncommitted by holder {n}",))
            stack.callback(conn.rollback)
        yield pids


def _in_children(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run each job in its own forked process, all at once; return their JSON-able results in order.

    A child ends with ``os._exit`` (no pytest teardown in it); its exception is raised here.
    """
    children = []
    for job in jobs:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_end)
                try:
                    report: dict[str, Any] = {"result": job()}
                except BaseException:
                    report = {"error": traceback.format_exc()}
                with os.fdopen(write_end, "wb") as writer:
                    writer.write(json.dumps(report).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        children.append((pid, read_end))
    reports = []
    for pid, read_end in children:
        with os.fdopen(read_end, "rb") as reader:
            data = reader.read()
        os.waitpid(pid, 0)
        reports.append(json.loads(data) if data else {"error": "the child died without a report"})
    errors = [report["error"] for report in reports if "error" in report]
    assert not errors, "in a child:\n" + "\n".join(errors)
    return [report["result"] for report in reports]


# -- many workers, few server connections ----------------------------------------------------------

WORKERS = ("alice", "bob", "carol", "lena")
CYCLES = 3


def _worker(dsn: str, name: str) -> None:
    """What a pre-fork server's worker does: log in, serve requests by key, log out; and again."""
    manager = SessionManager(dsn, prepare_threshold=None)
    for cycle in range(CYCLES):
        key = login(manager, name).session_key
        Session.idle()
        for request in range(RESUMES):
            session = manager.create_session(key=key)
            with session.transaction():
                session.factory.new_object("Project", name=f"{name} {cycle}.{request}",
                                           description=str(backend_pid(session, ask=True)))
            Session.idle()
        manager.logout()


def test_forked_workers_log_in_resume_write_and_log_out_on_shared_server_connections(
        people: People, bouncer: StartBouncer) -> None:
    pgb = bouncer(pool_size=2)

    _in_children([functools.partial(_worker, pgb.dsn, name) for name in WORKERS])

    assert query(people.dsn, "SELECT count(*) FROM projects") == [(len(WORKERS) * CYCLES * RESUMES,)]
    for name in WORKERS:
        assert query(people.dsn, "SELECT count(*) FROM projects WHERE owner_id = %s",
                     people.ids[name]) == [(CYCLES * RESUMES,)]
    # Four clients wrote through at most two server processes: the connections really were shared.
    [(writers,)] = query(people.dsn, "SELECT count(DISTINCT description) FROM projects")
    assert writers <= pgb.pool_size
    assert query(people.dsn, "SELECT count(*) FROM ome_sessions") == [(len(WORKERS) * CYCLES,)]
    assert query(people.dsn, "SELECT count(*) FROM ome_sessions WHERE closed_at IS NULL") == [(0,)]


def test_a_resume_runs_on_a_free_server_connection_while_other_clients_hold_transactions(
        people: People, bouncer: StartBouncer) -> None:
    pgb = bouncer(pool_size=3)
    manager = SessionManager(pgb.dsn, prepare_threshold=None)
    session = login(manager)
    with session.transaction():
        first = backend_pid(session, ask=True)
    key = session.session_key
    Session.idle()

    with _holding(pgb.dsn, 2) as held:
        resumed = manager.create_session(key=key)
        with resumed.transaction():
            now = backend_pid(resumed, ask=True)
            resumed.factory.new_object("Project", name="written while others hold transactions")
        Session.idle()

    assert resumed.user_name == "alice"
    assert first in held  # the session's earlier server connection went to another client...
    assert now not in held  # ...and the resume went on, on one nobody held
    assert query(people.dsn, "SELECT name FROM projects") == [("written while others hold transactions",)]


def test_a_failed_login_during_an_open_transaction_leaves_that_transaction_to_commit(
        people: People, bouncer: StartBouncer) -> None:
    # The login is checked on a second client connection, which needs a second server connection:
    # the first stays pinned to the open transaction.
    pgb = bouncer(pool_size=2)
    manager = SessionManager(pgb.dsn, prepare_threshold=None)
    session = login(manager)
    session.factory.new_object("Project", name="kept through a failed login")

    with pytest.raises(AuthenticationError):
        manager.create_session("bob", "not-bobs-password")
    session.commit_transaction()

    assert Session.instance() is session and session.user_name == "alice"
    assert query(people.dsn, "SELECT name FROM projects") == [("kept through a failed login",)]


def test_nested_transactions_roll_back_to_their_savepoint_while_other_clients_commit(
        people: People, bouncer: StartBouncer) -> None:
    pgb = bouncer(pool_size=2)
    session = login(SessionManager(pgb.dsn, prepare_threshold=None))

    with psycopg.connect(pgb.dsn, autocommit=True, prepare_threshold=None) as neighbour:
        def neighbour_commits(what: str) -> None:
            neighbour.execute("INSERT INTO projects (name) VALUES (%s)", (f"neighbour: {what}",))

        with session.transaction():
            pid = backend_pid(session, ask=True)
            session.factory.new_object("Project", name="outer")
            neighbour_commits("after outer")
            with pytest.raises(RuntimeError), session.transaction():
                session.factory.new_object("Project", name="inner, rolled back")
                neighbour_commits("inside the rolled back block")
                raise RuntimeError("undo the inner block")
            with session.transaction():
                session.factory.new_object("Project", name="inner, kept")
                neighbour_commits("inside the kept block")
            assert backend_pid(session, ask=True) == pid  # one server connection for the whole transaction

    assert query(people.dsn, "SELECT name FROM projects WHERE owner_id = %s ORDER BY name",
                 people.ids["alice"]) == [("inner, kept",), ("outer",)]
    assert query(people.dsn, "SELECT count(*) FROM projects WHERE name LIKE 'neighbour:%%'") == [(3,)]


def test_iter_objects_streams_every_row_through_a_server_side_cursor_within_one_transaction(
        people: People, bouncer: StartBouncer) -> None:
    rows = 5000  # several of iter_objects' batches, so the cursor is fetched from again and again
    with psycopg.connect(people.dsn) as conn:
        conn.execute("INSERT INTO projects (name, owner_id, group_id) SELECT 'p' || n, %s, %s"
                     " FROM generate_series(1, %s) AS n", (people.ids["alice"], people.groups["lab_a"], rows))
    pgb = bouncer(pool_size=2)
    session = login(SessionManager(pgb.dsn, prepare_threshold=None))

    seen = set()
    with psycopg.connect(pgb.dsn, autocommit=True, prepare_threshold=None) as neighbour, session.transaction():
        for project in session.factory.iter_objects("Project"):
            seen.add(project.name)
            if len(seen) % 1000 == 0:
                neighbour.execute("SELECT 1")  # other clients are served between the fetches

    assert seen == {f"p{n}" for n in range(1, rows + 1)}


# -- server-side prepared statements ---------------------------------------------------------------

def _resume_after_its_server_connection_is_taken(pgb: Bouncer, manager: SessionManager) -> Session:
    """Resume often enough that a statement gets prepared, on the one server connection in use;
    then let another client's transaction take that server connection, and resume once more."""
    key = login(manager).session_key
    Session.idle()
    for _ in range(RESUMES):
        manager.create_session(key=key)
        Session.idle()
    with _holding(pgb.dsn, 1):
        return manager.create_session(key=key)


def _resume_after_an_earlier_connection_left_its_statements(pgb: Bouncer, manager: SessionManager) -> Session:
    """A worker resumes often, logs out (its connection closes) and starts over on a new connection:
    the one server connection still holds what the first client prepared, under the same names."""
    assert pgb.pool_size == 1
    for _ in range(2):
        key = login(manager).session_key
        for _ in range(RESUMES):
            manager.create_session(key=key)
            Session.idle()
        manager.logout()
    key = login(manager).session_key
    return manager.create_session(key=key)


SCENARIOS = {
    "resume-on-another-server-connection": (_resume_after_its_server_connection_is_taken, 2),
    "new-connection-meets-old-statements": (_resume_after_an_earlier_connection_left_its_statements, 1),
}


def test_default_prepare_threshold_fails_a_resume_that_lands_on_another_server_connection(
        bouncer: StartBouncer) -> None:
    pgb = bouncer(pool_size=2, prepared_statements=0)

    with pytest.raises(DatabaseError) as raised:
        _resume_after_its_server_connection_is_taken(pgb, SessionManager(pgb.dsn))

    assert raised.value.sqlstate == "26000"  # invalid_sql_statement_name
    assert re.search(r'prepared statement "_pg3_\d+" does not exist', str(raised.value))


def test_default_prepare_threshold_fails_when_a_new_connection_meets_an_old_ones_statements(
        bouncer: StartBouncer) -> None:
    pgb = bouncer(pool_size=1, prepared_statements=0)

    with pytest.raises(DatabaseError) as raised:
        _resume_after_an_earlier_connection_left_its_statements(pgb, SessionManager(pgb.dsn))

    assert raised.value.sqlstate == "42P05"  # duplicate_prepared_statement
    assert re.search(r'prepared statement "_pg3_\d+" already exists', str(raised.value))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_prepare_threshold_none_resumes_in_every_such_scenario(scenario: str, bouncer: StartBouncer) -> None:
    run, pool_size = SCENARIOS[scenario]
    pgb = bouncer(pool_size=pool_size, prepared_statements=0)

    session = run(pgb, SessionManager(pgb.dsn, prepare_threshold=None))

    assert session.user_name == "alice" and not session.is_idle()
    assert session.factory.obtain_dbh().prepare_threshold is None


def test_settings_file_with_null_prepare_threshold_resumes_on_another_server_connection(
        bouncer: StartBouncer) -> None:
    pgb = bouncer(pool_size=2, prepared_statements=0)
    path = Path(os.environ["OME_SESSION_CONFIG"])
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(json.dumps({"dsn": pgb.dsn, "prepare_threshold": None}))
    path.chmod(0o600)

    session = _resume_after_its_server_connection_is_taken(pgb, SessionManager())

    assert session.user_name == "alice"
    assert session.factory.obtain_dbh().prepare_threshold is None


def _reattach_for_every_task() -> int | None:
    """A forked worker's loop: rejoin the parent's session for a task, idle after it."""
    for _ in range(RESUMES):
        SessionManager().reattach()
        Session.idle()
    return Session.instance().factory._connection.prepare_threshold


def test_forked_workers_reattaching_keep_prepared_statements_off(bouncer: StartBouncer) -> None:
    pgb = bouncer(pool_size=1, prepared_statements=0)
    login(SessionManager(pgb.dsn, prepare_threshold=None))
    Session.idle()

    # One after the other, on the one server connection: the second meets what the first left.
    thresholds = _in_children([_reattach_for_every_task]) + _in_children([_reattach_for_every_task])

    assert thresholds == [None, None]


@pytest.mark.skipif(_PGBOUNCER is None or not _prepared_statement_support(),
                    reason="this pgbouncer has no prepared-statement support (PgBouncer >= 1.22 with "
                           "max_prepared_statements > 0 has)")
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_default_prepare_threshold_works_with_pgbouncers_prepared_statement_support(
        scenario: str, bouncer: StartBouncer) -> None:
    run, pool_size = SCENARIOS[scenario]
    pgb = bouncer(pool_size=pool_size, prepared_statements=100)

    session = run(pgb, SessionManager(pgb.dsn))

    assert session.user_name == "alice" and not session.is_idle()


# -- the resume cache ------------------------------------------------------------------------------

def _news_waiting(conn: psycopg.Connection[Any]) -> bool:
    return bool(select.select([conn.pgconn.socket], [], [], 0)[0])


@pytest.mark.parametrize("listener", [False, True], ids=["no listener: off", "a listener: on"])
def test_the_resume_cache_behind_pgbouncer_is_on_only_with_a_listener_and_right_either_way(
        people: People, bouncer: StartBouncer, listener: bool) -> None:
    pgb = bouncer(pool_size=2)
    # LISTEN through a transaction pool would be the state of a server connection others get next:
    # the cache must not trust it. A listener on the server itself is what makes it safe.
    manager = SessionManager(pgb.dsn, prepare_threshold=None, listen_dsn=people.dsn if listener else None)
    key = login(manager).session_key
    Session.idle()
    with _holding(pgb.dsn, 1):  # another client, so the server connections really are shared
        for _ in range(3):
            assert manager.create_session(key=key).user_name == "alice"
            Session.idle()
    cache = Session.instance().backend.resume_cache  # type: ignore[attr-defined]
    assert (key in cache) is listener
    query(people.dsn, "UPDATE ome_sessions SET closed_at = now()")
    if listener:
        wait_for("the listener to hear of it", lambda: _news_waiting(cache.listening))
    with pytest.raises(SessionKeyError):
        manager.create_session(key=key)
