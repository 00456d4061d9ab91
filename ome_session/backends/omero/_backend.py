"""``OmeroBackend``: the verbs of the backend interface, on an OMERO.server through omero-py."""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict
from typing import Any

from ... import _fork
from ..._keys import validate_omero_key
from ...errors import AuthenticationError, ConfigurationError, PermissionDenied, SessionError, SessionKeyError
from .. import BAD_LOGIN, AuthBackend, GroupInfo, Login, idle_seconds, plausible
from . import _client, _groups, _parking
from ._config import DEFAULT_PORT, Config
from ._errors import BAD_KEY, Detached, Remote, describe, describe_err, ending
from ._handle import OmeroHandle
from ._ice import Ice, omero, rlong, unwrap
from ._keepalive import KeepAlive

log = logging.getLogger(__name__)

OmeroLogin = Login[OmeroHandle]

# How long a command submitted to the server (omero.cmd) is waited for: as omero-py's default.
_CMD_LOOPS, _CMD_WAIT_MS = 10, 500


class OmeroBackend(AuthBackend[OmeroHandle]):
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
        _fork.register(self)

    def _reset(self) -> None:
        self._lock = threading.RLock()
        self._clients: set[Any] = set()  # opened here and not closed yet
        self._current: OmeroLogin | None = None  # the process's login; its client stays for re-use
        interval = self._config.keepalive
        self._keepalive = KeepAlive(interval, self._keep) if interval else None

    def _reset_after_fork_in_child(self) -> None:
        """Park the parent's clients (and a gateway the user may still hold), send nothing, and
        start afresh. The lock is not taken: a thread of the parent may have held it."""
        for client in list(self._clients):
            _parking.park(client)
        if self._current is not None and self._current.handle.gateway is not None:
            _parking.park_gateway(self._current.handle.gateway)
        self._reset()

    # -- where it is -----------------------------------------------------------------------------

    @property
    def options(self) -> dict[str, Any]:
        return asdict(self._config)

    def serves(self, options: dict[str, Any]) -> bool:
        try:
            return Config(**options) == self._config
        except (TypeError, ValueError):
            return False

    @property
    def last_keepalive(self) -> float | None:
        """``time.monotonic()`` of the keepalive thread's last successful ping (None: none yet)."""
        return self._keepalive.last_ping if self._keepalive else None

    def validate_key(self, key: object) -> str:
        """A session UUID, in any letter case (OMERO issues lowercase; that form is returned)."""
        return validate_omero_key(key)

    # -- verbs -----------------------------------------------------------------------------------

    def login(self, username: str, password: str, *, host: str | None, agent: str | None) -> OmeroLogin:
        if not plausible(username) or not plausible(password):
            raise AuthenticationError(BAD_LOGIN)
        client = self._new_client(agent)
        try:
            with self._remote("log in", denied=AuthenticationError(BAD_LOGIN)):
                client.createSession(username, password)
        except BaseException:
            self._close_client(client)
            raise
        return self._attached(client, client.getSessionId(), host=host, sudo_by=None, configure=True)

    def resume(self, key: str) -> OmeroLogin:
        key = self.validate_key(key)
        with self._lock:
            current = self._current
        reusable = self._config.reuse_client and current is not None and hmac.compare_digest(current.key, key)
        if reusable and current is not None and current.handle.client is not None:
            try:
                return _client.refreshed(current, self._remote)
            except SessionKeyError:
                self._release(current)
                raise
            except SessionError as exc:  # the connection, not the session: a new client decides
                log.info("re-using the client of session %s failed (%s); joining again", key[:8], exc)
        return self._join(key)  # begin() then detaches the previous client, if any

    def _join(self, key: str) -> OmeroLogin:
        client = self._new_client(None)
        try:
            with self._remote("join the session", denied=SessionKeyError(BAD_KEY)):
                client.joinSession(key)
        except BaseException:
            self._close_client(client)
            raise
        return self._attached(client, key, host=None, sudo_by=None)

    def touch(self, login: OmeroLogin) -> OmeroLogin:
        try:
            self._ping(login)
        except SessionKeyError:
            self._release(login)
            raise
        except Detached:
            with self._lock:  # atomic against a begin() of another login meanwhile
                if self._current is not login:
                    raise
                # The client lost its router session; the OMERO session may live on: join again
                # with a new client (on failure the old one stays, and so does the error).
                old, fresh = login.handle.client, self._join(login.key)
                login.handle = fresh.handle
                if old is not None:
                    self._close_client(old)
        login.last_access = _client.now()
        return login

    def logout(self, login: OmeroLogin) -> None:
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
        login.closed_at = _client.now()
        self._release(target)
        self._release(login)

    def _kill_through(self, login: OmeroLogin) -> None:
        with self._remote("log out"):
            _client.kill(self._remote.bounded(self._session_of(login).getSessionService()), login.key)

    def sudo(self, actor: OmeroLogin, username: str, *, host: str | None, agent: str | None) -> OmeroLogin:
        refused = PermissionDenied(f"{actor.user_name} may not act as {username!r}: only OMERO administrators "
                                   "may (or there is no such user)")
        if not plausible(username):
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

    def su(self, *, host: str | None, agent: str | None) -> OmeroLogin:
        raise PermissionDenied("OMERO has no password-less super user login: log in as an OMERO administrator "
                               "and use SessionManager.sudo_session(username)")

    # -- the unit of work ------------------------------------------------------------------------

    def begin(self, login: OmeroLogin) -> None:
        """``login`` becomes the process's session: release the previous one (detach, not kill)."""
        with self._lock:
            previous, self._current = self._current, login
        if previous is not None and previous.handle.client is not login.handle.client:
            self._release(previous)
        if self._keepalive is not None:
            self._keepalive.watch(login)

    def idle(self) -> None:
        if self._keepalive is not None:
            self._keepalive.pause()
        with self._lock:
            current = self._current
        if current is None:
            return
        current.handle.gateway = None  # per unit of work: its options and caches go
        client = current.handle.client
        if not self._config.reuse_client:
            self._release(current)
        elif client is not None:
            _groups.end_all_groups(current, client)

    def close(self) -> None:
        if not _fork.owned():
            return  # a fork the hook missed: the protocol has parked the parent's clients
        if self._keepalive is not None:
            self._keepalive.stop()
        with self._lock:
            clients, self._clients, self._current = list(self._clients), set(), None
        for client in clients:
            self._close_client(client)
        self._reset()  # usable again, with nothing open

    def forget(self) -> None:
        """Let go of every client without closing or detaching it."""
        self._reset_after_fork_in_child()

    # -- OMERO specifics: the gateway and groups -------------------------------------------------

    def gateway(self, login: OmeroLogin) -> Any:
        """A BlitzGateway on the login's client, made once per unit of work (no remote call)."""
        return _groups.gateway(login, self._client_of(login))

    def set_group(self, login: OmeroLogin, group: str | int) -> GroupInfo | None:
        """Switch to one of the user's groups (a name or id) for the whole session, or to every
        group (-1) for this process's calls until the next ``idle()``."""
        if isinstance(group, bool) or not isinstance(group, (str, int)) or group == "":
            raise ValueError(f"a group is named by its name or its id, not {group!r}")
        sf = self._session_of(login)
        _groups.set_group(login, login.handle.client, sf, self._remote, group)
        return None  # its name, and whether the user leads it, the server knows: ask groups()

    def set_idle_timeout(self, login: OmeroLogin, seconds: int) -> int:
        """The session's timeToIdle, changed as ``omero sessions timeout`` does: an
        ``UpdateSessionTimeoutRequest`` submitted to the server, which decides what is allowed."""
        seconds = idle_seconds(seconds)
        client = self._client_of(login)
        request = omero.cmd.UpdateSessionTimeoutRequest(session=login.key, timeToIdle=rlong(seconds * 1000))
        with ending(login.handle), self._remote("change the idle timeout"):
            try:
                callback = client.submit(request, loops=_CMD_LOOPS, ms=_CMD_WAIT_MS)
            except omero.CmdError as exc:
                raise PermissionDenied(f"the OMERO server refused an idle timeout of {seconds} s for this session "
                                       f"({describe_err(exc.err)})") from None
            callback.close(True)
        login.idle_timeout = seconds
        return seconds

    def set_message(self, login: OmeroLogin, message: str | None) -> None:
        raise SessionError("OMERO.blitz offers its clients no call that changes a session's message")

    def groups(self, login: OmeroLogin) -> list[GroupInfo]:
        """The user's groups as the server has them now (two calls): ``current`` is the session's
        group, ``leads`` the groups the user owns. For ``whoami`` and the stored group name."""
        self._client_of(login)  # refuses a released or ended login before any call
        return _groups.groups(login, self._remote)

    # -- clients ---------------------------------------------------------------------------------

    def _new_client(self, agent: str | None) -> Any:
        _fork.owned()  # after a fork the hook missed, the parent's clients are parked first
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
        if not _fork.owned():
            _parking.park(client)
            return
        try:
            client.closeSession()
        except Exception as exc:  # the server may be gone; the communicator is destroyed anyway
            log.debug("closing an OMERO client: %s", describe(exc))

    def _release(self, login: OmeroLogin) -> None:
        """Let go of a login's client (detach, never kill) and stop treating it as current."""
        client, login.handle.client, login.handle.gateway = login.handle.client, None, None
        with self._lock:
            if self._current is login:
                self._current = None
        if self._keepalive is not None and self._current is None:
            self._keepalive.pause()
        if client is not None:
            self._close_client(client)

    def _attached(self, client: Any, key: str, *, host: str | None, sudo_by: int | None,
                  configure: bool = False) -> OmeroLogin:
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

    def _keep(self, login: OmeroLogin) -> None:
        """The keepalive thread's ping: ``touch`` while ``login`` is the process's session."""
        with self._lock:
            if self._current is not login:
                return
        self.touch(login)

    def _ping(self, login: OmeroLogin) -> None:
        """One cheap call through the login's client; SessionKeyError once the session is gone."""
        with ending(login.handle), self._remote("keep the session alive"):
            self._remote.bounded(self._session_of(login)).keepAlive(None)

    def _session_of(self, login: OmeroLogin) -> Any:
        client = self._client_of(login)
        try:
            return client.getSession()
        except omero.ClientError:
            raise Detached("this OMERO session's client was closed: resume it again") from None

    def _client_of(self, login: OmeroLogin) -> Any:
        """The door to the server: a login's client, if this process may use it."""
        if not _fork.owned():
            raise Detached("this OMERO session was opened by the process this one was forked from: "
                           "log in again with SessionManager(...).reattach()")
        if login.handle.ended:
            raise SessionKeyError(BAD_KEY + " (it ended on the server)")
        client = login.handle.client
        if client is None:
            raise Detached("this OMERO session is no longer attached in this process: resume it with "
                           "SessionManager(...).create_session(key=...)")
        return client


BACKEND = OmeroBackend
