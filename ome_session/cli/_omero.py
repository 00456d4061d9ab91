"""``ome-session --backend omero``: log in to an OMERO.server, with the omero CLI's own key store.

The entries are the ``omero`` CLI's (``OmeroSessionStore``: $OMERO_SESSIONDIR, else
$OMERO_USERDIR/sessions, else ~/omero/sessions), so ``omero sessions list`` shows our logins and
``ome-session login`` joins the current ``omero login`` session while it lives, as ``omero login``
does. SERVER is the server's name or a ``tcp://`` / ``ssl://`` URL, PORT its Glacier2 router port
(default 4064). Every omero.client also gets the Ice arguments in $OME_SESSION_OMERO_ARGS
(shell-quoted, e.g. ``--Ice.Default.InvocationTimeout=30000``). Logging out kills the session on
the server, for every holder; anything else only detaches from it.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Mapping
from contextlib import suppress
from functools import cached_property
from typing import ClassVar

from .._tty import DEFAULT_SERVER
from ..backends import GroupInfo
from ..backends.omero import DEFAULT_PORT
from ..errors import SessionError
from ..keystore import OmeroSessionStore, StoredSession
from ..manager import SessionManager
from ..omero_login import remember_omero_login
from ..session import Session
from ._context import OMERO_ARGS_ENV, PASSWORD_ENV, Asked, Context, Target

OMERO_PASSWORD_ENV = "OMERO_PASSWORD"  # the omero command's, read after ours
_ALL_GROUPS = "-1"
_PROBE_KEY = "00000000-0000-4000-8000-000000000000"  # stands in for a key when checking names


class OmeroContext(Context):
    """Each stored entry names its own server, and is resumed by joining it there."""

    backend = "omero"
    remote = True
    login_command = "`ome-session login --backend omero`"
    unsupported: ClassVar[Mapping[str, str]] = {
        "sessions purge": "OMERO keeps and purges its own sessions",
        "sessions timeout": "the OMERO server sets its session timeouts",
        "sessions who": "the OMERO server lists its sessions with `omero sessions who`",
        "user": "OMERO users are administered with the server's own tools (`omero user`)",
        "group": "OMERO groups are administered with the server's own tools (`omero group`)",
    }
    password_envs: ClassVar[tuple[str, ...]] = (PASSWORD_ENV, OMERO_PASSWORD_ENV)

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.client_args = _ice_args()

    @cached_property
    def store(self) -> OmeroSessionStore:
        return OmeroSessionStore()

    def _manager(self, server: str, port: int | None, *, secure: bool = True) -> SessionManager:
        return SessionManager(backend="omero", host=server, port=port or DEFAULT_PORT, secure=secure,
                              client_args=self.client_args, agent="ome-session")

    def ours(self, entry: StoredSession) -> bool:
        return True  # every entry names its own server, and joining it there decides

    def resume(self, entry: StoredSession) -> Session:
        return self._manager(entry.server, entry.port).create_session(key=entry.key)

    def logout(self, session: Session) -> None:
        SessionManager(backend="omero").logout(session)  # kills it on the server the session is on

    def _not_logged_in(self) -> str:
        return (f"not logged in to an OMERO server (no current session in {self.store.directory}): "
                f"run {self.login_command}")

    def check_login_options(self) -> None:
        if self.args.group is not None:
            _one_group(self.args.group)

    def target(self, asked: Asked, current: StoredSession | None) -> Target:
        server, port = asked.server, asked.port
        if server is None:  # as omero login: the last server is the default, then localhost
            server = current.server if current is not None else DEFAULT_SERVER
            port = port or (current.port if current is not None else None)
        self.store.file_for(StoredSession(server=server, user=asked.user or "-", key=_PROBE_KEY, port=port,
                                          backend="omero"))
        return Target(server, port, asked.user)

    def stored(self, asked: Asked, target: Target, current: StoredSession | None,
               sudo: str | None) -> list[StoredSession]:
        """The current session first (what ``omero login`` with no arguments joins), then the
        others of the same server and user; what was not asked matches anything."""
        def fits(e: StoredSession) -> bool:
            return (asked.server in (None, e.server) and asked.user in (None, e.user) and sudo in (None, e.sudo)
                    and asked.port in (None, e.port or DEFAULT_PORT))

        entries = [current] if current is not None and fits(current) else []
        server = asked.server or (current.server if current is not None else None)
        user = asked.user or (current.user if current is not None and current.server == server else None)
        if server is not None and user is not None:
            entries += [e for e in self.store.list() if (e.server, e.user) == (server, user) and fits(e)
                        and (current is None or e.key != current.key)]
        return entries

    def manager_for(self, target: Target) -> SessionManager:
        return self._manager(target.server, target.port, secure=not self.args.insecure)

    def end_key(self, session: Session, key: str) -> None:
        backend = session.backend
        with suppress(SessionError):
            backend.logout(backend.resume(key))

    def remember(self, session: Session, target: Target, *, group: str | None, sudo: str | None) -> StoredSession:
        return remember_omero_login(session, self.store, group=group)

    def switch_group(self, session: Session, group: str) -> GroupInfo | None:
        return super().switch_group(session, _one_group(group))

    def role(self, session: Session) -> str:
        login = session.login
        assert login is not None
        return ("full admin" if login.is_super else "admin" if login.is_admin
                else "guest" if login.is_guest else "user")


def _one_group(group: str) -> str:
    if group == _ALL_GROUPS:
        raise ValueError("name one group (a name or id): -1, every group, lasts one call only")
    return group


def _ice_args() -> tuple[str, ...]:
    """$OME_SESSION_OMERO_ARGS, split as a shell would: Ice properties, ``--Name=value`` each."""
    try:
        args = shlex.split(os.environ.get(OMERO_ARGS_ENV, ""))
    except ValueError as exc:
        raise ValueError(f"{OMERO_ARGS_ENV} cannot be split into arguments: {exc}") from None
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"{OMERO_ARGS_ENV} holds Ice properties such as --Ice.Default.InvocationTimeout=30000, "
                             f"not {arg!r}")
    return tuple(args)
