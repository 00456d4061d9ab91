"""Versioned schema migrations shipped inside the package.

Each ``migrations/NNNN_name.sql`` runs once, in its own transaction, and is recorded in
``schema_version``. Running the migrations again applies nothing that is current, so the installer
is idempotent. A database whose schema is newer than this package is refused before any change:
an old installer must never "downgrade" a newer install.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from .errors import ConfigurationError

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# One arbitrary, fixed number: concurrent installers serialise on it instead of racing.
_ADVISORY_LOCK = 0x0E5E5510

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """The migrations this package ships, in order."""
    found = []
    for entry in resources.files("ome_session").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def latest_version() -> int:
    return available()[-1].version


def current_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version of the database (0 when nothing is installed)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(
    conn: psycopg.Connection[Any], report: Callable[[str], None] = lambda _msg: None
) -> list[int]:
    """Bring the schema up to date; returns the versions applied (empty when already current).

    Commits each migration as it goes, so the connection must not hold uncommitted work.
    """
    applied: list[int] = []
    newest = latest_version()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
        have = current_version(conn)
        if have > newest:
            raise ConfigurationError(
                f"the database schema is version {have}, newer than this ome-session "
                f"understands ({newest}); upgrade ome-session instead of re-installing"
            )
        conn.execute(_CREATE_VERSION_TABLE)
    for migration in available():
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
            if migration.version <= current_version(conn):
                continue
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
        applied.append(migration.version)
        report(f"applied schema migration {migration.version:04d} ({migration.name})")
    return applied
