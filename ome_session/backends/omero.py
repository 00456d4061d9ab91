"""The OMERO backend (the ``[omero]`` extra): sessions of an OMERO.server, through omero-py.

The session key is the OMERO session UUID; the server checks passwords, keeps the sessions and
enforces permissions (so ``Login.acl`` is None). Each ``omero.client`` is one Ice communicator
(threads, a connection) attached to one session; this module decides when clients are made,
re-used and released:

- every client we make calls ``detachOnDestroy``: blitz would otherwise end a session when the
  last client holding it closes, and ``idle()`` or a process exit must never log a user out;
- ``idle()`` keeps the worker's client attached, so the next resume of the same key costs one
  call instead of a new communicator and a full join (``reuse_client=False`` detaches instead);
  a different key joins with a new client and the previous one is detached (at most one idle
  client per process);
- ``logout`` kills the session on the server (every reference), then closes our client;
- a forked child never closes, detaches or calls through the parent's clients: they are parked
  (see ``_park``); the child logs in again with ``SessionManager(...).reattach()``.

No Ice exception leaves a public call: ``_translate`` maps each to our errors.
"""

from __future__ import annotations

import datetime
import hmac
import logging
import os
import re
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import (
    AuthenticationError,
    ConfigurationError,
    DatabaseUnavailable,
    NoSessionError,
    PermissionDenied,
    SessionError,
    SessionKeyError,
)

try:
    import Glacier2
    import Ice
    import omero
    import omero.clients
    import omero.model.enums
    from omero.rtypes import unwrap
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ConfigurationError(
        f"the OMERO backend needs the [omero] extra ({exc}): run scripts/install-omero-extra"
    ) from exc

from . import AuthBackend, Login
from ._omero_keepalive import KeepAlive
from .local import _BAD_LOGIN, _plausible

if TYPE_CHECKING:
    from .._maintenance import GroupInfo
    from ..keystore import OmeroSessionStore, StoredSession
    from ..session import Session

log = logging.getLogger(__name__)

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_BAD_KEY = "OMERO session not accepted: it is unknown, expired or was closed; log in again"
_GUEST = "guest"  # OMERO's built-in guest account (Roles.guestName)
_ALL_GROUPS = -1
_MAX_CLOSES = 10_000  # closeSession calls a logout makes at most (one per reference)
# Every admin privilege this omero-py knows: holding all of them is OMERO's "full admin".
_ALL_PRIVILEGES = frozenset(
    getattr(omero.model.enums, n) for n in dir(omero.model.enums) if n.startswith("AdminPrivilege"))

# The session is over on the server: expired or killed.
_GONE = (omero.SessionTimeoutException, omero.RemovedSessionException)
# Our client's router session is gone: the OMERO session may be gone too, or live on (a dropped
# connection, a Glacier2 timeout). Only joining it again tells which.
_LOST = (Ice.ObjectNotExistException, Glacier2.SessionNotExistException)
# The server cannot be reached or did not answer in time.
_UNREACHABLE = (Ice.SocketException, Ice.TimeoutException, Ice.DNSException, Ice.SecurityException,
                Ice.ProtocolException)

# Fork handling (module state on purpose, like the session singleton): every client opened in
# this process, so the at-fork hook can park them all; and the parked parts, kept for ever.
_OPEN: weakref.WeakSet[Any] = weakref.WeakSet()
_PARKED: list[dict[str, Any]] = []


class _Detached(SessionError):
    """A client no longer reaches its session (see ``_LOST``); a new client decides."""


@dataclass(frozen=True)
class _Config:
    """What a backend is made from; two equal configs talk to the same server the same way."""

    host: str
    port: int = 4064
    secure: bool = True
    keepalive: float | None = None
    group: str | int | None = None
    client_args: tuple[str, ...] = ()
    reuse_client: bool = True
    sudo_ttl: float = 600.0
    call_timeout: float = 30.0

    def __post_init__(self) -> None:
        host = self.host
        if not isinstance(host, str) or not host or any(c.isspace() or not c.isprintable() for c in host):
            raise ValueError(f"host must be a server name or a tcp:// / ssl:// URL, not {self.host!r}")
        if type(self.port) is not int or not 0 < self.port < 65536:
            raise ValueError(f"port must be an integer from 1 to 65535, not {self.port!r}")
        for name in ("keepalive", "sudo_ttl", "call_timeout"):
            value = getattr(self, name)
            if (value is not None or name != "keepalive") and (
                    isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise ValueError(f"{name} must be a number of seconds above 0, not {value!r}")
        if isinstance(self.group, bool) or (self.group is not None and not isinstance(self.group, (str, int))):
            raise ValueError(f"group must be a group name or id, not {self.group!r}")
        if isinstance(self.client_args, str) or not all(isinstance(a, str) for a in self.client_args):
            raise ValueError("client_args must be a sequence of strings such as '--Ice.Default.Router=...'")
        object.__setattr__(self, "client_args", tuple(self.client_args))

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


class OmeroBackend(AuthBackend):
    """Logins against an OMERO.server (Glacier2 router at ``host``:``port``).

    ``keepalive`` (seconds) pings the active session from a daemon thread; ``group`` (name, id, or
    -1 for all groups) is switched to after every login; ``client_args`` are Ice arguments for each
    ``omero.client`` (``--Ice.Default.InvocationTimeout=...``); ``sudo_ttl`` is the lifetime of a
    sudo session (OMERO ends it then, however active); ``call_timeout`` bounds this backend's own
    calls (pings, event context, logout).
    """

    name = "omero"

    def __init__(self, host: str, port: int = 4064, secure: bool = True, *, keepalive: float | None = None,
                 group: str | int | None = None, client_args: Sequence[str] = (), reuse_client: bool = True,
                 sudo_ttl: float = 600.0, call_timeout: float = 30.0) -> None:
        self._config = _Config(host, port, bool(secure), keepalive, group, tuple(client_args), bool(reuse_client),
                               sudo_ttl, call_timeout)
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
            return name == self.name and _Config(**options) == self._config
        except (TypeError, ValueError):
            return False

    def validate_key(self, key: object) -> str:
        """A session UUID, in any letter case (OMERO issues lowercase; that form is returned)."""
        if not isinstance(key, str):
            raise SessionKeyError(f"an OMERO session key must be a string, not {type(key).__name__}")
        if _UUID.fullmatch(key) is None:
            raise SessionKeyError(f"malformed OMERO session key ({len(key)} characters): it is a UUID "
                                  "such as 0a1b2c3d-0000-4000-8000-00aa00bb00cc")
        return key.lower()

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
                return self._refreshed(current)
            except SessionKeyError:
                self._release(current)
                raise
            except SessionError as exc:  # the connection, not the session: a new client decides
                log.info("re-using the client of session %s failed (%s); joining again", key[:8], exc)
        return self._join(key)  # adopt() then detaches the previous client, if any

    def _join(self, key: str) -> Login:
        client = self._new_client(None)
        try:
            with self._remote("join the session", denied=SessionKeyError(_BAD_KEY)):
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
        except _Detached:
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
        login.last_access = _now()
        return login

    def logout(self, login: Login) -> None:
        self._check_pid()
        target = login
        try:
            try:
                self._kill_through(target)
            except _Detached:  # our client no longer reaches it: close it through a new one
                self._release(login)
                target = self._join(login.key)
                self._kill_through(target)
        except SessionKeyError:
            pass  # already gone: nothing left to close
        self._release(target)
        self._release(login)

    def _kill_through(self, login: Login) -> None:
        with self._remote("log out"):
            _kill(self._bounded(self._session_of(login).getSessionService()), login.key)

    def sudo(self, actor: Login, username: str, *, host: str | None, agent: str | None) -> Login:
        self._check_pid()
        refused = PermissionDenied(f"{actor.user_name} may not act as {username!r}: only OMERO administrators "
                                   "may (or there is no such user)")
        if not _plausible(username):
            raise refused
        principal = omero.sys.Principal(name=username, group="", eventType="User")
        with self._remote(f"open a session as {username!r}", refused=refused, invalid=refused):
            service = self._bounded(self._session_of(actor).getSessionService())
            made = service.createSessionWithTimeout(principal, int(self._config.sudo_ttl * 1000))
        uuid = unwrap(made.getUuid())
        try:
            login = self.resume(uuid)
        except BaseException:
            with suppress(SessionError), self._remote("close the sudo session"):
                _kill(service, uuid)
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
        elif client is not None and current.group_id == _ALL_GROUPS:
            with suppress(Exception):  # the all-groups context is per unit of work too
                client.getImplicitContext().remove("omero.group")
            current.group_id = current.extra.get("session_group_id")

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
                _park(client)
            if self._current is not None and "gateway" in self._current.extra:
                _park_gateway(self._current.extra["gateway"])
        self._reset()

    # -- OMERO specifics: the gateway and groups -------------------------------------------------

    def gateway(self, login: Login) -> Any:
        """A BlitzGateway on the login's client, made once per unit of work (no remote call)."""
        self._check_pid()
        client = self._client_of(login)
        gateway = login.extra.get("gateway")
        if gateway is None:
            from omero.gateway import BlitzGateway

            gateway = login.extra["gateway"] = BlitzGateway(client_obj=client)
        return gateway

    def set_group(self, login: Login, group: str | int) -> int:
        """Switch to one of the user's groups (a name or id) for the whole session, or to every
        group (-1) for this process's calls until the next ``idle()``; returns the group id."""
        if isinstance(group, bool) or not isinstance(group, (str, int)) or group == "":
            raise ValueError(f"a group is named by its name or its id, not {group!r}")
        self._check_pid()
        sf = self._session_of(login)
        client = login.extra["client"]
        context = client.getImplicitContext()
        gateway = login.extra.get("gateway")
        if str(group) == str(_ALL_GROUPS):
            context.put("omero.group", str(_ALL_GROUPS))
            gid = _ALL_GROUPS
        else:
            missing = ValueError(f"there is no OMERO group {group!r}")
            if isinstance(group, int) or group.isdigit():
                gid = int(group)
            else:
                with self._remote("look up the group", invalid=missing):
                    gid = unwrap(self._bounded(sf.getAdminService()).lookupGroup(group).getId())
            refused = PermissionDenied(f"{login.user_name} is not a member of group {group!r}")
            with self._remote("switch group", refused=refused, invalid=missing):
                for service in client.getStatefulServices():  # OMERO refuses while any is open
                    service.close()
                self._bounded(sf).setSecurityContext(omero.model.ExperimenterGroupI(gid, False))
            with suppress(Exception):
                context.remove("omero.group")
            login.extra["session_group_id"] = gid
        login.group_id = gid
        if gateway is not None:
            gateway._ctx = None  # its cached event context names the old group
            gateway.SERVICE_OPTS.setOmeroGroup(gid)
        return gid

    def groups(self, login: Login) -> list[GroupInfo]:
        """The user's groups as the server has them now (two calls): ``current`` is the session's
        group, ``leads`` the groups the user owns. For ``whoami`` and the stored group name."""
        from .._maintenance import GroupInfo

        self._check_pid()
        self._client_of(login)  # refuses a released or ended login before any call
        with _ending(login), self._remote("list the user's groups"):
            admin = login.extra["admin"]
            context = admin.getEventContext()
            contained = admin.containedGroups(login.experimenter_id)
        current = login.extra.get("session_group_id", context.groupId)
        leads = set(context.leaderOfGroups or ())
        return [GroupInfo(gid, unwrap(g.getName()), gid == current, gid in leads)
                for g in contained for gid in (unwrap(g.getId()),)]

    # -- helpers ---------------------------------------------------------------------------------

    def _check_pid(self) -> None:
        """A fork the hooks did not see (fork() from C): drop the parent's clients first."""
        if self._pid != os.getpid():
            self.forget()

    def _new_client(self, agent: str | None) -> Any:
        config = self._config
        try:
            client = omero.client(host=config.host, port=config.port, args=list(config.client_args))
        except (omero.ClientError, Ice.Exception) as exc:
            raise ConfigurationError(f"cannot set up an OMERO client for {config.where}: {_describe(exc)}") from exc
        client.setAgent(agent or "ome-session")
        with self._lock:
            self._clients.add(client)
        _OPEN.add(client)
        return client

    def _close_client(self, client: Any) -> None:
        """Destroy a client's communicator; its session lives on (detachOnDestroy)."""
        with self._lock:
            self._clients.discard(client)
        _OPEN.discard(client)
        if self._pid != os.getpid():
            _park(client)
            return
        try:
            client.closeSession()
        except Exception as exc:  # the server may be gone; the communicator is destroyed anyway
            log.debug("closing an OMERO client: %s", _describe(exc))

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
                login = self._login_of(client, key, host=host)
            if configure and self._config.group is not None:
                self.set_group(login, self._config.group)
        except BaseException:
            if configure:  # a session we created and cannot hand over must not stay open
                with suppress(Exception):
                    _kill(self._bounded(client.getSession().getSessionService()), key)
            self._close_client(client)
            raise
        if login.sudo_by is None:
            login.sudo_by = sudo_by
        return login

    def _insecure(self, client: Any) -> Any:
        """The same session on the server's insecure (tcp) router, as BlitzGateway(secure=False)."""
        plain = client.createClient(False)
        with self._lock:
            self._clients.add(plain)
        _OPEN.add(plain)
        try:
            plain.getSession().detachOnDestroy()
        finally:
            self._close_client(client)
        return plain

    def _login_of(self, client: Any, key: str, *, host: str | None) -> Login:
        sf = client.getSession()
        admin = self._bounded(sf.getAdminService())
        context = admin.getEventContext()
        session = self._bounded(sf.getSessionService()).getSession(key)
        started = _when(unwrap(session.getStarted()))
        ttl = unwrap(session.getTimeToLive()) or 0
        return Login(
            key=key, experimenter_id=context.userId, user_name=context.userName, group_id=context.groupId,
            started=started, last_access=_now(),
            expires_at=started + datetime.timedelta(milliseconds=ttl) if started and ttl > 0 else None,
            host=host, sudo_by=unwrap(context.sudoerId), is_admin=bool(context.isAdmin),
            is_guest=context.userName == _GUEST,
            is_super=bool(context.isAdmin) and set(context.adminPrivileges or ()) >= _ALL_PRIVILEGES,
            acl=None,
            extra={"client": client, "admin": admin, "session_group_id": context.groupId,
                   "group_name": context.groupName, "sudoer_name": unwrap(context.sudoerName),
                   "time_to_idle_ms": unwrap(session.getTimeToIdle()), "time_to_live_ms": ttl},
        )

    def _refreshed(self, login: Login) -> Login:
        """The same key again on our attached client: one call, which also slides the idle timer."""
        with _ending(login), self._remote("resume the session"):
            context = login.extra["admin"].getEventContext()
        login.experimenter_id, login.user_name = context.userId, context.userName
        login.group_id = context.groupId
        if context.groupId != _ALL_GROUPS:  # -1 is this client's context, not the session's group
            login.extra["session_group_id"] = context.groupId
        login.is_admin = bool(context.isAdmin)
        login.last_access = _now()
        return login

    def _keep(self, login: Login) -> None:
        """The keepalive thread's ping: ``touch`` while ``login`` is the process's session."""
        with self._lock:
            if self._current is not login:
                return
        self.touch(login)

    def _ping(self, login: Login) -> None:
        """One cheap call through the login's client; SessionKeyError once the session is gone."""
        with _ending(login), self._remote("keep the session alive"):
            self._bounded(self._session_of(login)).keepAlive(None)

    def _session_of(self, login: Login) -> Any:
        client = self._client_of(login)
        try:
            return client.getSession()
        except omero.ClientError:
            raise _Detached("this OMERO session's client was closed: resume it again") from None

    def _client_of(self, login: Login) -> Any:
        if login.extra.get("ended"):
            raise SessionKeyError(_BAD_KEY + " (it ended on the server)")
        client = login.extra.get("client")
        if client is None:
            raise _Detached("this OMERO session is no longer attached in this process: resume it with "
                            "SessionManager(...).create_session(key=...)")
        return client

    def _bounded(self, proxy: Any) -> Any:
        return proxy.ice_invocationTimeout(int(self._config.call_timeout * 1000))

    @contextmanager
    def _remote(self, action: str, *, denied: SessionError | None = None, refused: SessionError | None = None,
                invalid: Exception | None = None) -> Iterator[None]:
        """Every call to the server runs in here: Ice's exceptions become ours (see ``_translate``)."""
        try:
            yield
        except (Ice.Exception, omero.ClientError) as exc:
            raise _translate(exc, action, self._config.where, denied=denied, refused=refused, invalid=invalid) from exc


@contextmanager
def _ending(login: Login) -> Iterator[None]:
    """Remember a session found dead, so every later use of it says so (SessionKeyError)."""
    try:
        yield
    except SessionKeyError:
        login.extra["ended"] = True
        raise


def _translate(exc: BaseException, action: str, where: str, *, denied: SessionError | None,
               refused: SessionError | None, invalid: Exception | None) -> Exception:
    """Our error for an Ice or omero-py one. ``denied``: a refused login or join (Glacier2);
    ``refused``: a SecurityViolation; ``invalid``: an ApiUsageException or ValidationException."""
    if isinstance(exc, (Glacier2.PermissionDeniedException, Glacier2.CannotCreateSessionException)) and denied:
        return denied
    if isinstance(exc, _GONE):
        return SessionKeyError(_BAD_KEY)
    if isinstance(exc, _LOST):
        return _Detached(f"this process's OMERO client no longer reaches its session (trying to {action}): "
                         "resume it again")
    if isinstance(exc, omero.SecurityViolation):
        return refused or PermissionDenied(f"the OMERO server refused to {action}: {_describe(exc)}")
    if isinstance(exc, (omero.ApiUsageException, omero.ValidationException)) and invalid is not None:
        return invalid
    if isinstance(exc, _UNREACHABLE):
        return DatabaseUnavailable(f"OMERO server {where} cannot be reached (trying to {action}): {_describe(exc)}")
    return SessionError(f"OMERO could not {action}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    """One line for a message: the exception's name and its reason, without Ice's braces."""
    name = exc.ice_name() if isinstance(exc, Ice.Exception) else type(exc).__name__
    reason = getattr(exc, "reason", None) or getattr(exc, "message", None) or (
        "" if isinstance(exc, Ice.Exception) else str(exc))
    errno = getattr(exc, "error", None)
    if not reason and isinstance(errno, int) and errno > 0:
        reason = os.strerror(errno)
    return f"{name}: {' '.join(str(reason).split())}" if reason else name


def _kill(service: Any, uuid: str) -> int:
    """Close every reference to a session (ISession.closeSession until none is left)."""
    handle = omero.model.SessionI()
    handle.setUuid(omero.rtypes.rstring(uuid))
    for count in range(1, _MAX_CLOSES + 1):
        try:
            if service.closeSession(handle) <= 0:
                return count
        except omero.RemovedSessionException:
            return count
    return _MAX_CLOSES


def _park(client: Any) -> None:
    """Make a parent's client inert in a forked child, sending nothing on its connection.

    omero.client's ``__del__`` and ``closeSession`` would tell the router to destroy the session
    and tear the communicator down, over the socket the parent still uses (and its threads do
    not exist here). With its communicator, adapter and session set to None, every such path
    stops at once; the originals are kept referenced for ever so that none is deallocated here.
    """
    _OPEN.discard(client)
    parts = {}
    for part in ("ic", "oa", "sf", "cb", "resources", "previous"):
        name = f"_BaseClient__{part}"
        parts[part] = getattr(client, name, None)
        with suppress(AttributeError):
            setattr(client, name, None)
    _PARKED.append(parts)


def _park_gateway(gateway: Any) -> None:
    """A gateway the user still holds fails at once in the child (Ice.ConnectionLostException)
    instead of sending on the parent's connection, or waiting for an answer no thread reads."""
    from omero.gateway import NoProxies

    gateway._connected = False
    gateway._proxies = NoProxies()


def _park_all_in_child() -> None:
    for client in list(_OPEN):
        _park(client)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_park_all_in_child)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _when(ms: int | None) -> datetime.datetime | None:
    if not ms:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)


# -- the omero CLI's session store -----------------------------------------------------------------


def join_current_omero_login(store: OmeroSessionStore | None = None, **options: Any) -> Session:
    """Join the session of the last ``omero login`` (the omero CLI's store), as the process's.

    ``options`` go to the backend (``client_args``, ``keepalive``, ...); host and port come from
    the stored entry unless given. ``NoSessionError`` when there is none, ``SessionKeyError``
    when it has ended.
    """
    from ..keystore import OmeroSessionStore
    from ..manager import SessionManager

    store = store if store is not None else OmeroSessionStore()
    entry = store.current()
    if entry is None:
        raise NoSessionError(f"no current `omero login` session in {store.directory}: run `omero login` first")
    options.setdefault("host", entry.server)
    options.setdefault("port", entry.port or 4064)
    try:
        return SessionManager(backend="omero", **options).create_session(key=entry.key)
    except SessionKeyError:
        raise SessionKeyError(f"the current `omero login` session ({entry.user}@{entry.server}) has expired or "
                              "was logged out: run `omero login` again") from None


def remember_omero_login(session: Session, store: OmeroSessionStore | None = None) -> StoredSession:
    """Store an OMERO session in the omero CLI's format and make it current there, so ``omero``
    commands (and ``join_current_omero_login``) use it."""
    from ..keystore import OmeroSessionStore, StoredSession

    backend, login = session.backend, session._login
    if not isinstance(backend, OmeroBackend) or login is None:
        raise SessionError("only a logged-in OMERO session can be stored in the omero CLI's store")
    store = store if store is not None else OmeroSessionStore()
    tti = login.extra.get("time_to_idle_ms")
    entry = StoredSession(
        server=backend._config.host, user=login.user_name, key=login.key, port=backend._config.port,
        group=login.extra.get("group_name") or None, sudo=login.extra.get("sudoer_name") or None,
        timeout=tti // 1000 if tti else None, backend="omero",
    )
    store.add(entry)
    return entry
