"""``ome-session install``, run as a real program against a real, initially empty database."""

from __future__ import annotations

import itertools
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ome_session._cluster import Cluster
from tests.helpers import database_text, files_text, find_secrets, ome_session, query, stored_password_problems

Dump = dict[str, list[str]]
_counter = itertools.count()


@pytest.fixture
def empty_dsn(pg_cluster: Cluster) -> Iterator[str]:
    """A database with nothing in it, not even the schema."""
    name = f"empty{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield pg_cluster.dsn(name)
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def dump(dsn: str) -> Dump:
    """Every row of every table, in a stable order, as text."""
    with psycopg.connect(dsn) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
        return {table: sorted(repr(row) for row in conn.execute(
            sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))) for table in tables}


def install(dsn: str, *args: str) -> tuple[int, str, str]:
    done = ome_session("install", "--dsn", dsn, "--admin", "root", *args,
                       OME_SESSION_ADMIN_PASSWORD="root-password")
    return done.returncode, done.stdout, done.stderr


def test_install_twice_leaves_identical_data_and_prints_each_step(empty_dsn: str, tmp_path: Path) -> None:
    code, first, errors = install(empty_dsn, "--tmp-dir", str(tmp_path / "tmp"))
    assert code == 0, errors
    settings = tmp_path / "config" / "settings.json"  # OME_SESSION_CONFIG of the test
    assert first.splitlines() == [
        "database: argument",
        "applied schema migration 0001 (initial)",
        "applied schema migration 0002 (authorization)",
        "applied schema migration 0003 (session_group_and_timeout)",
        "applied schema migration 0004 (session_message)",
        "applied schema migration 0005 (change_notifications)",
        "applied schema migration 0006 (owned_rows_in_key_order)",
        "configuration: written",
        "admin: created root (id 1) in group system",
        "super user: root (id 1)",
        f"temporary files: under {tmp_path / 'tmp'}, in a private directory per account",
        f"settings: wrote {settings} (mode 0600)",
        "done",
    ]
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tmp").stat().st_mode) == 0o1777  # shared by every account, as /tmp is
    assert json.loads(settings.read_text())["dsn"] == empty_dsn
    installed = dump(empty_dsn)
    assert len(installed["experimenters"]) == 1 and installed["ome_sessions"] == []

    code, second, errors = install(empty_dsn, "--tmp-dir", str(tmp_path / "tmp"))
    assert code == 0, errors
    assert "schema: up to date (version 6)" in second
    assert "configuration: exists, kept as it is" in second
    assert "admin: root exists, password kept" in second
    assert dump(empty_dsn) == installed

    login = ome_session("login", "-u", "root", OME_SESSION_PASSWORD="root-password")  # from the settings file
    assert login.returncode == 0, login.stderr


def test_the_admin_password_is_stored_as_an_argon2id_hash_and_nowhere_in_clear(empty_dsn: str, tmp_path: Path) -> None:
    code, out, errors = install(empty_dsn, "--tmp-dir", str(tmp_path / "tmp"))
    assert code == 0, errors
    [(stored,)] = query(empty_dsn, "SELECT password_hash FROM experimenters WHERE ome_name = 'root'")
    assert stored_password_problems(stored, "root-password") == []
    places = {**database_text(empty_dsn), **files_text(tmp_path / "config"), "output": out + errors}
    assert find_secrets(places, {"the admin password": "root-password"}) == []


def test_install_refuses_a_newer_schema_and_changes_nothing(db_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(db_dsn) as conn:
        conn.execute("INSERT INTO schema_version (version, name) VALUES (9999, 'from_the_future')")
    before = dump(db_dsn)
    code, out, errors = install(db_dsn)
    assert (code, out) == (4, "database: argument\n")  # stopped before any step
    assert errors.startswith("ome-session: error: the database schema is version 9999, newer than")
    assert errors.count("\n") == 1 and "Traceback" not in errors
    assert dump(db_dsn) == before
    assert not (tmp_path / "config" / "settings.json").exists()


def test_install_without_admin_password_or_terminal_exits_2_saying_how_to_give_one(empty_dsn: str) -> None:
    done = ome_session("install", "--dsn", empty_dsn)
    assert done.returncode == 2  # input missing, as for a login: not a configuration error
    assert "OME_SESSION_ADMIN_PASSWORD" in done.stderr
    assert dump(empty_dsn).get("experimenters", []) == []


def test_a_rerun_without_admin_keeps_the_installed_admin(empty_dsn: str) -> None:
    code, _, errors = install(empty_dsn)
    assert code == 0, errors
    installed = dump(empty_dsn)
    rerun = ome_session("install", "--dsn", empty_dsn)  # no --admin, no password: none is needed
    assert rerun.returncode == 0, rerun.stderr
    assert "admin: the super user (id 1) exists, kept" in rerun.stdout
    assert dump(empty_dsn) == installed
