"""The permission table, cell by cell, against the real server.

``TABLE`` below is the whole table written out as literal data: who may do what, role by role. It
is an oracle of its own: nothing here imports ``ome_session._permissions``. Every cell is checked
both ways. What must be refused raises ``PermissionDenied``, changes nothing (read back through a
connection of its own, with SQL) and leaves the session's transaction usable; what must work works,
and its effect is seen from that other connection once committed.

The actors, one per role, relative to the rows the cells act on (alice's, in lab_a):

    super   root    the configured super user (an admin)
    admin   adam    an admin who is not the super user
    leader  lena    leads lab_a (not an admin)
    owner   alice   member of lab_a, owns the rows
    member  bob     member of lab_a
    other   carol   member of lab_b only
    guest   guest   a guest account (guest access is on)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from ome_session import (
    Column,
    Configuration,
    DBObject,
    Factory,
    Reference,
    Session,
    SessionManager,
    _maintenance,
    _migrations,
)
from ome_session._cluster import Cluster
from ome_session.dbobject import resolve
from ome_session.errors import PermissionDenied
from tests.helpers import login, password, password_hash, query

ROLES = ("super", "admin", "leader", "owner", "member", "other", "guest")
ACTOR = {"super": "root", "admin": "adam", "leader": "lena", "owner": "alice", "member": "bob",
         "other": "carol", "guest": "guest"}
Y, N = True, False

# fmt: off
TABLE: dict[str, tuple[bool, ...]] = {
    #                                               super admin leader owner member other guest
    # owned classes (Project, Dataset, Image and a user-declared class): alice's row in lab_a
    "{cls}: read alice's row":                      (Y,    Y,    Y,     Y,    Y,     N,    N),
    "{cls}: create, own, default group":            (Y,    Y,    Y,     Y,    Y,     Y,    N),
    "{cls}: create as alice in lab_a":              (Y,    Y,    Y,     Y,    N,     N,    N),
    "{cls}: create as adam (admin) in lab_a":       (Y,    Y,    N,     N,    N,     N,    N),
    "{cls}: create, own, in lab_b":                 (Y,    Y,    N,     N,    N,     Y,    N),
    "{cls}: update alice's row":                    (Y,    Y,    Y,     Y,    N,     N,    N),
    "{cls}: delete alice's row":                    (Y,    Y,    Y,     Y,    N,     N,    N),
    "{cls}: update adam's row in lab_a":            (Y,    Y,    N,     N,    N,     N,    N),
    "{cls}: give alice's row to bob":               (Y,    Y,    Y,     N,    N,     N,    N),
    "{cls}: move alice's row to lab_b":             (Y,    Y,    N,     N,    N,     N,    N),
    "{cls}: lock the table":                        (Y,    Y,    Y,     Y,    Y,     Y,    N),
    "{cls}: path through the owner's password":     (N,    N,    N,     N,    N,     N,    N),
    # links: alice's project and dataset (lab_a), carol's dataset (lab_b)
    "link: read alice's project-dataset link":      (Y,    Y,    Y,     Y,    Y,     N,    N),
    "link: read alice's project-carol's dataset":   (Y,    Y,    N,     N,    N,     N,    N),
    "link: create alice's project-dataset":         (Y,    Y,    Y,     Y,    N,     N,    N),
    "link: create alice's project-carol's dataset": (Y,    Y,    N,     N,    N,     N,    N),
    "link: delete alice's project-dataset link":    (Y,    Y,    Y,     Y,    N,     N,    N),
    "link: re-point alice's link to carol's dataset": (Y,  Y,    N,     N,    N,     N,    N),
    "link: lock the table":                         (Y,    Y,    Y,     Y,    Y,     Y,    N),
    # experimenters: bob's row, the actor's own row, the super user's row
    "Experimenter: read bob's name":                (Y,    Y,    Y,     Y,    Y,     Y,    Y),
    "Experimenter: update bob's {profile}":         (Y,    Y,    N,     N,    Y,     N,    N),
    "Experimenter: update own {profile}":           (Y,    Y,    Y,     Y,    Y,     Y,    N),
    "Experimenter: update bob's {admin_column}":    (Y,    Y,    N,     N,    N,     N,    N),
    "Experimenter: update own {own_admin_column}":  (Y,    Y,    N,     N,    N,     N,    N),
    "Experimenter: make oneself a guest":           (N,    Y,    N,     N,    N,     N,    N),
    "Experimenter: deactivate oneself":             (N,    Y,    N,     N,    N,     N,    N),
    "Experimenter: set a password_hash":            (N,    N,    N,     N,    N,     N,    N),
    "Experimenter: own default group to a group he is in": (Y, Y, Y,    Y,    Y,     Y,    N),
    "Experimenter: own default group to a group he is not in": (Y, Y, N, N,   N,     N,    N),
    "Experimenter: create":                         (Y,    Y,    N,     N,    N,     N,    N),
    "Experimenter: delete a member of lab_a":                     (Y,    Y,    N,     N,    N,     N,    N),
    "Experimenter: delete oneself":                 (N,    N,    N,     N,    N,     N,    N),
    "Experimenter: update the super user's name":   (Y,    N,    N,     N,    N,     N,    N),
    "Experimenter: demote the super user":          (N,    N,    N,     N,    N,     N,    N),
    "Experimenter: deactivate the super user":      (N,    N,    N,     N,    N,     N,    N),
    "Experimenter: delete the super user":          (N,    N,    N,     N,    N,     N,    N),
    "Experimenter: lock the table":                 (Y,    Y,    N,     N,    N,     N,    N),
    # groups
    "Group: read":                                  (Y,    Y,    Y,     Y,    Y,     Y,    Y),
    "Group: create":                                (Y,    Y,    N,     N,    N,     N,    N),
    "Group: rename":                                (Y,    Y,    N,     N,    N,     N,    N),
    "Group: set the leader":                        (Y,    Y,    N,     N,    N,     N,    N),
    "Group: delete":                                (Y,    Y,    N,     N,    N,     N,    N),
    # memberships
    "membership: read alice's in lab_a":            (Y,    Y,    Y,     Y,    Y,     N,    N),
    "membership: read carol's in lab_b":            (Y,    Y,    N,     N,    N,     Y,    N),
    "membership: add a lab_b user to lab_a":        (Y,    Y,    Y,     N,    N,     N,    N),
    "membership: add an admin to lab_a":            (Y,    Y,    N,     N,    N,     N,    N),
    "membership: add oneself to a new group":      (Y,    Y,    N,     N,    N,     N,    N),
    "membership: remove a second one, in lab_a":    (Y,    Y,    Y,     N,    N,     N,    N),
    "membership: remove one of a default group":    (N,    N,    N,     N,    N,     N,    N),
    "membership: lock the table":                   (Y,    Y,    N,     N,    N,     N,    N),
    # user states
    "UserState: read bob's":                        (Y,    Y,    N,     N,    Y,     N,    N),
    "UserState: own project to one he can read":    (Y,    Y,    Y,     Y,    Y,     Y,    N),
    "UserState: own project to carol's":            (Y,    Y,    N,     N,    N,     Y,    N),
    "UserState: bob's project to alice's":          (Y,    Y,    N,     N,    Y,     N,    N),
    "UserState: lock the table":                    (Y,    Y,    N,     N,    N,     N,    N),
    # configuration
    "configuration: read":                          (Y,    Y,    Y,     Y,    Y,     Y,    Y),
    "configuration: set {value}":                   (Y,    Y,    N,     N,    N,     N,    N),
    "configuration: set super_user to adam":        (Y,    N,    N,     N,    N,     N,    N),
    # live sessions, as ``sessions who`` lists them
    "sessions: see bob's live session":             (Y,    Y,    N,     N,    Y,     N,    N),
    # sudo_session: as whom
    "sudo: as the super user":                      (Y,    N,    N,     N,    N,     N,    N),
    "sudo: as an admin":                            (Y,    Y,    N,     N,    N,     N,    N),
    "sudo: as bob (non-admin member of lab_a)":     (Y,    Y,    Y,     N,    N,     N,    N),
    "sudo: as carol (lab_b)":                       (Y,    Y,    N,     N,    N,     N,    N),
    "sudo: as the guest":                           (Y,    Y,    N,     N,    N,     N,    N),
}
# fmt: on


OWNED_CLASSES = ("Project", "Dataset", "Image", "Specimen")
TABLES = {"Project": "projects", "Dataset": "datasets", "Image": "images", "Specimen": "specimens"}
PROFILE = ("first_name", "last_name", "email", "institution")
ADMIN_COLUMNS = ("ome_name", "data_dir", "is_admin", "is_guest", "active")
OWN_ADMIN_COLUMNS = ("ome_name", "data_dir", "is_admin")
CONFIG_VALUES: dict[str, Any] = {"allow_guest_access": False, "session_idle_timeout": 600,
                                 "session_max_lifetime": 3600, "tmp_dir": "/tmp/elsewhere", "db_instance": "renamed"}
_FILLS = {"{cls}": OWNED_CLASSES, "{profile}": PROFILE, "{admin_column}": ADMIN_COLUMNS,
          "{own_admin_column}": OWN_ADMIN_COLUMNS, "{value}": tuple(CONFIG_VALUES)}


class Specimen(DBObject):
    """A user-declared owned class: the table applies to it exactly as to the core ones."""

    __table__ = "specimens"
    name = Column(str, nullable=False)
    owner = Reference("Experimenter")
    group = Reference("Group")


def _cells() -> list[tuple[str, str]]:
    """Every (cell, template) of the table, with the placeholders filled in."""
    found = []
    for template in TABLE:
        fills = [(hole, values) for hole, values in _FILLS.items() if hole in template]
        if not fills:
            found.append((template, template))
            continue
        hole, values = fills[0]
        found += [(template.replace(hole, value), template) for value in values]
    return found


# -- the world the cells act in ---------------------------------------------------------------------

_counter = itertools.count()


def _new_name(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"


@dataclass
class World:
    dsn: str
    ids: dict[str, int]
    groups: dict[str, int]
    keys: dict[str, str]

    def sql(self, statement: str | sql.Composed, *params: Any) -> list[tuple[Any, ...]]:
        """SQL on a connection of its own: the oracle's view, committed."""
        return query(self.dsn, statement, *params)

    def one(self, statement: str | sql.Composed, *params: Any) -> Any:
        rows = self.sql(statement, *params)
        return rows[0][0] if rows else None

    def session(self, role: str) -> Session:
        return SessionManager(self.dsn).create_session(key=self.keys[ACTOR[role]])

    def row(self, table: str, owner: str = "alice", group: str = "lab_a") -> int:
        """A fresh row of an owned table, made by the oracle."""
        return int(self.one(sql.SQL("INSERT INTO {} (name, owner_id, group_id) VALUES (%s, %s, %s) RETURNING id")
                            .format(sql.Identifier(table)), _new_name(table), self.ids[owner], self.groups[group]))

    def user(self, group: str = "lab_a", *, is_admin: bool = False) -> int:
        """A fresh experimenter (a member of ``group``), to act on without changing an actor."""
        user_id = int(self.one("INSERT INTO experimenters (ome_name, group_id, is_admin) VALUES (%s, %s, %s) "
                               "RETURNING id", _new_name("u"), self.groups[group], is_admin))
        self.sql("INSERT INTO experimenter_group_map VALUES (%s, %s)", user_id, self.groups[group])
        return user_id

    def group(self) -> int:
        return int(self.one("INSERT INTO groups (name) VALUES (%s) RETURNING id", _new_name("g")))

    def snapshot(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The actors' rows and the configuration: what a cell may change and the next needs back."""
        return (self.sql("SELECT * FROM experimenters WHERE id = ANY(%s) ORDER BY id", list(self.ids.values())),
                self.sql("SELECT name, value FROM configuration ORDER BY name"))

    def restore(self, saved: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]) -> None:
        people, configuration = saved
        with psycopg.connect(self.dsn) as conn:
            columns = [c.name for c in conn.execute("SELECT * FROM experimenters LIMIT 0").description or []]
            update = sql.SQL("UPDATE experimenters SET ({}) = ({}) WHERE id = %s").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join(sql.Placeholder() * len(columns)))
            for row in people:
                conn.execute(update, [*row, row[0]])
            conn.execute("DELETE FROM configuration")
            for name, value in configuration:
                conn.execute("INSERT INTO configuration VALUES (%s, %s)", (name, Jsonb(value)))


@pytest.fixture(scope="module")
def world(pg_cluster: Cluster) -> Iterator[World]:
    """One database for the module: the lab, a user-declared owned table, and each actor logged in
    once (a key each; the cells resume by key, one round trip, instead of paying argon2 again)."""
    name = f"perm_{os.getpid()}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = pg_cluster.dsn(name)
    ids: dict[str, int] = {}
    groups: dict[str, int] = {}
    people = {"root": ("system", True, False), "adam": ("system", True, False), "lena": ("lab_a", False, False),
              "alice": ("lab_a", False, False), "bob": ("lab_a", False, False), "carol": ("lab_b", False, False),
              "guest": ("guests", False, True)}
    with psycopg.connect(dsn) as conn:
        _migrations.migrate(conn)
        conn.execute("CREATE TABLE specimens (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                     " name text NOT NULL, owner_id bigint REFERENCES experimenters,"
                     " group_id bigint REFERENCES groups)")
        for group in ("system", "lab_a", "lab_b", "guests"):
            groups[group] = conn.execute("INSERT INTO groups (name) VALUES (%s) RETURNING id", (group,)).fetchone()[0]
        for user, (group, is_admin, is_guest) in people.items():
            ids[user] = conn.execute(
                "INSERT INTO experimenters (ome_name, first_name, password_hash, group_id, is_admin, is_guest) "
                "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (user, user.title(), password_hash(password(user)), groups[group], is_admin, is_guest)).fetchone()[0]
            conn.execute("INSERT INTO experimenter_group_map VALUES (%s, %s)", (ids[user], groups[group]))
        conn.execute("UPDATE groups SET leader_id = %s WHERE name = 'lab_a'", (ids["lena"],))
        conn.execute("UPDATE groups SET leader_id = %s WHERE name = 'system'", (ids["root"],))
        for key, value in (("super_user", ids["root"]), ("allow_guest_access", True),
                           ("session_idle_timeout", 0), ("tmp_dir", f"/tmp/ome-session-perm-{os.getpid()}")):
            conn.execute("INSERT INTO configuration VALUES (%s, %s)", (key, Jsonb(value)))
    keys = {}
    for user in people:
        keys[user] = login(dsn, user).session_key or ""
        Session.delete_instance(force=True)
    try:
        yield World(dsn, ids, groups, keys)
    finally:
        Session.delete_instance(force=True)
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- the cells ------------------------------------------------------------------------------------

Context = dict[str, Any]


@dataclass
class Cell:
    """``setup`` makes fresh rows with SQL and returns what the cell needs; ``act`` does the thing
    through the public API; ``state`` reads, with SQL, what it would change, and ``done`` says
    whether a state shows it done. A read has no ``state``: ``act`` returns whether it saw the row."""

    setup: Callable[[World], Context]
    act: Callable[[Factory, World, Context], Any]
    state: Callable[[World, Context], Any] | None = None
    done: Callable[[Any, Context], bool] = lambda state, context: True


def _nothing(w: World) -> Context:
    return {}


def _forged(f: Factory, cls: str, values: dict[str, Any]) -> Any:
    """An object for a row the actor cannot read, made the way hostile code could: by hand."""
    return resolve(cls)._from_row(f, values)


def _locks(cls: str) -> Cell:
    """LOCK TABLE, seen held from the oracle's connection while the transaction is open."""
    def act(f: Factory, w: World, c: Context) -> None:
        f.lock_table(cls, "SHARE")
        pid = f.obtain_dbh().info.backend_pid
        c["held"] = w.one("SELECT count(*) FROM pg_locks WHERE pid = %s AND mode = 'ShareLock' "
                          "AND relation = %s::regclass", pid, resolve(cls).__table__)

    return Cell(_nothing, act, lambda w, c: c.get("held", 0), lambda s, c: s == 1)


def owned_cells(cls: str) -> dict[str, Cell]:
    table = TABLES[cls]

    def fresh(w: World) -> Context:
        return {"id": w.row(table), "name": _new_name("new"), "bob": w.ids["bob"], "lab_b": w.groups["lab_b"],
                "ids": w.ids, "groups": w.groups}

    def name_of(w: World, c: Context) -> Any:
        return w.one(sql.SQL("SELECT name FROM {} WHERE id = %s").format(sql.Identifier(table)), c["id"])

    def owner_group(w: World, c: Context) -> Any:
        return w.sql(sql.SQL("SELECT owner_id, group_id FROM {} WHERE id = %s").format(sql.Identifier(table)), c["id"])

    def created(w: World, c: Context) -> Any:
        return w.sql(sql.SQL("SELECT owner_id, group_id FROM {} WHERE name = %s").format(sql.Identifier(table)),
                     c["name"])

    def create(owner: str | None, group: str | None) -> Cell:
        def act(f: Factory, w: World, c: Context) -> Any:
            values: dict[str, Any] = {"name": c["name"]}
            if owner:
                values["owner_id"] = w.ids[owner]
            if group:
                values["group_id"] = w.groups[group]
            return f.new_object(cls, **values)

        def done(state: Any, c: Context) -> bool:
            expected_owner = c["ids"][owner] if owner else c["self"]
            return len(state) == 1 and state[0][0] == expected_owner and (
                group is None or state[0][1] == c["groups"][group])

        return Cell(fresh, act, created, done)

    def row_object(f: Factory, w: World, c: Context) -> Any:
        return f.load_object(cls, c["id"]) or _forged(f, cls, {"id": c["id"], "name": "x", "owner_id": w.ids["alice"],
                                                                "group_id": w.groups["lab_a"]})

    def update(values: Callable[[World], dict[str, Any]]) -> Callable[[Factory, World, Context], Any]:
        def act(f: Factory, w: World, c: Context) -> Any:
            obj = row_object(f, w, c)
            for key, value in values(w).items():
                setattr(obj, key, value)
            obj.store()
        return act

    def adams_row(w: World) -> Context:
        return {**fresh(w), "id": w.row(table, owner="adam")}

    return {
        f"{cls}: read alice's row": Cell(fresh, lambda f, w, c: f.load_object(cls, c["id"]) is not None),
        f"{cls}: create, own, default group": create(None, None),
        f"{cls}: create as alice in lab_a": create("alice", "lab_a"),
        f"{cls}: create as adam (admin) in lab_a": create("adam", "lab_a"),
        f"{cls}: create, own, in lab_b": create(None, "lab_b"),
        f"{cls}: update alice's row": Cell(fresh, update(lambda w: {"name": "renamed"}), name_of,
                                           lambda s, c: s == "renamed"),
        f"{cls}: delete alice's row": Cell(fresh, lambda f, w, c: row_object(f, w, c).delete(), name_of,
                                           lambda s, c: s is None),
        f"{cls}: update adam's row in lab_a": Cell(adams_row, update(lambda w: {"name": "renamed"}), name_of,
                                                   lambda s, c: s == "renamed"),
        f"{cls}: give alice's row to bob": Cell(fresh, update(lambda w: {"owner_id": w.ids["bob"]}), owner_group,
                                                lambda s, c: s[0][0] == c["bob"]),
        f"{cls}: move alice's row to lab_b": Cell(fresh, update(lambda w: {"group_id": w.groups["lab_b"]}),
                                                  owner_group, lambda s, c: s[0][1] == c["lab_b"]),
        f"{cls}: lock the table": _locks(cls),
        # A criterion, an order or a distinct value on a private column is refused for everyone.
        f"{cls}: path through the owner's password": Cell(
            fresh, lambda f, w, c: _refused_as_private(f, cls), lambda w, c: 0, lambda s, c: True),
    }


def _refused_as_private(f: Factory, cls: str) -> None:
    for criteria in ({"owner.password_hash": ("like", "$argon2%")}, {"__order": "owner.password_hash"},
                     {"__distinct": "owner.password_hash"}):
        with pytest.raises(ValueError, match="private"):
            f.find_objects(cls, **criteria)
    raise PermissionDenied("private columns are refused (as ValueError) in every role")


def link_cells() -> dict[str, Cell]:
    def ends(w: World) -> Context:
        return {"project": w.row("projects"), "dataset": w.row("datasets"),
                "carols": w.row("datasets", "carol", "lab_b")}

    def linked(dataset: str) -> Callable[[World], Context]:
        def setup(w: World) -> Context:
            c = ends(w)
            c["link"] = w.one("INSERT INTO project_dataset_map (project_id, dataset_id) VALUES (%s, %s) RETURNING id",
                              c["project"], c[dataset])
            return c
        return setup

    def links(w: World, c: Context) -> Any:
        return [d for (d,) in w.sql("SELECT dataset_id FROM project_dataset_map WHERE project_id = %s ORDER BY id",
                                    c["project"])]

    def create(dataset: str) -> Cell:
        return Cell(ends, lambda f, w, c: f.new_object("ProjectDatasetMap", project_id=c["project"],
                                                       dataset_id=c[dataset]),
                    links, lambda s, c: s == [c[dataset]])

    def link_object(f: Factory, w: World, c: Context) -> Any:
        return f.load_object("ProjectDatasetMap", c["link"]) or _forged(
            f, "ProjectDatasetMap", {"id": c["link"], "project_id": c["project"], "dataset_id": c["dataset"]})

    def repoint(f: Factory, w: World, c: Context) -> None:
        link = link_object(f, w, c)
        link.dataset_id = c["carols"]
        link.store()

    def sees(f: Factory, w: World, c: Context) -> bool:
        return bool(f.find_objects("ProjectDatasetMap", id=c["link"]))

    return {
        "link: read alice's project-dataset link": Cell(linked("dataset"), sees),
        "link: read alice's project-carol's dataset": Cell(linked("carols"), sees),
        "link: create alice's project-dataset": create("dataset"),
        "link: create alice's project-carol's dataset": create("carols"),
        "link: delete alice's project-dataset link": Cell(
            linked("dataset"), lambda f, w, c: link_object(f, w, c).delete(), links, lambda s, c: s == []),
        "link: re-point alice's link to carol's dataset": Cell(linked("dataset"), repoint, links,
                                                               lambda s, c: s == [c["carols"]]),
        "link: lock the table": _locks("ProjectDatasetMap"),
    }


def _column_of(column: str) -> sql.Composed:
    return sql.SQL("SELECT {} FROM experimenters WHERE id = %s").format(sql.Identifier(column))


def experimenter_cells() -> dict[str, Cell]:
    cells: dict[str, Cell] = {}
    new_values = {"is_admin": True, "is_guest": True, "active": False, "data_dir": "/data/x"}

    def update_of(target: Callable[[World, Context], int], column: str, value: Any = None) -> Cell:
        def setup(w: World) -> Context:
            return {"value": value if value is not None else new_values.get(column, _new_name("v"))}

        def act(f: Factory, w: World, c: Context) -> None:
            user = f.load_object("Experimenter", target(w, c))
            setattr(user, column, c["value"])
            user.store()

        return Cell(setup, act, lambda w, c: w.one(_column_of(column), target(w, c)), lambda s, c: s == c["value"])

    def fresh_member(w: World, c: Context) -> int:
        return c.setdefault("user", w.user())  # type: ignore[no-any-return]

    def own(w: World, c: Context) -> int:
        return c["self"]  # type: ignore[no-any-return]

    def bob(w: World, c: Context) -> int:
        return w.ids["bob"]  # restored after each cell

    for column in PROFILE:
        cells[f"Experimenter: update bob's {column}"] = update_of(bob, column)
        cells[f"Experimenter: update own {column}"] = update_of(own, column)
    for column in ADMIN_COLUMNS:
        cells[f"Experimenter: update bob's {column}"] = update_of(bob, column)
    for column in OWN_ADMIN_COLUMNS:
        cells[f"Experimenter: update own {column}"] = update_of(own, column)
    cells["Experimenter: make oneself a guest"] = update_of(own, "is_guest", True)
    cells["Experimenter: deactivate oneself"] = update_of(own, "active", False)
    cells["Experimenter: update the super user's name"] = update_of(lambda w, c: w.ids["root"], "last_name")
    cells["Experimenter: demote the super user"] = update_of(lambda w, c: w.ids["root"], "is_admin", False)
    cells["Experimenter: deactivate the super user"] = update_of(lambda w, c: w.ids["root"], "active", False)

    def default_group(member: bool) -> Cell:
        def act(f: Factory, w: World, c: Context) -> None:
            if member:
                w.sql("INSERT INTO experimenter_group_map VALUES (%s, %s)", c["self"], c["group"])
            me = f.load_object("Experimenter", c["self"])
            me.group_id = c["group"]
            me.store()

        return Cell(lambda w: {"group": w.group()}, act, lambda w, c: w.one(_column_of("group_id"), c["self"]),
                    lambda s, c: s == c["group"])

    cells["Experimenter: own default group to a group he is in"] = default_group(True)
    cells["Experimenter: own default group to a group he is not in"] = default_group(False)

    def delete(target: Callable[[World, Context], int]) -> Cell:
        return Cell(_nothing, lambda f, w, c: f.load_object("Experimenter", target(w, c)).delete(),
                    lambda w, c: w.one("SELECT count(*) FROM experimenters WHERE id = %s", target(w, c)),
                    lambda s, c: s == 0)

    cells["Experimenter: delete a member of lab_a"] = delete(fresh_member)
    cells["Experimenter: delete oneself"] = delete(own)
    cells["Experimenter: delete the super user"] = delete(lambda w, c: w.ids["root"])
    cells["Experimenter: read bob's name"] = Cell(
        _nothing, lambda f, w, c: f.load_object("Experimenter", w.ids["bob"]).ome_name == "bob")

    def hash_write(f: Factory, w: World, c: Context) -> None:
        user = f.load_object("Experimenter", fresh_member(w, c))
        with pytest.raises(AttributeError, match="private"):
            user.password_hash = "$argon2id$forged"
        with pytest.raises(ValueError, match="private"):
            f.new_object("Experimenter", ome_name=_new_name("h"), password_hash="$argon2id$forged")
        raise PermissionDenied("private columns are refused (as AttributeError / ValueError) in every role")

    cells["Experimenter: set a password_hash"] = Cell(
        _nothing, hash_write, lambda w, c: w.one("SELECT count(*) FROM experimenters WHERE password_hash LIKE "
                                                 "'%%forged'"), lambda s, c: s == 1)
    cells["Experimenter: create"] = Cell(
        lambda w: {"name": _new_name("new")},
        lambda f, w, c: f.new_object("Experimenter", ome_name=c["name"], group_id=w.groups["lab_a"]),
        lambda w, c: w.one("SELECT count(*) FROM experimenters WHERE ome_name = %s", c["name"]), lambda s, c: s == 1)
    cells["Experimenter: lock the table"] = _locks("Experimenter")
    return cells


def group_cells() -> dict[str, Cell]:
    def fresh(w: World) -> Context:
        return {"group": w.group(), "name": _new_name("g")}

    def named(w: World, c: Context) -> Any:
        return w.sql("SELECT name, leader_id FROM groups WHERE id = %s", c["group"])

    def change(column: str, value: Callable[[World, Context], Any]) -> Callable[[Factory, World, Context], None]:
        def act(f: Factory, w: World, c: Context) -> None:
            group = f.load_object("Group", c["group"])
            setattr(group, column, value(w, c))
            group.store()
        return act

    return {
        "Group: read": Cell(_nothing, lambda f, w, c: f.find_object("Group", name="lab_b") is not None),
        "Group: create": Cell(lambda w: {"name": _new_name("g")}, lambda f, w, c: f.new_object("Group", name=c["name"]),
                              lambda w, c: w.one("SELECT count(*) FROM groups WHERE name = %s", c["name"]),
                              lambda s, c: s == 1),
        "Group: rename": Cell(fresh, change("name", lambda w, c: c["name"]), named, lambda s, c: s[0][0] == c["name"]),
        "Group: set the leader": Cell(fresh, change("leader_id", lambda w, c: c["self"]), named,
                                      lambda s, c: s[0][1] == c["self"]),
        "Group: delete": Cell(fresh, lambda f, w, c: f.load_object("Group", c["group"]).delete(), named,
                              lambda s, c: s == []),
    }


def membership_cells() -> dict[str, Cell]:
    def count(w: World, c: Context) -> Any:
        return w.one("SELECT count(*) FROM experimenter_group_map WHERE experimenter_id = %s AND group_id = %s",
                     c["user"], c["group"])

    def add(setup: Callable[[World], Context]) -> Cell:
        return Cell(setup, lambda f, w, c: f.new_object("ExperimenterGroupMap", experimenter_id=c["user"],
                                                        group_id=c["group"]), count, lambda s, c: s == 1)

    def second(w: World) -> Context:
        user, group = w.user("lab_b"), w.groups["lab_a"]
        w.sql("INSERT INTO experimenter_group_map VALUES (%s, %s)", user, group)
        return {"user": user, "group": group}

    def remove(f: Factory, w: World, c: Context) -> None:
        link = f.load_object("ExperimenterGroupMap", (c["user"], c["group"])) or _forged(
            f, "ExperimenterGroupMap", {"experimenter_id": c["user"], "group_id": c["group"]})
        link.delete()

    def sees(user: str, group: str) -> Callable[[Factory, World, Context], bool]:
        return lambda f, w, c: f.load_object("ExperimenterGroupMap", (w.ids[user], w.groups[group])) is not None

    return {
        "membership: read alice's in lab_a": Cell(_nothing, sees("alice", "lab_a")),
        "membership: read carol's in lab_b": Cell(_nothing, sees("carol", "lab_b")),
        "membership: add a lab_b user to lab_a": add(lambda w: {"user": w.user("lab_b"), "group": w.groups["lab_a"]}),
        "membership: add an admin to lab_a": add(lambda w: {"user": w.user("lab_b", is_admin=True),
                                                            "group": w.groups["lab_a"]}),
        "membership: add oneself to a new group": Cell(
            lambda w: {"group": w.group()}, lambda f, w, c: f.new_object(
                "ExperimenterGroupMap", experimenter_id=c["self"], group_id=c["group"]),
            lambda w, c: count(w, {**c, "user": c["self"]}), lambda s, c: s == 1),
        "membership: remove a second one, in lab_a": Cell(second, remove, count, lambda s, c: s == 0),
        "membership: remove one of a default group": Cell(
            lambda w: {"user": w.user("lab_a"), "group": w.groups["lab_a"]}, remove, count, lambda s, c: s == 0),
        "membership: lock the table": _locks("ExperimenterGroupMap"),
    }


def user_state_cells() -> dict[str, Cell]:
    def point(whose: str, project: Callable[[World, Context], int]) -> Cell:
        def target(w: World, c: Context) -> int:
            return c["self"] if whose == "own" else w.ids[whose]  # type: ignore[no-any-return]

        def act(f: Factory, w: World, c: Context) -> None:
            c["project"] = project(w, c)
            state = f.load_object("UserState", target(w, c)) or _forged(
                f, "UserState", {"experimenter_id": target(w, c)})
            state.project_id = c["project"]
            state.store()

        return Cell(_nothing, act, lambda w, c: w.one("SELECT project_id FROM user_states WHERE experimenter_id = %s",
                                                      target(w, c)), lambda s, c: s == c["project"])

    def own_project(w: World, c: Context) -> int:
        group = w.one(_column_of("group_id"), c["self"])
        return int(w.one("INSERT INTO projects (name, owner_id, group_id) VALUES ('own', %s, %s) RETURNING id",
                         c["self"], group))

    return {
        "UserState: read bob's": Cell(_nothing, lambda f, w, c: f.load_object("UserState", w.ids["bob"]) is not None),
        "UserState: own project to one he can read": point("own", own_project),
        "UserState: own project to carol's": point("own", lambda w, c: w.row("projects", "carol", "lab_b")),
        "UserState: bob's project to alice's": point("bob", lambda w, c: w.row("projects", "alice", "lab_a")),
        "UserState: lock the table": _locks("UserState"),
    }


def configuration_cells() -> dict[str, Cell]:
    def setting(name: str, value: Any) -> Cell:
        return Cell(_nothing, lambda f, w, c: Configuration.update(f, {name: value}),
                    lambda w, c: w.one("SELECT value FROM configuration WHERE name = %s", name),
                    lambda s, c: s == value)

    cells = {f"configuration: set {name}": setting(name, value) for name, value in CONFIG_VALUES.items()}
    cells["configuration: read"] = Cell(_nothing, lambda f, w, c: f.configuration.allow_guest_access is True)
    cells["configuration: set super_user to adam"] = Cell(
        _nothing, lambda f, w, c: Configuration.update(f, {"super_user": w.ids["adam"]}),
        lambda w, c: w.one("SELECT value FROM configuration WHERE name = 'super_user'"), lambda s, c: s == c["adam"])
    return cells


def sudo_cells() -> dict[str, Cell]:
    def sudo(target: str) -> Cell:
        def state(w: World, c: Context) -> Any:
            return w.sql("SELECT e.ome_name, s.sudo_by FROM ome_sessions s JOIN experimenters e "
                         "ON e.id = s.experimenter_id WHERE s.sudo_by IS NOT NULL AND s.started >= %s", c["since"])

        return Cell(lambda w: {"since": w.one("SELECT now()")},
                    lambda f, w, c: SessionManager(w.dsn).sudo_session(target), state,
                    lambda s, c: s == [(target, c["self"])])

    return {"sudo: as the super user": sudo("root"), "sudo: as an admin": sudo("adam"),
            "sudo: as bob (non-admin member of lab_a)": sudo("bob"), "sudo: as carol (lab_b)": sudo("carol"),
            "sudo: as the guest": sudo("guest")}


def session_cells() -> dict[str, Cell]:
    def sees_bob(f: Factory, w: World, c: Context) -> bool:
        return any(s.user == "bob" for s in _maintenance.live_sessions(Session.instance()))

    return {"sessions: see bob's live session": Cell(_nothing, sees_bob)}


CELLS: dict[str, Cell] = {
    **{name: cell for cls in OWNED_CLASSES for name, cell in owned_cells(cls).items()},
    **link_cells(), **experimenter_cells(), **group_cells(), **membership_cells(), **user_state_cells(),
    **configuration_cells(), **session_cells(), **sudo_cells(),
}


def test_every_cell_of_the_table_is_checked_and_every_check_is_a_cell() -> None:
    assert sorted(CELLS) == sorted(cell for cell, _ in _cells())


@pytest.mark.parametrize(("cell", "template", "role"),
                         [(cell, template, role) for cell, template in _cells() for role in ROLES],
                         ids=[f"{cell} | {role}" for cell, _ in _cells() for role in ROLES])
def test_cell(world: World, cell: str, template: str, role: str) -> None:
    allowed = TABLE[template][ROLES.index(role)]
    check = CELLS[cell]
    saved = world.snapshot()
    try:
        context = {"self": world.ids[ACTOR[role]], "adam": world.ids["adam"], **check.setup(world)}
        session = world.session(role)
        if check.state is None:  # a read: seen or not, never an error
            assert check.act(session.factory, world, context) is allowed
            return
        before = check.state(world, context)
        if allowed:
            check.act(session.factory, world, context)
            Session.instance().commit_transaction()
            after = check.state(world, context)
            assert check.done(after, context), (before, after)
            return
        with pytest.raises(PermissionDenied):
            check.act(session.factory, world, context)
        assert Session.instance().user_name == ACTOR[role]  # a refused sudo leaves the session as it was
        # The transaction is still usable: the refusal left no failed statement behind.
        assert Session.instance().factory.count_objects("Group") >= 4
        Session.instance().commit_transaction()
        assert check.state(world, context) == before
    finally:
        Session.delete_instance(force=True)
        world.restore(saved)
