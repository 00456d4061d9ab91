"""The data of the "ACL and table scale" measurements, built on the server with generate_series.

People (the same in every size): a leader who leads ``big`` (``MEMBERS`` members, whose default
group it is) and is a member of ``MANY`` other groups; three users with one group each (``solo_early``,
``solo_late``, ``solo_scattered``), who see 100 projects each: half of them their own (filed in
``others``, a group they are not in), half their group's (owned by a member of ``big``).

Projects (``rows`` of them, ids 1..rows, in id order on disk): the 100 rows each small user sees
sit at the start of the table, at its end, or spread evenly over it; every other row belongs to a
member of ``big`` and sits in ``big`` (eight in ten) or in one of the ``MANY`` groups, so the leader
sees every row but the 300 of the small users.
"""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg

MEMBERS = 10_000
MANY = 1_000
VISIBLE = 100
PLACEMENTS = ("early", "late", "scattered")


def key(name: str) -> str:
    """The session key of ``name``'s bulk session row (what a login would hand out)."""
    return hashlib.md5(f"acl-{name}".encode()).hexdigest()


def build_people(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """The people above, with one open session each; returns their ids by name."""
    conn.execute("SET session_replication_role = replica")  # rows reference rows made here
    conn.execute("INSERT INTO groups (name) SELECT 'many_' || g FROM generate_series(1, %s) g", (MANY,))
    conn.execute("INSERT INTO groups (name) VALUES ('big'), ('others'), ('solo_early'), ('solo_late'),"
                 " ('solo_scattered')")
    conn.execute("INSERT INTO experimenters (ome_name, group_id) SELECT 'member' || i, g.id"
                 " FROM generate_series(1, %s) i, groups g WHERE g.name = 'big'", (MEMBERS,))
    conn.execute("INSERT INTO experimenters (ome_name, group_id) SELECT 'leader', id FROM groups WHERE name = 'big'")
    conn.execute("INSERT INTO experimenters (ome_name, group_id) SELECT 'small_' || substr(name, 6), id"
                 " FROM groups WHERE name LIKE 'solo\\_%'")
    conn.execute("INSERT INTO experimenter_group_map SELECT e.id, e.group_id FROM experimenters e"
                 " WHERE e.ome_name <> 'root' AND e.group_id IS NOT NULL ON CONFLICT DO NOTHING")
    conn.execute("INSERT INTO experimenter_group_map SELECT e.id, g.id FROM experimenters e, groups g"
                 " WHERE e.ome_name = 'leader' AND g.name LIKE 'many\\_%'")
    conn.execute("UPDATE groups SET leader_id = (SELECT id FROM experimenters WHERE ome_name = 'leader')"
                 " WHERE name = 'big'")
    ids = dict(conn.execute("SELECT ome_name, id FROM experimenters WHERE ome_name NOT LIKE 'member%%'").fetchall())
    for name in ("leader", *(f"small_{p}" for p in PLACEMENTS)):
        conn.execute("INSERT INTO user_states (experimenter_id) VALUES (%s) ON CONFLICT DO NOTHING", (ids[name],))
        conn.execute("INSERT INTO ome_sessions (key_digest, experimenter_id, host, agent)"
                     " VALUES (sha256(%s), %s, 'bench-host', 'bench')", (key(name).encode(), ids[name]))
    conn.commit()
    return ids


def fill_projects(conn: psycopg.Connection[Any], rows: int) -> None:
    """``rows`` projects laid out as the module says (ids given, so the layout is exact)."""
    step = (rows - 2 * VISIBLE) // (VISIBLE + 1)
    conn.execute("SET session_replication_role = replica")
    conn.execute(
        """
        WITH p AS (
            SELECT i, CASE WHEN i <= %(v)s THEN 'early'
                           WHEN i > %(rows)s - %(v)s THEN 'late'
                           WHEN (i - %(v)s) %% %(step)s = 0 AND (i - %(v)s) / %(step)s <= %(v)s THEN 'scattered'
                      END AS placement
            FROM generate_series(1, %(rows)s) i
        ), k AS (SELECT min(id) AS first_member, (SELECT id FROM groups WHERE name = 'many_1') AS first_many,
                        (SELECT id FROM groups WHERE name = 'big') AS big,
                        (SELECT id FROM groups WHERE name = 'others') AS others
                 FROM experimenters WHERE ome_name LIKE 'member%%')
        INSERT INTO projects (id, name, owner_id, group_id)
        SELECT p.i, 'project ' || p.i,
               CASE WHEN p.placement IS NOT NULL AND p.i %% 2 = 0 THEN u.id
                    ELSE k.first_member + p.i %% %(members)s END,
               CASE WHEN p.placement IS NULL AND p.i %% 10 < 8 THEN k.big
                    WHEN p.placement IS NULL THEN k.first_many + p.i %% %(many)s
                    WHEN p.i %% 2 = 0 THEN k.others
                    ELSE u.group_id END
        FROM p CROSS JOIN k LEFT JOIN experimenters u ON u.ome_name = 'small_' || p.placement
        """,
        {"rows": rows, "v": VISIBLE, "step": step, "members": MEMBERS, "many": MANY},
    )
    conn.execute("SELECT setval(pg_get_serial_sequence('projects', 'id'), %s)", (rows,))
    conn.commit()
