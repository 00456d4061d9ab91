"""Sessions shared with the ``omero`` command-line client, through its own session store.

``join_current_omero_login()`` makes the session of the last ``omero login`` this process's;
``remember_omero_login(session)`` stores ours where ``omero`` (and ``ome-session --backend
omero``) finds it. The store is ``keystore.OmeroSessionStore``; the sessions, the OMERO backend's.
"""

from __future__ import annotations

from typing import Any

from .backends.omero import DEFAULT_PORT
from .errors import NoSessionError, SessionError, SessionKeyError
from .keystore import OmeroSessionStore, StoredSession
from .manager import SessionManager
from .session import Session


def join_current_omero_login(store: OmeroSessionStore | None = None, **options: Any) -> Session:
    """Join the session of the last ``omero login`` (the omero CLI's store), as the process's.

    ``options`` go to the backend (``client_args``, ``keepalive``, ...); host and port come from
    the stored entry unless given. ``NoSessionError`` when there is none, ``SessionKeyError``
    when it has ended.
    """
    store = store if store is not None else OmeroSessionStore()
    entry = store.current()
    if entry is None:
        raise NoSessionError(f"no current `omero login` session in {store.directory}: run `omero login` first")
    options.setdefault("host", entry.server)
    options.setdefault("port", entry.port or DEFAULT_PORT)
    try:
        return SessionManager(backend="omero", **options).create_session(key=entry.key)
    except SessionKeyError:
        raise SessionKeyError(f"the current `omero login` session ({entry.user}@{entry.server}) has expired or "
                              "was logged out: run `omero login` again") from None


def remember_omero_login(session: Session, store: OmeroSessionStore | None = None, *,
                         group: str | None = None) -> StoredSession:
    """Store an OMERO session in the omero CLI's format and make it current there, so ``omero``
    commands (and ``join_current_omero_login``) use it. ``group`` is the group name to record
    when the session has switched groups since it was made."""
    backend, login = session.backend, session.login
    if backend.name != "omero" or login is None:
        raise SessionError("only a logged-in OMERO session can be stored in the omero CLI's store")
    entry = StoredSession(
        server=backend.options["host"], user=login.user_name, key=login.key, port=backend.options["port"],
        group=group or login.group_name, sudo=login.sudoer_name, timeout=login.idle_timeout, backend="omero",
    )
    (store if store is not None else OmeroSessionStore()).add(entry)
    return entry
