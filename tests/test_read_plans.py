"""Reads at scale: plans that follow the rows a user may read, and results equal to an oracle.

One database per module holds 200,000 projects, built once with generate_series: most belong to
a crowd spread over 1,000 groups, all of which lena (who also leads lab_a) belongs to; carol sees
80 of them, at the start of the table, at its end and spread over it, some her own, some her
group's. A copy of it is analysed, the original never is (autovacuum is off on both, so the state
is the one set here).

Plans are those of the very statements the library sends: the server's auto_explain module logs
each one as EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) would show it, with the session's
statements prepared from their first use and ``plan_cache_mode`` forcing custom or generic plans.
The checks are on plan nodes and on counts (rows filtered out, shared buffers touched), never on
times. Results are checked for every role against SQL written here from the permission table, not
through the library's conditions.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from ome_session import Factory, Session, SessionManager, _migrations
from ome_session._cluster import Cluster
from tests.helpers import login, password, password_hash, query

ROWS = 200_000
CROWD = 50  # owners of the crowd's rows
CROWD_GROUPS = 1000  # the groups they file them in (none holds more than a small part of the table)
PEOPLE = {"root": ("system", True, False), "adam": ("system", True, False), "lena": ("lab_a", False, False),
          "alice": ("lab_a", False, False), "bob": ("lab_a", False, False), "carol": ("lab_b", False, False),
          "guest": ("guests", False, True)}
# Who reads, by role: (user who logs in, the member a leader's session acts as).
ROLES = {"super user": ("root", None), "admin": ("adam", None), "leader": ("lena", None),
         "member": ("alice", None), "user": ("carol", None), "leader as member": ("lena", "bob"),
         "guest": ("guest", None)}

# Which project rows are whose: (condition on the row number i, owner, group). The first that holds
# decides; any other row is the crowd's. carol reads 20 of her own in lab_b at the start, 20 of her
# own filed in the crowd's group at the end, 20 of the crowd's in lab_b spread out, and bob's 20
# in lab_b; lab_a holds 200 of alice's and bob's; the guest owns 4.
LAYOUT = (
    ("i <= 20", "carol", "lab_b"),
    (f"i > {ROWS - 20}", "carol", "crowd"),
    ("i % 10000 = 3000", "crowd", "lab_b"),
    ("i % 10000 = 7000", "bob", "lab_b"),
    ("i % 2000 = 500", "alice", "lab_a"),
    ("i % 1000 = 500", "bob", "lab_a"),
    ("i % 50000 = 100", "guest", "guests"),
)

# -- the oracle: the permission table for reads, written out as SQL ----------------------------------

# A user reads an owned row he owns, or one filed in a group he belongs to (a membership or his
# default group) or leads. Admins and the super user read every row. A group leader's session as
# a member reads only the rows, readable by that member, that are filed in a group the leader leads.
READABLE = {
    "owned": """(p.owner_id = %(u)s
                 OR EXISTS (SELECT 1 FROM experimenter_group_map m WHERE m.experimenter_id = %(u)s
                            AND m.group_id = p.group_id)
                 OR EXISTS (SELECT 1 FROM experimenters e WHERE e.id = %(u)s AND e.group_id = p.group_id)
                 OR EXISTS (SELECT 1 FROM groups g WHERE g.id = p.group_id AND g.leader_id = %(u)s))""",
    "confined": """EXISTS (SELECT 1 FROM groups g WHERE g.id = p.group_id AND g.leader_id = %(leader)s)
                   AND (EXISTS (SELECT 1 FROM experimenter_group_map m WHERE m.experimenter_id = %(u)s
                                AND m.group_id = p.group_id)
                        OR EXISTS (SELECT 1 FROM experimenters e WHERE e.id = %(u)s AND e.group_id = p.group_id)
                        OR EXISTS (SELECT 1 FROM groups g WHERE g.id = p.group_id AND g.leader_id = %(u)s))""",
    "all": "true",
}


@dataclass
class World:
    dsns: dict[str, str]  # "never analysed" / "analysed" -> DSN
    ids: dict[str, int]
    groups: dict[str, int]
    keys: dict[tuple[str, str], str]  # (state, role) -> session key
    pages: int  # the projects table's pages
    log_file: Path  # the server's log, where auto_explain writes

    def oracle(self, state: str, role: str, where: str, tail: str = "ORDER BY p.id") -> list[Any]:
        """The ids of the projects ``role`` may read where ``where`` holds, in order."""
        statement = f"SELECT p.id FROM projects p WHERE {self.readable(role, 'p')} AND ({where}) {tail}"
        return [row[0] for row in query(self.dsns[state], statement)]

    def readable(self, role: str, alias: str) -> str:
        """The oracle's condition for the owned row ``alias``, as SQL with the ids filled in."""
        user, member = ROLES[role]
        kind = "all" if user in ("root", "adam") else "confined" if member else "owned"
        text = READABLE[kind].replace("p.", f"{alias}.")
        return text.replace("%(u)s", str(self.ids[member or user])).replace("%(leader)s", str(self.ids[user]))


@pytest.fixture(scope="module")
def world(pg_cluster: Cluster) -> Iterator[World]:
    base = f"plans_{os.getpid()}"
    names = {"never analysed": base, "analysed": f"{base}_analysed"}
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(base)))
    dsn = pg_cluster.dsn(base)
    with psycopg.connect(dsn) as conn:
        _migrations.migrate(conn)
        ids, groups = _people(conn)
        _rows(conn, ids, groups)
        conn.commit()  # the deferred foreign keys are checked before the tables are altered
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(sql.Identifier(table)))
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(names["analysed"]),
                                                                       sql.Identifier(base)))
    dsns = {state: pg_cluster.dsn(name) for state, name in names.items()}
    with psycopg.connect(dsns["analysed"], autocommit=True) as conn:
        conn.execute("ANALYZE")
    keys = {}
    for state, state_dsn in dsns.items():
        for role, (user, member) in ROLES.items():
            session = login(state_dsn, user)
            if member is not None:
                session = SessionManager(state_dsn).sudo_session(member)
            keys[(state, role)] = session.session_key or ""
            Session.delete_instance(force=True)
    pages = query(dsn, "SELECT pg_relation_size('projects') / current_setting('block_size')::int")[0][0]
    try:
        yield World(dsns, ids, groups, keys, pages, pg_cluster.log_file)
    finally:
        Session.delete_instance(force=True)
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            for name in names.values():
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _people(conn: psycopg.Connection[Any]) -> tuple[dict[str, int], dict[str, int]]:
    groups = {name: conn.execute("INSERT INTO groups (name) VALUES (%s) RETURNING id", (name,)).fetchone()[0]
              for name in ("system", "lab_a", "lab_b", "guests", "crowd")}
    conn.execute("INSERT INTO groups (name) SELECT 'crowd' || g FROM generate_series(1, %s) g", (CROWD_GROUPS - 1,))
    ids = {}
    for user, (group, is_admin, is_guest) in PEOPLE.items():
        ids[user] = conn.execute(
            "INSERT INTO experimenters (ome_name, password_hash, group_id, is_admin, is_guest)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (user, password_hash(password(user)), groups[group], is_admin, is_guest)).fetchone()[0]
        conn.execute("INSERT INTO experimenter_group_map VALUES (%s, %s)", (ids[user], groups[group]))
    conn.execute("INSERT INTO experimenters (ome_name, group_id) SELECT 'crowd' || i, %s"
                 " FROM generate_series(1, %s) i", (groups["crowd"], CROWD))
    ids["crowd"] = conn.execute("SELECT min(id) FROM experimenters WHERE ome_name LIKE 'crowd%'").fetchone()[0]
    conn.execute("INSERT INTO experimenter_group_map SELECT id, group_id FROM experimenters"
                 " WHERE ome_name LIKE 'crowd%%'")
    conn.execute("INSERT INTO experimenter_group_map SELECT %s, id FROM groups WHERE name LIKE 'crowd%%'",
                 (ids["lena"],))
    conn.execute("UPDATE groups SET leader_id = %s WHERE name = 'lab_a'", (ids["lena"],))
    conn.execute("UPDATE groups SET leader_id = %s WHERE name = 'system'", (ids["root"],))
    for key, value in (("super_user", ids["root"]), ("allow_guest_access", True), ("session_idle_timeout", 0),
                       ("tmp_dir", f"/tmp/ome-session-plans-{os.getpid()}")):
        conn.execute("INSERT INTO configuration VALUES (%s, %s)", (key, Jsonb(value)))
    return ids, groups


def _rows(conn: psycopg.Connection[Any], ids: dict[str, int], groups: dict[str, int]) -> None:
    """The projects of ``LAYOUT``; 2,000 datasets (every hundredth carol's, in lab_b); links from
    every hundredth project to a dataset, and from carol's first 20 projects to her datasets and,
    for her first, to a crowd dataset she may not read."""
    def owner(name: str) -> str:
        return f"{ids['crowd']} + i % {CROWD}" if name == "crowd" else str(ids[name])

    def group(name: str) -> str:  # the crowd's groups: "crowd" and the next ids, made right after it
        return f"{groups['crowd']} + i % {CROWD_GROUPS}" if name == "crowd" else str(groups[name])

    cases = [(condition, owner(who), group(where)) for condition, who, where in LAYOUT]
    owners = " ".join(f"WHEN {c} THEN {o}" for c, o, _ in cases)
    in_groups = " ".join(f"WHEN {c} THEN {g}" for c, _, g in cases)
    conn.execute(f"INSERT INTO projects (id, name, owner_id, group_id)"  # type: ignore[call-overload]
                 f" SELECT i, 'project ' || i, CASE {owners} ELSE {owner('crowd')} END,"
                 f" CASE {in_groups} ELSE {group('crowd')} END FROM generate_series(1, {ROWS}) i")
    conn.execute("INSERT INTO datasets (id, name, owner_id, group_id) SELECT j, 'dataset ' || j,"
                 " CASE WHEN j %% 100 = 0 THEN %(carol)s ELSE %(crowd)s END,"
                 " CASE WHEN j %% 100 = 0 THEN %(lab_b)s ELSE %(crowd_group)s END FROM generate_series(1, 2000) j",
                 {"carol": ids["carol"], "crowd": ids["crowd"], "lab_b": groups["lab_b"],
                  "crowd_group": groups["crowd"]})
    conn.execute("INSERT INTO project_dataset_map (project_id, dataset_id)"
                 " SELECT j * 100, j FROM generate_series(1, 2000) j"
                 " UNION ALL SELECT k, k * 100 FROM generate_series(1, 20) k UNION ALL SELECT 1, 1")
    for table in ("projects", "datasets", "project_dataset_map"):
        conn.execute(sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'id'), (SELECT max(id) FROM {}))").format(
            sql.Literal(table), sql.Identifier(table)))


# -- sessions, and the plans their statements ran with ----------------------------------------------


def _factory(world: World, state: str, role: str, monkeypatch: pytest.MonkeyPatch) -> Factory:
    monkeypatch.setenv("OME_SESSION_PREPARE_THRESHOLD", "0")  # every statement prepared from its first use
    return SessionManager(world.dsns[state]).create_session(key=world.keys[(state, role)]).factory


def _plans(factory: Factory, mode: str, read: Callable[[Factory], Any], log_file: Path) -> list[dict[str, Any]]:
    """The plans of the statements ``read`` ran on projects, as auto_explain logged them."""
    conn = factory.obtain_dbh()
    for setting in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                    "SET auto_explain.log_analyze = on", "SET auto_explain.log_buffers = on",
                    "SET auto_explain.log_format = json", f"SET plan_cache_mode = {mode}"):
        conn.execute(setting.encode())
    start = log_file.stat().st_size
    read(factory)
    conn.execute(b"SELECT 1")  # the last statement's portal is closed, and its plan logged, by the next one
    with log_file.open("rb") as handle:
        handle.seek(start)
        text = handle.read().decode("utf-8", "replace")
    pid = conn.info.backend_pid
    plans = []
    decoder = json.JSONDecoder()
    for match in re.finditer(rf"\[{pid}\] LOG:  duration: [0-9.]+ ms  plan:\n", text):
        plan, _ = decoder.raw_decode(text[match.end():].lstrip())
        if '"projects"' in plan["Query Text"]:
            plans.append(plan)
    return plans


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)


READS: dict[str, Callable[[Factory], Any]] = {
    "find, limit 10": lambda f: f.find_objects("Project", __limit=10),
    "find, limit and offset": lambda f: f.find_objects("Project", __limit=10, __offset=30),
    "find by name, limit 10": lambda f: f.find_objects("Project", name=("like", "project 1%"), __limit=10),
    "find, ordered by name": lambda f: f.find_objects("Project", __order="!name", __limit=10),
    "find, all": lambda f: f.find_objects("Project"),
    "count": lambda f: f.count_objects("Project"),
    "iterate": lambda f: list(f.iter_objects("Project")),
    "exists": lambda f: f.object_exists("Project", name="project 123456"),
    "path through a link": lambda f: f.find_objects("Project", **{"dataset_links.dataset.name": ("like", "dataset %")}),
}


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("state", ["never analysed", "analysed"])
@pytest.mark.parametrize("read", list(READS))
def test_a_user_who_sees_little_reads_only_what_he_sees(world: World, state: str, mode: str, read: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    visible = len(world.oracle(state, "user", "true"))
    assert visible == 80
    factory = _factory(world, state, "user", monkeypatch)
    plans = _plans(factory, mode, READS[read], world.log_file)
    assert plans, "no plan logged"
    for plan in plans:
        nodes = list(_nodes(plan["Plan"]))
        summary = [(n["Node Type"], n.get("Relation Name"), n.get("Index Name"), n.get("Rows Removed by Filter"))
                   for n in nodes]
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "projects"], summary
        # Rows filtered out are at most his own, once for each way he may read them (as owner, by
        # group): never a walk past the rows he may not read.
        removed = sum(n.get("Rows Removed by Filter", 0) * n.get("Actual Loops", 1) for n in nodes
                      if n.get("Relation Name") == "projects")
        assert removed <= 2 * visible, summary
        touched = plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"]
        assert touched <= 10 * visible < world.pages, (touched, world.pages, summary)  # a few pages a row


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("state", ["never analysed", "analysed"])
def test_a_leader_who_sees_most_reads_at_most_the_first_rows_of_each_group(
        world: World, state: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first 10 of a member of 1,002 groups: at most 10 rows from each way he may read them,
    never the table (a walk of the key would read fewer here, but as many as the table holds for
    someone whose rows come last)."""
    ways = 1 + len(query(world.dsns[state], "SELECT group_id FROM experimenter_group_map WHERE experimenter_id = %s"
                         " UNION SELECT id FROM groups WHERE leader_id = %s", world.ids["lena"], world.ids["lena"]))
    assert ways == 1 + 1 + CROWD_GROUPS
    factory = _factory(world, state, "leader", monkeypatch)
    for plan in _plans(factory, mode, READS["find, limit 10"], world.log_file):
        nodes = [n for n in _nodes(plan["Plan"]) if n.get("Relation Name") == "projects"]
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"]
        fetched = sum(n["Actual Rows"] * n["Actual Loops"] + n.get("Rows Removed by Filter", 0) for n in nodes)
        assert fetched <= ways * 10 + 10, fetched
    # A row named by its key is found by the key's index, with his groups' ids read once to check
    # it (a few pages of memberships): not an index probe in each of his 1,002 groups.
    for read in (lambda f: f.object_exists("Project", id=ROWS // 2), lambda f: f.load_object("Project", ROWS // 3)):
        for plan in _plans(factory, mode, read, world.log_file):
            assert plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"] <= 50


# -- results, role by role, against the oracle ---------------------------------------------------------


@pytest.mark.parametrize("role", list(ROLES))
def test_every_read_returns_what_the_permission_table_allows(world: World, role: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    state = "analysed"
    factory = _factory(world, state, role, monkeypatch)
    oracle = world.oracle
    everything = oracle(state, role, "true")
    assert [p.id for p in factory.find_objects("Project")] == everything
    assert [p.id for p in factory.iter_objects("Project")] == everything
    assert factory.count_objects("Project") == len(everything)
    assert [p.id for p in factory.find_objects("Project", __limit=10, __offset=5)] == everything[5:15]
    assert [p.id for p in factory.find_objects("Project", name=("like", "project 1%"), __limit=7)] == \
        oracle(state, role, "p.name LIKE 'project 1%%'", "ORDER BY p.id LIMIT 7")
    assert [p.id for p in factory.find_objects("Project", __order="!name", __limit=7)] == \
        oracle(state, role, "true", "ORDER BY p.name DESC, p.id LIMIT 7")
    assert factory.count_objects("Project", name=("like", "project 1%")) == \
        len(oracle(state, role, "p.name LIKE 'project 1%%'"))
    unseen = [i for i in (1, 3000, 100, 500, 123456, ROWS) if i not in everything]
    for i in everything[:1] + everything[-1:]:
        assert factory.object_exists("Project", id=i)
        assert factory.find_object("Project", name=f"project {i}") is not None
    for i in unseen:
        assert not factory.object_exists("Project", id=i)
        assert factory.find_object("Project", name=f"project {i}") is None
    # A path through a link: the link row and the dataset must both be readable.
    dataset = world.readable(role, "d")
    project_end = world.readable(role, "q")
    through = (f"EXISTS (SELECT 1 FROM project_dataset_map l JOIN datasets d ON d.id = l.dataset_id"
               f" JOIN projects q ON q.id = l.project_id WHERE l.project_id = p.id AND d.name LIKE 'dataset %%'"
               f" AND {dataset} AND {project_end})")
    found = [p.id for p in factory.find_objects("Project", **{"dataset_links.dataset.name": ("like", "dataset %")})]
    assert found == oracle(state, role, through)
    paged = factory.find_objects("Project", **{"dataset_links.dataset.name": ("like", "dataset %")}, __limit=3,
                                 __offset=2)
    assert [p.id for p in paged] == found[2:5]
    expected_links = query(world.dsns[state], f"SELECT count(*) FROM project_dataset_map l JOIN projects q"
                           f" ON q.id = l.project_id JOIN datasets d ON d.id = l.dataset_id"
                           f" WHERE {project_end} AND {dataset}")[0][0]
    assert factory.count_objects("ProjectDatasetMap") == expected_links
