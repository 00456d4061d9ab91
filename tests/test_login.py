"""Logging in: passwords, keys, expiry, logout, su, sudo and guests, against the real server."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import argon2
import pytest

from ome_session import Session, SessionManager
from ome_session.errors import AuthenticationError, PermissionDenied, SessionError, SessionKeyError
from tests.helpers import (
    People,
    ServerLog,
    database_text,
    find_secrets,
    key_digest,
    login,
    query,
    stored_password_problems,
)


def test_password_login_binds_the_user(people: People) -> None:
    session = SessionManager(people.dsn).create_session("alice", "alice-password")
    assert Session.instance() is session
    assert session.user.ome_name == "alice"
    assert session.experimenter_id == people.ids["alice"]
    assert re.fullmatch(r"[0-9a-f]{32}", session.session_key)
    assert session.started is not None and session.last_access is not None


def test_wrong_password_and_unknown_user_give_the_same_error(people: People) -> None:
    manager = SessionManager(people.dsn)
    with pytest.raises(AuthenticationError) as wrong:
        manager.create_session("alice", "nope")
    with pytest.raises(AuthenticationError) as unknown:
        manager.create_session("nobody", "nope")
    assert str(wrong.value) == str(unknown.value)
    assert not Session.has_instance()


def test_the_key_is_never_stored_only_its_sha256_digest(people: People) -> None:
    manager = SessionManager(people.dsn)
    keys = {"alice's key": manager.create_session("alice", "alice-password").session_key,
            "lena's key": manager.create_session("lena", "lena-password").session_key}
    keys["lena's sudo key"] = manager.sudo_session("bob").session_key
    digests = {f"digest of {name}": key_digest(key) for name, key in keys.items()}

    stored = database_text(people.dsn)
    assert find_secrets(stored, keys) == []
    assert find_secrets({column: text for column, text in stored.items() if column != "ome_sessions.key_digest"},
                        digests) == []
    for key in keys.values():
        assert query(people.dsn, "SELECT count(*) FROM ome_sessions WHERE key_digest = %s", key_digest(key)) == [(1,)]


def test_a_key_from_one_process_resumes_in_another(people: People) -> None:
    key = SessionManager(people.dsn).create_session("bob", "bob-password").session_key
    code = (
        "import sys; from ome_session import SessionManager;"
        "s = SessionManager(sys.argv[1]).create_session(key=sys.argv[2]); print(s.user.ome_name)"
    )
    out = subprocess.run([sys.executable, "-c", code, people.dsn, key], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "bob"


def test_failed_login_leaves_the_existing_session_exactly_as_it_was(people: People) -> None:
    manager = SessionManager(people.dsn)
    session = manager.create_session("alice", "alice-password")
    key = session.session_key
    session.factory.new_object("Project", name="unsaved work")
    for attempt in (lambda: manager.create_session("bob", "wrong"),
                    lambda: manager.create_session(key="0" * 32),
                    lambda: manager.create_session(key="not a key")):
        with pytest.raises((AuthenticationError, SessionKeyError)):
            attempt()
        assert Session.instance() is session
        assert session.session_key == key and session.user.ome_name == "alice"
    assert session.factory.in_transaction  # the unsaved work is still there
    session.commit_transaction()
    assert query(people.dsn, "SELECT name FROM projects") == [("unsaved work",)]


def test_second_login_does_not_inherit_the_first_users_open_transaction(people: People) -> None:
    manager = SessionManager(people.dsn)
    first = manager.create_session("alice", "alice-password")
    first.factory.new_object("Project", name="alice's uncommitted")
    second = manager.create_session("bob", "bob-password")
    assert not second.factory.in_transaction
    assert second.user.ome_name == "bob"
    second.factory.new_object("Project", name="bob's")
    second.commit_transaction()
    assert query(people.dsn, "SELECT name FROM projects") == [("bob's",)]


def test_second_login_reuses_the_connection(people: People) -> None:
    manager = SessionManager(people.dsn)
    first = manager.create_session("alice", "alice-password")
    backend = first.factory.obtain_dbh().execute("SELECT pg_backend_pid()").fetchone()
    second = manager.create_session("carol", "carol-password")
    assert second.factory.obtain_dbh().execute("SELECT pg_backend_pid()").fetchone() == backend


@pytest.mark.parametrize("key", [
    "", "abc", "0" * 31, "0" * 33, "A" * 32, "g" * 32, "0" * 31 + "\x00", "0" * 10_000, None, 12345,
    b"0" * 32, "' OR 1=1 --" + "0" * 21,
])
def test_malformed_keys_are_refused_before_any_sql(people: People, server_log: ServerLog, key: object) -> None:
    manager = SessionManager(people.dsn)
    with pytest.raises(SessionKeyError):
        manager.create_session(key=key)  # type: ignore[arg-type]
    assert not Session.has_instance()
    assert server_log.statements() == []


@pytest.mark.parametrize("username,password", [
    ("alice'; DROP TABLE experimenters; --", "x"),
    ("alice", "' OR '1'='1"),
    ("al\x00ice", "alice-password"),
    ("alice", "alice-pass\x00word"),
    ("ålïcé", "pässwörd"),
    ("a" * 1_000_000, "x"),
    ("alice", "x" * 1_000_000),
    ("", ""),
])
def test_hostile_credentials_fail_cleanly_and_change_nothing(people: People, username: str, password: str) -> None:
    with pytest.raises(AuthenticationError):
        SessionManager(people.dsn).create_session(username, password)
    assert query(people.dsn, "SELECT count(*) FROM experimenters") == [(len(people.ids),)]
    assert query(people.dsn, "SELECT count(*) FROM ome_sessions") == [(0,)]


def test_logout_revokes_the_key_for_good(people: People) -> None:
    manager = SessionManager(people.dsn)
    key = manager.create_session("alice", "alice-password").session_key
    manager.logout()
    assert not Session.has_instance()
    with pytest.raises(SessionKeyError):
        manager.create_session(key=key)


def test_logout_with_a_transaction_open_still_revokes_the_key(people: People) -> None:
    manager = SessionManager(people.dsn)
    session = manager.create_session("alice", "alice-password")
    key = session.session_key
    assert session.user.ome_name == "alice"  # a read: a transaction is now open
    session.factory.new_object("Project", name="abandoned")
    manager.logout()
    with pytest.raises(SessionKeyError):
        manager.create_session(key=key)
    assert query(people.dsn, "SELECT count(*) FROM projects") == [(0,)]


def _age_session(dsn: str, key: str, seconds: int) -> None:
    query(dsn, "UPDATE ome_sessions SET last_access = last_access - make_interval(secs => %s),"
              " started = started - make_interval(secs => %s) WHERE key_digest = %s",
         seconds, seconds, key_digest(key))


def test_an_idle_key_expires_and_stays_dead_when_the_timeout_is_raised(people: People) -> None:
    manager = SessionManager(people.dsn)
    key = manager.create_session("alice", "alice-password").session_key
    Session.delete_instance(force=True)
    _age_session(people.dsn, key, 1801)
    with pytest.raises(SessionKeyError):
        SessionManager(people.dsn).create_session(key=key)
    query(people.dsn, "INSERT INTO configuration VALUES ('session_idle_timeout', '100000')")
    with pytest.raises(SessionKeyError):
        SessionManager(people.dsn).create_session(key=key)
    assert query(people.dsn, "SELECT closed_at IS NOT NULL FROM ome_sessions") == [(True,)]


def test_idle_expiry_slides_on_use(people: People) -> None:
    manager = SessionManager(people.dsn)
    key = manager.create_session("alice", "alice-password").session_key
    _age_session(people.dsn, key, 1700)
    manager.create_session(key=key)  # used: the idle clock starts again
    _age_session(people.dsn, key, 1700)
    assert manager.create_session(key=key).session_key == key


def test_absolute_lifetime_ends_a_busy_session(people: People) -> None:
    manager = SessionManager(people.dsn)
    key = manager.create_session("alice", "alice-password").session_key
    query(people.dsn, "UPDATE ome_sessions SET expires_at = now() - interval '1 second'")
    with pytest.raises(SessionKeyError):
        manager.create_session(key=key)


def test_lifetime_zero_means_no_absolute_limit(people: People) -> None:
    query(people.dsn, "INSERT INTO configuration VALUES ('session_max_lifetime', '0')")
    SessionManager(people.dsn).create_session("alice", "alice-password")
    assert query(people.dsn, "SELECT expires_at FROM ome_sessions") == [(None,)]


def test_deactivated_user_cannot_resume(people: People) -> None:
    manager = SessionManager(people.dsn)
    key = manager.create_session("alice", "alice-password").session_key
    query(people.dsn, "UPDATE experimenters SET active = false WHERE ome_name = 'alice'")
    with pytest.raises(SessionKeyError):
        manager.create_session(key=key)
    with pytest.raises(AuthenticationError):
        manager.create_session("alice", "alice-password")


def _crypt(password: str, salt: str) -> str:
    """crypt(3), as the original stored passwords: the standard library's, or where Python no
    longer has it (3.13) the crypt-r package the project depends on there. Never a reason to skip."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt as module
        except ImportError:
            import crypt_r as module  # type: ignore[no-redef]
    return str(module.crypt(password, salt))


def test_legacy_crypt_hash_verifies_and_is_upgraded_to_argon2id(people: People, server_log: ServerLog) -> None:
    legacy = _crypt("old-secret", "ab")
    assert len(legacy) == 13 and legacy.startswith("ab")  # traditional DES, as the original wrote it
    query(people.dsn, "UPDATE experimenters SET password_hash = %s WHERE ome_name = 'carol'", legacy)
    SessionManager(people.dsn).create_session("carol", "old-secret")
    [(stored,)] = query(people.dsn, "SELECT password_hash FROM experimenters WHERE ome_name = 'carol'")
    assert stored_password_problems(stored, "old-secret") == []
    places = {**database_text(people.dsn), "server log": server_log.text()}
    assert find_secrets(places, {"carol's password": "old-secret"}) == []
    Session.delete_instance(force=True)
    assert SessionManager(people.dsn).create_session("carol", "old-secret").user.ome_name == "carol"


def test_a_hash_with_weaker_argon2_parameters_is_replaced_at_the_next_login(people: People,
                                                                             server_log: ServerLog) -> None:
    weak = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("carol-password")
    query(people.dsn, "UPDATE experimenters SET password_hash = %s WHERE ome_name = 'carol'", weak)
    login(people, "carol")
    [(stored,)] = query(people.dsn, "SELECT password_hash FROM experimenters WHERE ome_name = 'carol'")
    assert stored != weak
    assert stored_password_problems(stored, "carol-password") == []
    places = {**database_text(people.dsn), "server log": server_log.text()}
    assert find_secrets(places, {"carol's password": "carol-password"}) == []


def test_guest_login_is_refused_unless_guest_access_is_allowed(people: People) -> None:
    manager = SessionManager(people.dsn)
    with pytest.raises(AuthenticationError):
        manager.create_session("guest", "guest-password")
    query(people.dsn, "INSERT INTO configuration VALUES ('allow_guest_access', 'true')")
    session = SessionManager(people.dsn).create_session("guest", "guest-password")
    assert session.is_guest_session() and not session.is_su_session()
    key = session.session_key
    Session.delete_instance(force=True)
    query(people.dsn, "UPDATE configuration SET value = 'false' WHERE name = 'allow_guest_access'")
    with pytest.raises(SessionKeyError):
        SessionManager(people.dsn).create_session(key=key)


def test_su_session_is_the_super_user(people: People) -> None:
    session = SessionManager(people.dsn).su_session()
    assert session.user.ome_name == "root"
    assert session.is_su_session() and session.acl is None


def test_is_su_session_is_false_for_others_and_never_raises(people: People) -> None:
    session = SessionManager(people.dsn).create_session("alice", "alice-password")
    assert session.is_su_session() is False
    Session.idle()
    assert session.is_su_session() is False


@pytest.mark.parametrize("actor,target", [("root", "carol"), ("lena", "alice")])
def test_sudo_is_allowed_for_super_user_and_group_leaders_and_recorded(people: People, actor: str, target: str) -> None:
    manager = SessionManager(people.dsn)
    manager.create_session(actor, People.password(actor))
    session = manager.sudo_session(target)
    assert session.user.ome_name == target
    assert session.sudo_by == people.ids[actor]
    assert query(people.dsn, "SELECT sudo_by FROM ome_sessions WHERE sudo_by IS NOT NULL") == [(people.ids[actor],)]


def test_sudo_by_an_admin_who_is_not_super_user(people: People) -> None:
    query(people.dsn, "UPDATE experimenters SET is_admin = true WHERE ome_name = 'carol'")
    manager = SessionManager(people.dsn)
    manager.create_session("carol", "carol-password")
    assert manager.sudo_session("alice").user.ome_name == "alice"


@pytest.mark.parametrize("actor,target", [("alice", "bob"), ("lena", "carol"), ("carol", "root")])
def test_sudo_is_refused_for_everyone_else(people: People, actor: str, target: str) -> None:
    manager = SessionManager(people.dsn)
    session = manager.create_session(actor, People.password(actor))
    with pytest.raises(PermissionDenied):
        manager.sudo_session(target)
    assert Session.instance() is session and session.user.ome_name == actor


def test_sudo_needs_a_logged_in_session(people: People) -> None:
    with pytest.raises(SessionError):
        SessionManager(people.dsn).sudo_session("alice")


def test_acl_of_a_group_leader_covers_the_groups_he_leads_not_his_members_elsewhere(people: People) -> None:
    # As in OMERO, a group owner sees his members' data within the group, not in their other groups.
    session = SessionManager(people.dsn).create_session("lena", "lena-password")
    assert session.acl is not None
    assert session.acl.users == {people.ids["lena"]}
    assert session.acl.groups == {people.groups["lab_a"]}


def test_keep_alive_slides_expiry_and_fails_once_revoked(people: People) -> None:
    manager = SessionManager(people.dsn)
    session = manager.create_session("alice", "alice-password")
    _age_session(people.dsn, session.session_key, 1700)
    session.keep_alive()
    (age,), = query(people.dsn, "SELECT extract(epoch FROM now() - last_access) FROM ome_sessions")
    assert age < 60
    query(people.dsn, "UPDATE ome_sessions SET closed_at = now()")
    with pytest.raises(SessionKeyError):
        session.keep_alive()
