"""Upgrading a live database from the first schema: nothing lost, keys still valid, and values the
login statements cannot use still never lock anybody out."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from ome_session import Session, SessionManager, _keys, _migrations
from ome_session._cluster import Cluster
from tests.helpers import password_hash, query

_counter = itertools.count()
FIRST = _migrations.available()[0]
LATER = [m.version for m in _migrations.available()[1:]]


@pytest.fixture
def first_schema(pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database at schema version 1 (the first migration only)."""
    name = f"up{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = pg_cluster.dsn(name)
    with monkeypatch.context() as patch, psycopg.connect(dsn) as conn:
        patch.setattr(_migrations, "available", lambda: [FIRST])
        assert _migrations.migrate(conn) == [1]
    yield dsn
    Session.delete_instance(force=True)
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_upgrade_keeps_the_data_and_the_live_keys(first_schema: str) -> None:
    hashed = password_hash("secret-password")
    key = _keys.new_key()
    with psycopg.connect(first_schema) as conn:  # a live install, as version 1 held it
        conn.execute("INSERT INTO groups (id, name) VALUES (1, 'lab')")
        conn.execute("INSERT INTO experimenters (id, ome_name, password_hash, group_id, is_admin) VALUES "
                     "(1, 'root', %s, 1, true), (2, 'alice', %s, 1, false)", (hashed, hashed))
        conn.execute("INSERT INTO experimenter_group_map VALUES (1, 1), (2, 1)")
        conn.execute("INSERT INTO projects (name, owner_id, group_id) VALUES ('kept', 2, 1)")
        conn.execute("INSERT INTO configuration VALUES ('super_user', '1'), ('session_idle_timeout', '600')")
        conn.execute("INSERT INTO ome_sessions (key_digest, experimenter_id) VALUES (%s, 2)", (_keys.digest(key),))
    before = {table: query(first_schema, f"SELECT * FROM {table} ORDER BY 1")
              for table in ("groups", "experimenters", "projects", "configuration", "ome_sessions")}
    with psycopg.connect(first_schema) as conn:
        assert _migrations.migrate(conn) == LATER
    after = {table: query(first_schema, f"SELECT * FROM {table} ORDER BY 1")
             for table in before}
    # New columns come last, the rows are the same. ome_sessions: su, then the session's own group
    # and idle timeout (none: the default group and timeout go on applying), then its message;
    # configuration: usable.
    grown = {"ome_sessions": [(False, None, None, None)], "configuration": [(True,), (True,)]}
    assert {t: rows for t, rows in after.items() if t not in grown} == \
           {t: rows for t, rows in before.items() if t not in grown}
    for table, added in grown.items():
        width = len(before[table][0])
        assert [row[:width] for row in after[table]] == before[table]
        assert [row[width:] for row in after[table]] == added
    assert query(first_schema, "SELECT convalidated FROM pg_constraint "
                               "WHERE conname = 'configuration_deciding_values_valid'") == [(True,)]
    with psycopg.connect(first_schema, autocommit=True) as listener:  # the old rows announce changes
        listener.execute("LISTEN ome_session")
        query(first_schema, "UPDATE experimenter_group_map SET group_id = group_id WHERE experimenter_id = 2")
        query(first_schema, "UPDATE ome_sessions SET closed_at = now() WHERE experimenter_id = 1")  # none of 1's
        query(first_schema, "SELECT pg_notify('ome_session', 'end')")
        heard = [n.payload for n in listener.notifies(timeout=60, stop_after=2)]
    assert heard == ["u:2", "end"]
    manager = SessionManager(first_schema)
    assert manager.create_session(key=key).user_name == "alice"
    assert [p.name for p in Session.instance().factory.find_objects("Project")] == ["kept"]
    assert manager.su_session().user_name == "root"


def test_upgrade_with_a_value_that_locked_logins_out_upgrades_and_logs_in(
        first_schema: str) -> None:
    hashed = password_hash("secret-password")
    with psycopg.connect(first_schema) as conn:
        conn.execute("INSERT INTO experimenters (ome_name, password_hash, is_admin) VALUES ('root', %s, true)",
                     (hashed,))
        conn.execute("INSERT INTO configuration VALUES ('super_user', %s::jsonb)", (str(2**70),))
    with psycopg.connect(first_schema) as conn:
        assert _migrations.migrate(conn) == LATER
    assert query(first_schema, "SELECT convalidated FROM pg_constraint "
                               "WHERE conname = 'configuration_deciding_values_valid'") == [(False,)]
    assert query(first_schema, "SELECT value::text FROM configuration WHERE name = 'super_user'") == \
           [(str(2**70),)]  # kept as it was: an admin decides what it should be
    session = SessionManager(first_schema).create_session("root", "secret-password")
    assert session.user_name == "root" and not session.is_su_session()
    with pytest.raises(psycopg.errors.CheckViolation):  # and no new bad value gets in
        query(first_schema, "INSERT INTO configuration VALUES ('session_idle_timeout', '-1') RETURNING 1")


def test_upgrade_indexes_owned_rows_by_owner_and_by_group_in_key_order(first_schema: str) -> None:
    with psycopg.connect(first_schema) as conn:  # a live install, as version 1 held it
        conn.execute("INSERT INTO groups (id, name) VALUES (1, 'lab'), (2, 'other')")
        conn.execute("INSERT INTO experimenters (id, ome_name, password_hash, group_id) VALUES"
                     " (1, 'alice', %s, 1), (2, 'zed', NULL, 2)", (password_hash("secret-password"),))
        conn.execute("INSERT INTO experimenter_group_map VALUES (1, 1), (2, 2)")
        for table in ("projects", "datasets", "images"):
            conn.execute(sql.SQL("INSERT INTO {} (name, owner_id, group_id) SELECT 'row ' || i, 1 + i % 2, 1 + i % 2"
                                 " FROM generate_series(1, 3000) i").format(sql.Identifier(table)))
    with psycopg.connect(first_schema) as conn:
        assert _migrations.migrate(conn) == LATER
    for table in ("projects", "datasets", "images"):
        indexes = dict(query(first_schema, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", table))
        for column in ("owner", "group"):
            assert indexes[f"{table}_{column}_key_idx"].endswith(f"({column}_id, id)")
            assert f"{table}_{column}_idx" not in indexes  # replaced, not kept beside
        assert query(first_schema, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))) == [(3000,)]
    factory = SessionManager(first_schema).create_session("alice", "secret-password").factory
    for cls in ("Project", "Dataset", "Image"):  # alice's are the even rows
        assert [o.name for o in factory.find_objects(cls, __limit=3, __offset=10)] == ["row 22", "row 24", "row 26"]
        assert factory.count_objects(cls) == 1500
