"""The administration API, ``ome_session.admin``: users, passwords, groups, members and owners.

Each call is made by a logged-in user and checked against the database from a connection of its
own; stored password hashes are checked with argon2 itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError

from ome_session import Session, SessionManager, admin
from ome_session.errors import AuthenticationError, PermissionDenied, SessionError, SessionKeyError
from tests.helpers import People, ServerLog, backend_pid, login, query


def _stored_hash(dsn: str, name: str) -> str:
    (stored,), = query(dsn, "SELECT password_hash FROM experimenters WHERE ome_name = %s", name)
    return str(stored)


def _verifies(dsn: str, name: str, password: str) -> bool:
    try:
        return PasswordHasher().verify(_stored_hash(dsn, name), password)
    except VerifyMismatchError:
        return False


def test_a_user_changes_his_own_password_with_the_old_one(people: People) -> None:
    session = login(people, "alice")
    admin.set_password("alice", "a new passphrase", old_password="alice-password")
    session.commit_transaction()
    assert _stored_hash(people.dsn, "alice").startswith("$argon2id$")
    assert _verifies(people.dsn, "alice", "a new passphrase")
    Session.delete_instance(force=True)
    assert SessionManager(people.dsn).create_session("alice", "a new passphrase").user_name == "alice"


@pytest.mark.parametrize(("old", "error"), [(None, PermissionDenied), ("wrong", AuthenticationError)])
def test_ones_own_password_needs_the_right_old_one(people: People, old: str | None, error: type[Exception]) -> None:
    before = _stored_hash(people.dsn, "root")
    session = login(people, "root")  # the super user too
    with pytest.raises(error):
        admin.set_password(session.user, "a new passphrase", old_password=old)
    session.commit_transaction()
    assert _stored_hash(people.dsn, "root") == before


def test_an_admin_sets_another_users_password(people: People) -> None:
    query(people.dsn, "UPDATE experimenters SET is_admin = true WHERE ome_name = 'carol'")
    session = login(people, "carol")
    admin.set_password("bob", "set by an admin")
    session.commit_transaction()
    assert _verifies(people.dsn, "bob", "set by an admin")


@pytest.mark.parametrize(("actor", "target"), [("alice", "bob"), ("lena", "alice"), ("carol", "root")])
def test_others_passwords_are_refused_to_users_leaders_and_admins_for_the_super_user(
        people: People, actor: str, target: str) -> None:
    query(people.dsn, "UPDATE experimenters SET is_admin = true WHERE ome_name = 'carol'")
    before = _stored_hash(people.dsn, target)
    session = login(people, actor)
    with pytest.raises(PermissionDenied):
        admin.set_password(target, "taken over")
    assert session.factory.count_objects("Group") == 4  # the transaction is still usable
    session.commit_transaction()
    assert _stored_hash(people.dsn, target) == before


def test_the_super_user_sets_any_password(people: People) -> None:
    session = login(people, "root")
    admin.set_password("alice", "from the super user")
    session.commit_transaction()
    assert _verifies(people.dsn, "alice", "from the super user")


def test_guests_change_no_password_not_even_their_own(people: People) -> None:
    query(people.dsn, "INSERT INTO configuration VALUES ('allow_guest_access', 'true')")
    login(people, "guest")
    with pytest.raises(PermissionDenied, match="guest"):
        admin.set_password("guest", "mine now", old_password="guest-password")
    assert _verifies(people.dsn, "guest", "guest-password")


def test_a_leaders_session_as_a_member_changes_no_password(people: People) -> None:
    manager = SessionManager(people.dsn)
    manager.create_session("lena", "lena-password")
    manager.sudo_session("alice")
    with pytest.raises(PermissionDenied):
        admin.set_password("alice", "lena knows it now", old_password="alice-password")
    assert _verifies(people.dsn, "alice", "alice-password")


def test_a_bootstrap_session_sets_passwords_as_trusted_code(people: People) -> None:
    session = Session.bootstrap_instance(people.dsn)
    admin.set_password("root", "installed")
    session.commit_transaction()
    session.finish_bootstrap()
    assert _verifies(people.dsn, "root", "installed")


@pytest.mark.parametrize(("password", "error"), [("", ValueError), ("a\x00b", ValueError), ("\ud800", ValueError),
                                                 ("x" * 5000, ValueError), (b"bytes", TypeError), (None, TypeError)])
def test_a_password_that_cannot_be_one_is_refused_before_anything(people: People, password: Any,
                                                                   error: type[Exception]) -> None:
    login(people, "root")
    with pytest.raises(error):
        admin.set_password("alice", password)
    assert _verifies(people.dsn, "alice", "alice-password")


def test_an_unknown_user_is_a_value_error(people: People) -> None:
    login(people, "root")
    with pytest.raises(ValueError, match="no user"):
        admin.set_password("nobody", "whatever")


def test_an_admin_sets_anothers_password_confirming_his_own(people: People) -> None:
    session = login(people, "root")
    with pytest.raises(AuthenticationError, match="your own password is wrong"):
        admin.set_password("bob", "never set", old_password="not roots")
    assert _verifies(people.dsn, "bob", "bob-password")
    admin.set_password("bob", "set by root", old_password="root-password")
    assert session.factory.in_transaction is False  # committed by the call itself
    assert _verifies(people.dsn, "bob", "set by root")


# -- users ------------------------------------------------------------------------------------------


def _user_row(dsn: str, name: str) -> tuple[Any, ...] | None:
    rows = query(dsn, "SELECT e.first_name, e.last_name, e.email, g.name, e.is_admin, e.is_guest, e.active "
                      "FROM experimenters e LEFT JOIN groups g ON g.id = e.group_id WHERE e.ome_name = %s", name)
    return rows[0] if rows else None


def _memberships(dsn: str, name: str) -> list[str]:
    return [g for (g,) in query(dsn, "SELECT g.name FROM experimenter_group_map m JOIN groups g ON g.id = m.group_id "
                                     "JOIN experimenters e ON e.id = m.experimenter_id WHERE e.ome_name = %s "
                                     "ORDER BY g.name", name)]


def test_an_admin_adds_a_user_who_can_log_in_at_once(people: People) -> None:
    login(people, "root")
    user = admin.add_user("dora", "Dora", "Explorer", password="dora's secret", groups=["lab_b", "lab_a"],
                          email="dora@example.org", institution="OME")
    assert user.ome_name == "dora"
    # committed by the call: another connection sees it all, and argon2 itself verifies the hash
    assert _user_row(people.dsn, "dora") == ("Dora", "Explorer", "dora@example.org", "lab_b", False, False, True)
    assert _memberships(people.dsn, "dora") == ["lab_a", "lab_b"]
    assert _stored_hash(people.dsn, "dora").startswith("$argon2id$")
    assert _verifies(people.dsn, "dora", "dora's secret")
    assert SessionManager(people.dsn).create_session("dora", "dora's secret").user_name == "dora"


def test_a_user_added_without_a_password_cannot_log_in_with_one(people: People) -> None:
    login(people, "root")
    admin.add_user("eve", "Eve", "Nopass", groups=["lab_a"], admin=True)
    assert query(people.dsn, "SELECT password_hash, is_admin FROM experimenters WHERE ome_name = 'eve'") == [
        (None, True)]
    with pytest.raises(AuthenticationError):
        SessionManager(people.dsn).create_session("eve", "")
    with pytest.raises(AuthenticationError):
        SessionManager(people.dsn).create_session("eve", "anything")


def test_a_guest_is_added_as_a_guest(people: People) -> None:
    login(people, "root")
    admin.add_user("visitor", "Vi", "Sitor", password="look only", groups=["guests"], guest=True)
    assert _user_row(people.dsn, "visitor") == ("Vi", "Sitor", None, "guests", False, True, True)


@pytest.mark.parametrize("actor", ["alice", "lena", "guest"])
def test_only_admins_add_users(people: People, actor: str) -> None:
    query(people.dsn, "INSERT INTO configuration VALUES ('allow_guest_access', 'true')")
    login(people, actor)
    with pytest.raises(PermissionDenied):
        admin.add_user("mallory", "Mal", "Lory", password="let me in", groups=["lab_a"], admin=True)
    assert _user_row(people.dsn, "mallory") is None


def test_adding_a_user_is_all_or_nothing(people: People) -> None:
    login(people, "root")
    with pytest.raises(ValueError, match="there is no group 'no-such-group'"):
        admin.add_user("dora", "Dora", "E", password="secret!", groups=["lab_a", "no-such-group"])
    with pytest.raises(ValueError, match="user 'alice' exists"):
        admin.add_user("alice", "Other", "Alice", password="secret!", groups=["lab_b"])
    assert _user_row(people.dsn, "dora") is None
    assert _user_row(people.dsn, "alice") == ("Alice", "Tester", None, "lab_a", False, False, True)


@pytest.mark.parametrize(("args", "kwargs", "error"), [
    (("", "A", "B"), {}, ValueError),
    ((" dora", "A", "B"), {}, ValueError),
    (("a/b", "A", "B"), {}, ValueError),
    ((".dora", "A", "B"), {}, ValueError),
    (("do\x00ra", "A", "B"), {}, ValueError),
    (("do\nra", "A", "B"), {}, ValueError),
    (("d" * 256, "A", "B"), {}, ValueError),
    ((b"dora", "A", "B"), {}, TypeError),
    (("dora", "A\tB", "C"), {}, ValueError),
    (("dora", "A", None), {}, TypeError),
    (("dora", "A", "B"), {"email": "not an address"}, ValueError),
    (("dora", "A", "B"), {"password": ""}, ValueError),
    (("dora", "A", "B"), {"password": "\ud800"}, ValueError),
    (("dora", "A", "B"), {"groups": [b"lab_a"]}, TypeError),
    (("dora", "A", "B"), {"groups": [True]}, TypeError),
    (("dora", "A", "B"), {"admin": "yes"}, TypeError),
    (("dora", "A", "B"), {"admin": True, "guest": True}, ValueError),
])
def test_bad_input_for_a_new_user_is_refused_before_any_sql(people: People, server_log: ServerLog, args: Any,
                                                             kwargs: Any, error: type[Exception]) -> None:
    session = login(people, "root")
    server_log.mark()
    with pytest.raises(error):
        admin.add_user(*args, **kwargs)
    assert server_log.statements(backend_pid(session)) == []


def test_a_change_is_refused_while_the_session_has_uncommitted_writes(people: People) -> None:
    session = login(people, "root")
    session.factory.new_object("Project", name="unfinished work")
    with pytest.raises(SessionError, match="commit or roll back"):
        admin.add_user("dora", "Dora", "E", groups=["lab_a"])
    session.commit_transaction()
    assert query(people.dsn, "SELECT count(*) FROM projects") == [(1,)]
    assert _user_row(people.dsn, "dora") is None
    session.factory.find_objects("Project")  # a transaction that only read is no obstacle
    admin.add_user("dora", "Dora", "E", groups=["lab_a"])
    assert _user_row(people.dsn, "dora") is not None


def test_an_admin_lists_every_user_with_every_membership(people: People) -> None:
    query(people.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", people.ids["carol"],
          people.groups["system"])
    login(people, "root")
    users = {u.name: u for u in admin.list_users()}
    assert sorted(users) == ["alice", "bob", "carol", "guest", "lena", "root"]
    assert users["carol"].groups == ("lab_b", "system")
    assert users["lena"].owner_of == ("lab_a",) and users["root"].owner_of == ("system",)
    assert (users["root"].admin, users["guest"].guest, users["alice"].default_group) == (True, True, "lab_a")


def test_a_user_sees_the_memberships_the_read_acl_shows_him(people: People) -> None:
    query(people.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", people.ids["carol"],
          people.groups["system"])
    login(people, "alice")
    users = {u.name: u for u in admin.list_users()}
    assert users["carol"].groups == ("lab_b",)  # her default group is public; system is not alice's to see
    assert admin.user_info() == users["alice"]
    assert admin.user_info("bob").groups == ("lab_a",)


# -- activation -------------------------------------------------------------------------------------


def _open_sessions(dsn: str) -> list[tuple[str, str | None]]:
    return query(dsn, "SELECT e.ome_name, a.ome_name FROM ome_sessions s "
                      "JOIN experimenters e ON e.id = s.experimenter_id LEFT JOIN experimenters a ON a.id = s.sudo_by "
                      "WHERE s.closed_at IS NULL ORDER BY 1, 2")


def test_deactivation_ends_the_users_sessions_and_those_he_opened_as_others(people: People) -> None:
    manager = SessionManager(people.dsn)
    lena_key = manager.create_session("lena", "lena-password").session_key
    manager.sudo_session("alice")
    login(people, "alice")
    login(people, "root")
    assert _open_sessions(people.dsn) == [("alice", "lena"), ("alice", None), ("lena", None), ("root", None)]

    assert admin.deactivate_user("lena") is True

    assert _open_sessions(people.dsn) == [("alice", None), ("root", None)]
    assert query(people.dsn, "SELECT active FROM experimenters WHERE ome_name = 'lena'") == [(False,)]
    with pytest.raises(AuthenticationError):
        SessionManager(people.dsn).create_session("lena", "lena-password")
    login(people, "root")
    assert admin.deactivate_user("lena") is False
    assert admin.activate_user("lena") is True
    assert SessionManager(people.dsn).create_session("lena", "lena-password").user_name == "lena"
    with pytest.raises(SessionKeyError):
        SessionManager(people.dsn).create_session(key=lena_key)  # her old sessions stay ended


@pytest.mark.parametrize(("actor", "target"), [("alice", "bob"), ("lena", "alice"), ("carol", "root")])
def test_deactivation_is_for_admins_and_never_of_the_super_user(people: People, actor: str, target: str) -> None:
    query(people.dsn, "UPDATE experimenters SET is_admin = true WHERE ome_name = 'carol'")
    login(people, target)
    login(people, actor)
    with pytest.raises(PermissionDenied):
        admin.deactivate_user(target)
    assert query(people.dsn, "SELECT active FROM experimenters WHERE ome_name = %s", target) == [(True,)]
    assert (target, None) in _open_sessions(people.dsn)


# -- groups -----------------------------------------------------------------------------------------


def _group_row(dsn: str, name: str) -> list[tuple[Any, ...]]:
    return query(dsn, "SELECT g.name, l.ome_name FROM groups g LEFT JOIN experimenters l ON l.id = g.leader_id "
                      "WHERE g.name = %s", name)


def test_an_admin_adds_a_group_and_only_an_admin(people: People) -> None:
    login(people, "lena")
    with pytest.raises(PermissionDenied):
        admin.add_group("lab_c")
    login(people, "root")
    group = admin.add_group("lab_c")
    assert group.name == "lab_c" and _group_row(people.dsn, "lab_c") == [("lab_c", None)]
    with pytest.raises(ValueError, match="group 'lab_c' exists"):
        admin.add_group("lab_c")


@pytest.mark.parametrize(("name", "error"), [("", ValueError), ("123", ValueError), ("a\nb", ValueError),
                                             (" lab", ValueError), (7, TypeError)])
def test_a_group_name_that_cannot_be_one_is_refused(people: People, name: Any, error: type[Exception]) -> None:
    login(people, "root")
    with pytest.raises(error):
        admin.add_group(name)
    assert query(people.dsn, "SELECT count(*) FROM groups") == [(4,)]


def test_list_groups_shows_owners_and_members(people: People) -> None:
    login(people, "root")
    groups = {g.name: g for g in admin.list_groups()}
    assert groups["lab_a"].owner == "lena" and groups["lab_a"].members == ("alice", "bob", "lena")
    assert groups["lab_b"].owner is None and groups["lab_b"].members == ("carol",)
    assert groups["system"].id == people.groups["system"]


def test_a_leader_adds_and_removes_non_admin_members_of_his_group(people: People) -> None:
    login(people, "lena")
    assert admin.add_members("lab_a", ["carol", "alice"]) == ["carol"]  # alice is one already
    assert _memberships(people.dsn, "carol") == ["lab_a", "lab_b"]
    assert admin.remove_members(people.groups["lab_a"], "carol") == ["carol"]
    assert admin.remove_members("lab_a", "carol") == []
    assert _memberships(people.dsn, "carol") == ["lab_b"]


def test_adding_members_is_all_or_nothing(people: People) -> None:
    login(people, "lena")
    with pytest.raises(PermissionDenied):
        admin.add_members("lab_a", ["carol", "root"])  # root is an admin: not for a leader
    with pytest.raises(PermissionDenied):
        admin.add_members("lab_b", ["alice"])  # not his group
    assert _memberships(people.dsn, "carol") == ["lab_b"] and _memberships(people.dsn, "alice") == ["lab_a"]
    login(people, "alice")
    with pytest.raises(PermissionDenied):
        admin.add_members("lab_a", ["carol"])
    with pytest.raises(PermissionDenied):
        admin.remove_members("lab_a", ["bob"])
    assert _memberships(people.dsn, "bob") == ["lab_a"]


def test_a_default_group_or_an_owned_group_is_not_left_by_removal(people: People) -> None:
    query(people.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", people.ids["bob"], people.groups["lab_b"])
    query(people.dsn, "UPDATE experimenters SET group_id = %s WHERE ome_name IN ('bob', 'lena')",
          people.groups["lab_b"])
    login(people, "root")
    with pytest.raises(ValueError, match="lab_a is alice's default group"):
        admin.remove_members("lab_a", ["bob", "alice"])
    assert _memberships(people.dsn, "bob") == ["lab_a", "lab_b"]  # all or nothing
    with pytest.raises(ValueError, match="lena owns lab_a"):
        admin.remove_members("lab_a", "lena")
    assert _memberships(people.dsn, "lena") == ["lab_a"]
    assert admin.remove_members("lab_a", "bob") == ["bob"]


def test_a_group_has_one_owner_replaced_only_when_asked(people: People) -> None:
    login(people, "root")
    assert admin.set_group_owner("lab_b", "root") is True
    assert _group_row(people.dsn, "lab_b") == [("lab_b", "root")]
    assert _memberships(people.dsn, "root") == ["lab_b", "system"]  # an owner is a member too
    assert admin.set_group_owner("lab_b", "root") is False
    with pytest.raises(ValueError, match="lab_a is owned by lena"):
        admin.set_group_owner("lab_a", "alice")
    assert _group_row(people.dsn, "lab_a") == [("lab_a", "lena")]
    assert admin.set_group_owner("lab_a", "alice", replace=True) is True
    assert _group_row(people.dsn, "lab_a") == [("lab_a", "alice")]
    assert admin.remove_group_owner("lab_a", "lena") is False
    assert admin.remove_group_owner("lab_a", "alice") is True
    assert _group_row(people.dsn, "lab_a") == [("lab_a", None)]
    assert _memberships(people.dsn, "alice") == ["lab_a"]


def test_a_guest_or_an_inactive_user_owns_no_group(people: People) -> None:
    query(people.dsn, "UPDATE experimenters SET active = false WHERE ome_name = 'bob'")
    login(people, "root")
    for name in ("guest", "bob"):
        with pytest.raises(ValueError, match="cannot own a group"):
            admin.set_group_owner("lab_b", name)
    assert _group_row(people.dsn, "lab_b") == [("lab_b", None)]


@pytest.mark.parametrize("actor", ["lena", "alice"])
def test_only_admins_change_group_owners(people: People, actor: str) -> None:
    login(people, actor)
    with pytest.raises(PermissionDenied):
        admin.set_group_owner("lab_a", "alice", replace=True)
    with pytest.raises(PermissionDenied):
        admin.remove_group_owner("lab_a", "lena")
    assert _group_row(people.dsn, "lab_a") == [("lab_a", "lena")]
