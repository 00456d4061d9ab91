"""The Factory: objects in and out of the real database, the identity cache, ACLs, errors."""

from __future__ import annotations

import tracemalloc

import psycopg
import pytest

from ome_session import Column, DBObject, Dataset, Project, Reference, Session, SessionManager
from ome_session.errors import DatabaseError, IntegrityError
from tests.helpers import People, login


def test_new_load_store_delete_round_trip(people: People) -> None:
    factory = login(people).factory
    project = factory.new_object(Project, name="alpha", description="first")
    assert isinstance(project.id, int)
    project.description = "changed"
    project.store()
    Session.instance().commit_transaction()
    with psycopg.connect(people.dsn) as conn:
        assert conn.execute("SELECT name, description FROM projects").fetchall() == [("alpha", "changed")]
    project.delete()
    assert factory.load_object(Project, project.id) is None


def test_classes_are_named_by_class_registered_name_or_ome_name(people: People) -> None:
    factory = login(people).factory
    made = factory.new_object("OME::Project", name="by ome name")
    assert factory.load_object("Project", made.id) is factory.load_object(Project, made.id) is made
    with pytest.raises(ValueError, match="known classes"):
        factory.find_objects("OME::NoSuchThing")


def test_the_same_row_loads_as_the_same_object(people: People) -> None:
    factory = login(people).factory
    made = factory.new_object(Project, name="one")
    assert factory.load_object(Project, made.id) is made
    assert factory.find_object(Project, name="one") is made


def test_identity_cache_is_cleared_on_idle(people: People) -> None:
    manager = SessionManager(people.dsn)
    session = manager.create_session("alice", "alice-password")
    made = session.factory.new_object(Project, name="cached")
    session.commit_transaction()
    Session.idle()
    manager.create_session(key=session.session_key)
    again = session.factory.load_object(Project, made.id)
    assert again is not made and again.name == "cached"


def test_references_read_as_objects_and_links_as_lists(people: People) -> None:
    factory = login(people).factory
    project = factory.new_object(Project, name="p")
    dataset = factory.new_object(Dataset, name="d")
    link = factory.new_object("ProjectDatasetMap", project=project, dataset=dataset)
    assert link.project is project and link.dataset is dataset
    assert project.dataset_links == [link]
    assert project.owner.ome_name == "alice"


def test_maybe_new_object_finds_before_creating(people: People) -> None:
    factory = login(people).factory
    first = factory.maybe_new_object(Project, name="once")
    assert factory.maybe_new_object(Project, name="once") is first
    assert factory.count_objects(Project) == 1
    assert factory.object_exists(Project, name="once") and not factory.object_exists(Project, name="twice")


def test_iter_objects_streams_many_rows_in_constant_memory(people: People) -> None:
    session = login(people)
    dbh = session.factory.obtain_dbh()
    dbh.execute(
        "INSERT INTO images (name, owner_id, group_id) SELECT 'img' || g, %s, %s FROM generate_series(1, 200000) g",
        (people.ids["alice"], people.groups["lab_a"]))
    tracemalloc.start()
    count = 0
    for image in session.factory.iter_objects("Image", __order="id"):
        count += 1
        if count == 1000:
            tracemalloc.reset_peak()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 200000
    assert peak < 20 * 1024 * 1024  # a list of 200,000 objects alone would need far more


def test_lock_table_accepts_only_real_lock_modes(people: People) -> None:
    factory = login(people).factory
    factory.lock_table(Project, "share row exclusive")
    with pytest.raises(ValueError, match="lock mode"):
        factory.lock_table(Project, "EXCLUSIVE MODE; DROP TABLE projects; --")
    assert factory.count_objects(Project) == 0


def test_wrong_value_types_raise_typed_errors_before_sql(people: People) -> None:
    factory = login(people).factory
    with pytest.raises(TypeError, match="Project.name"):
        factory.new_object(Project, name=42)
    with pytest.raises(TypeError):
        factory.find_objects(Project, id="1 OR 1=1")
    with pytest.raises(ValueError, match="no column"):
        factory.new_object(Project, name="x", colour="red")
    with pytest.raises(TypeError):
        factory.new_object(Project, name=None)


def test_constraint_violations_raise_our_integrity_error(people: People) -> None:
    session = login(people, "root")  # an admin: allowed to try both writes
    with pytest.raises(IntegrityError):
        session.factory.new_object("Group", name="lab_a")
    session.rollback_transaction()
    with pytest.raises(IntegrityError):
        session.factory.new_object(Project, name="orphan", owner_id=999_999)
    session.rollback_transaction()
    assert session.factory.count_objects(Project) == 0


def test_a_failed_statement_leaves_a_typed_error_and_a_usable_session(people: People) -> None:
    session = login(people)
    session.factory.new_object(Project, name="before")
    session.factory.lock_table(Project, "ACCESS EXCLUSIVE")
    with psycopg.connect(people.dsn, autocommit=True) as other:
        other.execute("SET lock_timeout = '50ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            other.execute("SELECT * FROM projects")
    session.rollback_transaction()
    session.factory.obtain_dbh().execute("SET lock_timeout = '50ms'")
    with psycopg.connect(people.dsn) as holder:
        holder.execute("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(DatabaseError) as failure:
            session.factory.find_objects(Project)
        assert failure.value.sqlstate == "55P03"
    session.rollback_transaction()
    assert session.factory.count_objects(Project) == 0


def test_reads_of_owned_classes_follow_the_acl(people: People) -> None:
    for owner in ("alice", "bob", "carol"):
        session = login(people, owner)
        session.factory.new_object(Project, name=f"{owner}'s")
        session.commit_transaction()

    def visible(name: str) -> list[str]:
        session = login(people, name)
        return sorted(p.name for p in session.factory.find_objects(Project))

    assert visible("alice") == ["alice's", "bob's"]  # same group
    assert visible("carol") == ["carol's"]
    assert visible("root") == ["alice's", "bob's", "carol's"]  # the super user sees all
    session = login(people, "carol")
    assert session.factory.count_objects(Project) == 1
    hidden = login(people, "alice").factory.find_object(Project, name="alice's")
    assert login(people, "carol").factory.load_object(Project, hidden.id) is None


def test_sudo_recomputes_the_acl(people: People) -> None:
    manager = SessionManager(people.dsn)
    carol = manager.create_session("carol", "carol-password")
    carol.factory.new_object(Project, name="carol's")
    carol.commit_transaction()
    manager.create_session("root", "root-password")
    as_alice = manager.sudo_session("alice")
    assert as_alice.factory.find_objects(Project) == []


class Sample(DBObject):
    """A user-declared class, defined the same way as the core ones."""

    __table__ = "samples"
    name = Column(str, nullable=False)
    weight = Column(float)
    owner = Reference("Experimenter")
    group = Reference("Group")


def test_user_declared_classes_work_like_core_ones(people: People) -> None:
    with psycopg.connect(people.dsn) as conn:
        conn.execute("CREATE TABLE samples (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                     " name text NOT NULL, weight double precision,"
                     " owner_id bigint REFERENCES experimenters, group_id bigint REFERENCES groups)")
    assert Sample.__owned__
    factory = login(people, "carol").factory
    factory.new_object(Sample, name="s1", weight=1.5)
    factory.new_object("Sample", name="s2", weight=3)
    assert [s.name for s in factory.find_objects(Sample, weight=(">", 2.0))] == ["s2"]
    assert factory.find_object(Sample, name="s1").owner.ome_name == "carol"
    Session.instance().commit_transaction()
    assert login(people, "alice").factory.count_objects(Sample) == 0
