"""Each probe an attacker made with nothing but the public API and a normal login, as a regression
test: it is refused, and the database (read with SQL on a connection of its own) holds what it held.

Uses the shared ``people`` lab: root (super user), lena (leads lab_a), alice and bob (lab_a),
carol (lab_b), a guest.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from ome_session import Configuration, Session, SessionManager
from ome_session.dbobject import resolve
from ome_session.errors import (
    AuthenticationError,
    ConfigurationError,
    DatabaseError,
    PermissionDenied,
)
from ome_session.model import Experimenter
from tests.helpers import People, login, query


def _tables(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything an attack could have changed."""
    return {table: query(dsn, f"SELECT * FROM {table} ORDER BY 1, 2")
            for table in ("experimenters", "groups", "experimenter_group_map", "configuration", "projects",
                          "datasets", "project_dataset_map", "user_states")}


# -- writes through the Factory --------------------------------------------------------------------


def test_a_user_cannot_make_himself_admin_with_store(people: People) -> None:
    session = login(people, "alice")
    me = session.user
    me.is_admin = True
    with pytest.raises(PermissionDenied, match=r"alice \(user\) may not update Experimenter.is_admin"):
        me.store()
    session.commit_transaction()
    assert query(people.dsn, "SELECT is_admin FROM experimenters WHERE ome_name = 'alice'") == [(False,)]


def test_a_user_cannot_replace_another_users_password_hash(people: People) -> None:
    session = login(people, "alice")
    bob = session.factory.find_object(Experimenter, ome_name="bob")
    before = query(people.dsn, "SELECT password_hash FROM experimenters WHERE ome_name = 'bob'")
    with pytest.raises(AttributeError, match="private"):
        bob.password_hash = "forged"
    bob._values["password_hash"] = "forged"  # tampering with the object itself
    bob._dirty.add("password_hash")
    with pytest.raises(ValueError, match="private"):
        bob.store()
    with pytest.raises(ValueError, match="private"):
        session.factory.new_object(Experimenter, ome_name="mallory", password_hash="forged")
    session.commit_transaction()
    assert query(people.dsn, "SELECT password_hash FROM experimenters WHERE ome_name = 'bob'") == before
    assert login(people, "bob").user_name == "bob"


def test_a_user_cannot_join_a_group_or_make_himself_its_leader(people: People) -> None:
    session = login(people, "alice")
    before = _tables(people.dsn)
    factory = session.factory
    with pytest.raises(PermissionDenied, match="ExperimenterGroupMap"):
        factory.new_object("ExperimenterGroupMap", experimenter=session.user, group=people.groups["lab_b"])
    lab_b = factory.load_object("Group", people.groups["lab_b"])
    lab_b.leader = session.user
    with pytest.raises(PermissionDenied, match=r"may not update Group"):
        lab_b.store()
    session.commit_transaction()
    assert _tables(people.dsn) == before
    assert login(people, "alice").acl.groups == {people.groups["lab_a"]}  # type: ignore[union-attr]


def test_a_user_cannot_delete_users_memberships_or_links(people: People) -> None:
    alice = login(people, "alice")
    project = alice.factory.new_object("Project", name="p")
    dataset = alice.factory.new_object("Dataset", name="d")
    alice.factory.new_object("ProjectDatasetMap", project=project, dataset=dataset)
    alice.commit_transaction()
    carol = login(people, "carol").factory
    before = _tables(people.dsn)
    link = query(people.dsn, "SELECT id, project_id, dataset_id FROM project_dataset_map")[0]
    assert carol.load_object("ProjectDatasetMap", link[0]) is None  # not even visible
    assert carol.load_object("ExperimenterGroupMap", (people.ids["alice"], people.groups["lab_a"])) is None
    victims = [  # what she can load, and forged objects for what she cannot
        carol.load_object(Experimenter, people.ids["alice"]),
        resolve("ExperimenterGroupMap")._from_row(
            carol, {"experimenter_id": people.ids["alice"], "group_id": people.groups["lab_a"]}),
        resolve("ProjectDatasetMap")._from_row(carol, dict(zip(("id", "project_id", "dataset_id"), link, strict=True))),
    ]
    for victim in victims:
        with pytest.raises(PermissionDenied):
            victim.delete()
    Session.instance().commit_transaction()
    assert _tables(people.dsn) == before


def test_a_user_cannot_edit_another_users_state(people: People) -> None:
    login(people, "bob")  # bob's user state exists from his login
    session = login(people, "alice")
    mine = session.factory.new_object("Project", name="alice's")
    assert session.factory.load_object("UserState", people.ids["bob"]) is None
    forged = resolve("UserState")._from_row(session.factory, {"experimenter_id": people.ids["bob"]})
    forged.project = mine
    with pytest.raises(PermissionDenied, match="UserState"):
        forged.store()
    session.commit_transaction()
    assert query(people.dsn, "SELECT project_id FROM user_states WHERE experimenter_id = %s",
                people.ids["bob"]) == [(None,)]


def test_the_current_project_cannot_point_at_what_the_user_cannot_read(people: People) -> None:
    carol = login(people, "carol")
    hidden = carol.factory.new_object("Project", name="carol's")
    carol.commit_transaction()
    alice = login(people, "alice")
    forged = resolve("Project")._from_row(alice.factory, {"id": hidden.id, "name": "?"})
    with pytest.raises(PermissionDenied):
        alice.project = forged
    alice.commit_transaction()
    assert query(people.dsn, "SELECT project_id FROM user_states WHERE experimenter_id = %s",
                people.ids["alice"]) == [(None,)]


def test_guests_write_nothing(people: People) -> None:
    query(people.dsn, "INSERT INTO configuration VALUES ('allow_guest_access', 'true')")
    guest = login(people, "guest")
    before = _tables(people.dsn)
    for attempt in (lambda: guest.factory.new_object("Project", name="by a guest"),
                    lambda: setattr(guest, "project", None),
                    lambda: guest.factory.lock_table("Project", "SHARE"),
                    lambda: Configuration.update(guest.factory, {"allow_guest_access": False})):
        with pytest.raises(PermissionDenied, match="guest"):
            attempt()
    guest.commit_transaction()
    assert _tables(people.dsn) == before


# -- the configuration -------------------------------------------------------------------------------

CONFIG_ATTACKS: list[dict[str, Any]] = [
    {"allow_guest_access": True}, {"session_idle_timeout": 0}, {"session_max_lifetime": 0},
    {"tmp_dir": "/tmp/attacker"}, {"ldap": {"uri": "ldap://evil.example", "user_dn": "uid={username}",
                                           "require_tls": False}},
]


@pytest.mark.parametrize("values", CONFIG_ATTACKS, ids=lambda v: next(iter(v)))
def test_a_user_cannot_change_the_configuration(people: People, values: dict[str, Any]) -> None:
    session = login(people, "alice")
    before = _tables(people.dsn)
    with pytest.raises(PermissionDenied, match="admins"):
        Configuration.update(session.factory, values)
    session.commit_transaction()
    assert _tables(people.dsn) == before


def test_only_the_super_user_names_the_super_user(people: People) -> None:
    query(people.dsn, "UPDATE experimenters SET is_admin = true WHERE ome_name = 'carol'")
    for name in ("alice", "carol"):  # a user, an admin
        session = login(people, name)
        with pytest.raises(PermissionDenied, match="super_user"):
            Configuration.update(session.factory, {"super_user": people.ids[name]})
        session.commit_transaction()
    assert query(people.dsn, "SELECT value FROM configuration WHERE name = 'super_user'") == [(people.ids["root"],)]
    login(people, "carol")
    assert not Session.instance().is_su_session()


@pytest.mark.parametrize(("values", "message"), [
    ({"super_user": 2**70}, "experimenter id"),
    ({"super_user": -1}, "experimenter id"),
    ({"super_user": "1"}, "takes int"),
    ({"super_user": 999_999}, "existing, active admin"),
    ({"session_idle_timeout": 2**40}, "seconds"),
    ({"allow_guest_access": "yes"}, "takes bool"),
    ({"tmp_dir": "relative/dir"}, "absolute"),
    ({"ldap": {"uri": "ldaps://ldap.example.org"}}, "user_dn"),
    ({"ldap": {"uri": "ldap://x", "user_dn": "uid={username}"}, "sessions": 1}, "unknown"),
    ({"db_instance": "bad \ud800"}, "surrogate"),
])
def test_configuration_is_validated_on_write(people: People, values: dict[str, Any], message: str) -> None:
    session = login(people, "root")
    before = _tables(people.dsn)
    with pytest.raises(ConfigurationError, match=message):
        Configuration.update(session.factory, values)
    assert session.factory.count_objects("Group") == 4  # the transaction is still usable
    session.commit_transaction()
    assert _tables(people.dsn) == before


def test_the_super_user_value_must_name_an_active_admin(people: People) -> None:
    session = login(people, "root")
    with pytest.raises(ConfigurationError, match="active admin"):
        Configuration.update(session.factory, {"super_user": people.ids["alice"]})
    session.commit_transaction()
    assert query(people.dsn, "SELECT value FROM configuration WHERE name = 'super_user'") == [(people.ids["root"],)]


@pytest.mark.parametrize(("name", "value"), [
    ("super_user", "1180591620717411303424"), ("super_user", '"1"'), ("super_user", "1.5"),
    ("session_idle_timeout", "-1"), ("session_idle_timeout", "1e12"), ("session_max_lifetime", '"x"'),
    ("allow_guest_access", '"yes"'), ("allow_guest_access", "1"),
])
def test_plain_sql_cannot_store_a_value_that_decides_logins_badly(people: People, name: str, value: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        query(people.dsn, "INSERT INTO configuration VALUES (%s, %s::jsonb) ON CONFLICT (name) DO UPDATE "
                         "SET value = EXCLUDED.value", name, value)


@pytest.mark.parametrize("value", ["1180591620717411303424", '"root"', "-5", "1.5", "null"])
def test_a_bad_super_user_stored_before_the_check_is_ignored_with_an_error_never_a_lockout(
        people: People, value: str, caplog: pytest.LogCaptureFixture) -> None:
    # As in a database upgraded with such a value in place (the constraint is then NOT VALID).
    query(people.dsn, "ALTER TABLE configuration DROP CONSTRAINT configuration_deciding_values_valid")
    query(people.dsn, "UPDATE configuration SET value = %s::jsonb WHERE name = 'super_user'", value)
    query(people.dsn, "INSERT INTO configuration VALUES ('session_idle_timeout', '\"soon\"'), "
                     "('allow_guest_access', '\"yes\"')")
    manager = SessionManager(people.dsn)
    with caplog.at_level(logging.ERROR, logger="ome_session"):
        root = manager.create_session("root", "root-password")
    assert not root.is_su_session() and root.acl is None  # still an admin, no longer the super user
    assert "super_user" in caplog.text and "ignored" in caplog.text
    key = root.session_key
    Session.idle()
    assert manager.create_session(key=key).user_name == "root"
    assert manager.create_session("alice", "alice-password").user_name == "alice"
    with pytest.raises(PermissionDenied, match="no super user"):
        manager.su_session()
    with pytest.raises(AuthenticationError):  # a non-boolean guest switch does not let guests in
        manager.create_session("guest", "guest-password")
    assert Session.instance().configuration.session_idle_timeout == 1800  # the default, not a crash


def test_a_super_user_who_is_no_admin_is_no_super_user(people: People) -> None:
    query(people.dsn, "UPDATE configuration SET value = %s WHERE name = 'super_user'", Jsonb(people.ids["alice"]))
    alice = login(people, "alice")
    assert not alice.is_su_session() and alice.acl is not None
    with pytest.raises(PermissionDenied):
        SessionManager(people.dsn).su_session()


# -- sudo -----------------------------------------------------------------------------------------


def test_a_leader_cannot_become_the_super_user_even_as_a_member_of_his_group(people: People) -> None:
    query(people.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", people.ids["root"], people.groups["lab_a"])
    manager = SessionManager(people.dsn)
    lena = manager.create_session("lena", "lena-password")
    with pytest.raises(PermissionDenied):
        manager.sudo_session("root")
    assert Session.instance() is lena and not lena.is_su_session()
    assert query(people.dsn, "SELECT count(*) FROM ome_sessions WHERE sudo_by IS NOT NULL") == [(0,)]


def test_a_leader_cannot_act_as_an_admin_member_nor_an_admin_as_the_super_user(people: People) -> None:
    query(people.dsn, "UPDATE experimenters SET is_admin = true WHERE ome_name IN ('bob', 'carol')")
    manager = SessionManager(people.dsn)
    manager.create_session("lena", "lena-password")
    with pytest.raises(PermissionDenied):
        manager.sudo_session("bob")
    manager.create_session("carol", "carol-password")
    with pytest.raises(PermissionDenied):
        manager.sudo_session("root")
    assert manager.sudo_session("bob").user_name == "bob"


def test_a_sudo_chain_records_the_original_actor_and_needs_both_rights(people: People) -> None:
    query(people.dsn, "UPDATE experimenters SET is_admin = true WHERE ome_name = 'carol'")
    manager = SessionManager(people.dsn)
    manager.create_session("root", "root-password")
    manager.sudo_session("carol")  # an admin, on behalf of root
    as_bob = manager.sudo_session("bob")
    assert as_bob.sudo_by == people.ids["root"]  # the original actor, not carol
    assert query(people.dsn, "SELECT sudo_by FROM ome_sessions WHERE experimenter_id = %s",
                people.ids["bob"]) == [(people.ids["root"],)]
    with pytest.raises(PermissionDenied):  # bob may not, whoever opened his session
        manager.sudo_session("alice")
    # A leader's member cannot pass the leader more than he has: lena -> alice -> (alice leads lab_b)
    query(people.dsn, "UPDATE groups SET leader_id = %s WHERE name = 'lab_b'", people.ids["alice"])
    manager.create_session("lena", "lena-password")
    manager.sudo_session("alice")
    with pytest.raises(PermissionDenied):
        manager.sudo_session("carol")


def test_a_leaders_session_as_a_member_stays_within_the_groups_he_leads(people: People) -> None:
    query(people.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", people.ids["alice"], people.groups["lab_b"])
    alice = login(people, "alice")
    alice.factory.new_object("Project", name="in lab_a")
    alice.factory.new_object("Project", name="in lab_b", group_id=people.groups["lab_b"])
    alice.commit_transaction()
    manager = SessionManager(people.dsn)
    manager.create_session("lena", "lena-password")
    as_alice = manager.sudo_session("alice")
    assert sorted(p.name for p in as_alice.factory.find_objects("Project")) == ["in lab_a"]
    with pytest.raises(PermissionDenied):
        as_alice.factory.new_object("Project", name="elsewhere", group_id=people.groups["lab_b"])
    with pytest.raises(PermissionDenied):  # and no admin rights of a member, nor her profile
        me = as_alice.user
        me.email = "lena-was-here@example.org"
        me.store()
    made = as_alice.factory.new_object("Project", name="by lena, as alice")
    assert made.group_id == people.groups["lab_a"]
    as_alice.commit_transaction()
    assert query(people.dsn, "SELECT name FROM projects WHERE group_id = %s ORDER BY id",
                people.groups["lab_b"]) == [("in lab_b",)]


def test_su_sessions_are_marked_and_logged(people: People, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ome_session"):
        session = SessionManager(people.dsn).su_session()
    assert session.is_su_session()
    assert "su session" in caplog.text and "root" in caplog.text
    login(people, "alice")
    assert query(people.dsn, "SELECT e.ome_name, s.su FROM ome_sessions s JOIN experimenters e "
                            "ON e.id = s.experimenter_id ORDER BY s.id") == [("root", True), ("alice", False)]


# -- reads --------------------------------------------------------------------------------------------


def test_nobody_reads_password_hashes_or_filters_on_them(people: People) -> None:
    session = login(people, "root")  # not even the super user
    users = session.factory.find_objects("Experimenter")
    assert users and all("password_hash" not in user.values() for user in users)
    assert all("argon2" not in repr(user) for user in users)
    with pytest.raises(AttributeError, match="private"):
        _ = users[0].password_hash
    for criteria in ({"password_hash": ("like", "$argon2%")}, {"__order": "password_hash"},
                     {"__distinct": "password_hash"}):
        with pytest.raises(ValueError, match="private"):
            session.factory.find_objects("Experimenter", **criteria)
    for criteria in ({"owner.password_hash": None}, {"__order": "!owner.password_hash"}):
        with pytest.raises(ValueError, match="private"):
            session.factory.count_objects("Project", **criteria)


def test_a_path_through_a_link_reveals_nothing_of_another_group(people: People) -> None:
    carol = login(people, "carol")
    secret = carol.factory.new_object("Dataset", name="secret-plans")
    carol.factory.new_object("ProjectDatasetMap", project=carol.factory.new_object("Project", name="c"),
                             dataset=secret)
    carol.commit_transaction()
    alice = login(people, "alice").factory
    own = alice.new_object("Project", name="alice's")
    alice.new_object("ProjectDatasetMap", project=own, dataset=alice.new_object("Dataset", name="a"))
    probes = [("ProjectDatasetMap", {"dataset.name": ("like", "secret%")}),
              ("ProjectDatasetMap", {"dataset.name": None}),
              ("Project", {"dataset_links.dataset.name": ("like", "secret%")}),
              ("Dataset", {"project_links.project.name": "c"})]
    for cls, criteria in probes:
        assert alice.find_objects(cls, **criteria) == [] and alice.count_objects(cls, **criteria) == 0
    assert len(alice.find_objects("ProjectDatasetMap")) == 1  # her own, only
    assert [p.name for p in alice.find_objects("Project", __order="!owner.ome_name")] == ["alice's"]


def test_a_group_leader_no_longer_sees_his_members_data_in_other_groups(people: People) -> None:
    query(people.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", people.ids["alice"], people.groups["lab_b"])
    alice = login(people, "alice")
    alice.factory.new_object("Project", name="alice in lab_b", group_id=people.groups["lab_b"])
    alice.factory.new_object("Project", name="alice in lab_a")
    alice.commit_transaction()
    lena = login(people, "lena")
    assert [p.name for p in lena.factory.find_objects("Project")] == ["alice in lab_a"]


# -- logins ---------------------------------------------------------------------------------------------


def test_a_guest_with_guest_access_off_gets_the_wrong_password_message(people: People) -> None:
    manager = SessionManager(people.dsn)
    with pytest.raises(AuthenticationError) as right_password:
        manager.create_session("guest", "guest-password")
    with pytest.raises(AuthenticationError) as wrong_password:
        manager.create_session("guest", "nope")
    assert str(right_password.value) == str(wrong_password.value)


# -- bad input at the Factory surface ----------------------------------------------------------------

BAD_CRITERIA: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"__limit": -1}, ValueError), ({"__offset": -1}, ValueError), ({"__limit": 2**63}, ValueError),
    ({"__offset": 2**64}, ValueError), ({"name": "bad \ud800"}, ValueError),
    ({"name": ("like", "\udcff%")}, ValueError), ({"name": ["ok", "\ud800"]}, ValueError),
    ({"owner.ome_name": "\ud800"}, ValueError), ({"name": "nul\x00"}, ValueError),
]


@pytest.mark.parametrize(("criteria", "error"), BAD_CRITERIA, ids=repr)
def test_bad_criteria_raise_before_sql_and_keep_the_transaction(people: People, criteria: dict[str, Any],
                                                                error: type[Exception]) -> None:
    session = login(people, "alice")
    session.factory.new_object("Project", name="kept")
    with pytest.raises(error):
        session.factory.find_objects("Project", **criteria)
    with pytest.raises(error):
        session.factory.count_objects("Project", **criteria)
    session.commit_transaction()  # not aborted: the project before the error is kept
    assert query(people.dsn, "SELECT name FROM projects") == [("kept",)]


@pytest.mark.parametrize("values", [{"name": "bad \ud800"}, {"name": "x", "description": "\udc80"},
                                    {"name": "nul\x00"}], ids=repr)
def test_bad_values_raise_before_sql_and_keep_the_transaction(people: People, values: dict[str, Any]) -> None:
    session = login(people, "alice")
    kept = session.factory.new_object("Project", name="kept")
    with pytest.raises(ValueError):
        session.factory.new_object("Project", **values)
    with pytest.raises(ValueError):
        kept.description = values.get("description", values["name"])
    session.commit_transaction()
    assert query(people.dsn, "SELECT name, description FROM projects") == [("kept", None)]


def test_bad_json_values_raise_beforequery(people: People) -> None:
    session = login(people, "root")
    for value in ({"k": "\ud800"}, {"\ud800": 1}, {"n": float("nan")}, [1, {"x": "\x00"}], {1: "int key"}):
        with pytest.raises((ValueError, ConfigurationError, TypeError)):
            Configuration.update(session.factory, {"ldap": value})
    assert session.factory.count_objects("Group") == 4


@pytest.mark.parametrize(("key", "error"), [
    (("<", 5), ValueError), ((("<", 5),), TypeError), ([1, 2], TypeError), (True, TypeError),
    (1.0, TypeError), ("1", TypeError), (None, TypeError), (2**63, ValueError), ({"id": 1}, TypeError),
])
def test_load_object_takes_only_a_key(people: People, key: Any, error: type[Exception]) -> None:
    session = login(people, "alice")
    made = session.factory.new_object("Project", name="kept")
    with pytest.raises(error):
        session.factory.load_object("Project", key)
    with pytest.raises((TypeError, ValueError)):
        session.factory.load_object("ExperimenterGroupMap", (("in", [1, 2]), people.groups["lab_a"]))
    assert session.factory.load_object("Project", made.id) is made
    assert session.factory.load_object("UserState", session.user) is not None  # an object for a reference key
    session.commit_transaction()
    assert query(people.dsn, "SELECT name FROM projects") == [("kept",)]


def test_no_driver_error_escapes_a_refused_or_bad_write(people: People) -> None:
    session = login(people, "alice")
    with pytest.raises((PermissionDenied, ValueError, TypeError)) as refused:
        session.factory.new_object("Experimenter", ome_name="\ud800")
    assert not isinstance(refused.value, DatabaseError)


def test_switching_the_session_group_needs_a_group_of_the_user(people: People) -> None:
    alice = login(people, "alice")
    with pytest.raises(PermissionDenied, match="lab_b"):
        alice.set_group("lab_b")
    assert query(people.dsn, "SELECT group_id FROM ome_sessions") == [(None,)]
    query(people.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", people.ids["alice"], people.groups["lab_b"])
    alice.set_group("lab_b")
    assert query(people.dsn, "SELECT group_id FROM ome_sessions") == [(people.groups["lab_b"],)]
    assert query(people.dsn, "SELECT group_id FROM experimenters WHERE ome_name = 'alice'") == [
        (people.groups["lab_a"],)]  # the default group stays
    query(people.dsn, "INSERT INTO configuration VALUES ('allow_guest_access', 'true')")
    guest = login(people, "guest")
    with pytest.raises(PermissionDenied, match="guest"):
        guest.set_group("guests")


def test_a_reference_to_a_row_the_user_cannot_read_reads_as_nothing(people: People) -> None:
    # Alice's current project moved to a group she is not in (or was set so by plain SQL): neither
    # the reference nor a path through it may say anything about that project any more.
    carol = login(people, "carol")
    secret = carol.factory.new_object("Project", name="carol's secret")
    carol.commit_transaction()
    alice = login(people, "alice")
    query(people.dsn, "UPDATE user_states SET project_id = %s WHERE experimenter_id = %s",
         secret.id, people.ids["alice"])
    factory = alice.factory
    assert alice.project is None
    for criteria in ({"project.name": "carol's secret"}, {"project.name": ("like", "carol%")},
                     {"project.owner.ome_name": "carol"}):
        assert factory.find_objects("UserState", **criteria) == []
    assert factory.count_objects("UserState", **{"project.name": None}) == 1  # hidden reads as NULL


def test_a_has_many_path_sees_only_links_the_user_can_read(people: People) -> None:
    alice = login(people, "alice")
    own = alice.factory.new_object("Project", name="alice's")
    alice.commit_transaction()
    carol = login(people, "carol")
    secret = carol.factory.new_object("Dataset", name="secret")
    carol.commit_transaction()
    query(people.dsn, "INSERT INTO project_dataset_map (project_id, dataset_id) VALUES (%s, %s)", own.id, secret.id)
    factory = login(people, "alice").factory
    assert factory.find_objects("Project", **{"dataset_links.id": ("is not", None)}) == []
    assert factory.load_object("Project", own.id).dataset_links == []


def test_removing_a_default_group_membership_says_what_to_do_first(people: People) -> None:
    session = login(people, "root")
    membership = session.factory.load_object("ExperimenterGroupMap", (people.ids["bob"], people.groups["lab_a"]))
    with pytest.raises(PermissionDenied, match="default group: change the default group first"):
        membership.delete()
    session.commit_transaction()
    assert query(people.dsn, "SELECT count(*) FROM experimenter_group_map WHERE experimenter_id = %s",
                 people.ids["bob"]) == [(1,)]
