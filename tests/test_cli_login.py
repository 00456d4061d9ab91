"""The habits of ``omero login`` and ``omero sessions`` that scripts rely on, in ``ome-session``:
``-C``, ``-q``, ``-t``, ``--retry``, a key prefix for ``-k``, the prompts with their defaults,
``sessions list --full-keys``, ``sessions who`` and a ``sessions keepalive`` that loops.

Run as a real program in subprocesses against a real server, as ``test_cli`` does.
"""

from __future__ import annotations

import getpass
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ome_session._tty import DATABASE_FIELD, database_label
from ome_session.keystore import KeyStore, StoredSession
from tests.helpers import (
    INTERRUPTIBLE_COMMAND,
    People,
    ServerLog,
    command_env,
    current_key,
    key_digest,
    ome_session,
    on_terminal,
    query,
)


@pytest.fixture
def store() -> KeyStore:
    return KeyStore()  # $OME_SESSIONDIR of the test, as the command sees it


def login(user: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = ome_session("login", f"{user}@localhost", *args, OME_SESSION_PASSWORD=f"{user}-password")
    assert done.returncode == 0, done.stderr
    return done


def open_rows(dsn: str) -> int:
    [(count,)] = query(dsn, "SELECT count(*) FROM ome_sessions WHERE closed_at IS NULL")
    return int(count)


# -- -C, -q, -t ------------------------------------------------------------------------------------


def test_create_makes_a_new_session_even_beside_a_live_stored_one(lab: People, store: KeyStore) -> None:
    first = login("alice")
    assert first.stdout.startswith("Created session")
    joined = login("alice")
    assert joined.stdout.startswith("Joined session")
    created = login("alice", "-C")
    assert created.stdout.startswith("Created session")
    assert len(store.list()) == 2 and open_rows(lab.dsn) == 2


def test_quiet_login_prints_nothing_and_stores_the_key(lab: People, store: KeyStore) -> None:
    done = login("alice", "-q")
    assert (done.stdout, done.stderr) == ("", "")
    [entry] = store.list()
    assert query(lab.dsn, "SELECT count(*) FROM ome_sessions WHERE key_digest = %s", key_digest(entry.key)) == [(1,)]


# -- --retry -----------------------------------------------------------------------------------------


def test_retry_logs_in_once_the_database_can_be_reached(lab: People, store: KeyStore) -> None:
    """The database's socket appears (a link to the real one) only after the first attempt failed."""
    params = conninfo_to_dict(lab.dsn)
    socket_name = f".s.PGSQL.{params.get('port') or 5432}"
    later = Path(tempfile.mkdtemp(prefix="ome-session-retry-"))
    try:
        dsn = make_conninfo(lab.dsn, host=str(later))
        run = subprocess.Popen([sys.executable, "-m", "ome_session", "--dsn", dsn, "login", "alice@localhost",
                                "--retry", "120"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env=command_env(OME_SESSION_PASSWORD="alice-password"))
        try:
            assert run.stderr is not None
            warning = run.stderr.readline()  # written once the first attempt has failed
            (later / socket_name).symlink_to(Path(str(params["host"])) / socket_name)
            out, err = run.communicate(timeout=300)
        finally:
            run.kill()  # a no-op once it has ended
    finally:
        (later / socket_name).unlink(missing_ok=True)
        later.rmdir()
    assert warning.startswith("ome-session: warning: cannot connect to database") and "login retry #1 in 3 s" in warning
    assert run.returncode == 0, err
    assert out.startswith("Created session")
    assert [e.user for e in store.list()] == ["alice"] and open_rows(lab.dsn) == 1


def test_retry_gives_a_wrong_password_no_second_chance(lab: People) -> None:
    done = ome_session("login", "alice@localhost", "--retry", "120", "-w", "wrong")
    assert done.returncode == 1
    assert done.stderr == "ome-session: error: login failed: unknown user or wrong password\n"


# -- -k with a prefix ----------------------------------------------------------------------------------


def test_a_key_prefix_joins_the_one_stored_session_it_starts(lab: People) -> None:
    login("alice")
    alice = current_key()
    login("bob")
    done = ome_session("login", "-k", alice[:6])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Joined session {alice[:8]} (alice@localhost)")
    assert current_key() == alice
    assert open_rows(lab.dsn) == 2


def test_an_ambiguous_or_unknown_key_prefix_exits_1_naming_the_candidates_and_sends_nothing(
        lab: People, store: KeyStore, server_log: ServerLog) -> None:
    tag = {DATABASE_FIELD: database_label(lab.dsn)}
    for user, key in (("zoe", "abcdef12" + "0" * 24), ("yan", "abcdef12ff" + "1" * 22), ("xia", "99" * 16)):
        store.add(StoredSession(server="localhost", user=user, key=key, extra=tag))
    server_log.mark()

    ambiguous = ome_session("login", "-k", "abcd")
    unknown = ome_session("login", "-k", "0123")

    assert (ambiguous.returncode, ambiguous.stdout) == (1, "")
    assert ambiguous.stderr == ("ome-session: error: the key prefix matches 2 stored sessions: abcdef12f... "
                                "(yan@localhost), abcdef120... (zoe@localhost); give more of the key\n")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == ("ome-session: error: malformed session key (4 characters): a key is 32 lowercase hex "
                              "characters, and no stored session key starts with the 4 characters given: "
                              "`ome-session sessions list` shows the stored ones\n")
    assert server_log.statements() == []  # a prefix is resolved from the store alone


# -- prompts -----------------------------------------------------------------------------------------


def test_login_on_a_terminal_shows_the_defaults_and_the_previous_login(lab: People, store: KeyStore) -> None:
    login("alice")
    query(lab.dsn, "UPDATE ome_sessions SET closed_at = now()")  # her session is gone: a login must ask

    code, shown, answered = on_terminal(["login"], [("Server: [localhost] ", ""), ("Username: [alice] ", "bob"),
                                                    ("Password: ", "bob-password")])

    assert (code, answered) == (0, 3), shown
    assert "Previously logged in to localhost as alice" in shown
    assert shown.index("Previously logged in") < shown.index("Server: [localhost]") < shown.index("Username:")
    assert "Created session" in shown and "(bob@localhost)" in shown
    assert [e.user for e in store.list()] == ["bob"]


def test_login_on_a_terminal_joins_a_live_stored_session_without_asking(lab: People) -> None:
    login("alice")
    code, shown, answered = on_terminal(["login"], [])
    assert (code, answered) == (0, 0), shown
    assert "Joined session" in shown and "Server:" not in shown and "Password" not in shown


def test_the_username_prompt_offers_the_accounts_name_when_there_is_no_previous_login(lab: People) -> None:
    code, shown, answered = on_terminal(["login", "localhost"], [("Username: [", "alice"), "alice-password"])
    assert (code, answered) == (0, 2), shown
    assert "Server:" not in shown and "Previously" not in shown
    assert f"Username: [{getpass.getuser()}] " in shown  # the account's name, as the omero command offers


# -- sessions list, who, keepalive ---------------------------------------------------------------------------


def test_sessions_list_can_show_whole_keys(lab: People) -> None:
    login("alice")
    key = current_key()
    assert key not in ome_session("sessions", "list").stdout
    done = ome_session("sessions", "list", "--full-keys")
    assert done.returncode == 0 and f"| {key} |" in done.stdout


def test_sessions_who_shows_admins_every_live_session_and_others_their_own(lab: People) -> None:
    login("bob")
    login("alice")
    query(lab.dsn, "UPDATE ome_sessions s SET closed_at = now() FROM experimenters e "
                   "WHERE e.id = s.experimenter_id AND e.ome_name = 'bob'")
    login("carol")
    login("root")

    rows = [[c.strip() for c in line.split("|")] for line in ome_session("sessions", "who").stdout.splitlines()]
    assert rows[0] == ["User", "Group", "Logged in", "Last access", "Host", "Agent", "Sudo by"]
    assert [(r[0], r[1], r[2].endswith("(*)"), r[5]) for r in rows[2:-1]] == [
        ("alice", "lab_a", False, "ome-session"), ("carol", "lab_b", False, "ome-session"),
        ("root", "system", True, "ome-session")]

    login("carol")
    mine = ome_session("sessions", "who").stdout.splitlines()
    assert [line.split("|")[0].strip() for line in mine[2:-1]] == ["carol"]
    assert mine[-1] == "(1 row)"


def test_keepalive_loops_every_minute_until_interrupted(lab: People) -> None:
    login("alice")
    query(lab.dsn, "UPDATE ome_sessions SET last_access = now() - interval '10 minutes'")
    run = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE_COMMAND, "sessions", "keepalive"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=command_env())
    try:
        assert run.stdout is not None
        announced, kept = run.stdout.readline(), run.stdout.readline()
        touched = query(lab.dsn, "SELECT last_access > now() - interval '1 minute' FROM ome_sessions")
        run.send_signal(signal.SIGINT)  # during its minute's wait
        rest, errors = run.communicate(timeout=60)
    finally:
        run.kill()
    assert announced.startswith("Keeping session ") and "alive every 60 s; Ctrl-C to stop" in announced
    assert kept.startswith("kept session ") and touched == [(True,)]
    assert run.returncode == 0, errors
    assert rest.startswith("stopped keeping session")
