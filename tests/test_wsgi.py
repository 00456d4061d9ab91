"""SessionMiddleware, called the way a WSGI server calls it, against a real database.

Each request here is driven like a server drives it: call the app, iterate the body, close it.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest
from psycopg import pq

from examples.demo_app import ROUTES, View, make_app
from ome_session import Session, SessionManager
from ome_session.wsgi import (
    ENVIRON_SESSION,
    SessionMiddleware,
    clear_session_cookie,
    session_cookie,
)
from tests.helpers import People, backend_pid, query, wait_for

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def _environ(path: str, *, method: str = "GET", query: str = "", headers: dict[str, str] | None = None,
             body: bytes = b"", content_type: str = "", scheme: str = "http") -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": content_type,
        "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(), "wsgi.url_scheme": scheme,
        "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _call(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> Response:
    """What a WSGI server does: call, iterate the body, close it."""
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        seen["status"], seen["headers"] = int(status.split(maxsplit=1)[0]), headers
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return Response(seen["status"], seen["headers"], body)


def _ignore_start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
    return lambda data: None


def _nothing(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("204 No Content", [])
    return []


def _demo(people: People, extra: dict[tuple[str, str], View] | None = None) -> SessionMiddleware:
    return make_app({**ROUTES, **(extra or {})}, SessionManager(people.dsn))


def _login(app: SessionMiddleware, name: str, *, scheme: str = "http") -> Response:
    form = urlencode({"username": name, "password": People.password(name)}).encode()
    return _call(app, _environ("/login", method="POST", body=form, scheme=scheme,
                               content_type="application/x-www-form-urlencoded"))


def _api_key(app: SessionMiddleware, name: str) -> str:
    """Log in as an API client does (JSON body) and return the key from the response."""
    body = json.dumps({"username": name, "password": People.password(name)}).encode()
    response = _call(app, _environ("/login", method="POST", body=body, content_type="application/json"))
    assert response.status == 200
    return str(response.json()["key"])


def _cookie_of(response: Response) -> str:
    """The ``name=value`` of the response's Set-Cookie, as a browser would send it back."""
    (set_cookie,) = response.header("Set-Cookie")
    return set_cookie.split(";", 1)[0]


def _assert_idle(dsn: str) -> None:
    session = Session.instance()
    assert session.is_idle()
    assert not session.factory.in_transaction
    assert query(dsn, "SELECT state FROM pg_stat_activity WHERE pid = %s", backend_pid(session)) == [("idle",)]


# -- logging in and resuming ---------------------------------------------------------------------

def test_login_sets_an_httponly_samesite_lax_cookie_that_whoami_resumes(people: People) -> None:
    app = _demo(people)
    login = _login(app, "alice")
    assert login.status == 200 and login.json() == {"user": "alice"}  # a form login gets no key in the body
    (set_cookie,) = login.header("Set-Cookie")
    attributes = [a.strip() for a in set_cookie.split(";")]
    assert attributes[0].startswith("ome_session_key=")
    assert {"Path=/", "HttpOnly", "SameSite=Lax"} <= set(attributes)
    assert "Secure" not in attributes
    whoami = _call(app, _environ("/whoami", headers={"Cookie": f"theme=dark; {_cookie_of(login)}"}))
    assert whoami.status == 200
    assert whoami.json() == {"user": "alice", "experimenter_id": people.ids["alice"],
                             "name": "Alice Tester", "guest": False}


def test_the_cookie_is_secure_when_the_request_came_over_https(people: People) -> None:
    app = _demo(people)
    (set_cookie,) = _login(app, "alice", scheme="https").header("Set-Cookie")
    assert "Secure" in [a.strip() for a in set_cookie.split(";")]
    environ = _environ("/logout", scheme="https")
    assert clear_session_cookie(environ)[1].endswith("; Secure")


def test_the_header_resumes_a_session_for_api_clients(people: People) -> None:
    app = _demo(people)
    key = _api_key(app, "carol")
    response = _call(app, _environ("/whoami", headers={"X-OME-Session-Key": key}))
    assert response.status == 200 and response.json()["user"] == "carol"


def test_the_header_wins_over_the_cookie(people: People) -> None:
    app = _demo(people)
    cookie = _cookie_of(_login(app, "alice"))
    key = _api_key(app, "bob")
    response = _call(app, _environ("/whoami", headers={"Cookie": cookie, "X-OME-Session-Key": key}))
    assert response.json()["user"] == "bob"


def test_requests_of_different_users_share_one_connection_and_never_each_others_data(people: People) -> None:
    seen_projects: dict[str, list[str]] = {}

    def mine(environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], Any]:
        session: Session = environ[ENVIRON_SESSION]
        factory = session.factory
        factory.new_object("Project", name=f"{session.user_name}'s project")
        session.commit_transaction()
        visible = sorted(p.name for p in factory.find_objects("Project"))  # type: ignore[attr-defined]
        seen_projects[str(session.user_name)] = visible
        return "200 OK", [], {"user": session.user_name, "backend": backend_pid(session)}

    app = _demo(people, {("POST", "/mine"): mine})
    keys = {name: _api_key(app, name) for name in ("alice", "bob", "carol")}
    backends = set()
    for name in ["alice", "bob", "carol"] * 5:
        response = _call(app, _environ("/mine", method="POST", headers={"X-OME-Session-Key": keys[name]}))
        assert response.json()["user"] == name
        backends.add(response.json()["backend"])
    assert len(backends) == 1
    assert "carol's project" not in seen_projects["alice"]  # lab_b is not alice's group
    assert "alice's project" not in seen_projects["carol"]


# -- refusing ------------------------------------------------------------------------------------

def test_a_missing_key_is_401_with_a_json_error(people: People) -> None:
    response = _call(_demo(people), _environ("/whoami"))
    assert response.status == 401
    assert response.header("Content-Type") == ["application/json"]
    assert response.json()["error"] == "session_key_missing"
    assert set(response.json()) == {"error", "detail"}


def test_a_key_in_the_query_string_is_ignored(people: People) -> None:
    app = _demo(people)
    key = _api_key(app, "alice")
    for in_the_url in (f"ome_session_key={key}", f"X-OME-Session-Key={key}", f"key={key}"):
        response = _call(app, _environ("/whoami", query=in_the_url))
        assert response.status == 401
        assert response.json()["error"] == "session_key_missing"


@pytest.mark.parametrize("bad", ["abc", "0" * 31, "0" * 33, "G" * 32, "0" * 31 + "\u00e9", "' OR 1=1 --", "x" * 5000])
def test_a_malformed_key_is_401_and_the_cookie_is_cleared(people: People, bad: str) -> None:
    response = _call(_demo(people), _environ("/whoami", headers={"Cookie": f"ome_session_key={bad}"}))
    assert response.status == 401
    assert response.json()["error"] == "session_key_rejected"
    assert bad not in response.json()["detail"]  # a key is never echoed, even a wrong one
    (cleared,) = response.header("Set-Cookie")
    assert cleared.startswith("ome_session_key=;") and "Max-Age=0" in cleared


def test_an_expired_key_is_401(people: People) -> None:
    app = _demo(people)
    key = _api_key(app, "alice")
    query(people.dsn, "UPDATE ome_sessions SET last_access = now() - interval '1 day'")
    response = _call(app, _environ("/whoami", headers={"X-OME-Session-Key": key}))
    assert response.status == 401
    assert response.json()["error"] == "session_key_rejected"
    assert response.header("Set-Cookie") == []  # it came in a header: no cookie to clear


def test_logout_revokes_the_key_and_clears_the_cookie(people: People) -> None:
    app = _demo(people)
    cookie = _cookie_of(_login(app, "bob"))
    logout = _call(app, _environ("/logout", method="POST", headers={"Cookie": cookie}))
    assert logout.status == 200
    (cleared,) = logout.header("Set-Cookie")
    assert cleared.startswith("ome_session_key=;") and "Max-Age=0" in cleared and "HttpOnly" in cleared
    again = _call(app, _environ("/whoami", headers={"Cookie": cookie}))
    assert again.status == 401


def test_a_public_path_is_served_without_a_key_and_with_no_session(people: People) -> None:
    seen: list[Any] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        seen.append(environ[ENVIRON_SESSION])
        start_response("200 OK", [])
        return [b"hello"]

    middleware = SessionMiddleware(app, SessionManager(people.dsn), public_paths={"/health"})
    assert _call(middleware, _environ("/health")).status == 200
    assert _call(middleware, _environ("/health", headers={"X-OME-Session-Key": "0" * 32})).status == 200
    assert _call(middleware, _environ("/health/other")).status == 401  # exact paths only
    assert seen == [None, None]


def test_an_unreachable_database_is_503(tmp_path: Any) -> None:
    manager = SessionManager(f"host={tmp_path} dbname=nothing connect_timeout=2")
    environ = _environ("/x", headers={"X-OME-Session-Key": "0" * 32})
    response = _call(SessionMiddleware(_nothing, manager), environ)
    assert response.status == 503
    assert response.json()["error"] == "database_unavailable"
    assert str(tmp_path) not in response.json()["detail"]  # where the database lives is not the client's business


# -- idle after every request --------------------------------------------------------------------

def _opens_a_transaction(environ: WSGIEnvironment) -> None:
    session: Session = environ[ENVIRON_SESSION]
    session.factory.new_object("Project", name="uncommitted")
    path = session.get_temporary_filename("request", "txt")
    environ["test.tempfile"] = path
    assert session.factory.in_transaction


def test_the_session_is_idle_after_a_request(people: People) -> None:
    def view(environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], Any]:
        _opens_a_transaction(environ)
        return "200 OK", [], {}

    app = _demo(people, {("POST", "/work"): view})
    key = _api_key(app, "alice")
    environ = _environ("/work", method="POST", headers={"X-OME-Session-Key": key})
    with pytest.warns(UserWarning, match="left unfinished"):
        assert _call(app, environ).status == 200
    _assert_idle(people.dsn)
    assert not environ["test.tempfile"].exists()
    assert query(people.dsn, "SELECT count(*) FROM projects") == [(0,)]


def test_the_session_is_idle_after_the_app_raises(people: People) -> None:
    def view(environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], Any]:
        _opens_a_transaction(environ)
        raise RuntimeError("the view failed")

    app = _demo(people, {("POST", "/boom"): view})
    key = _api_key(app, "alice")
    with pytest.raises(RuntimeError, match="the view failed"), pytest.warns(UserWarning, match="left unfinished"):
        _call(app, _environ("/boom", method="POST", headers={"X-OME-Session-Key": key}))
    _assert_idle(people.dsn)
    assert query(people.dsn, "SELECT count(*) FROM projects") == [(0,)]
    assert _call(app, _environ("/whoami", headers={"X-OME-Session-Key": key})).status == 200  # and serves on


def test_the_session_is_idle_when_a_streamed_response_is_closed_early(people: People) -> None:
    ended: list[str] = []

    def streaming(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        session: Session = environ[ENVIRON_SESSION]
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            for n in range(1000):
                session.factory.new_object("Project", name=f"streamed {n}")  # the session is active throughout
                yield f"{n}\n".encode()
        finally:
            ended.append("generator closed")

    manager = SessionManager(people.dsn)
    key = _api_key(_demo(people), "alice")
    middleware = SessionMiddleware(streaming, manager)
    result = middleware(_environ("/stream", headers={"X-OME-Session-Key": key}), _ignore_start)
    chunks = iter(result)
    assert next(chunks) == b"0\n" and next(chunks) == b"1\n"
    assert Session.instance().factory.in_transaction and not Session.instance().is_idle()
    result.close()  # type: ignore[attr-defined]  # the client went away
    assert ended == ["generator closed"]
    _assert_idle(people.dsn)
    assert query(people.dsn, "SELECT count(*) FROM projects") == [(0,)]


@pytest.mark.parametrize(("cache", "per_request"), [(0, 1), (100, 0)], ids=["cache off: one", "warm key: none"])
def test_resuming_a_session_costs_one_round_trip_or_none_from_memory(people: People, cache: int,
                                                                     per_request: int) -> None:
    key = _api_key(_demo(people), "alice")
    Session.delete_instance(force=True)  # the worker's own backend, with its own settings
    app = SessionMiddleware(_nothing, SessionManager(people.dsn, resume_cache=cache))

    def environ() -> dict[str, Any]:
        return _environ("/nothing", headers={"X-OME-Session-Key": key})

    for _ in range(8):  # past psycopg's prepare threshold, which costs one extra trip once
        assert _call(app, environ()).status == 204
    pgconn: Any = Session.instance().factory._connection.raw.pgconn
    with tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            for _ in range(10):
                assert _call(app, environ()).status == 204
        finally:
            pgconn.untrace()
        trace.seek(0)
        sent = [line.split("\t")[2].split()[0] for line in trace if line.startswith("F\t")]
    round_trips = sum(1 for message in sent if message in ("Sync", "Query"))
    assert round_trips == 10 * per_request, sent


class _WatchedLock:
    """A lock that tells when someone had to wait for it (put in place of the request lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waited = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        if not blocking:
            return False
        self.waited.set()  # taken: from here on this caller waits
        return self._lock.acquire(True, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


def test_requests_in_one_process_are_served_one_at_a_time(people: People, monkeypatch: pytest.MonkeyPatch) -> None:
    """One session per process: a second request waits until the first one's body is closed."""
    from ome_session import wsgi

    lock = _WatchedLock()
    monkeypatch.setattr(wsgi, "_request_lock", lock)
    order: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        user = environ[ENVIRON_SESSION].user_name
        order.append(f"{user} in")
        start_response("200 OK", [])
        yield user.encode()
        order.append(f"{user} out")

    manager = SessionManager(people.dsn)
    keys = {name: _api_key(_demo(people), name) for name in ("alice", "bob")}
    middleware = SessionMiddleware(app, manager)
    first = middleware(_environ("/", headers={"X-OME-Session-Key": keys["alice"]}), _ignore_start)
    assert list(first) == [b"alice"]
    results: list[Response] = []
    thread = threading.Thread(
        target=lambda: results.append(_call(middleware, _environ("/", headers={"X-OME-Session-Key": keys["bob"]}))))
    thread.start()
    # Bob's request either waits for the lock or (were there none) runs through: wait for either.
    wait_for("bob's request to wait or to finish", lambda: lock.waited.is_set() or not thread.is_alive())
    assert lock.waited.is_set() and order == ["alice in", "alice out"]  # bob waits: alice's body is open

    first.close()  # type: ignore[attr-defined]
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert order == ["alice in", "alice out", "bob in", "bob out"]
    assert not lock.locked()
    assert results[0].body == b"bob"


# -- cookie helpers ------------------------------------------------------------------------------

def test_cookie_helpers_refuse_values_that_would_break_the_header() -> None:
    environ = _environ("/login")
    with pytest.raises(ValueError):
        session_cookie(environ, "abc; Domain=evil.example")
    with pytest.raises(ValueError):
        session_cookie(environ, "abc\r\nSet-Cookie: x=y")
    name, value = session_cookie(environ, "0" * 32, max_age=600)
    assert name == "Set-Cookie" and "Max-Age=600" in value


def test_the_middleware_refuses_names_that_are_not_http_tokens() -> None:
    with pytest.raises(ValueError):
        SessionMiddleware(_nothing, SessionManager("dbname=x"), cookie_name="a b")
    with pytest.raises(ValueError):
        SessionMiddleware(_nothing, SessionManager("dbname=x"), header="X-Key:")


def test_a_child_forked_during_a_request_can_serve_requests_of_its_own(people: People) -> None:
    """The request lock a child inherits is held by a request the child will never finish."""
    from ome_session import wsgi

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    middleware = SessionMiddleware(app, SessionManager(people.dsn), public_paths={"/"})
    in_progress = middleware(_environ("/"), _ignore_start)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if wsgi._request_lock.acquire(blocking=False) else 1)
    _, status = os.waitpid(pid, 0)
    in_progress.close()  # type: ignore[attr-defined]
    assert os.waitstatus_to_exitcode(status) == 0
    assert _call(middleware, _environ("/")).status == 200
