"""``login -g/-t``, ``sessions group`` and ``sessions timeout``: settings of one session, run as the
real command in subprocesses against a real server; the database is the oracle."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import People, key_digest, ome_session, query


@pytest.fixture
def lab(people: People, monkeypatch: pytest.MonkeyPatch) -> People:
    """The people's database as the one the command uses; alice is in lab_b as well as lab_a."""
    monkeypatch.setenv("OME_SESSION_DSN", people.dsn)
    query(people.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", people.ids["alice"], people.groups["lab_b"])
    return people


def run(*args: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
    return ome_session(*args, OME_SESSION_PASSWORD=People.password(user))


def ok(*args: str, user: str = "alice") -> str:
    done = run(*args, user=user)
    assert done.returncode == 0, done.stderr
    return done.stdout


def current_key() -> str:
    return ok("sessions", "key").strip()


def refused(done: subprocess.CompletedProcess[str], code: int) -> str:
    """A refusal or bad input: its exit code, nothing on stdout, one line that says why on stderr
    (after argparse's usage, for what argparse itself refuses)."""
    assert done.returncode == code, (done.stdout, done.stderr)
    assert done.stdout == ""
    said = [line for line in done.stderr.splitlines() if "error: " in line]
    assert len(said) == 1 and done.stderr.endswith(said[0] + "\n"), done.stderr
    return said[0]


def test_two_sessions_of_one_user_switched_to_different_groups_stay_so(lab: People) -> None:
    ok("login", "alice@one", "-g", "lab_b")
    one = current_key()
    ok("login", "alice@two")
    assert ok("sessions", "group", "lab_a").startswith("Now using group lab_a")
    two = current_key()
    assert one != two
    for key, group in ((one, "lab_b"), (two, "lab_a")):
        assert query(lab.dsn, "SELECT group_id FROM ome_sessions WHERE key_digest = %s", key_digest(key)) == [
            (lab.groups[group],)]
    assert query(lab.dsn, "SELECT group_id FROM experimenters WHERE ome_name = 'alice'") == [(lab.groups["lab_a"],)]
    ok("login", "alice@one")  # joins the stored session: still in its own group
    assert current_key() == one
    assert "lab_a, lab_b (current)" in ok("whoami")
    ok("login", "alice@two")
    assert "lab_a (current), lab_b" in ok("whoami")


def test_login_t_gives_that_session_its_own_idle_timeout(lab: People) -> None:
    created = ok("login", "alice@one", "-t", "600")
    assert "Idle timeout: 10.0 min." in created
    one = current_key()
    shown = ok("sessions", "timeout")
    assert shown.startswith("idle timeout: 10.0 min (600 s, this session's own)\n")
    ok("login", "alice@two")
    assert ok("sessions", "timeout").startswith("idle timeout: 30.0 min (1800 s, the configured default)\n")
    assert query(lab.dsn, "SELECT key_digest = %s, idle_timeout FROM ome_sessions ORDER BY id", key_digest(one)) == [
        (True, 600), (False, None)]


def test_sessions_timeout_sets_the_current_sessions_own(lab: People) -> None:
    ok("login", "-u", "alice")
    shown = ok("sessions", "timeout", "900")
    assert shown.startswith("idle timeout: 15.0 min (900 s, this session's own)\n")
    assert query(lab.dsn, "SELECT idle_timeout FROM ome_sessions") == [(900,)]
    assert query(lab.dsn, "SELECT count(*) FROM configuration WHERE name = 'session_idle_timeout'") == [(0,)]
    assert ok("sessions", "timeout", "--default").startswith("default idle timeout: 30.0 min (1800 s)")


def test_refusals_exit_5_with_one_line(lab: People) -> None:
    query(lab.dsn, "INSERT INTO configuration VALUES ('session_max_idle_timeout', '900')")
    message = refused(run("login", "-u", "alice", "-t", "1000"), 5)
    assert "at most 900 s (session_max_idle_timeout" in message
    # The session that login made is not left open: nobody could find its key again.
    assert query(lab.dsn, "SELECT count(*) FROM ome_sessions WHERE closed_at IS NULL") == [(0,)]
    ok("login", "-u", "alice")
    assert "at most 900 s" in refused(run("sessions", "timeout", "901"), 5)
    assert "not a member or leader of group 'system'" in refused(run("sessions", "group", "system"), 5)
    assert "may not change the idle timeout" in refused(run("sessions", "timeout", "--default", "60"), 5)
    assert query(lab.dsn, "SELECT group_id, idle_timeout FROM ome_sessions WHERE closed_at IS NULL") == [
        (None, None)]


@pytest.mark.parametrize("args", [("login", "-u", "alice", "-t", "0"), ("login", "-u", "alice", "-t", "ten"),
                                  ("sessions", "timeout", "0"), ("sessions", "timeout", "-5"),
                                  ("sessions", "group", "no-such-group")])
def test_bad_input_exits_2_with_one_line(lab: People, args: tuple[str, ...]) -> None:
    if args[0] == "sessions":
        ok("login", "-u", "alice")
    refused(run(*args), 2)
    assert query(lab.dsn, "SELECT group_id, idle_timeout FROM ome_sessions") in ([], [(None, None)])
