"""The benchmark's own PostgreSQL server, and counting statements on it from the server's side.

The server is a private cluster in a temporary directory, removed at the end whatever happens
(the tests' throwaway cluster, ``tests.helpers.ThrowawayCluster``).
It keeps PostgreSQL's durability defaults (fsync and synchronous_commit on), because that is
what an installation runs with; a measurement that wants otherwise sets it per connection.

Counting: ``log_statement`` is switched on for one connection at a time (it is a per-session
setting for a superuser), and every statement the server logs for that connection is one round
trip the client waited for. Timing passes never run with logging on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.helpers import ThrowawayCluster

# Every log line starts with the application name and the backend pid, so one connection's
# statements can be picked out of the shared server log.
_PREFIX = "%a|%p|"
_RECORD = re.compile(r"^([^|\n]*)\|(\d+)\|(LOG|ERROR|WARNING|DETAIL|HINT|STATEMENT|FATAL):  (.*)$")


class BenchServer:
    """A private cluster (unix socket only) for one benchmark run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        options = {
            "log_line_prefix": _PREFIX,
            "max_connections": "100",
            "log_checkpoints": "off",
        }
        self._server = ThrowawayCluster(root / "cluster", **options)
        self.cluster = self._server.cluster

    def start(self) -> None:
        self._server.start(timeout=120)

    def stop(self) -> None:
        """Stop the server and remove its directory (only in the process that started it)."""
        self._server.remove()

    def dsn(self, dbname: str = "postgres", **params: Any) -> str:
        return make_conninfo(self.cluster.dsn(dbname), **params)

    def params(self, dbname: str) -> dict[str, Any]:
        return conninfo_to_dict(self.dsn(dbname))

    def create_database(self, name: str, template: str | None = None) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
            conn.execute(query)
        return self.dsn(name)

    def version(self) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    @property
    def log_file(self) -> Path:
        return self.cluster.log_file


@dataclass
class Count:
    """Statements one connection sent during a counting pass."""

    label: str
    statements: list[str] = field(default_factory=list)
    ops: int = 0

    @property
    def per_op(self) -> float:
        return len(self.statements) / self.ops if self.ops else float("nan")

    def sample(self, limit: int = 160) -> list[str]:
        """The statements of one operation (the first), shortened, for the report."""
        if not self.ops:
            return []
        each = max(1, round(self.per_op))
        return [_shorten(s, limit) for s in self.statements[:each]]


def set_on(execute: Callable[[str], object], setting: str, value: str) -> None:
    """Apply a session setting through a contender's own connection (outside any transaction)."""
    execute(f"SET {setting} = '{value}'")


@contextmanager
def counting(server: BenchServer, execute: Callable[[str], object], label: str) -> Iterator[Count]:
    """Count what one connection sends between entering and leaving the block.

    ``execute`` runs a statement on that connection in autocommit mode. Set ``Count.ops`` to the
    number of operations done inside the block.
    """
    if not re.fullmatch(r"[a-z0-9_]+", label):
        raise ValueError(f"label {label!r}: lowercase letters, digits and _ only")
    execute(f"SET application_name = '{label}'")
    start = server.log_file.stat().st_size
    execute("SET log_statement = 'all'")  # decided before it runs: not logged itself
    result = Count(label)
    try:
        yield result
    finally:
        execute("SET log_statement = 'none'")  # logged: it marks the end of the pass
    result.statements = _read_statements(server.log_file, start, label)


def statements_since(server: BenchServer, start: int, label: str) -> list[tuple[int, str]]:
    """(backend pid, statement) logged for ``label`` after byte ``start`` of the log (for
    connections whose DSN switched logging on)."""
    with server.log_file.open("rb") as handle:
        handle.seek(start)
        return _records(handle.read().decode(errors="replace"), label)


def _read_statements(path: Path, start: int, label: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        with path.open("rb") as handle:
            handle.seek(start)
            text = handle.read().decode(errors="replace")
        records = [statement for _pid, statement in _records(text, label)]
        if any("log_statement" in r for r in records) or time.monotonic() > deadline:
            return [r for r in records if "log_statement" not in r]
        time.sleep(0.05)


def _records(text: str, label: str) -> list[tuple[int, str]]:
    """Statements (simple ``statement:`` or extended-protocol ``execute``) logged for ``label``,
    with the pid of the server process (one per connection) that ran each."""
    found: list[tuple[int, str]] = []
    current: list[str] | None = None
    pid = 0
    for line in text.splitlines():
        match = _RECORD.match(line)
        if match is None:
            if current is not None:
                current.append(line.strip())  # continuation of a multi-line statement
            continue
        if current is not None:
            found.append((pid, " ".join(current)))
            current = None
        app, backend, level, message = match.groups()
        if app == label and level == "LOG" and (message.startswith("statement: ")
                                                 or message.startswith("execute ")):
            current, pid = [message], int(backend)
    if current is not None:
        found.append((pid, " ".join(current)))
    return found


def _shorten(statement: str, limit: int) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
