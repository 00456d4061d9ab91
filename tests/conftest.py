"""Shared fixtures: one real PostgreSQL server per test run, a fresh database per test.

The server is started by the tests themselves (see ``helpers.throwaway_cluster``) and removed afterwards. Each
test gets its own database cloned from a migrated template, its own temporary directory root,
settings file and key store, and leaves no session behind. The lab's people are made once per run,
in a template of their own, through the public administration API, as an installer would make
them (argon2 costs a quarter of a second per password: once is enough).
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ome_session import Configuration, Session, _migrations, _pool, _resume_cache, admin
from ome_session._cluster import Cluster
from tests.helpers import (
    REQUIRE_VARIABLE,
    People,
    ServerLog,
    password,
    query,
    required_parts,
    throwaway_cluster,
)

TEMPLATE = "ome_template"
PEOPLE_TEMPLATE = "ome_people_template"
# The lab: name -> (group, admin, guest). Groups are made in this order, then users.
LAB_GROUPS = ("system", "lab_a", "lab_b", "guests")
LAB = {"root": ("system", True, False), "lena": ("lab_a", False, False), "alice": ("lab_a", False, False),
       "bob": ("lab_a", False, False), "carol": ("lab_b", False, False), "guest": ("guests", False, True)}
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


@contextmanager
def _clone(cluster: Cluster, template: str) -> Iterator[str]:
    """A new database copied from ``template``, dropped afterwards; yields its DSN."""
    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    try:
        yield cluster.dsn(name)
    finally:
        Session.delete_instance(force=True)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db_dsn(pg_cluster: Cluster) -> Iterator[str]:
    """A fresh database with the current schema and nothing else."""
    with _clone(pg_cluster, TEMPLATE) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def people_template(pg_cluster: Cluster) -> tuple[dict[str, int], dict[str, int]]:
    """The lab's database, made once through ``ome_session.admin`` in a bootstrap session (trusted
    code, as the installer): the ids of the people and of the groups."""
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(PEOPLE_TEMPLATE),
                                                                      sql.Identifier(TEMPLATE)))
    dsn = pg_cluster.dsn(PEOPLE_TEMPLATE)
    session = Session.bootstrap_instance(dsn)
    try:
        for group in LAB_GROUPS:
            admin.add_group(group)
        for name, (group, is_admin, is_guest) in LAB.items():
            admin.add_user(name, name.title(), "Tester", password=password(name), groups=[group], admin=is_admin,
                           guest=is_guest)
        admin.set_group_owner("lab_a", "lena")
        admin.set_group_owner("system", "root")
        root = session.factory.find_object("Experimenter", ome_name="root")
        assert root is not None
        Configuration.update(session.factory, {"super_user": root.id})
        session.commit_transaction()
        session.finish_bootstrap()
    finally:
        Session.delete_instance(force=True)
        Configuration.flush()
    ids = dict(query(dsn, "SELECT ome_name, id FROM experimenters"))
    groups = dict(query(dsn, "SELECT name, id FROM groups"))
    return ids, groups


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing of the developer's own setup leaks in, and no session leaks out."""
    for name in ("OME_SESSION_DSN", "OME_SESSION_PASSWORD", "OME_SESSION_ADMIN_PASSWORD", "OME_SESSION_NEW_PASSWORD",
                 "OMERO_SESSIONDIR", "OMERO_SESSION_DIR", "OMERO_PASSWORD", "OME_SESSION_BACKEND",
                 "OME_SESSION_OMERO_ARGS", "OME_SESSION_PREPARE_THRESHOLD", "OME_SESSION_SCOPE",
                 "OME_SESSION_POOL_SIZE", "OME_SESSION_POOL_TIMEOUT"):
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
    # The next test chooses its scope afresh (a thread scope test closes its threads' sessions).
    Session.set_scope("process")
    Session._scope = None
    _pool.close_pools()
    _resume_cache.close_shared()


@pytest.fixture
def people(pg_cluster: Cluster, people_template: tuple[dict[str, int], dict[str, int]],
           tmp_path: Path) -> Iterator[People]:
    """root (super user, admin), alice and bob (lab_a, led by lena), carol (lab_b), a guest; each
    with the password ``<name>-password``, in a fresh copy of the lab's database."""
    ids, groups = people_template
    with _clone(pg_cluster, PEOPLE_TEMPLATE) as dsn:
        query(dsn, "INSERT INTO configuration VALUES ('tmp_dir', %s)", psycopg.types.json.Jsonb(str(tmp_path / "tmp")))
        yield People(dsn, dict(ids), dict(groups))


@pytest.fixture
def lab(people: People, monkeypatch: pytest.MonkeyPatch) -> People:
    """The people's database as the one the command uses (OME_SESSION_DSN)."""
    monkeypatch.setenv("OME_SESSION_DSN", people.dsn)
    return people


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
