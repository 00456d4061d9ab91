"""Shared fixtures: one real PostgreSQL server per test run, a fresh database per test.

The server is started by the tests themselves (see ``helpers.throwaway_cluster``) and removed afterwards. Each
test gets its own database cloned from a migrated template, its own temporary directory root,
settings file and key store, and leaves no session behind.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ome_session import Configuration, Session, _migrations
from ome_session._cluster import Cluster
from tests.helpers import (
    REQUIRE_VARIABLE,
    People,
    ServerLog,
    password,
    password_hash,
    required_parts,
    throwaway_cluster,
)

TEMPLATE = "ome_template"
_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    try:
        required_parts()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> str:
    parts = ", ".join(sorted(required_parts()))
    return (f"{REQUIRE_VARIABLE}: {parts} (a test missing one of these fails)" if parts
            else f"{REQUIRE_VARIABLE} not set: tests missing an optional part skip, with the reason")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    with throwaway_cluster() as cluster:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
        with psycopg.connect(cluster.dsn(TEMPLATE)) as conn:
            _migrations.migrate(conn)
        yield cluster


@pytest.fixture
def db_dsn(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh database with the current schema and nothing else."""
    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    yield pg_cluster.dsn(name)
    Session.delete_instance(force=True)
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing of the developer's own setup leaks in, and no session leaks out."""
    for name in ("OME_SESSION_DSN", "OME_SESSION_PASSWORD", "OME_SESSION_ADMIN_PASSWORD", "OMERO_SESSIONDIR",
                 "OME_SESSION_BACKEND", "OME_SESSION_OMERO_ARGS", "OME_SESSION_PREPARE_THRESHOLD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OME_SESSION_CONFIG", str(tmp_path / "config" / "settings.json"))
    monkeypatch.setenv("OME_SESSIONDIR", str(tmp_path / "sessions"))
    monkeypatch.setenv("OME_SESSION_DATA_DIR", str(tmp_path / "data"))
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Session.delete_instance(force=True)
    Session._inherited = None
    Configuration.flush()


@pytest.fixture
def people(db_dsn: str, tmp_path: Path) -> People:
    """root (super user, admin), alice and bob (lab_a, led by lena), carol (lab_b), a guest."""
    users = {
        "root": dict(is_admin=True, group="system"),
        "lena": dict(group="lab_a"),
        "alice": dict(group="lab_a"),
        "bob": dict(group="lab_a"),
        "carol": dict(group="lab_b"),
        "guest": dict(group="guests", is_guest=True),
    }
    ids: dict[str, int] = {}
    groups: dict[str, int] = {}
    with psycopg.connect(db_dsn) as conn:
        for group in ("system", "lab_a", "lab_b", "guests"):
            groups[group] = conn.execute("INSERT INTO groups (name) VALUES (%s) RETURNING id", (group,)).fetchone()[0]
        for name, props in users.items():
            ids[name] = conn.execute(
                "INSERT INTO experimenters (ome_name, first_name, last_name, password_hash, group_id,"
                " is_admin, is_guest) VALUES (%s, %s, 'Tester', %s, %s, %s, %s) RETURNING id",
                (name, name.title(), password_hash(password(name)), groups[str(props["group"])],
                 bool(props.get("is_admin")), bool(props.get("is_guest"))),
            ).fetchone()[0]
            conn.execute("INSERT INTO experimenter_group_map VALUES (%s, %s)", (ids[name], groups[str(props["group"])]))
        conn.execute("UPDATE groups SET leader_id = %s WHERE name = 'lab_a'", (ids["lena"],))
        conn.execute("UPDATE groups SET leader_id = %s WHERE name = 'system'", (ids["root"],))
        for name, value in (("super_user", ids["root"]), ("tmp_dir", str(tmp_path / "tmp"))):
            conn.execute("INSERT INTO configuration VALUES (%s, %s)", (name, psycopg.types.json.Jsonb(value)))
    return People(db_dsn, ids, groups)


@pytest.fixture
def server_log(people: People, pg_cluster: Cluster) -> ServerLog:
    """The server logs every statement of the people's database, with its parameters, from here on."""
    return ServerLog(pg_cluster, people.dsn)


@pytest.fixture
def foreign_dir(tmp_path: Path) -> Path:
    """An existing directory that belongs to another user. As root, one given away to ``nobody``;
    run unprivileged, the filesystem root, which is root's (and which this user cannot write to)."""
    if os.geteuid() == 0:
        given = tmp_path / "someone-elses"
        given.mkdir(mode=0o700)
        os.chown(given, 65534, 65534)
        return given
    root = Path("/")
    assert root.stat().st_uid != os.geteuid(), "an unprivileged run needs / to belong to another user"
    return root
