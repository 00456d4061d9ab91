"""Logging in from a terminal: re-use a stored key if it still lives, else ask for a password.

Behind ``SessionManager.tty_login()`` and the ``ome-session login`` command. A typed password
lives only in memory for the one attempt it is typed for; what the key store keeps is the key
(files 0600, see ``keystore``), tagged with the database it belongs to, because a server name is
only a label: two databases may well both be "localhost".
"""

from __future__ import annotations

import getpass
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from psycopg.conninfo import conninfo_to_dict

from . import _prompt
from .errors import SessionKeyError
from .keystore import KeyStore, StoredSession

if TYPE_CHECKING:
    from ._settings import Settings
    from .session import Session


class Manager(Protocol):
    """What a terminal login needs of a ``SessionManager`` (which calls in here)."""

    @property
    def settings(self) -> Settings: ...

    def create_session(self, username: str | None = None, password: str | None = None, *,
                       key: Any = ..., host: str | None = None) -> Session: ...

    def logout(self, session: Session | None = None) -> None: ...

DEFAULT_SERVER = "localhost"
# The extra field of a stored entry that names its database (never a password: see database_label).
DATABASE_FIELD = "ome.database"


def database_label(dsn: str) -> str:
    """A name for the database a DSN points at: ``dbname@host:port``, without user or password."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # psycopg.ProgrammingError; connecting reports it properly later
        return "unknown"
    host = params.get("host") or params.get("hostaddr") or "default"
    label = f"{params.get('dbname') or 'default'}@{host}:{params.get('port') or 5432}"
    return "".join("?" if unicodedata.category(c) == "Cc" else c for c in label)


def same_database(entry: StoredSession, database: str, backend: str = "local") -> bool:
    """Whether a stored key can belong to ``database`` (entries without a tag are assumed to)."""
    return entry.backend == backend and entry.extra.get(DATABASE_FIELD, database) == database


def candidates(store: KeyStore, *, server: str, user: str, database: str, sudo: str | None = None,
               port: int | None = None, backend: str = "local") -> list[StoredSession]:
    """Stored entries that could log ``user`` in to ``server`` again, the current one first."""
    found = [s for s in store.list() if (s.server, s.user, s.sudo, s.port) == (server, user, sudo, port)
             and same_database(s, database, backend)]
    current = store.current()
    return sorted(found, key=lambda s: current is None or s.key != current.key)


def resume_stored(resume: Callable[[StoredSession], Session], store: KeyStore,
                  entries: list[StoredSession]) -> tuple[Session, StoredSession] | None:
    """The first entry whose key still lives, resumed; dead ones are removed from the store.

    A key the server rejects is closed for good, so forgetting it loses nothing.
    """
    for entry in entries:
        try:
            return resume(entry), entry
        except SessionKeyError:
            store.remove(entry)
    return None


def remember(store: KeyStore, session: Session, *, server: str, database: str, port: int | None = None,
             group: str | None = None, sudo: str | None = None) -> StoredSession:
    """Save the session's key (not its password: there is none to save) and make it current."""
    key, user = session.session_key, session.user_name
    if key is None or user is None:
        raise ValueError("only a logged-in session can be stored")
    backend = session.backend.name if session.backend is not None else "local"
    timeout = session.login.idle_timeout if session.login is not None else None  # the session's own
    entry = StoredSession(server=server, user=user, key=key, port=port, group=group, sudo=sudo,
                          timeout=timeout, backend=backend, extra={DATABASE_FIELD: database})
    store.add(entry)
    return entry


def tty_login(manager: Manager, *, server: str = DEFAULT_SERVER, user: str | None = None,
              store: KeyStore | None = None, prompt: _prompt.Prompt = getpass.getpass,
              attempts: int = _prompt.ATTEMPTS) -> Session:
    """Log in from a terminal: a live stored key first, else a password, saving the new key.

    Without ``user``, the user of the current stored entry for ``server`` is taken, else asked
    for. Raises ``AuthenticationError`` after ``attempts`` rejected passwords.
    """
    store = store if store is not None else KeyStore()
    database = database_label(manager.settings.dsn)
    if user is None:
        current = store.current()
        user = current.user if current is not None and current.server == server else _prompt.ask_user("pass user=NAME")
    found = resume_stored(lambda entry: manager.create_session(key=entry.key), store, candidates(
        store, server=server, user=user, database=database, backend=manager.settings.backend))
    if found is not None:
        store.set_current(found[1])
        return found[0]
    name = user
    session = _prompt.ask_password(lambda password: manager.create_session(name, password),
                                   prompt=prompt, attempts=attempts)
    try:
        remember(store, session, server=server, database=database)
    except BaseException:
        manager.logout(session)  # a key nobody can find again must not stay open
        raise
    return session
