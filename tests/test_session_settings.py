"""A session's own group and idle timeout (local backend): they belong to that session only, are
checked against what the user may use and what the installation allows, and decide its expiry.

The oracle is the database itself, read on a separate connection (``query``)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from ome_session import Session, SessionManager
from ome_session._maintenance import purge_sessions
from ome_session.errors import PermissionDenied, SessionKeyError
from tests.helpers import People, key_digest, login, query, wait_for_news


def resume(people: People, key: str) -> Session:
    return SessionManager(people.dsn).create_session(key=key)


def own_settings(people: People, key: str) -> tuple[Any, ...]:
    """The session row's own group and idle timeout."""
    return query(people.dsn, "SELECT group_id, idle_timeout FROM ome_sessions WHERE key_digest = %s",
                 key_digest(key))[0]


def age(people: People, key: str, minutes: int) -> None:
    """As if the session had last been used ``minutes`` ago."""
    query(people.dsn, "UPDATE ome_sessions SET last_access = now() - %s * interval '1 minute' "
                      "WHERE key_digest = %s", minutes, key_digest(key))
    wait_for_news(key)  # a process that resumed the key before hears of it before its next resume


def configure(people: People, name: str, value: int) -> None:
    query(people.dsn, "INSERT INTO configuration (name, value) VALUES (%s, to_jsonb(%s::int))", name, value)


def new_project_group(session: Session) -> int:
    project = session.factory.new_object("Project", name="made here")
    session.rollback_transaction()
    return int(project.group_id)  # type: ignore[attr-defined]


@pytest.fixture
def two_labs(people: People) -> People:
    """alice is a member of lab_b as well as of her default group lab_a."""
    query(people.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", people.ids["alice"], people.groups["lab_b"])
    return people


# -- the session's group --------------------------------------------------------------------------------


def test_two_sessions_of_one_user_keep_their_own_groups(two_labs: People) -> None:
    people = two_labs
    first = login(people, "alice").session_key
    assert first is not None
    second = login(people, "alice")
    second.set_group("lab_b")
    assert new_project_group(second) == people.groups["lab_b"]
    second_key = second.session_key
    assert second_key is not None

    assert new_project_group(resume(people, first)) == people.groups["lab_a"]
    assert own_settings(people, first) == (None, None)
    again = resume(people, second_key)
    assert again.login is not None and again.login.group_id == people.groups["lab_b"]
    assert new_project_group(again) == people.groups["lab_b"]
    assert [g.name for g in again.groups() if g.current] == ["lab_b"]
    assert own_settings(people, second_key) == (people.groups["lab_b"], None)
    assert query(people.dsn, "SELECT group_id FROM experimenters WHERE ome_name = 'alice'") == [
        (people.groups["lab_a"],)]  # the user's default group never moved


def test_a_group_the_user_left_is_no_longer_the_sessions(two_labs: People) -> None:
    people = two_labs
    session = login(people, "alice")
    session.set_group("lab_b")
    key = session.session_key
    assert key is not None
    query(people.dsn, "DELETE FROM experimenter_group_map WHERE experimenter_id = %s AND group_id = %s",
          people.ids["alice"], people.groups["lab_b"])
    assert new_project_group(resume(people, key)) == people.groups["lab_a"]  # back to the default group


def test_only_a_group_the_user_is_a_member_or_leader_of(people: People) -> None:
    alice = login(people, "alice")
    with pytest.raises(PermissionDenied, match="alice is not a member or leader of group 'lab_b'"):
        alice.set_group("lab_b")
    with pytest.raises(PermissionDenied):
        alice.set_group(people.groups["system"])
    with pytest.raises(ValueError, match="there is no group 'nowhere'"):
        alice.set_group("nowhere")
    assert query(people.dsn, "SELECT group_id FROM ome_sessions") == [(None,)]

    query(people.dsn, "UPDATE groups SET leader_id = %s WHERE name = 'lab_b'", people.ids["lena"])
    lena = login(people, "lena")  # she leads lab_b without being a member of it
    lena.set_group("lab_b")
    assert new_project_group(lena) == people.groups["lab_b"]


def test_a_guest_may_not_change_his_session(people: People) -> None:
    query(people.dsn, "INSERT INTO configuration VALUES ('allow_guest_access', 'true')")
    guest = login(people, "guest")
    with pytest.raises(PermissionDenied, match="guest"):
        guest.set_group("guests")
    with pytest.raises(PermissionDenied, match="guest"):
        guest.update(time_to_idle=600)
    assert query(people.dsn, "SELECT group_id, idle_timeout FROM ome_sessions") == [(None, None)]


# -- the session's idle timeout ---------------------------------------------------------------------------


def test_an_own_idle_timeout_decides_that_session_only(people: People) -> None:
    short = login(people, "alice")
    short.update(time_to_idle=600)
    assert short.time_to_idle == datetime.timedelta(minutes=10)
    short_key = short.session_key
    long = login(people, "alice")
    long.update(time_to_idle=datetime.timedelta(hours=1))
    long_key = long.session_key
    default_key = login(people, "alice").session_key
    assert short_key and long_key and default_key
    assert own_settings(people, short_key) == (None, 600)
    assert own_settings(people, long_key) == (None, 3600)
    assert own_settings(people, default_key) == (None, None)
    assert Session.instance().time_to_idle == datetime.timedelta(seconds=1800)

    for key in (short_key, long_key, default_key):
        age(people, key, 11)
    with pytest.raises(SessionKeyError):
        resume(people, short_key)
    assert resume(people, default_key).time_to_idle == datetime.timedelta(seconds=1800)
    for key in (long_key, default_key):
        age(people, key, 40)
    with pytest.raises(SessionKeyError):
        resume(people, default_key)
    assert resume(people, long_key).time_to_idle == datetime.timedelta(hours=1)


def test_an_idle_timeout_above_the_maximum_is_refused_and_a_lowered_maximum_counts(people: People) -> None:
    configure(people, "session_max_idle_timeout", 900)
    session = login(people, "alice")
    with pytest.raises(PermissionDenied, match="at most 900 s"):
        session.update(time_to_idle=901)
    key = session.session_key
    assert key is not None
    assert own_settings(people, key) == (None, None)
    session.update(time_to_idle=900)
    assert own_settings(people, key) == (None, 900)

    query(people.dsn, "UPDATE configuration SET value = '300' WHERE name = 'session_max_idle_timeout'")
    assert resume(people, key).time_to_idle == datetime.timedelta(minutes=5)
    age(people, key, 6)
    with pytest.raises(SessionKeyError):
        resume(people, key)


def test_an_idle_timeout_beyond_the_sessions_lifetime_is_refused(people: People) -> None:
    configure(people, "session_max_lifetime", 3600)
    session = login(people, "alice")
    with pytest.raises(PermissionDenied, match="session_max_lifetime"):
        session.update(time_to_idle=3601)
    session.update(time_to_idle=3600)


@pytest.mark.parametrize("bad", [0, -1, 2**31, True, 1.5, "600", None, datetime.timedelta(seconds=1.5),
                                 datetime.timedelta(0)])
def test_a_bad_idle_timeout_is_refused_before_anything_is_sent(people: People, bad: object) -> None:
    session = login(people, "alice")
    with pytest.raises((TypeError, ValueError), match="idle timeout"):
        session.update(time_to_idle=bad)  # type: ignore[arg-type]
    assert query(people.dsn, "SELECT idle_timeout FROM ome_sessions") == [(None,)]


def test_the_purge_goes_by_each_sessions_own_idle_timeout(people: People) -> None:
    short = login(people, "alice")
    short.update(time_to_idle=60)
    short_key = short.session_key
    default_key = login(people, "bob").session_key
    assert short_key and default_key
    for key in (short_key, default_key):
        age(people, key, 2)
    report = purge_sessions(login(people, "root"))
    assert report.deleted["idle"] == 1
    assert query(people.dsn, "SELECT key_digest FROM ome_sessions WHERE key_digest IN (%s, %s)",
                 key_digest(short_key), key_digest(default_key)) == [(key_digest(default_key),)]
