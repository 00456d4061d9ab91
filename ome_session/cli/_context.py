"""What a command needs of a backend, behind one interface: ``Context``.

The commands (``_login``, ``_sessions``) are written once; each backend answers the few questions
where they differ: its key store, how a stored entry is resumed and ended, where a login goes, and
what a session is (its groups, its role). ``LocalContext`` is the local database's;
``_omero.OmeroContext`` the OMERO backend's (``--backend omero``).
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from .. import _maintenance, _tty
from ..backends import NAMES, GroupInfo
from ..errors import NoSessionError, SessionKeyError
from ..keystore import KeyStore, StoredSession
from ..manager import SessionManager
from ..session import Session
from . import _output

BACKEND_ENV = "OME_SESSION_BACKEND"
PASSWORD_ENV = "OME_SESSION_PASSWORD"
OMERO_ARGS_ENV = "OME_SESSION_OMERO_ARGS"  # Ice arguments for each omero.client, shell-quoted
BACKENDS = NAMES


@dataclass(frozen=True)
class Asked:
    """Where a login should go, as given on the command line (None: not given)."""

    server: str | None
    port: int | None
    user: str | None


@dataclass(frozen=True)
class Target:
    """Where a login goes: the server (a label, for the local backend), its port, and the user."""

    server: str
    port: int | None
    user: str | None


class Context(ABC):
    """What every command needs, made on first use: a command that needs no database makes none."""

    backend: ClassVar[str] = "local"  # its name in the backend registry
    remote: ClassVar[bool] = False  # stored entries may name several servers, some unreachable
    login_command: ClassVar[str] = "`ome-session login`"
    unsupported: ClassVar[Mapping[str, str]] = {}  # command (or "command subcommand") -> why this backend has none
    password_envs: ClassVar[tuple[str, ...]] = (PASSWORD_ENV,)  # where a login's password may come from, in order

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def run(self) -> int:
        command = " ".join(filter(None, (self.args.command, getattr(self.args, "subcommand", None))))
        why = self.unsupported.get(command) or self.unsupported.get(self.args.command)
        if why is not None:
            raise ValueError(f"this command is for the local backend: {why}")
        return int(self.args.handler(self))

    # -- the key store and its entries -----------------------------------------------------------

    @property
    @abstractmethod
    def store(self) -> KeyStore:
        """This backend's key store."""

    @abstractmethod
    def ours(self, entry: StoredSession) -> bool:
        """Whether a stored key was made where this run logs in, so trying it tells if it lives."""

    @abstractmethod
    def resume(self, entry: StoredSession) -> Session:
        """The stored entry's session, resumed; ``SessionKeyError`` if it has ended."""

    @abstractmethod
    def logout(self, session: Session) -> None:
        """End the session for good."""

    def current(self) -> tuple[Session, StoredSession]:
        """The current stored session, resumed; ``NoSessionError`` saying why when there is none."""
        entry = self.store.current()
        if entry is None:
            raise NoSessionError(self._not_logged_in())
        where = f"{entry.user}@{_output.server(entry)}"
        if not self.ours(entry):
            raise NoSessionError(self._not_ours(entry, where))
        try:
            return self.resume(entry), entry
        except SessionKeyError:
            raise NoSessionError(f"not logged in: the session of {where} has expired or was logged out; "
                                 f"run {self.login_command}") from None

    def _not_logged_in(self) -> str:
        return f"not logged in: run {self.login_command}"

    def _not_ours(self, entry: StoredSession, where: str) -> str:
        return f"the current session ({where}) was made elsewhere: log in again"

    # -- logging in ------------------------------------------------------------------------------

    def check_login_options(self) -> None:  # noqa: B027  (most backends take every option)
        """Refuse login options this backend has no use for, before anything is asked."""

    @abstractmethod
    def target(self, asked: Asked, current: StoredSession | None) -> Target:
        """Where a login goes (this backend's defaults for what was not asked); ``ValueError`` for
        names the key store cannot hold, before anything is asked of a server."""

    @abstractmethod
    def stored(self, asked: Asked, target: Target, current: StoredSession | None,
               sudo: str | None) -> list[StoredSession]:
        """Stored entries a login without a password may join, the best first."""

    @abstractmethod
    def manager_for(self, target: Target) -> SessionManager:
        """The manager that logs in to ``target``."""

    @abstractmethod
    def end_key(self, session: Session, key: str) -> None:
        """End another session by its key (a sudoer's own, once it has opened ``session``)."""

    @abstractmethod
    def remember(self, session: Session, target: Target, *, group: str | None, sudo: str | None) -> StoredSession:
        """Store the session (``group``: its group's name, if it was switched) and make it current."""

    # -- what a session is -----------------------------------------------------------------------

    def switch_group(self, session: Session, group: str) -> GroupInfo | None:
        """Make ``group`` (a name or id) the session's; the group, as the server now knows it."""
        switched = session.set_group(group)
        return switched or next((g for g in session.groups() if g.current), None)

    def role(self, session: Session) -> str:
        login = session.login
        assert login is not None
        return "super user" if login.is_super else "admin" if login.is_admin else "user"

    def sudoer(self, session: Session, entry: StoredSession) -> str | None:
        """The name of who opened the session for its user, if known."""
        login = session.login
        return (login.sudoer_name if login is not None else None) or entry.sudo


class LocalContext(Context):
    """The local backend's: keys of our own database, in our own key store."""

    @cached_property
    def manager(self) -> SessionManager:
        # "local" said outright: the settings file's backend is not the command's
        return SessionManager(self.args.dsn, backend="local", agent="ome-session")

    @property
    def database(self) -> str:
        return _tty.database_label(self.manager.settings.dsn)

    @cached_property
    def store(self) -> KeyStore:
        return KeyStore()

    def ours(self, entry: StoredSession) -> bool:
        return _tty.same_database(entry, self.database, self.manager.settings.backend)

    def resume(self, entry: StoredSession) -> Session:
        return self.manager.create_session(key=entry.key)

    def logout(self, session: Session) -> None:
        self.manager.logout(session)

    def _not_ours(self, entry: StoredSession, where: str) -> str:
        return (f"the current session ({where}) belongs to database {entry.extra.get(_tty.DATABASE_FIELD)}, "
                f"not {self.database}: log in again, or pass the --dsn it was made with")

    def check_login_options(self) -> None:
        if self.args.insecure:
            raise ValueError("--insecure is for OMERO servers (--backend omero)")

    def target(self, asked: Asked, current: StoredSession | None) -> Target:
        server = asked.server or _tty.DEFAULT_SERVER  # a label: the database is the configured one
        self.store.file_for(StoredSession(server=server, user=asked.user or "-", key="0" * 32, port=asked.port))
        return Target(server, asked.port, asked.user)

    def stored(self, asked: Asked, target: Target, current: StoredSession | None,
               sudo: str | None) -> list[StoredSession]:
        if target.user is None:
            return []
        return _tty.candidates(self.store, server=target.server, user=target.user, database=self.database,
                               sudo=sudo, port=target.port, backend=self.manager.settings.backend)

    def manager_for(self, target: Target) -> SessionManager:
        return self.manager

    def end_key(self, session: Session, key: str) -> None:
        _maintenance.revoke_key(session, key)

    def remember(self, session: Session, target: Target, *, group: str | None, sudo: str | None) -> StoredSession:
        if group is None:
            group = next((g.name for g in session.groups() if g.current), None)
        return _tty.remember(self.store, session, server=target.server, database=self.database,
                             port=target.port, group=group, sudo=sudo)
