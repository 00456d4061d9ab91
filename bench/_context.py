"""What every measurement shares: the server, the data, the run's size, and where results go."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ome_session import Session, SessionManager

from ._data import Lab
from ._results import Results
from ._server import BenchServer


@dataclass
class Context:
    server: BenchServer
    root: Path  # the run's private temporary directory
    lab: Lab
    quick: bool
    results: Results
    main_dsn: str = ""
    main_keys: list[str] = field(default_factory=list)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @contextmanager
    def session_database(self, dsn: str) -> Iterator[None]:
        """Point ``SessionManager()`` (no argument, as an application calls it) at ``dsn``."""
        previous = os.environ.get("OME_SESSION_DSN")
        if Session.has_instance():
            Session.delete_instance(force=True)
        os.environ["OME_SESSION_DSN"] = dsn
        try:
            yield
        finally:
            if Session.has_instance():
                Session.delete_instance(force=True)
            if previous is None:
                os.environ.pop("OME_SESSION_DSN", None)
            else:
                os.environ["OME_SESSION_DSN"] = previous


def resume(key: str) -> None:
    """The per-request pattern: resume by key, (the request's work would go here), go idle."""
    SessionManager().create_session(key=key)
    Session.idle()


def session_connection() -> psycopg.Connection[object]:
    """The psycopg connection of the process's session (read while idle, for baselines)."""
    return Session.instance().factory._connection.raw  # type: ignore[return-value]


def autocommit_execute(conn: psycopg.Connection[object]) -> _Exec:
    return _Exec(conn)


class _Exec:
    """Run one statement on ``conn`` outside any transaction, leaving its mode as it was."""

    def __init__(self, conn: psycopg.Connection[object]) -> None:
        self.conn = conn

    def __call__(self, statement: str) -> object:
        conn = self.conn
        was = conn.autocommit
        conn.autocommit = True
        try:
            conn.execute(statement.encode())
        finally:
            conn.autocommit = was
        return None
