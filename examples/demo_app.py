"""A small web app on ome-session: log in, ask who you are, log out.

Run it under gunicorn, with the database found the usual way (``OME_SESSION_DSN`` or the
installer's settings file)::

    gunicorn --workers 4 --preload --pythonpath examples demo_app:application

    curl -c jar -d username=alice -d password=secret http://127.0.0.1:8000/login
    curl -b jar http://127.0.0.1:8000/whoami
    curl -b jar -X POST http://127.0.0.1:8000/logout

Browsers get the key in an HttpOnly cookie; API clients that log in with a JSON body get it in
the response too and send it back in the ``X-OME-Session-Key`` header. ``SessionMiddleware``
resumes the session for every request and idles it afterwards, so the views never log in,
commit-or-roll-back or clean up by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from ome_session import Session, SessionManager
from ome_session.errors import AuthenticationError
from ome_session.wsgi import ENVIRON_SESSION, SessionMiddleware, login, logout

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

# A view takes the environ and returns (status, extra headers, JSON-able body).
Reply = tuple[str, list[tuple[str, str]], Any]
View = Callable[["WSGIEnvironment"], Reply]

_MAX_BODY = 64 * 1024


def login_view(environ: WSGIEnvironment) -> Reply:
    """POST username and password (form or JSON); the key comes back as a cookie."""
    fields, as_json = _read_fields(environ)
    try:
        session, cookie = login(environ, fields.get("username", ""), fields.get("password", ""))
    except AuthenticationError as exc:
        return "401 Unauthorized", [], {"error": "login_failed", "detail": str(exc)}
    body: dict[str, Any] = {"user": session.user_name}
    if as_json:  # an API client: it sends the key back in the X-OME-Session-Key header
        body["key"] = session.session_key
    return "200 OK", [cookie], body


def whoami_view(environ: WSGIEnvironment) -> Reply:
    session: Session = environ[ENVIRON_SESSION]
    user = session.user  # a database read, in this request's unit of work
    assert user is not None
    return "200 OK", [], {
        "user": session.user_name,
        "experimenter_id": session.experimenter_id,
        "name": f"{user.first_name} {user.last_name}",
        "guest": session.is_guest_session(),
    }


def logout_view(environ: WSGIEnvironment) -> Reply:
    return "200 OK", [logout(environ)], {"logged_out": True}


ROUTES: dict[tuple[str, str], View] = {
    ("POST", "/login"): login_view,
    ("GET", "/whoami"): whoami_view,
    ("POST", "/logout"): logout_view,
}


def make_app(routes: dict[tuple[str, str], View] | None = None,
             manager: SessionManager | None = None) -> SessionMiddleware:
    """The routed views behind the session middleware; only /login is served without a key."""
    return SessionMiddleware(_Router(routes or ROUTES), manager, public_paths={"/login"})


class _Router:
    def __init__(self, routes: dict[tuple[str, str], View]) -> None:
        self.routes = routes

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        view = self.routes.get((method, path))
        if view is not None:
            status, headers, body = view(environ)
        elif any(p == path for _, p in self.routes):
            status, headers, body = "405 Method Not Allowed", [], {"error": "method_not_allowed", "detail": method}
        else:
            status, headers, body = "404 Not Found", [], {"error": "not_found", "detail": path}
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(data))), *headers])
        return [data]


def _read_fields(environ: WSGIEnvironment) -> tuple[dict[str, str], bool]:
    try:
        length = min(int(environ.get("CONTENT_LENGTH") or 0), _MAX_BODY)
    except ValueError:
        length = 0
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    if environ.get("CONTENT_TYPE", "").startswith("application/json"):
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            data = {}
        fields = {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
        return fields, True
    parsed = parse_qs(raw.decode("utf-8", "replace"))
    return {k: v[0] for k, v in parsed.items()}, False


application = make_app()
