"""``OmeroBackend``: the verbs of the backend interface, on an OMERO.server through omero-py."""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..._keys import validate_omero_key
from ...errors import AuthenticationError, ConfigurationError, PermissionDenied, SessionError, SessionKeyError
from .. import AuthBackend, Login
from ..local import _BAD_LOGIN, _plausible
from . import _client, _groups, _parking
from ._config import DEFAULT_PORT, Config
from ._errors import BAD_KEY, Detached, Remote, describe, ending
from ._ice import Ice, omero, unwrap
from ._keepalive import KeepAlive

if TYPE_CHECKING:
    from ..._maintenance import GroupInfo

log = logging.getLogger(__name__)


class OmeroBackend(AuthBackend):
    """Logins against an OMERO.server (Glacier2 router at ``host``:``port``).

    ``keepalive`` (seconds) pings the active session from a daemon thread; ``group`` (name, id, or
    -1 for all groups) is switched to after every login; ``client_args`` are Ice arguments for each
    ``omero.client`` (``--Ice.Default.InvocationTimeout=...``); ``sudo_ttl`` is the lifetime of a
    sudo session (OMERO ends it then, however active); ``call_timeout`` bounds this backend's own
    calls (pings, event context, logout).
    """

    name = "omero"

    def __init__(self, host: str, port: int = DEFAULT_PORT, secure: bool = True, *,
                 keepalive: float | None = None, group: str | int | None = None, client_args: Sequence[str] = (),
                 reuse_client: bool = True, sudo_ttl: float = 600.0, call_timeout: float = 30.0) -> None:
        self._config = Config(host, port, bool(secure), keepalive, group, tuple(client_args), bool(reuse_client),
                              sudo_ttl, call_timeout)
        self._remote = Remote(self._config)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._clients: set[Any] = set()  # opened here and not closed yet
        self._current: Login | None = None  # the process's login; its client stays for re-use
        interval = self._config.keepalive
        self._keepalive = KeepAlive(interval, self._keep) if interval else None

    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments that make this backend again (what a forked child inherits)."""
        return asdict(self._config)

    @property
    def last_keepalive(self) -> float | None:
        """``time.monotonic()`` of the keepalive thread's last successful ping (None: none yet)."""
        return self._keepalive.last_ping if self._keepalive else None

    def serves(self, name: str, options: dict[str, Any]) -> bool:
        try:
            return name == self.name and Config(**options) == self._config
        except (TypeError, ValueError):
            return False

    def validate_key(self, key: object) -> str:
        """A session UUID, in any letter case (OMERO issues lowercase; that form is returned)."""
        return validate_omero_key(key)

    # -- verbs -----------------------------------------------------------------------------------

    def login(self, username: str, password: str, *, host: str | None, agent: str | None) -> Login:
        if not _plausible(username) or not _plausible(password):
            raise AuthenticationError(_BAD_LOGIN)
        self._check_pid()
        client = self._new_client(agent)
        try:
            with self._remote("log in", denied=AuthenticationError(_BAD_LOGIN)):
                client.createSession(username, password)
        except BaseException:
            self._close_client(client)
            raise
        return self._attached(client, client.getSessionId(), host=host, sudo_by=None, configure=True)

    def resume(self, key: str) -> Login:
        key = self.validate_key(key)
        self._check_pid()
        with self._lock:
            current = self._current
        reusable = self._config.reuse_client and current is not None and hmac.compare_digest(current.key, key)
        if reusable and current is not None and current.extra.get("client") is not None:
            try:
                return _client.refreshed(current, self._remote)
            except SessionKeyError:
                self._release(current)
                raise
            except SessionError as exc:  # the connection, not the session: a new client decides
                log.info("re-using the client of session %s failed (%s); joining again", key[:8], exc)
        return self._join(key)  # adopt() then detaches the previous client, if any

    def _join(self, key: str) -> Login:
        client = self._new_client(None)
        try:
            with self._remote("join the session", denied=SessionKeyError(BAD_KEY)):
                client.joinSession(key)
        except BaseException:
            self._close_client(client)
            raise
        return self._attached(client, key, host=None, sudo_by=None)

    def touch(self, login: Login) -> Login:
        self._check_pid()
        try:
            self._ping(login)
        except SessionKeyError:
            self._release(login)
            raise
        except Detached:
            with self._lock:  # atomic against an adopt() of another login meanwhile
                if self._current is not login:
                    raise
                # The client lost its router session; the OMERO session may live on: join again
                # with a new client (on failure the old one stays, and so does the error).
                old, fresh = login.extra.get("client"), self._join(login.key)
                login.extra.pop("gateway", None)
                login.extra.update(fresh.extra)
                if old is not None:
                    self._close_client(old)
        login.last_access = _client.now()
        return login

    def logout(self, login: Login) -> None:
        self._check_pid()
        target = login
        try:
            try:
                self._kill_through(target)
            except Detached:  # our client no longer reaches it: close it through a new one
                self._release(login)
                target = self._join(login.key)
                self._kill_through(target)
        except SessionKeyError:
            pass  # already gone: nothing left to close
        self._release(target)
        self._release(login)

    def _kill_through(self, login: Login) -> None:
        with self._remote("log out"):
            _client.kill(self._remote.bounded(self._session_of(login).getSessionService()), login.key)

    def sudo(self, actor: Login, username: str, *, host: str | None, agent: str | None) -> Login:
        self._check_pid()
        refused = PermissionDenied(f"{actor.user_name} may not act as {username!r}: only OMERO administrators "
                                   "may (or there is no such user)")
        if not _plausible(username):
            raise refused
        principal = omero.sys.Principal(name=username, group="", eventType="User")
        with self._remote(f"open a session as {username!r}", refused=refused, invalid=refused):
            service = self._remote.bounded(self._session_of(actor).getSessionService())
            made = service.createSessionWithTimeout(principal, int(self._config.sudo_ttl * 1000))
        uuid = unwrap(made.getUuid())
        try:
            login = self.resume(uuid)
        except BaseException:
            with suppress(SessionError), self._remote("close the sudo session"):
                _client.kill(service, uuid)
            raise
        login.sudo_by = login.sudo_by if login.sudo_by is not None else actor.experimenter_id
        log.info("user %s (id %s) opened an OMERO session as %s", actor.user_name, actor.experimenter_id, username)
        return login

    def su(self, *, host: str | None, agent: str | None) -> Login:
        raise PermissionDenied("OMERO has no password-less super user login: log in as an OMERO administrator "
                               "and use SessionManager.sudo_session(username)")

    # -- the process's session -------------------------------------------------------------------

    def adopt(self, login: Login) -> None:
        self._check_pid()
        with self._lock:
            previous, self._current = self._current, login
        if previous is not None and previous.extra.get("client") is not login.extra.get("client"):
            self._release(previous)
        if self._keepalive is not None:
            self._keepalive.watch(login)

    def idle(self) -> None:
        if self._pid != os.getpid():
            return
        if self._keepalive is not None:
            self._keepalive.pause()
        with self._lock:
            current = self._current
        if current is None:
            return
        current.extra.pop("gateway", None)  # per unit of work: its options and caches go
        client = current.extra.get("client")
        if not self._config.reuse_client:
            self._release(current)
        elif client is not None:
            _groups.end_all_groups(current, client)

    def close(self) -> None:
        if self._pid != os.getpid():
            self.forget()
            return
        if self._keepalive is not None:
            self._keepalive.stop()
        with self._lock:
            clients, self._clients, self._current = list(self._clients), set(), None
        for client in clients:
            self._close_client(client)
        self._reset()  # usable again, with nothing open

    def forget(self) -> None:
        """In a forked child: park the parent's clients and start afresh, sending nothing."""
        with suppress(Exception):  # the lock may have been held by a parent thread: do not take it
            for client in list(self._clients):
                _parking.park(client)
            if self._current is not None and "gateway" in self._current.extra:
                _parking.park_gateway(self._current.extra["gateway"])
        self._reset()

    # -- OMERO specifics: the gateway and groups -------------------------------------------------

    def gateway(self, login: Login) -> Any:
        """A BlitzGateway on the login's client, made once per unit of work (no remote call)."""
        self._check_pid()
        return _groups.gateway(login, self._client_of(login))

    def set_group(self, login: Login, group: str | int) -> int:
        """Switch to one of the user's groups (a name or id) for the whole session, or to every
        group (-1) for this process's calls until the next ``idle()``; returns the group id."""
        if isinstance(group, bool) or not isinstance(group, (str, int)) or group == "":
            raise ValueError(f"a group is named by its name or its id, not {group!r}")
        self._check_pid()
        sf = self._session_of(login)
        return _groups.set_group(login, login.extra["client"], sf, self._remote, group)

    def groups(self, login: Login) -> list[GroupInfo]:
        """The user's groups as the server has them now (two calls): ``current`` is the session's
        group, ``leads`` the groups the user owns. For ``whoami`` and the stored group name."""
        self._check_pid()
        self._client_of(login)  # refuses a released or ended login before any call
        return _groups.groups(login, self._remote)

    # -- clients ---------------------------------------------------------------------------------

    def _check_pid(self) -> None:
        """A fork the hooks did not see (fork() from C): drop the parent's clients first."""
        if self._pid != os.getpid():
            self.forget()

    def _new_client(self, agent: str | None) -> Any:
        config = self._config
        try:
            client = omero.client(host=config.host, port=config.port, args=list(config.client_args))
        except (omero.ClientError, Ice.Exception) as exc:
            raise ConfigurationError(f"cannot set up an OMERO client for {config.where}: {describe(exc)}") from exc
        client.setAgent(agent or "ome-session")
        self._opened(client)
        return client

    def _opened(self, client: Any) -> None:
        with self._lock:
            self._clients.add(client)
        _parking.OPEN.add(client)

    def _close_client(self, client: Any) -> None:
        """Destroy a client's communicator; its session lives on (detachOnDestroy)."""
        with self._lock:
            self._clients.discard(client)
        _parking.OPEN.discard(client)
        if self._pid != os.getpid():
            _parking.park(client)
            return
        try:
            client.closeSession()
        except Exception as exc:  # the server may be gone; the communicator is destroyed anyway
            log.debug("closing an OMERO client: %s", describe(exc))

    def _release(self, login: Login) -> None:
        """Let go of a login's client (detach, never kill) and stop treating it as current."""
        client = login.extra.pop("client", None)
        login.extra.pop("gateway", None)
        with self._lock:
            if self._current is login:
                self._current = None
        if self._keepalive is not None and self._current is None:
            self._keepalive.pause()
        if client is not None:
            self._close_client(client)

    def _attached(self, client: Any, key: str, *, host: str | None, sudo_by: int | None,
                  configure: bool = False) -> Login:
        """The Login of a client that just created or joined ``key``; the client is closed (and a
        session it created killed) if anything fails, so nothing of a failed attempt sticks."""
        try:
            with self._remote("set up the session"):
                client.getSession().detachOnDestroy()
                if not self._config.secure:
                    client = self._insecure(client)
                login = _client.login_of(client, key, self._remote, host=host)
            if configure and self._config.group is not None:
                self.set_group(login, self._config.group)
        except BaseException:
            if configure:  # a session we created and cannot hand over must not stay open
                with suppress(Exception):
                    _client.kill(self._remote.bounded(client.getSession().getSessionService()), key)
            self._close_client(client)
            raise
        if login.sudo_by is None:
            login.sudo_by = sudo_by
        return login

    def _insecure(self, client: Any) -> Any:
        """The same session on the server's insecure (tcp) router, as BlitzGateway(secure=False)."""
        plain = client.createClient(False)
        self._opened(plain)
        try:
            plain.getSession().detachOnDestroy()
        finally:
            self._close_client(client)
        return plain

    def _keep(self, login: Login) -> None:
        """The keepalive thread's ping: ``touch`` while ``login`` is the process's session."""
        with self._lock:
            if self._current is not login:
                return
        self.touch(login)

    def _ping(self, login: Login) -> None:
        """One cheap call through the login's client; SessionKeyError once the session is gone."""
        with ending(login), self._remote("keep the session alive"):
            self._remote.bounded(self._session_of(login)).keepAlive(None)

    def _session_of(self, login: Login) -> Any:
        client = self._client_of(login)
        try:
            return client.getSession()
        except omero.ClientError:
            raise Detached("this OMERO session's client was closed: resume it again") from None

    def _client_of(self, login: Login) -> Any:
        if login.extra.get("ended"):
            raise SessionKeyError(BAD_KEY + " (it ended on the server)")
        client = login.extra.get("client")
        if client is None:
            raise Detached("this OMERO session is no longer attached in this process: resume it with "
                           "SessionManager(...).create_session(key=...)")
        return client
