"""Databases for the reliability cases: a migrated schema, a few users, and table snapshots.

Shared by the pytest cases and by the soak run (``python -m tests.reliability.soak``), which has
no pytest fixtures: so everything here takes a plain DSN or ``Cluster``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ome_session import _migrations
from ome_session._cluster import Cluster
from tests.helpers import password, password_hash, query

_counter = itertools.count()


def new_database(cluster: Cluster, prefix: str = "rel") -> str:
    """A fresh, migrated database on ``cluster``; returns its DSN."""
    name = f"{prefix}{os.getpid()}_{next(_counter)}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = cluster.dsn(name)
    with psycopg.connect(dsn) as conn:
        _migrations.migrate(conn)
    return dsn


def add_users(dsn: str, names: Iterable[str], group: str = "workers", *,
              tmp_dir: str | None = None) -> dict[str, int]:
    """Users in one group (created if missing); the first call also sets the configuration."""
    ids: dict[str, int] = {}
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT id FROM groups WHERE name = %s", (group,)).fetchone()
        group_id = row[0] if row else conn.execute(
            "INSERT INTO groups (name) VALUES (%s) RETURNING id", (group,)).fetchone()[0]  # type: ignore[index]
        for name in names:
            row = conn.execute(
                "INSERT INTO experimenters (ome_name, first_name, password_hash, group_id) "
                "VALUES (%s, %s, %s, %s) RETURNING id",
                (name, name.title(), password_hash(password(name)), group_id)).fetchone()
            assert row is not None
            ids[name] = row[0]
            conn.execute("INSERT INTO experimenter_group_map VALUES (%s, %s)", (ids[name], group_id))
        if tmp_dir is not None:
            conn.execute("INSERT INTO configuration VALUES ('tmp_dir', %s) "
                         "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", (Jsonb(tmp_dir),))
    return ids


def tables(dsn: str) -> list[str]:
    rows = query(dsn, "SELECT table_name FROM information_schema.tables "
                      "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1")
    return [name for (name,) in rows]


def snapshot(dsn: str) -> dict[str, Any]:
    """Row counts of every table, the schema version and the whole configuration table."""
    counts: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in tables(dsn):
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
            counts[table] = row[0] if row else None
        version = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        config = conn.execute("SELECT name, value FROM configuration ORDER BY name").fetchall()
    return {"rows": counts, "schema_version": version[0] if version else None, "configuration": config}
