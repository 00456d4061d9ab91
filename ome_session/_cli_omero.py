"""``ome-session --backend omero``: log in to an OMERO.server, with the omero CLI's own key store.

The entries are the ``omero`` CLI's (``OmeroSessionStore``: $OMERO_SESSIONDIR, else
$OMERO_USERDIR/sessions, else ~/omero/sessions), so ``omero sessions list`` shows our logins and
``ome-session login`` joins the current ``omero login`` session while it lives, as ``omero login``
does. SERVER is the server's name or a ``tcp://`` / ``ssl://`` URL, PORT its Glacier2 router port
(default 4064). Every omero.client also gets the Ice arguments in $OME_SESSION_OMERO_ARGS
(shell-quoted, e.g. ``--Ice.Default.InvocationTimeout=30000``). Logging out kills the session on
the server, for every holder; anything else only detaches from it.

Only what differs from the local backend lives here (login, whoami, sessions group);
``logout`` and ``sessions list|key|file|clear|keepalive`` are the local commands, run on this
context's store and ``resume``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
from collections.abc import Callable
from contextlib import suppress

from . import _keys, cli
from ._maintenance import GroupInfo
from ._tty import DEFAULT_SERVER
from .backends.omero import DEFAULT_PORT, OmeroBackend
from .errors import AuthenticationError, NoSessionError, SessionError, SessionKeyError
from .keystore import OmeroSessionStore, StoredSession
from .manager import SessionManager
from .session import Session

_ALL_GROUPS = "-1"
_PROBE_KEY = "00000000-0000-4000-8000-000000000000"  # stands in for a key when checking names
_LOCAL_ONLY = {
    cli._cmd_sessions_purge: "OMERO keeps and purges its own sessions",
    cli._cmd_sessions_timeout: "the OMERO server sets its session timeouts",
}


class OmeroContext(cli._Context):
    """The OMERO backend's context: its store is the omero CLI's, and an entry is resumed by
    joining its server (each entry names one), so the local handlers of ``logout`` and
    ``sessions`` work unchanged on it."""

    remote = True

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.client_args = _ice_args()
        self._omero_store: OmeroSessionStore | None = None

    def run(self, handler: cli.Handler) -> int:
        if handler in _LOCAL_ONLY:
            raise cli._Exit(2, f"this command is for the local backend: {_LOCAL_ONLY[handler]}")
        own = _OWN.get(handler)
        return own(self) if own is not None else handler(self)

    @property
    def store(self) -> OmeroSessionStore:
        if self._omero_store is None:
            self._omero_store = OmeroSessionStore()
        return self._omero_store

    @property
    def manager(self) -> SessionManager:
        raise SessionError("an OMERO login has no single manager: use manager_for(server, port)")

    def manager_for(self, server: str, port: int | None, *, secure: bool = True) -> SessionManager:
        return SessionManager(backend="omero", host=server, port=port or DEFAULT_PORT, secure=secure,
                              client_args=self.client_args, agent="ome-session")

    def ours(self, entry: StoredSession) -> bool:
        return True  # every entry names its own server, and joining it there decides

    def resume(self, entry: StoredSession) -> Session:
        return self.manager_for(entry.server, entry.port).create_session(key=entry.key)

    def logout(self, session: Session) -> None:
        SessionManager(backend="omero").logout(session)  # kills it on the server the session is on

    def current(self) -> tuple[Session, StoredSession]:
        entry = self.store.current()
        if entry is None:
            raise NoSessionError(f"not logged in to an OMERO server (no current session in "
                                 f"{self.store.directory}): run `ome-session login --backend omero`")
        try:
            return self.resume(entry), entry
        except SessionKeyError:
            raise NoSessionError(f"not logged in: the session of {entry.user}@{cli._server(entry)} has expired "
                                 "or was logged out; run `ome-session login --backend omero`") from None


# -- login ---------------------------------------------------------------------------------------


def login(ctx: OmeroContext) -> int:
    a = ctx.args
    if a.key is not None and (a.password is not None or a.sudo):
        raise ValueError("-k joins an existing session: it takes no password and no --sudo")
    if a.group == _ALL_GROUPS:
        raise ValueError("-g takes one group (a name or id): -1, every group, lasts one call only")
    server, port, user = cli._parse_target(a)
    store = ctx.store
    current = store.current()  # also refuses an unsafe store before the server is asked anything
    found = None
    if a.key is None and a.password is None:
        found = _stored(ctx, current, server=server, port=port, user=user, sudo=a.sudo)
    created = False
    if found is not None:
        session = found
    else:
        if server is None:  # as omero login: the last server is the default, then localhost
            server = current.server if current is not None else DEFAULT_SERVER
            port = port or (current.port if current is not None else None)
        store.file_for(StoredSession(server=server, user=user or "-", key=_PROBE_KEY, port=port, backend="omero"))
        manager = ctx.manager_for(server, port, secure=not a.insecure)
        if a.key is not None:
            session = _join(manager, a.key, user)
        else:
            if user is None:
                user = current.user if current is not None and current.server == server else cli._ask_user()
            name, sudo = user, a.sudo
            session = cli._with_password(a, lambda password: _authenticate(manager, name, password, sudo), sudo)
            created = True
    try:
        entry = _remember(session, store, a.group)
    except BaseException:
        if created:
            ctx.logout(session)  # a session nobody can find again must not stay open
        raise
    print(f"{'Created' if created else 'Joined'} session {_keys.key_prefix(entry.key)} "
          f"({entry.user}@{cli._server(entry)}). Idle timeout: {cli._minutes(entry.timeout)}. "
          f"Current group: {entry.group or '-'}")
    return 0


def _stored(ctx: OmeroContext, current: StoredSession | None, *, server: str | None, port: int | None,
            user: str | None, sudo: str | None) -> Session | None:
    """A live stored session fitting what was asked: the current one first (what ``omero login``
    with no arguments joins), then the others of the same server and user. Dead ones are removed:
    a session the server has ended never comes back."""
    def fits(e: StoredSession) -> bool:
        return (server in (None, e.server) and user in (None, e.user) and sudo in (None, e.sudo)
                and port in (None, e.port or DEFAULT_PORT))

    entries = [current] if current is not None and fits(current) else []
    server = server or (current.server if current is not None else None)
    user = user or (current.user if current is not None and current.server == server else None)
    if server is not None and user is not None:
        entries += [e for e in ctx.store.list() if (e.server, e.user) == (server, user) and fits(e)
                    and (current is None or e.key != current.key)]
    for entry in entries:
        try:
            return ctx.resume(entry)
        except SessionKeyError:
            ctx.store.remove(entry)
    return None


def _join(manager: SessionManager, key: str, user: str | None) -> Session:
    """Join by key (checked before anything is sent); the user, if given, must be its owner."""
    session = manager.create_session(key=key)
    if user is not None and session.user_name != user:
        Session.delete_instance(force=True)  # not ours to kill: only detach from it
        raise AuthenticationError(f"that session key belongs to another user than {user!r}")
    return session


def _authenticate(manager: SessionManager, user: str, password: str, sudo: str | None) -> Session:
    """A new session of ``user``; with ``sudo``, made by that admin, whose own session then ends."""
    if sudo is None:
        return manager.create_session(user, password)
    admin = manager.create_session(sudo, password)
    admin_key = admin.session_key
    assert admin_key is not None
    try:
        session = manager.sudo_session(user)
    except BaseException:
        manager.logout(admin)
        raise
    backend = session.backend
    assert backend is not None
    with suppress(SessionError):  # the admin's session was only a means: it is never stored, so end it
        backend.logout(backend.resume(admin_key))
    return session


def _remember(session: Session, store: OmeroSessionStore, group: str | None) -> StoredSession:
    """Switch to ``group`` if asked, then store the session in the omero CLI's format, current."""
    from .omero_login import remember_omero_login

    if group:
        session.set_group(group)
    entry = remember_omero_login(session, store)
    if group:  # the name the server has for it (the group may have been given by id)
        switched = _current_group(session)
        if switched is not None and switched.name != entry.group:
            entry = dataclasses.replace(entry, group=switched.name)
            store.add(entry)
    return entry


# -- whoami and groups ---------------------------------------------------------------------------


def whoami(ctx: OmeroContext) -> int:
    session, entry = ctx.current()
    login = session._login
    assert login is not None
    groups = _groups(session)
    role = ("full admin" if login.is_super else "admin" if login.is_admin
            else "guest" if login.is_guest else "user")
    names = ", ".join(g.name + "".join(f" ({m})" for m, on in (("current", g.current), ("leader", g.leads)) if on)
                      for g in groups)
    rows = [("user", f"{session.user_name} (id {session.experimenter_id}, {role})"),
            ("server", cli._server(entry)), ("groups", names or "-"),
            ("session", _keys.key_prefix(entry.key)), ("started", cli._when(session.started)),
            ("last access", cli._when(session.last_access))]
    if session.sudo_by is not None:
        sudoer = login.extra.get("sudoer_name") or entry.sudo
        rows.append(("sudo by", sudoer or f"experimenter id {session.sudo_by}"))
    for name, value in rows:
        print(f"{name + ':':<13}{value}")
    return 0


def group(ctx: OmeroContext) -> int:
    session, entry = ctx.current()
    if ctx.args.group == _ALL_GROUPS:
        raise ValueError("name one group (a name or id): -1, every group, lasts one call only")
    session.set_group(ctx.args.group)
    switched = _current_group(session)
    name = switched.name if switched is not None else ctx.args.group
    ctx.store.add(dataclasses.replace(entry, group=name))
    where = f" (id {switched.id})" if switched is not None else ""
    print(f"Now using group {name}{where}: new objects of {entry.user} go there")
    return 0


def _groups(session: Session) -> list[GroupInfo]:
    backend, login = session.backend, session._login
    if not isinstance(backend, OmeroBackend) or login is None:
        raise SessionError("not an OMERO session")
    return backend.groups(login)


def _current_group(session: Session) -> GroupInfo | None:
    return next((g for g in _groups(session) if g.current), None)


# -- the Ice arguments ---------------------------------------------------------------------------


def _ice_args() -> tuple[str, ...]:
    """$OME_SESSION_OMERO_ARGS, split as a shell would: Ice properties, ``--Name=value`` each."""
    name = cli._OMERO_ARGS_ENV
    try:
        args = shlex.split(os.environ.get(name, ""))
    except ValueError as exc:
        raise ValueError(f"{name} cannot be split into arguments: {exc}") from None
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"{name} holds Ice properties such as --Ice.Default.InvocationTimeout=30000, "
                             f"not {arg!r}")
    return tuple(args)


_OWN: dict[cli.Handler, Callable[[OmeroContext], int]] = {
    cli._cmd_login: login,
    cli._cmd_whoami: whoami,
    cli._cmd_sessions_group: group,
}
