"""Passwords change through ``ome_session.admin.set_password`` only: hashed, and by whom the rules allow.

The stored hash is checked with argon2 itself, read with SQL on a connection of its own.
"""

from __future__ import annotations

from typing import Any

import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError

from ome_session import Session, SessionManager, admin
from ome_session.errors import AuthenticationError, PermissionDenied
from tests.helpers import People, login, query


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
