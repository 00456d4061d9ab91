"""The demo app under a real gunicorn on loopback, with and without ``--preload``.

Workers are recycled often (``--max-requests``), so many children are forked and exit normally
while the test runs. With ``--preload`` the master logs in when it imports the app and leaves a
transaction open; the server must still show that transaction afterwards, and the master commits
it at shutdown. Each worker's connection carries ``application_name`` ome-worker-<pid>, so the
server can tell us what every worker's backend is doing. Waits are bounded polls, never sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import HttpClient, People, free_port, query, wait_for

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2
MAX_REQUESTS = 25
REQUESTS = 200
USERS = ("alice", "bob", "carol")
SENTINEL = "the master's uncommitted row"

# Extra views for the tests, on top of the demo's login/whoami/logout; the master logs in at
# import when asked to (that is, with --preload, in the master).
_APP = f'''
import os
from pathlib import Path

from demo_app import ROUTES, make_app
from ome_session import SessionManager
from ome_session.wsgi import ENVIRON_SESSION

STATE = Path(os.environ["TEST_STATE_DIR"])


def where(environ):
    session = environ[ENVIRON_SESSION]
    row = session.factory.obtain_dbh().execute("SELECT pg_backend_pid()").fetchone()
    return "200 OK", [], {{"user": session.user_name, "worker": os.getpid(), "backend": row[0]}}


def boom(environ):
    environ[ENVIRON_SESSION].factory.new_object("Project", name="from a failing view")
    raise RuntimeError("the view failed on purpose")


if os.environ.get("TEST_MASTER_LOGIN"):
    MASTER = SessionManager().create_session("root", "root-password")
    MASTER.factory.new_object("Project", name={SENTINEL!r})
    backend = MASTER.factory.obtain_dbh().execute("SELECT pg_backend_pid()").fetchone()[0]
    (STATE / "master-backend").write_text(str(backend))

application = make_app({{**ROUTES, ("GET", "/where"): where, ("POST", "/boom"): boom}})
'''

_CONFIG = '''
import os
from pathlib import Path


def post_fork(server, worker):
    os.environ["PGAPPNAME"] = f"ome-worker-{os.getpid()}"  # read by libpq when the worker connects


def on_exit(server):
    from ome_session import Session

    if Session.has_instance():  # the master's own session, alive since import
        Session.instance().commit_transaction()
        (Path(os.environ["TEST_STATE_DIR"]) / "master-committed").write_text("yes")
'''


@dataclass(kw_only=True)
class Server(HttpClient):
    process: subprocess.Popen[bytes]
    state: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _worker_backends(dsn: str) -> dict[str, str]:
    """application_name -> state of every worker backend connected to the test database."""
    rows = query(dsn, "SELECT application_name, state FROM pg_stat_activity "
                         "WHERE datname = current_database() AND application_name LIKE 'ome-worker-%%'")
    return {name: state for name, state in rows}


def _start(people: People, tmp_path: Path, preload: bool) -> Server:
    """Start gunicorn on a free loopback port (another if that one was taken meanwhile)."""
    (tmp_path / "testapp.py").write_text(_APP)
    (tmp_path / "gunicorn_conf.py").write_text(_CONFIG)
    state = tmp_path / "state"
    state.mkdir()
    env = {**os.environ, "OME_SESSION_DSN": people.dsn, "TEST_STATE_DIR": str(state), "PGAPPNAME": "ome-master"}
    if preload:
        env["TEST_MASTER_LOGIN"] = "1"
    for attempt in range(3):
        port = free_port()
        log = tmp_path / f"gunicorn-{attempt}.log"
        args = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS),
                "--worker-class", "sync", "--max-requests", str(MAX_REQUESTS), "--max-requests-jitter", "0",
                "--timeout", "120", "--graceful-timeout", "30", "--log-level", "info",
                "--pythonpath", f"{tmp_path},{ROOT / 'examples'},{ROOT}",
                "--config", str(tmp_path / "gunicorn_conf.py"),
                *(["--preload"] if preload else []), "testapp:application"]
        with log.open("wb") as out:
            process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        server = Server(port=port, process=process, state=state, log=log)
        if _wait_ready(server):
            return server
        _stop(server)
        if "Address already in use" not in server.log_text():
            raise AssertionError(f"gunicorn did not start:\n{server.log_text()}")
    raise AssertionError("no free port for gunicorn after 3 attempts")


def _wait_ready(server: Server) -> bool:
    def ready() -> str | None:
        if server.process.poll() is not None:
            return "exited"
        try:
            status, _, _ = server.request("GET", "/whoami")
        except OSError:
            return None
        return "ready" if status == 401 else None

    return bool(wait_for("gunicorn to serve", ready, timeout=120) == "ready")


def _stop(server: Server) -> int | None:
    """SIGTERM to the master (it stops its workers); SIGKILL to the group if it does not end."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            return server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=60)
            return None
    return server.process.returncode


@pytest.fixture(params=[True, False], ids=["preload", "no-preload"])
def server(request: pytest.FixtureRequest, people: People, tmp_path: Path) -> Iterator[Server]:
    running = _start(people, tmp_path, preload=request.param)
    try:
        yield running
    finally:
        _stop(running)
        if running.process.poll() is None:  # never leave a server behind
            os.killpg(running.process.pid, signal.SIGKILL)


def _many_requests(server: Server, cookies: dict[str, str]) -> list[dict[str, Any]]:
    def one(n: int) -> dict[str, Any]:
        user = USERS[n % len(USERS)]
        status, _, body = server.request("GET", "/where", cookie=cookies[user])
        assert status == 200, body
        return {**json.loads(body), "expected": user}

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(REQUESTS)))


def test_logged_in_requests_all_get_their_own_user_while_workers_come_and_go(server: Server, people: People) -> None:
    cookies = {user: server.login(user) for user in USERS}
    results = _many_requests(server, cookies)
    assert all(r["user"] == r["expected"] for r in results)
    workers = {r["worker"] for r in results}
    backends = {(r["worker"], r["backend"]) for r in results}
    assert len(workers) > WORKERS  # workers were recycled: children exited normally
    assert len(backends) == len(workers)  # one connection per worker, reused by all its requests
    assert len({b for _, b in backends}) == len(workers)
    # Every worker backend ends up idle (the body is closed after it is sent, so poll).
    wait_for("every worker backend to be idle",
             lambda: set(_worker_backends(people.dsn).values()) == {"idle"})


@pytest.mark.parametrize("server", [True], ids=["preload"], indirect=True)  # only a preloaded master has one
def test_the_preloaded_masters_open_transaction_survives_every_worker(server: Server, people: People) -> None:
    master = int((server.state / "master-backend").read_text())

    def master_state() -> tuple[Any, ...]:
        (row,) = query(people.dsn, "SELECT state, backend_xid::text, application_name FROM pg_stat_activity "
                                      "WHERE pid = %s", master)
        return row

    before = master_state()
    assert before[0] == "idle in transaction" and before[1] is not None and before[2] == "ome-master"
    cookies = {user: server.login(user) for user in USERS}
    results = _many_requests(server, cookies)
    assert master not in {r["backend"] for r in results}
    assert len({r["worker"] for r in results}) > WORKERS
    assert master_state() == before  # same backend, same open transaction
    assert query(people.dsn, "SELECT count(*) FROM projects WHERE name = %s", SENTINEL) == [(0,)]
    assert _stop(server) == 0
    assert (server.state / "master-committed").read_text() == "yes"
    assert query(people.dsn, "SELECT count(*) FROM projects WHERE name = %s", SENTINEL) == [(1,)]
    wait_for("the master's backend to be gone",
             lambda: not query(people.dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", master))


def test_a_view_that_raises_leaves_its_worker_idle(server: Server, people: People) -> None:
    cookie = server.login("alice")
    for _ in range(4):
        status, _, _ = server.request("POST", "/boom", cookie=cookie)
        assert status == 500
        # Checked before any other request could reach that worker and roll back for it.
        states = _worker_backends(people.dsn)
        assert states and "idle in transaction" not in states.values(), states
    assert query(people.dsn, "SELECT count(*) FROM projects WHERE name = 'from a failing view'") == [(0,)]
    status, _, body = server.request("GET", "/whoami", cookie=cookie)
    assert status == 200 and json.loads(body)["user"] == "alice"
    assert server.log_text().count("Traceback") == 4  # the four failing views, nothing else


def test_requests_without_a_valid_key_are_refused(server: Server) -> None:
    cookie = server.login("bob")
    key = cookie.split("=", 1)[1]
    status, _, body = server.request("GET", f"/whoami?ome_session_key={key}")
    assert status == 401 and json.loads(body)["error"] == "session_key_missing"
    status, _, body = server.request("GET", "/whoami", headers={"X-OME-Session-Key": "not-a-key"})
    assert status == 401 and json.loads(body)["error"] == "session_key_rejected"
    status, headers, _ = server.request("POST", "/logout", cookie=cookie)
    assert status == 200 and "Max-Age=0" in headers["Set-Cookie"]
    status, _, _ = server.request("GET", "/whoami", cookie=cookie)
    assert status == 401
