"""The two apps the pre-fork measurement serves with gunicorn (one import per worker tree).

``session_app``: every request resumes the caller's session by key (``X-OME-Session-Key``
header), runs one query on the session's connection and goes idle, through
``ome_session.wsgi.SessionMiddleware`` when it exists, else with SessionManager and
``Session.idle()`` directly. ``bare_app``: the same query on a plain psycopg connection per
worker, no session, ending its transaction the same way (one query is a transaction there too).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import psycopg

from ome_session import Session, SessionManager

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

QUERY = b"SELECT id, name FROM projects WHERE id = %s"
PROJECTS = 20


def _answer(start_response: StartResponse, row: Any) -> list[bytes]:
    body = f"{row[0]} {row[1]} (worker {os.getpid()})\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _project(environ: WSGIEnvironment) -> int:
    path = environ.get("PATH_INFO", "/").strip("/")
    return 1 + (int(path) % PROJECTS if path.isdigit() else 0)


def _with_session(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    session = environ.get("ome_session") or Session.instance()
    row = session.factory.obtain_dbh().execute(QUERY, (_project(environ),)).fetchone()
    return _answer(start_response, row)


def _direct(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """What the middleware does, minus its refusals and streaming care."""
    try:
        SessionManager().create_session(key=environ.get("HTTP_X_OME_SESSION_KEY", ""))
        return list(_with_session(environ, start_response))
    finally:
        Session.idle()


def _session_app() -> tuple[WSGIApplication, str]:
    try:
        from ome_session.wsgi import SessionMiddleware
    except ImportError:
        return _direct, "SessionManager + Session.idle() written out (no ome_session.wsgi)"
    return SessionMiddleware(_with_session), "ome_session.wsgi.SessionMiddleware"


def _resume_via_function() -> None:
    """What-if runs only: resume through a server-side function (see bench._whatif)."""
    kind = os.environ.get("BENCH_RESUME_VIA")
    if kind:
        from ome_session.backends.local import _sql

        from . import _whatif

        _sql.RESUME = _whatif.call(kind)


_resume_via_function()
session_app, SESSION_APP_KIND = _session_app()


class _Bare:
    """One psycopg connection per worker process, opened on the worker's first request."""

    def __init__(self) -> None:
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = 0

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._conn is None or self._pid != os.getpid():
            self._conn = psycopg.connect(os.environ["BENCH_BARE_DSN"])
            self._pid = os.getpid()
        conn = self._conn
        try:
            row = conn.execute(QUERY, (_project(environ),)).fetchone()
        finally:
            conn.rollback()
        return _answer(start_response, row)


bare_app = _Bare()
