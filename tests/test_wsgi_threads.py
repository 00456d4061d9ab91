"""The WSGI middleware in thread scope, under real threaded servers: requests of one process run
in parallel (no lock), each on its own thread's session, and alternating users never see each
other's. Parallelism is shown by a view that only answers once four requests are inside it at
the same time (a barrier): served one at a time, they could not all get in."""

from __future__ import annotations

import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from ome_session import Session
from tests.helpers import HttpClient, People, free_port, query, wait_for

ROOT = Path(__file__).resolve().parent.parent
USERS = ("alice", "bob", "carol")
REQUESTS = 120
THREADS = 4

# The demo app's views, and two more: who and where a request ran, and the gate.
_APP = f'''
import os
import threading

from demo_app import ROUTES, make_app
from ome_session.wsgi import ENVIRON_SESSION

GATE = threading.Barrier({THREADS}, timeout=60)


def where(environ):
    session = environ[ENVIRON_SESSION]
    row = session.factory.obtain_dbh().execute("SELECT pg_backend_pid()").fetchone()
    return "200 OK", [], {{"user": session.user_name, "worker": os.getpid(), "backend": row[0],
                           "thread": threading.get_ident()}}


def gate(environ):
    session = environ[ENVIRON_SESSION]
    session.factory.new_object("Project", name=f"through the gate as {{session.user_name}}")
    GATE.wait()  # a BrokenBarrierError (a 500) unless {THREADS} requests are in here at once
    session.commit_transaction()
    return "200 OK", [], {{"user": session.user_name}}


application = make_app({{**ROUTES, ("GET", "/where"): where, ("POST", "/gate"): gate}})
'''


def _alternating_users_and_the_gate(client: HttpClient, dsn: str) -> list[dict[str, Any]]:
    """Many requests of alternating users from several clients at once, then the gate; checks
    every answer and returns the /where answers."""
    cookies = {user: client.login(user) for user in USERS}

    def where(n: int) -> dict[str, Any]:
        user = USERS[n % len(USERS)]
        status, _, body = client.request("GET", "/where", cookie=cookies[user])
        assert status == 200, body
        return {**json.loads(body), "expected": user}

    def through_the_gate(n: int) -> tuple[int, bytes]:
        status, _, body = client.request("POST", "/gate", cookie=cookies[USERS[n % len(USERS)]])
        return status, body

    with ThreadPoolExecutor(THREADS * 2) as pool:
        results = list(pool.map(where, range(REQUESTS)))
    with ThreadPoolExecutor(THREADS) as pool:
        gated = list(pool.map(through_the_gate, range(THREADS)))
    assert all(r["user"] == r["expected"] for r in results)
    assert [status for status, _ in gated] == [200] * THREADS, gated
    assert sorted(name for (name,) in query(dsn, "SELECT name FROM projects")) == \
        sorted(f"through the gate as {USERS[n % len(USERS)]}" for n in range(THREADS))
    wait_for("every connection to be back, out of any transaction",
             lambda: not query(dsn, "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND state <> 'idle' AND pid <> pg_backend_pid()"))
    return results


# -- wsgiref, threaded, in this process ------------------------------------------------------------------


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = False  # server_close() joins every request's thread (and so ends its session)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the stdlib's name)
        pass


def test_a_threaded_wsgiref_server_serves_alternating_users_in_parallel(
        people: People, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Session.set_scope("thread")
    monkeypatch.setenv("OME_SESSION_DSN", people.dsn)
    (tmp_path / "threaded_app.py").write_text(_APP)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import threaded_app  # type: ignore[import-not-found]

    server = make_server("127.0.0.1", 0, threaded_app.application, server_class=_ThreadingServer,
                         handler_class=_QuietHandler)
    serving = threading.Thread(target=server.serve_forever, name="wsgiref", daemon=True)
    serving.start()
    try:
        results = _alternating_users_and_the_gate(HttpClient(server.server_address[1]), people.dsn)
    finally:
        server.shutdown()
        server.server_close()
        sys.modules.pop("threaded_app", None)
    assert len({r["thread"] for r in results}) > 1
    assert not Session.has_instance()  # the server's threads had sessions of their own


# -- gunicorn --threads 4 --------------------------------------------------------------------------------


@pytest.fixture
def gunicorn(people: People, tmp_path: Path) -> Iterator[HttpClient]:
    (tmp_path / "threaded_app.py").write_text(_APP)
    env = {**os.environ, "OME_SESSION_DSN": people.dsn, "OME_SESSION_SCOPE": "thread"}
    for attempt in range(3):
        port = free_port()
        log = tmp_path / f"gunicorn-{attempt}.log"
        args = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--worker-class", "gthread", "--threads", str(THREADS), "--timeout", "120",
                "--pythonpath", f"{tmp_path},{ROOT / 'examples'},{ROOT}", "threaded_app:application"]
        with log.open("wb") as out:
            process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        client = HttpClient(port)

        def ready(process: subprocess.Popen[bytes] = process, client: HttpClient = client) -> str | None:
            if process.poll() is not None:
                return "exited"
            try:
                return "ready" if client.request("GET", "/whoami")[0] == 401 else None
            except OSError:
                return None

        if wait_for("gunicorn to serve", ready, timeout=120) == "ready":
            break
        if "Address already in use" not in log.read_text(errors="replace"):
            raise AssertionError(f"gunicorn did not start:\n{log.read_text(errors='replace')}")
    try:
        yield client
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


def test_gunicorn_with_threads_serves_alternating_users_in_parallel(gunicorn: HttpClient, people: People) -> None:
    results = _alternating_users_and_the_gate(gunicorn, people.dsn)
    # The worker's threads borrowed from its pool: several connections, each request on one.
    assert len({r["backend"] for r in results}) > 1
    assert len({r["thread"] for r in results}) > 1
