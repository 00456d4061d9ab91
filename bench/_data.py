"""The data every measurement runs on: a small lab of users, and session rows in bulk.

All databases live on the one bench server: ``bench_template`` (the current ome-session schema,
users, groups, configuration), copies of it for the main measurements and for each scale, and
separate databases for the two outside contenders (the original-style tables and Django's).
Bulk rows come from ``generate_series`` on the server; the key of row ``i`` is
``md5('bench-' || i)``, 32 lowercase hex characters like a real key, so the client can compute
it without ever fetching keys.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ome_session import _migrations

from . import _perl_replica
from ._server import BenchServer

TEMPLATE = "bench_template"
USERS = 100  # "root" (admin, super user) and 99 members of 10 groups
GROUPS = 10
OPEN_EVERY = 10  # one session row in ten is open (the rest were closed: history piles up)


@dataclass(frozen=True)
class Lab:
    """Who is in the bench databases."""

    root_id: int
    user_ids: list[int]  # the non-root users, ordered by id

    def user_for(self, i: int) -> int:
        return self.user_ids[i % len(self.user_ids)]


def bench_key(i: int) -> str:
    """The key of bulk session row ``i`` (what ``md5('bench-' || i)`` gives on the server)."""
    return hashlib.md5(f"bench-{i}".encode()).hexdigest()


def open_keys(rows: int, count: int, seed: int = 7) -> list[str]:
    """``count`` keys of open rows among the first ``rows`` bulk rows, spread over the table."""
    candidates = range(OPEN_EVERY, rows + 1, OPEN_EVERY)
    chosen = random.Random(seed).sample(candidates, min(count, len(candidates)))
    return [bench_key(i) for i in chosen]


def _lab_rows() -> tuple[list[str], list[tuple[str, int, bool]], list[tuple[int, int]], dict[int, int]]:
    """Groups, users (name, primary group index, admin), extra memberships, group leaders."""
    groups = ["system", *(f"lab_{g:02d}" for g in range(1, GROUPS + 1))]
    users: list[tuple[str, int, bool]] = [("root", 0, True)]
    users += [(f"user{u:03d}", 1 + u % GROUPS, False) for u in range(1, USERS)]
    extra = [(u, 1 + (u + 3) % GROUPS) for u in range(1, USERS) if u % 7 == 0]
    leaders = {1 + u % GROUPS: u for u in range(1, GROUPS + 1)}  # the first member leads
    leaders[0] = 0
    return groups, users, extra, leaders


def build_template(server: BenchServer, tmp_dir: Path) -> Lab:
    """The migrated ome-session schema with the lab and its configuration."""
    server.create_database(TEMPLATE)
    groups, users, extra, leaders = _lab_rows()
    with psycopg.connect(server.dsn(TEMPLATE)) as conn:
        _migrations.migrate(conn)
    # Copies start never analysed; each measurement analyses what it means to (see scale).
    set_autovacuum(server.dsn(TEMPLATE), False)
    with psycopg.connect(server.dsn(TEMPLATE)) as conn:
        group_ids = [_one(conn, "INSERT INTO groups (name) VALUES (%s) RETURNING id", (g,)) for g in groups]
        user_ids = []
        for name, group, admin in users:
            row = conn.execute(
                "INSERT INTO experimenters (ome_name, first_name, last_name, group_id, is_admin)"
                " VALUES (%s, %s, 'Bench', %s, %s) RETURNING id", (name, name.title(), group_ids[group], admin),
            ).fetchone()
            assert row is not None
            user_ids.append(row[0])
            conn.execute("INSERT INTO experimenter_group_map VALUES (%s, %s)", (row[0], group_ids[group]))
            conn.execute("INSERT INTO user_states (experimenter_id) VALUES (%s)", (row[0],))
        for u, g in extra:
            conn.execute("INSERT INTO experimenter_group_map VALUES (%s, %s)", (user_ids[u], group_ids[g]))
        for g, u in leaders.items():
            conn.execute("UPDATE groups SET leader_id = %s WHERE id = %s", (user_ids[u], group_ids[g]))
        conn.execute("INSERT INTO projects (name, owner_id, group_id) SELECT 'project ' || i, %s, %s"
                     " FROM generate_series(1, 20) i", (user_ids[1], group_ids[1]))
        for name, value in (("super_user", user_ids[0]), ("tmp_dir", str(tmp_dir))):
            conn.execute("INSERT INTO configuration VALUES (%s, %s)", (name, Jsonb(value)))
    return Lab(root_id=user_ids[0], user_ids=user_ids[1:])


def _one(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> Any:
    row = conn.execute(query, params).fetchone()  # type: ignore[call-overload]
    assert row is not None
    return row[0]


def fill_sessions(dsn: str, rows: int) -> None:
    """``rows`` session rows, one in ``OPEN_EVERY`` open and live, the others closed.

    Foreign-key triggers are skipped for the bulk insert (the rows reference existing users by
    construction); uniqueness and the indexes are maintained as usual.
    """
    with psycopg.connect(dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            """
            INSERT INTO ome_sessions (key_digest, experimenter_id, host, agent, started, last_access,
                                      expires_at, closed_at)
            SELECT sha256(convert_to(md5('bench-' || i), 'UTF8')),
                   u.ids[1 + i %% array_length(u.ids, 1)],
                   'bench-host', 'bench', now() - interval '1 hour', now(), now() + interval '1 day',
                   CASE WHEN i %% %(every)s = 0 THEN NULL ELSE now() - interval '10 minutes' END
            FROM (SELECT array_agg(id ORDER BY id) AS ids FROM experimenters WHERE NOT is_admin) u,
                 generate_series(1, %(rows)s) AS i
            """,
            {"rows": rows, "every": OPEN_EVERY},
        )


def analyse(dsn: str) -> None:
    """VACUUM ANALYZE everything and hand the tables back to autovacuum, as in production."""
    set_autovacuum(dsn, True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def set_autovacuum(dsn: str, enabled: bool) -> None:
    """Keep (or stop keeping) autovacuum away, so "never analysed" stays true while we measure."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = {})").format(
                sql.Identifier(table), sql.Literal(enabled)))


def build_perl_database(server: BenchServer, name: str, *, analysed: bool) -> tuple[int, list[str]]:
    """Original-style tables with the same lab; returns the super user's id and the users' keys."""
    dsn = server.create_database(name)
    groups, users, extra, leaders = _lab_rows()
    keys = []
    with psycopg.connect(dsn) as conn:
        conn.execute(_perl_replica.SCHEMA)
        if not analysed:
            for table in _perl_replica.TABLES:
                conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(
                    sql.Identifier(table)))
        group_ids = [_one(conn, "INSERT INTO groups (name) VALUES (%s) RETURNING attribute_id", (g,))
                     for g in groups]
        user_ids = []
        for name_, group, _admin in users:
            row = conn.execute(
                "INSERT INTO experimenters (ome_name, firstname, lastname, password, group_id)"
                " VALUES (%s, %s, 'Bench', 'xxxxxxxxxxxxx', %s) RETURNING attribute_id",
                (name_, name_.title(), group_ids[group]),
            ).fetchone()
            assert row is not None
            user_ids.append(row[0])
            conn.execute("INSERT INTO experimenter_group_map (experimenter_id, group_id) VALUES (%s, %s)",
                         (row[0], group_ids[group]))
            key = hashlib.md5(f"perl-{name_}".encode()).hexdigest()
            keys.append(key)
            conn.execute("INSERT INTO ome_sessions (experimenter_id, host, session_key) VALUES (%s, %s, %s)",
                         (row[0], "bench-host", key))
        for u, g in extra:
            conn.execute("INSERT INTO experimenter_group_map (experimenter_id, group_id) VALUES (%s, %s)",
                         (user_ids[u], group_ids[g]))
        for g, u in leaders.items():
            conn.execute("UPDATE groups SET leader = %s WHERE attribute_id = %s", (user_ids[u], group_ids[g]))
    if analysed:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    return user_ids[0], keys[1:]


def never_analysed(dsn: str, tables: tuple[str, ...]) -> bool:
    """Whether none of ``tables`` has column statistics (nobody, autovacuum included, analysed it)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_statistic s JOIN pg_class c ON c.oid = s.starelid"
            " WHERE c.relname = ANY(%s) AND c.relnamespace = 'public'::regnamespace", (list(tables),)).fetchone()
    return bool(row and row[0] == 0)


def explain(dsn: str, query: str, params: Any) -> dict[str, Any]:
    """EXPLAIN ANALYZE a statement (in a transaction that is rolled back) and keep the gist."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + sql.SQL(query),  # type: ignore[arg-type]
                           params).fetchone()
        conn.rollback()
    assert row is not None
    plan = row[0][0]
    nodes: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        label = node["Node Type"]
        if "Relation Name" in node:
            label += f" on {node['Relation Name']}"
        if "Index Name" in node:
            label += f" using {node['Index Name']}"
        nodes.append(label)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return {
        "planning_ms": plan.get("Planning Time"),
        "execution_ms": plan.get("Execution Time"),
        "jit": plan.get("JIT"),
        "total_cost": plan["Plan"].get("Total Cost"),
        "nodes": nodes,
        "seq_scans": [n for n in nodes if n.startswith("Seq Scan")],
    }
