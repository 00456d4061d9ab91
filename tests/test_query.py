"""The criteria language: what each criterion selects on a real PostgreSQL with the shipped schema."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ome_session import _migrations
from ome_session._cluster import Cluster
from ome_session._query import Acl, compile_count, compile_select, criterion_columns
from ome_session.dbobject import Column, DBObject
from ome_session.model import (
    Dataset,
    Experimenter,
    ExperimenterGroupMap,
    Group,
    Image,
    Project,
    ProjectDatasetMap,
    UserState,
)

UTC = datetime.timezone.utc  # noqa: UP017 (datetime.UTC is Python 3.11+)

DATA = """
INSERT INTO groups (id, name) VALUES (1, 'lab-a'), (2, 'lab-b'), (3, 'lab-c');
INSERT INTO experimenters (id, ome_name, first_name, last_name, email, group_id) VALUES
    (1, 'alice', 'Alice', 'Ant', 'alice@example.org', 1),
    (2, 'bob', 'Bob', 'Bee', NULL, 2),
    (3, 'carol', 'Carol', 'Cat', 'carol@example.org', 1);
INSERT INTO experimenter_group_map VALUES (1, 1), (2, 2), (3, 1), (3, 2);
INSERT INTO projects (id, name, description, owner_id, group_id) VALUES
    (1, 'alpha', 'first', 1, 1), (2, 'beta', NULL, 2, 2), (3, 'gamma', 'third', 3, 1),
    (4, 'alpha', NULL, 2, 2), (5, 'delta', 'Fifth 100%', NULL, NULL);
INSERT INTO datasets (id, name, locked, owner_id, group_id) VALUES
    (1, 'd-one', false, 1, 1), (2, 'd-two', false, 2, 2), (3, 'd-three', true, 1, 1),
    (4, 'd-four', false, 3, 1);
INSERT INTO project_dataset_map (id, project_id, dataset_id) VALUES
    (1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 2, 2), (5, 3, 3);
INSERT INTO images (id, name, created, owner_id, group_id) VALUES
    (1, 'img-a', '2024-01-01 00:00Z', 1, 1), (2, 'img-b', '2024-06-01 00:00Z', 2, 2),
    (3, 'img-c', '2025-01-01 00:00Z', 1, 1);
INSERT INTO dataset_image_map (id, dataset_id, image_id) VALUES (1, 1, 1), (2, 1, 2), (3, 3, 3);
INSERT INTO user_states (experimenter_id, project_id, dataset_id, image_view) VALUES
    (1, 1, 1, 'grid'), (2, NULL, NULL, NULL);
INSERT INTO configuration (name, value) VALUES
    ('tmp_dir', '"/tmp/x"'), ('limits', '{"n": 3}'), ('flag', 'true');
"""


class _Setting(DBObject):
    """A jsonb-valued class over the configuration table, to cover dict columns."""

    __table__ = "configuration"
    __primary_key__ = ("name",)
    id = None  # type: ignore[assignment]
    name = Column(str, nullable=False)
    value = Column(dict)


@pytest.fixture(scope="module")
def conn(pg_cluster: Cluster) -> Iterator[psycopg.Connection[Any]]:
    """A database of its own, migrated by the installer's runner, holding a small known data set."""
    name = f"query_{os.getpid()}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(pg_cluster.dsn(name)) as db:
            _migrations.migrate(db)
            db.execute(DATA.encode())
            db.commit()
            db.autocommit = True
            yield db
    finally:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def ids(conn: psycopg.Connection[Any], cls: type[DBObject], acl: Acl | None = None, /, **criteria: Any) -> list[Any]:
    """The first column (the key) of every selected row, in the order the query returns them."""
    query, params = compile_select(cls, criteria, acl)
    return [row[0] for row in conn.execute(query, params).fetchall()]


def count(conn: psycopg.Connection[Any], cls: type[DBObject], acl: Acl | None = None, /, **criteria: Any) -> int:
    query, params = compile_count(cls, criteria, acl)
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def text(conn: psycopg.Connection[Any], cls: type[DBObject], criteria: Mapping[str, Any]) -> str:
    query, _ = compile_select(cls, criteria, None)
    return query.as_string(conn)


def obj(cls: type[DBObject], **values: Any) -> DBObject:
    return cls._from_row(None, values)


ALICE = Acl(1)
BOB = Acl(2)
CAROL = Acl(3)  # a member of lab-a and lab-b
NOBODY = Acl(99)  # in no group, owner of nothing


# -- columns, equality, None ---------------------------------------------------------------------


def test_select_returns_every_declared_column_in_declared_order(conn: psycopg.Connection[Any]) -> None:
    query, params = compile_select(Project, {}, None)
    cursor = conn.execute(query, params)
    assert [c.name for c in cursor.description or []] == list(Project.__columns__)
    assert len(cursor.fetchall()) == 5


def test_plain_value_matches_equal_rows(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, name="alpha") == [1, 4]


def test_none_matches_null_rows(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, description=None) == [2, 4]


def test_dbobject_value_matches_by_its_id(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, owner=obj(Experimenter, id=2, ome_name="bob")) == [2, 4]


def test_reference_name_and_its_column_name_are_the_same_criterion(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, owner=2) == ids(conn, Project, owner_id=2) == [2, 4]


def test_id_means_the_primary_key_also_on_classes_keyed_by_a_reference(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, id=3) == [3]
    assert ids(conn, UserState, id=1) == [1]
    assert ids(conn, UserState, id=obj(Experimenter, id=2)) == [2]


def test_names_of_a_registered_class_are_accepted(conn: psycopg.Connection[Any]) -> None:
    query, params = compile_select("OME::Project", {"name": "beta"}, None)
    assert [row[0] for row in conn.execute(query, params)] == [2]


# -- operators -----------------------------------------------------------------------------------

OPERATOR_CASES = [
    ("name", ("=", "beta"), [2]),
    ("name", ("!=", "alpha"), [2, 3, 5]),
    ("name", ("<>", "alpha"), [2, 3, 5]),
    ("id", ("<", 3), [1, 2]),
    ("id", ("<=", 3), [1, 2, 3]),
    ("id", (">", 3), [4, 5]),
    ("id", (">=", 3), [3, 4, 5]),
    ("name", ("like", "al%"), [1, 4]),
    ("description", ("like", "fifth%"), []),
    ("description", ("ilike", "fifth%"), [5]),
    ("description", ("like", "% 100\\%"), [5]),
    ("id", ("in", [2, 3]), [2, 3]),
    ("id", ("not in", [2, 3]), [1, 4, 5]),
    ("description", ("is", None), [2, 4]),
    ("description", ("is not", None), [1, 3, 5]),
    ("description", ("=", None), [2, 4]),
    ("description", ("!=", None), [1, 3, 5]),
    ("name", ("LIKE", "al%"), [1, 4]),
    ("id", ("NOT  IN", [1]), [2, 3, 4, 5]),
]


@pytest.mark.parametrize(("key", "criterion", "expected"), OPERATOR_CASES, ids=lambda v: repr(v))
def test_each_whitelisted_operator_selects_the_matching_rows(
    conn: psycopg.Connection[Any], key: str, criterion: tuple[str, Any], expected: list[int]
) -> None:
    assert ids(conn, Project, **{key: criterion}) == expected


@pytest.mark.parametrize("op", ["<", "like", "ilike", ">="])
def test_ordering_operators_refuse_none(op: str) -> None:
    with pytest.raises(ValueError, match="'is not'"):
        compile_select(Project, {"description": (op, None)}, None)


def test_is_and_is_not_take_only_none() -> None:
    with pytest.raises(ValueError, match="only takes None"):
        compile_select(Project, {"id": ("is not", 3)}, None)


@pytest.mark.parametrize("op", ["= 1 or 1=1 --", "~", "between", "=>", "", None, "not"])
def test_operators_outside_the_whitelist_are_refused_naming_the_whitelist(op: Any) -> None:
    with pytest.raises(ValueError, match="unknown criteria operator") as info:
        compile_select(Project, {"id": (op, 1)}, None)
    assert "'ilike'" in str(info.value) and "'not in'" in str(info.value)


def test_a_tuple_that_is_not_an_operator_pair_is_refused() -> None:
    with pytest.raises(ValueError, match="operator"):
        compile_select(Project, {"id": (1, 2, 3)}, None)


# -- in / not in ---------------------------------------------------------------------------------


def test_in_with_none_also_matches_null_rows(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, description=["first", None]) == [1, 2, 4]
    assert ids(conn, Project, description=("in", [None])) == [2, 4]


def test_not_in_never_matches_null_rows_as_in_sql(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, description=("not in", ["first"])) == [3, 5]
    assert ids(conn, Project, description=("not in", ["first", None])) == [3, 5]
    assert ids(conn, Project, description=("not in", [None])) == [1, 3, 5]


def test_empty_in_matches_nothing_and_empty_not_in_matches_everything(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, id=("in", [])) == []
    assert ids(conn, Project, name=[]) == []
    assert ids(conn, Project, description=("not in", [])) == [1, 2, 3, 4, 5]
    assert count(conn, Project, id=[]) == 0


def test_lists_tuples_and_sets_all_mean_in(conn: psycopg.Connection[Any]) -> None:
    for values in (["beta", "gamma"], ("in", ("beta", "gamma")), {"beta", "gamma"}, frozenset({"beta", "gamma"})):
        assert ids(conn, Project, name=values) == [2, 3]


def test_in_list_is_one_typed_array_parameter(conn: psycopg.Connection[Any]) -> None:
    query, params = compile_select(Project, {"id": [1, 2, 3]}, None)
    assert params == [[1, 2, 3]]
    assert "= ANY(%s::int8[])" in query.as_string(conn)


def test_in_accepts_objects_for_references(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, owner=[obj(Experimenter, id=1), 3]) == [1, 3]


def test_in_checks_every_element() -> None:
    with pytest.raises(TypeError, match=r"Project\.name"):
        compile_select(Project, {"name": ["a", 2]}, None)


def test_in_needs_a_collection() -> None:
    with pytest.raises(TypeError, match="list, tuple or set"):
        compile_select(Project, {"name": ("in", "alpha")}, None)


# -- other column types --------------------------------------------------------------------------


def test_boolean_columns_compare_with_bools(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Dataset, locked=True) == [3]


def test_timestamps_compare_and_match_lists(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Image, created=("<", datetime.datetime(2024, 12, 1, tzinfo=UTC))) == [1, 2]
    wanted = [datetime.datetime(2024, 1, 1, tzinfo=UTC), datetime.datetime(2025, 1, 1, tzinfo=UTC)]
    assert ids(conn, Image, created=wanted) == [1, 3]


def test_jsonb_columns_match_json_values(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, _Setting, value={"n": 3}) == ["limits"]
    assert ids(conn, _Setting, value=[True, "/tmp/x"]) == ["flag", "tmp_dir"]


# -- paths ---------------------------------------------------------------------------------------


def test_one_hop_path_follows_the_reference(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, **{"owner.ome_name": "bob"}) == [2, 4]


def test_two_hop_path_follows_both_references(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, **{"owner.group.name": "lab-a"}) == [1, 3]


def test_path_on_a_link_class(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, ProjectDatasetMap, **{"dataset.name": "d-two"}) == [2, 4]


def test_has_many_path_returns_each_object_once(conn: psycopg.Connection[Any]) -> None:
    criteria = {"dataset_links.dataset.name": ["d-one", "d-two", "d-three"]}
    assert ids(conn, Project, **criteria) == [1, 2, 3]
    assert count(conn, Project, **criteria) == 3
    assert "EXISTS" in text(conn, Project, criteria)


def test_conditions_under_one_has_many_prefix_hold_for_the_same_related_row(conn: psycopg.Connection[Any]) -> None:
    # Project 1 has d-two (unlocked) and d-three (locked) but no dataset that is both.
    assert ids(conn, Project, **{"dataset_links.dataset.name": "d-two", "dataset_links.dataset.locked": True}) == []
    assert ids(conn, Project, **{"dataset_links.dataset.name": "d-three", "dataset_links.dataset.locked": True}) == [
        1,
        3,
    ]


def test_has_many_links_can_be_chained(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Image, **{"dataset_links.dataset.project_links.project.name": "gamma"}) == [3]
    assert ids(conn, Experimenter, **{"group_links.group.name": "lab-b"}) == [2, 3]


def test_repeated_path_prefix_reuses_one_join(conn: psycopg.Connection[Any]) -> None:
    criteria = {"owner.ome_name": "carol", "owner.first_name": "Carol", "__order": "owner.last_name"}
    assert text(conn, Project, criteria).count("JOIN") == 1
    assert ids(conn, Project, **criteria) == [3]


def test_joins_are_on_the_referenced_key(conn: psycopg.Connection[Any]) -> None:
    rendered = text(conn, Project, {"owner.group.name": "lab-a"})
    assert 'LEFT JOIN "experimenters" AS "t1" ON "t1"."id" = "t0"."owner_id"' in rendered
    assert 'LEFT JOIN "groups" AS "t2" ON "t2"."id" = "t1"."group_id"' in rendered


# -- order, limit, offset, distinct --------------------------------------------------------------


def test_order_descending_breaks_ties_by_primary_key(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, __order="!name") == [3, 5, 2, 1, 4]


def test_order_by_path_keeps_rows_whose_reference_is_null(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, __order=["owner.ome_name", "!id"]) == [1, 4, 2, 3, 5]


def test_order_through_a_has_many_link_is_refused() -> None:
    with pytest.raises(ValueError, match="has-many"):
        compile_select(Project, {"__order": "dataset_links.dataset.name"}, None)


def test_limit_and_offset_page_through_a_stable_order(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, __order="name", __limit=2, __offset=1) == [4, 2]
    query, params = compile_select(Project, {"__limit": 2, "__offset": 1}, None)
    assert params == [2, 1]
    assert query.as_string(conn).endswith("LIMIT %s OFFSET %s")


@pytest.mark.parametrize(("value", "error"), [(True, TypeError), (-1, ValueError), ("2", TypeError), (1.0, TypeError)])
def test_limit_and_offset_take_only_non_negative_ints(value: Any, error: type[Exception]) -> None:
    for key in ("__limit", "__offset"):
        with pytest.raises(error, match=key):
            compile_select(Project, {key: value}, None)


def test_limit_one_always_picks_the_same_row(conn: psycopg.Connection[Any]) -> None:
    assert {ids(conn, Project, name="alpha", __limit=1)[0] for _ in range(5)} == {1}
    assert text(conn, Project, {"__limit": 1}).endswith('ORDER BY "t0"."id" LIMIT %s')


def test_distinct_returns_one_row_per_value(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, __distinct="name") == [1, 2, 5, 3]


def test_distinct_follows_a_descending_order_on_the_same_name(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, __distinct="name", __order="!name") == [3, 5, 2, 1]


def test_count_honours_distinct_counting_null_as_one_value(conn: psycopg.Connection[Any]) -> None:
    assert count(conn, Project, __distinct="name") == 4
    assert count(conn, Project, __distinct="description") == len(ids(conn, Project, __distinct="description")) == 4
    assert count(conn, Project, __distinct="owner.ome_name") == 4


def test_count_ignores_order_limit_and_offset(conn: psycopg.Connection[Any]) -> None:
    assert count(conn, Project, __order="!owner.ome_name", __limit=1, __offset=3) == 5
    query, _ = compile_count(Project, {"__order": "owner.ome_name"}, None)
    assert "JOIN" not in query.as_string(conn)


def test_count_still_refuses_bad_order_and_limits() -> None:
    with pytest.raises(ValueError, match="Project"):
        compile_count(Project, {"__order": "nope"}, None)
    with pytest.raises(TypeError, match="__limit"):
        compile_count(Project, {"__limit": True}, None)


def test_for_update_locks_the_selected_rows_only(conn: psycopg.Connection[Any]) -> None:
    criteria = {"owner.ome_name": "bob", "__order": "owner.ome_name"}
    query, params = compile_select(Project, criteria, None, for_update=True)
    with conn.transaction():
        assert [row[0] for row in conn.execute(query, params)] == [2, 4]
    with pytest.raises(ValueError, match="__distinct"):
        compile_select(Project, {"__distinct": "name"}, None, for_update=True)


# -- ACL -----------------------------------------------------------------------------------------


def test_acl_shows_each_user_their_own_rows_and_their_groups(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, ALICE) == [1, 3]
    assert ids(conn, Project, BOB) == [2, 4]
    assert count(conn, Project, ALICE) == 2
    assert ids(conn, Project, CAROL) == [1, 2, 3, 4]


def test_no_acl_sees_everything_and_an_empty_acl_nothing(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, None) == [1, 2, 3, 4, 5]
    assert ids(conn, Project, NOBODY) == []


def test_acl_combines_with_criteria_paths_and_distinct(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Project, BOB, name="alpha") == [4]
    assert ids(conn, Dataset, ALICE, **{"project_links.project.name": "alpha"}) == [1, 3]
    assert count(conn, Project, BOB, __distinct="name") == 2


def test_plans_stay_below_the_jit_threshold_on_unanalysed_tables(conn: psycopg.Connection[Any]) -> None:
    # A cross product on never-analysed tables is estimated expensive enough to pay JIT compilation
    # on every call; joins on keys and EXISTS keep the estimate small whatever the statistics.
    setting = conn.execute("SELECT current_setting('jit_above_cost')::float8").fetchone()
    assert setting is not None
    chained = {"dataset_links.dataset.project_links.project.name": "gamma", "owner.group.name": "lab-a"}
    for cls, criteria in [(Project, {"owner.ome_name": "bob", "__order": "!owner.group.name"}), (Image, chained)]:
        query, params = compile_select(cls, criteria, ALICE)
        plan = conn.execute(b"EXPLAIN (FORMAT JSON) " + query.as_bytes(conn), params).fetchone()
        assert plan is not None
        assert plan[0][0]["Plan"]["Total Cost"] < setting[0]


def test_acl_ids_are_bound_not_written_into_the_sql(conn: psycopg.Connection[Any]) -> None:
    query, params = compile_select(Project, {}, Acl(12345, confined_by=67890))
    assert set(params) == {12345, 67890}
    assert "12345" not in query.as_string(conn) and "67890" not in query.as_string(conn)


def test_acl_does_not_filter_classes_without_owner_and_group(conn: psycopg.Connection[Any]) -> None:
    assert ids(conn, Group, NOBODY) == [1, 2, 3]


# -- bad input -----------------------------------------------------------------------------------

TYPE_ERRORS = [
    (Project, {"name": 3}, r"Project\.name takes str"),
    (Project, {"id": "1"}, r"Project\.id takes int"),
    (Project, {"id": True}, r"Project\.id takes int, not bool"),
    (Project, {"owner.ome_name": 5}, r"Experimenter\.ome_name"),
    (Project, {"owner": obj(Project, id=1)}, r"Project\.owner does not refer to Project"),
    (Project, {"name": obj(Project, id=1)}, r"Project\.name does not refer"),
    (Project, {"id": ("like", "1%")}, r"Project\.id is int; 'like' needs a text column"),
    (Dataset, {"locked": "t"}, r"Dataset\.locked takes bool"),
    (Image, {"created": ("<", "2024-01-01")}, r"Image\.created takes datetime"),
]


@pytest.mark.parametrize(("cls", "criteria", "message"), TYPE_ERRORS, ids=lambda v: repr(v))
def test_values_of_the_wrong_type_are_refused_naming_the_column(
    cls: type[DBObject], criteria: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        compile_select(cls, criteria, None)


def test_integers_outside_bigint_are_refused() -> None:
    with pytest.raises(ValueError, match="64-bit"):
        compile_select(Project, {"id": 2**63}, None)


UNKNOWN_NAMES = [
    ({"nme": 1}, "Project has no column or reference 'nme'"),
    ({"owner.nme": 1}, "Experimenter has no column or reference 'nme'"),
    ({"description.name": 1}, "Project has no reference or has-many link 'description'"),
    ({"dataset_links": 1}, "Project has no column or reference 'dataset_links'"),
    ({"__limt": 1}, "unknown criteria option '__limt'"),
    ({"__order": "!nope"}, "Project has no column or reference 'nope'"),
    ({"__distinct": "owner.nope"}, "Experimenter has no column or reference 'nope'"),
]


@pytest.mark.parametrize(("criteria", "message"), UNKNOWN_NAMES, ids=lambda v: repr(v))
def test_unknown_names_are_refused_listing_the_available_ones(criteria: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        compile_select(Project, criteria, None)
    if "has no" in message:
        assert "available on" in str(info.value) and "name" in str(info.value)


def test_unknown_class_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown DBObject class 'Nope'"):
        compile_select("Nope", {}, None)


def test_composite_keyed_classes_have_no_id_but_their_own_columns(conn: psycopg.Connection[Any]) -> None:
    query, params = compile_select(ExperimenterGroupMap, {"group.name": "lab-b"}, None)
    assert conn.execute(query, params).fetchall() == [(2, 2), (3, 2)]
    with pytest.raises(ValueError, match="ExperimenterGroupMap has no column or reference 'id'"):
        compile_select(ExperimenterGroupMap, {"id": 1}, None)


def test_criterion_columns_lists_columns_references_and_links() -> None:
    names = criterion_columns(Project)
    assert {"id", "name", "owner", "owner_id", "group", "dataset_links"} <= set(names)
    assert "id" not in criterion_columns(ExperimenterGroupMap)


def test_non_string_criteria_keys_are_refused() -> None:
    with pytest.raises(TypeError, match="criteria keys"):
        compile_select(Project, {1: "x"}, None)  # type: ignore[dict-item]


def test_order_and_distinct_take_names() -> None:
    with pytest.raises(TypeError, match="__order"):
        compile_select(Project, {"__order": 3}, None)
    with pytest.raises(TypeError, match="__distinct"):
        compile_select(Project, {"__distinct": ["name"]}, None)


INJECTIONS: list[dict[str, Any]] = [
    {"name; drop table projects": 1},
    {"name = name or 1=1 --": 1},
    {'owner."; drop table experimenters; --': 1},
    {"name": ("= 1 or 1=1 --", 1)},
    {"name": ("; drop table projects; --", 1)},
    {"__order": "name; drop table projects"},
    {"__order": ["name", "id desc; drop table projects"]},
    {"__distinct": "name) name, (select 1"},
]


@pytest.mark.parametrize("criteria", INJECTIONS, ids=lambda v: repr(v))
def test_sql_in_names_and_operators_is_refused_before_any_sql(criteria: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        compile_select(Project, criteria, None)
    with pytest.raises(ValueError):
        compile_count(Project, criteria, None)


def test_sql_in_values_is_only_ever_data(conn: psycopg.Connection[Any]) -> None:
    hostile = "x'; DROP TABLE projects; --"
    assert ids(conn, Project, name=hostile) == []
    assert ids(conn, Project, name=("like", hostile)) == []
    assert ids(conn, Project, name=[hostile, "alpha' OR '1'='1"]) == []
    assert ids(conn, Project, **{"owner.ome_name": ("not in", [hostile])}) == [1, 2, 3, 4]
    row = conn.execute("SELECT count(*), to_regclass('experimenters') IS NOT NULL FROM projects").fetchone()
    assert row == (5, True)
