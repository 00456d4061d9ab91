"""WSGI middleware: one resumed session per request, and ``Session.idle()`` after every one.

A pre-fork server (gunicorn, uWSGI) runs the app in worker processes; each worker keeps one
database connection and, per request, resumes the caller's session on it from the session key in
a cookie or the ``X-OME-Session-Key`` header: one round trip. Never from the query string: URLs
end up in logs, proxies and browser history, so a key there is ignored (and the request is 401).

Whatever the app does, the session is idled when the request ends: after the response body is
sent and closed (also when a streamed body is closed early), and when the app raises. So no
transaction, cache or temporary file of one request survives into the next one, whoever sends it.

In process scope (the default) there is one session per process, so the requests of one process
are served one at a time: with threaded workers (gunicorn ``--threads``) they wait for each other.
In thread scope (``Session.set_scope("thread")``) each request runs on its own thread's session,
with a connection borrowed from the process's pool, and the requests of a process run in parallel.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from . import _fork
from .errors import DatabaseUnavailable, SessionKeyError
from .manager import SessionManager
from .session import Session

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

DEFAULT_COOKIE_NAME = "ome_session_key"
DEFAULT_HEADER = "X-OME-Session-Key"

# What the app finds in the WSGI environ.
ENVIRON_SESSION = "ome_session"  # the resumed Session, or None on a public path without one
ENVIRON_MANAGER = "ome_session.manager"  # the middleware's SessionManager, for login views
ENVIRON_COOKIE_NAME = "ome_session.cookie_name"  # read by the cookie helpers below
ENVIRON_SECURE_COOKIE = "ome_session.secure_cookie"  # the middleware's ``secure`` setting, if given

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token (cookie and header names)
# A key worth sending to the backend at all (the backend checks its exact format): printable
# ASCII without cookie delimiters, of a sane length. Anything else is refused before any I/O.
_PLAUSIBLE_KEY = re.compile(r"[\x21-\x7e]{1,128}")
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")  # RFC 6265 cookie-octet

# In process scope, one session per process, so one request at a time per process. Module level
# because every middleware instance in the process shares that one session; replaced in a forked
# child. Thread scope takes no lock: each thread has a session of its own.
_request_lock = threading.Lock()


@_fork.at_fork_in_child
def _new_lock_in_child() -> None:
    global _request_lock  # noqa: PLW0603  (a lock held by a parent's thread would never be released here)
    _request_lock = threading.Lock()


class SessionMiddleware:
    """Resume the caller's session for every request, and idle it when the request ends.

    ``public_paths`` are PATH_INFO values (exact matches) served without a key, such as the
    login view; there the session is resumed if a valid key comes along, else it is ``None``.
    Everywhere else a missing, malformed, expired or revoked key gets a 401 with a JSON body
    ``{"error": ..., "detail": ...}``. ``secure`` forces the cookie's Secure flag on or off;
    by default it is set when the request came over HTTPS (``wsgi.url_scheme``).
    """

    def __init__(self, app: WSGIApplication, manager: SessionManager | None = None, *,
                 cookie_name: str = DEFAULT_COOKIE_NAME, header: str = DEFAULT_HEADER,
                 public_paths: Iterable[str] = (), secure: bool | None = None) -> None:
        if not _TOKEN.fullmatch(cookie_name):
            raise ValueError(f"cookie_name {cookie_name!r} is not a valid cookie name")
        if not _TOKEN.fullmatch(header):
            raise ValueError(f"header {header!r} is not a valid HTTP header name")
        self.app = app
        self.manager = manager if manager is not None else SessionManager()
        self.cookie_name = cookie_name
        self.header = header
        self.public_paths = frozenset(public_paths)
        self.secure = secure
        self._header_key = "HTTP_" + header.upper().replace("-", "_")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ[ENVIRON_MANAGER] = self.manager
        environ[ENVIRON_COOKIE_NAME] = self.cookie_name
        if self.secure is not None:
            environ[ENVIRON_SECURE_COOKIE] = self.secure
        lock = _request_lock if Session.scope() == "process" else None
        if lock is not None:
            lock.acquire()
        done = _Finish(lock)
        try:
            refused = self._resume(environ, start_response)
            if refused is not None:
                done()
                return refused
            result = self.app(environ, start_response)
        except BaseException:
            done()
            raise
        return _IdleOnClose(result, done)

    def _resume(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes] | None:
        """Put the caller's Session in the environ; a refusal response when there is none."""
        environ[ENVIRON_SESSION] = None
        public = environ.get("PATH_INFO", "") in self.public_paths
        key, source = self._key(environ)
        if key is None:
            if public:
                return None
            return _refuse(start_response, 401, "session_key_missing",
                           f"log in first, then send the session key in the {self.cookie_name} cookie "
                           f"or the {self.header} header")
        try:
            if not _PLAUSIBLE_KEY.fullmatch(key):
                raise SessionKeyError("malformed session key")
            environ[ENVIRON_SESSION] = self.manager.create_session(key=key)
        except SessionKeyError as exc:
            if public:
                return None
            extra = [clear_session_cookie(environ)] if source == "cookie" else []
            return _refuse(start_response, 401, "session_key_rejected", str(exc), extra)
        except DatabaseUnavailable as exc:
            log.error("cannot resume a session: %s", exc)
            return _refuse(start_response, 503, "database_unavailable",
                           "the session database cannot be reached; try again later")
        return None

    def _key(self, environ: WSGIEnvironment) -> tuple[str | None, str | None]:
        """The key from the header (first) or the cookie; the query string is never looked at."""
        value = environ.get(self._header_key)
        if value is not None and value.strip():
            return value.strip(), "header"
        for part in environ.get("HTTP_COOKIE", "").split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name == self.cookie_name and value:
                return value.strip().strip('"'), "cookie"
        return None, None


class _Finish:
    """Ends one request exactly once: idle the session, then let the next request in."""

    def __init__(self, lock: threading.Lock | None) -> None:
        self._lock = lock  # the one acquired (if any), even if a fork replaced the module's since
        self._done = False

    def __call__(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            Session.idle()
        except Exception:
            # Nothing of this request may reach the next one: drop the session and its
            # connection (the next request reconnects).
            log.exception("idle() failed after a request; closing the session")
            try:
                Session.delete_instance(force=True)
            except Exception:
                log.exception("closing the session after a failed idle() failed too")
        finally:
            if self._lock is not None:
                self._lock.release()


class _IdleOnClose:
    """The app's response body, with the request ended when the server closes it (PEP 3333)."""

    def __init__(self, result: Iterable[bytes], finish: Callable[[], None]) -> None:
        self._result = result
        self._finish = finish

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()


def _refuse(start_response: StartResponse, status: int, error: str, detail: str,
            extra_headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = json.dumps({"error": error, "detail": detail}).encode()
    reason = {401: "Unauthorized", 503: "Service Unavailable"}[status]
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store")]
    if status == 401:
        headers.append(("WWW-Authenticate", 'OME-Session realm="ome-session"'))
    start_response(f"{status} {reason}", headers + (extra_headers or []))
    return [body]


# -- for login and logout views ---------------------------------------------------------------------

def login(environ: WSGIEnvironment, username: str, password: str) -> tuple[Session, tuple[str, str]]:
    """Log in (on the worker's connection) and return the Session and its ``Set-Cookie`` header.

    Raises ``AuthenticationError`` like ``SessionManager.create_session``; the view turns that
    into its own response. The session is idled when the request ends, like any other.
    """
    manager = environ.get(ENVIRON_MANAGER) or SessionManager()
    session = manager.create_session(username, password, host=environ.get("REMOTE_ADDR"))
    environ[ENVIRON_SESSION] = session
    key = session.session_key
    assert key is not None  # a login always has a key
    return session, session_cookie(environ, key)


def logout(environ: WSGIEnvironment) -> tuple[str, str]:
    """Revoke the request's session key for good; returns the ``Set-Cookie`` that clears it."""
    session = environ.get(ENVIRON_SESSION)
    if session is not None:
        manager = environ.get(ENVIRON_MANAGER) or SessionManager()
        manager.logout(session)
        environ[ENVIRON_SESSION] = None
    return clear_session_cookie(environ)


# -- cookies ----------------------------------------------------------------------------------------

def session_cookie(environ: WSGIEnvironment, key: str, *, max_age: int | None = None) -> tuple[str, str]:
    """The ``Set-Cookie`` header that hands ``key`` to a browser at login.

    HttpOnly (page scripts cannot read it), SameSite=Lax (not sent on cross-site POSTs), Path=/,
    and Secure when the request came over HTTPS. Without ``max_age`` it lasts until the browser
    closes; the session's own idle timeout and lifetime apply either way.
    """
    if not _COOKIE_VALUE.fullmatch(key):
        raise ValueError("a session key to put in a cookie must be printable ASCII without ; , \\ \" or spaces")
    attributes = [f"{_cookie_name(environ)}={key}", "Path=/", "HttpOnly", "SameSite=Lax"]
    if max_age is not None:
        attributes.append(f"Max-Age={int(max_age)}")
    if _secure(environ):
        attributes.append("Secure")
    return "Set-Cookie", "; ".join(attributes)


def clear_session_cookie(environ: WSGIEnvironment) -> tuple[str, str]:
    """The ``Set-Cookie`` header that removes the session cookie (at logout)."""
    attributes = [f"{_cookie_name(environ)}=", "Path=/", "Max-Age=0",
                  "Expires=Thu, 01 Jan 1970 00:00:00 GMT", "HttpOnly", "SameSite=Lax"]
    if _secure(environ):
        attributes.append("Secure")
    return "Set-Cookie", "; ".join(attributes)


def _cookie_name(environ: WSGIEnvironment) -> str:
    return str(environ.get(ENVIRON_COOKIE_NAME, DEFAULT_COOKIE_NAME))


def _secure(environ: WSGIEnvironment) -> bool:
    forced = environ.get(ENVIRON_SECURE_COOKIE)
    if forced is not None:
        return bool(forced)
    return environ.get("wsgi.url_scheme") == "https"


__all__ = [
    "DEFAULT_COOKIE_NAME",
    "DEFAULT_HEADER",
    "ENVIRON_MANAGER",
    "ENVIRON_SESSION",
    "SessionMiddleware",
    "clear_session_cookie",
    "login",
    "logout",
    "session_cookie",
]
