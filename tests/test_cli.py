"""The ``ome-session`` command, run as a real program in subprocesses against a real server.

Every run is ``python -m ome_session ...`` with the test's isolated settings file, key store and
data directory (the autouse fixture's environment, inherited); the database comes from
``OME_SESSION_DSN`` or ``--dsn``. Standard input is not a terminal unless a test makes one (pty).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from ome_session import Project, SessionManager
from ome_session._cluster import Cluster
from ome_session._tty import DATABASE_FIELD
from ome_session.errors import AuthenticationError
from ome_session.keystore import KeyStore
from tests.helpers import (
    INTERRUPTIBLE_COMMAND,
    People,
    command_env,
    current_key,
    files_text,
    find_secrets,
    key_digest,
    ome_session,
    on_terminal,
    process_start_time,
    query,
)


def store_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


@pytest.fixture
def store() -> KeyStore:
    return KeyStore()  # $OME_SESSIONDIR of the test, as the command sees it


def login(user: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = ome_session("login", "-u", user, *args, OME_SESSION_PASSWORD=People.password(user))
    assert done.returncode == 0, done.stderr
    return done


# -- login, whoami, logout ----------------------------------------------------------------------


def test_login_stores_only_the_key_and_whoami_in_a_new_process_uses_it(lab: People, store: KeyStore) -> None:
    done = login("alice")
    assert re.fullmatch(r"Created session [0-9a-f]{8} \(alice@localhost\)\. Idle timeout: 30\.0 min\. "
                        r"Current group: lab_a\n", done.stdout)
    [entry] = store.list()
    path = store.file_for(entry)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secrets = {"alice's password": "alice-password", "the key's digest": key_digest(entry.key)}
    assert find_secrets(files_text(store.directory), secrets) == []
    assert entry.extra[DATABASE_FIELD].startswith("t")  # the test database's name, no password
    assert query(lab.dsn, "SELECT count(*) FROM ome_sessions WHERE key_digest = %s", key_digest(entry.key)) == [(1,)]

    who = ome_session("whoami")
    assert who.returncode == 0, who.stderr
    assert "user:        alice" in who.stdout
    assert "server:      localhost" in who.stdout
    assert "groups:      lab_a (current)" in who.stdout
    assert f"session:     {entry.key[:8]}" in who.stdout
    assert entry.key not in who.stdout  # only a prefix of the secret is shown


def test_second_login_joins_the_stored_live_key(lab: People, store: KeyStore) -> None:
    first = login("alice")
    second = login("alice")
    assert second.stdout.startswith("Joined session " + first.stdout.split()[2])
    assert len(store.list()) == 1
    assert query(lab.dsn, "SELECT count(*) FROM ome_sessions") == [(1,)]


def test_login_with_password_option_makes_a_new_session_instead_of_joining(lab: People, store: KeyStore) -> None:
    login("alice")
    first = current_key()
    done = ome_session("login", "alice@localhost", "-w", "alice-password")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Created session")
    assert len(store.list()) == 2
    assert current_key() != first


def test_logout_revokes_the_key_so_joining_it_afterwards_fails(lab: People, store: KeyStore) -> None:
    login("alice")
    key = current_key()
    done = ome_session("logout")
    assert done.returncode == 0, done.stderr
    assert store.list() == []
    joined = ome_session("login", "-k", key)
    assert joined.returncode == 1
    assert joined.stderr.startswith("ome-session: error: session key not accepted")
    assert ome_session("whoami").returncode == 1


def test_login_by_key_joins_that_session_and_makes_it_current(lab: People, store: KeyStore) -> None:
    login("alice")
    key = current_key()
    login("bob")
    done = ome_session("login", "-k", key)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Joined session {key[:8]} (alice@localhost)")
    assert current_key() == key


def test_whoami_without_a_login_exits_1_saying_how_to_log_in(lab: People) -> None:
    done = ome_session("whoami")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "ome-session: error: not logged in: run `ome-session login`\n"


def test_sudo_login_acts_as_the_user_and_closes_the_leaders_own_session(lab: People) -> None:
    done = ome_session("login", "-u", "alice", "--sudo", "lena", "-w", "lena-password")
    assert done.returncode == 0, done.stderr
    who = ome_session("whoami")
    assert "user:        alice" in who.stdout and "sudo by:     lena" in who.stdout
    sessions = query(lab.dsn, "SELECT e.ome_name, s.sudo_by, s.closed_at IS NULL FROM ome_sessions s "
                    "JOIN experimenters e ON e.id = s.experimenter_id ORDER BY s.id")
    assert sessions == [("lena", None, False), ("alice", lab.ids["lena"], True)]


def test_sudo_as_someone_outside_the_leaders_groups_is_denied_with_exit_5(lab: People, store: KeyStore) -> None:
    done = ome_session("login", "-u", "carol", "--sudo", "lena", "-w", "lena-password")
    assert done.returncode == 5
    assert done.stderr.startswith("ome-session: error: lena may not act as 'carol'")
    assert store.list() == []
    assert query(lab.dsn, "SELECT count(*) FROM ome_sessions WHERE closed_at IS NULL") == [(0,)]


def test_wrong_password_exits_1_and_stores_nothing(lab: People, store: KeyStore) -> None:
    done = ome_session("login", "-u", "alice", "-w", "wrong")
    assert done.returncode == 1
    assert done.stderr == "ome-session: error: login failed: unknown user or wrong password\n"
    assert store.list() == []


def test_no_password_and_no_terminal_exits_2_without_prompting(lab: People) -> None:
    done = ome_session("login", "-u", "alice")
    assert done.returncode == 2
    assert "no password" in done.stderr and "OME_SESSION_PASSWORD" in done.stderr
    assert "Password" not in done.stdout


def test_login_group_option_switches_the_sessions_group(lab: People, store: KeyStore) -> None:
    query(lab.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", lab.ids["alice"], lab.groups["lab_b"])
    done = login("alice", "-g", "lab_b")
    assert done.stdout.rstrip().endswith("Current group: lab_b")
    assert store.list()[0].group == "lab_b"
    assert query(lab.dsn, "SELECT group_id FROM ome_sessions") == [(lab.groups["lab_b"],)]
    assert query(lab.dsn, "SELECT group_id FROM experimenters WHERE ome_name = 'alice'") == [(lab.groups["lab_a"],)]


def test_sixteen_concurrent_logins_leave_every_entry_and_no_partial_file(lab: People, store: KeyStore) -> None:
    users = ["root", "lena", "alice", "bob", "carol"]
    runs = []
    for i in range(16):
        user = users[i % len(users)]
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "ome_session", "login", f"{user}@server-{i:02d}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=command_env(OME_SESSION_PASSWORD=People.password(user))))
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    assert [code for code, _, _ in results] == [0] * 16, [err for _, _, err in results]
    entries = store.list()
    assert sorted(e.server for e in entries) == [f"server-{i:02d}" for i in range(16)]
    assert len({e.key for e in entries}) == 16
    names = [p.name for p in store_files(store.directory)]
    assert not [n for n in names if n.startswith(".tmp")]  # no temporary file left half-written
    assert len([n for n in names if not n.startswith(".")]) == 16  # every entry file is readable
    assert store.current() in entries


def test_symlinked_store_directory_is_refused_with_exit_4_before_logging_in(lab: People, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    link = tmp_path / "linked-sessions"
    link.symlink_to(real)
    done = ome_session("login", "-u", "alice", OME_SESSION_PASSWORD="alice-password", OME_SESSIONDIR=str(link))
    assert done.returncode == 4
    assert done.stderr.startswith(f"ome-session: error: {link} is a symlink")
    assert query(lab.dsn, "SELECT count(*) FROM ome_sessions") == [(0,)]
    assert list(real.iterdir()) == []


def test_password_prompt_on_a_terminal_logs_in_without_echo(lab: People, store: KeyStore) -> None:
    code, shown, answered = on_terminal(["login", "alice@localhost"], ["alice-password"])
    assert (code, answered) == (0, 1), shown
    assert "Password: " in shown and "Created session" in shown
    assert "alice-password" not in shown  # getpass turned echo off
    assert [e.user for e in store.list()] == ["alice"]


def test_three_wrong_passwords_on_a_terminal_exit_1(lab: People, store: KeyStore) -> None:
    code, shown, answered = on_terminal(["login", "alice@localhost"], ["wrong-1", "wrong-2", "wrong-3",
                                                                        "alice-password"])
    assert (code, answered) == (1, 3), shown
    assert shown.count("try again") == 2
    assert "(3 attempts)" in shown
    assert store.list() == []


def test_end_of_input_at_the_password_prompt_exits_2_and_stores_nothing(lab: People, store: KeyStore) -> None:
    code, shown, answered = on_terminal(["login", "alice@localhost"], ["\x04"])  # Ctrl-D: no password given
    assert (code, answered) == (2, 1), shown
    assert "no password was given" in shown
    assert store.list() == []


def test_help_documents_the_exit_codes() -> None:
    done = ome_session("--help")
    assert done.returncode == 0
    for line in ("0    success", "2    usage error", "3    database unavailable", "4    configuration or file error",
                 "5    permission denied"):
        assert line in done.stdout


def test_bad_usage_exits_2() -> None:
    assert ome_session("login", "--no-such-option").returncode == 2
    done = ome_session("login", "alice@localhost:99999", "-w", "x")
    assert done.returncode == 2
    assert done.stderr == "ome-session: error: port must be from 1 to 65535, not 99999\n"


def test_no_database_configured_exits_4_saying_how_to_install() -> None:
    done = ome_session("login", "-u", "alice", "-w", "x")
    assert done.returncode == 4
    assert "run `ome-session install`" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_database_exits_3_in_one_line(tmp_path: Path) -> None:
    done = ome_session("--dsn", f"host={tmp_path} port=1 dbname=x connect_timeout=2", "login", "-u", "alice", "-w", "x")
    assert done.returncode == 3
    assert done.stderr.startswith("ome-session: error: cannot connect to database x")
    assert done.stderr.count("\n") == 1


# -- sessions ------------------------------------------------------------------------------------


def test_sessions_list_shows_each_entry_and_removes_dead_ones(lab: People, store: KeyStore) -> None:
    login("alice", "lab-a")
    login("bob", "lab-b")
    bob_key = current_key()
    query(lab.dsn, "UPDATE ome_sessions s SET closed_at = now() FROM experimenters e "
         "WHERE e.id = s.experimenter_id AND e.ome_name = 'bob'")

    kept = ome_session("sessions", "list", "--no-purge")
    assert kept.returncode == 0, kept.stderr
    assert len(store.list()) == 2
    assert re.search(r" lab-b +\| bob +\| lab_a +\| " + bob_key[:8] + r" \| False ", kept.stdout)

    done = ome_session("sessions", "list")
    lines = done.stdout.splitlines()
    assert lines[0].split("|")[0].strip() == "Server" and lines[-1] == "(2 rows)"
    assert re.search(r" lab-a +\| alice +\| lab_a +\| [0-9a-f]{8} \| True +\| \w{3} \w{3} ", done.stdout)
    assert "False (removed)" in done.stdout
    assert [e.user for e in store.list()] == ["alice"]


def test_sessions_list_leaves_keys_of_another_database_alone(lab: People, store: KeyStore) -> None:
    login("alice")
    entry = store.list()[0]
    store.add(type(entry)(server="elsewhere", user="zoe", key="ab" * 16, extra={DATABASE_FIELD: "other@db:5432"}))
    done = ome_session("sessions", "list")
    assert re.search(r" elsewhere +\| zoe +\| +\| abababab \| \? ", done.stdout)
    assert len(store.list()) == 2


def test_sessions_file_and_key_name_the_current_entry(lab: People, store: KeyStore) -> None:
    login("alice")
    [entry] = store.list()
    assert ome_session("sessions", "file").stdout == f"{store.file_for(entry)}\n"
    assert ome_session("sessions", "key").stdout == f"{entry.key}\n"


def test_sessions_clear_all_closes_and_forgets_every_stored_session(lab: People, store: KeyStore) -> None:
    login("alice", "one")
    login("bob", "two")
    done = ome_session("sessions", "clear", "--all")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "closed 2 session(s); removed 2 from the key store\n"
    assert store.list() == []
    assert query(lab.dsn, "SELECT count(*) FROM ome_sessions WHERE closed_at IS NULL") == [(0,)]


def _dead_and_live_rows(people: People) -> None:
    """5 closed, 2 idle too long, 3 past their lifetime, 2 live rows of alice."""
    states = ["closed_at = now()"] * 5 + ["last_access = now() - interval '2 hours'"] * 2 + \
             ["expires_at = now() - interval '1 second'"] * 3 + ["host = 'live'"] * 2
    with psycopg.connect(people.dsn) as conn:
        for i, change in enumerate(states):
            conn.execute("INSERT INTO ome_sessions (key_digest, experimenter_id) VALUES (sha256(%s), %s)",
                         (str(i).encode(), people.ids["alice"]))
            conn.execute(f"UPDATE ome_sessions SET {change} WHERE key_digest = sha256(%s)", (str(i).encode(),))


def test_purge_deletes_closed_and_expired_rows_in_batches_and_keeps_live_ones(lab: People) -> None:
    _dead_and_live_rows(lab)
    login("root")
    done = ome_session("sessions", "purge", "--batch", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "purged 10 session row(s) (closed: 5, idle: 2, expired: 3) in 6 batch(es)\n"
    left = query(lab.dsn, "SELECT e.ome_name, s.host FROM ome_sessions s JOIN experimenters e "
                "ON e.id = s.experimenter_id ORDER BY s.id")
    assert left[:2] == [("alice", "live"), ("alice", "live")] and left[2][0] == "root"
    assert len(left) == 3


def test_purge_by_a_plain_user_is_denied_with_exit_5_and_deletes_nothing(lab: People) -> None:
    _dead_and_live_rows(lab)
    login("alice")
    done = ome_session("sessions", "purge")
    assert done.returncode == 5
    assert done.stderr.startswith("ome-session: error: alice may not purge sessions")
    assert query(lab.dsn, "SELECT count(*) FROM ome_sessions") == [(13,)]


def test_keepalive_moves_the_last_access_forward(lab: People) -> None:
    login("alice")
    query(lab.dsn, "UPDATE ome_sessions SET last_access = now() - interval '10 minutes'")
    done = ome_session("sessions", "keepalive", "--once")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("kept session ") and done.stdout.count("\n") == 1
    assert query(lab.dsn, "SELECT last_access > now() - interval '1 minute' FROM ome_sessions") == [(True,)]


def test_keepalive_with_a_frequency_repeats_until_interrupted(lab: People) -> None:
    login("alice")
    run = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE_COMMAND, "sessions", "keepalive", "-f", "0.05"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=command_env())
    try:
        assert run.stdout is not None
        assert run.stdout.readline().startswith("Keeping session ")
        first, second = run.stdout.readline(), run.stdout.readline()  # each printed after a keepalive
        query(lab.dsn, "UPDATE ome_sessions SET last_access = now() - interval '10 minutes'")
        third = run.stdout.readline()
        run.send_signal(signal.SIGINT)
        rest, errors = run.communicate(timeout=60)
    finally:
        run.kill()  # a no-op once it has ended
    assert run.returncode == 0, errors
    assert all(line.startswith("kept session ") for line in (first, second, third))
    assert rest.endswith("alive\n") and "stopped keeping session" in rest
    assert query(lab.dsn, "SELECT last_access > now() - interval '1 minute' FROM ome_sessions") == [(True,)]


def test_keepalive_of_a_revoked_session_exits_1(lab: People) -> None:
    login("alice")
    query(lab.dsn, "UPDATE ome_sessions SET closed_at = now()")
    done = ome_session("sessions", "keepalive")
    assert done.returncode == 1
    assert "has expired or was logged out" in done.stderr


def test_timeout_shows_the_idle_timeout_and_the_time_left(lab: People) -> None:
    login("alice")
    done = ome_session("sessions", "timeout")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("idle timeout: 30.0 min (1800 s, the configured default)\ntime left:    ")
    assert re.search(r"time left: +(29 min \d+ s|30 min 0 s)\n", done.stdout)


def test_setting_the_default_timeout_is_for_the_super_user_only(lab: People) -> None:
    login("alice")
    denied = ome_session("sessions", "timeout", "--default", "600")
    assert denied.returncode == 5
    assert query(lab.dsn, "SELECT value FROM configuration WHERE name = 'session_idle_timeout'") == []
    login("root")
    done = ome_session("sessions", "timeout", "--default", "600")
    assert done.returncode == 0, done.stderr
    assert "default idle timeout: 10.0 min (600 s)" in done.stdout
    assert query(lab.dsn, "SELECT value FROM configuration WHERE name = 'session_idle_timeout'") == [(600,)]
    assert ome_session("sessions", "timeout", "--default", "-5").returncode == 2


def test_group_switch_sends_new_objects_to_that_group(lab: People) -> None:
    query(lab.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", lab.ids["alice"], lab.groups["lab_b"])
    login("alice")
    done = ome_session("sessions", "group", "lab_b")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Now using group lab_b")
    session = SessionManager(lab.dsn).create_session(key=current_key())
    project = session.factory.new_object(Project, name="after the switch")
    assert project.group_id == lab.groups["lab_b"]  # type: ignore[attr-defined]
    assert "groups:      lab_a, lab_b (current)" in ome_session("whoami").stdout


def test_group_switch_outside_the_users_groups_is_refused(lab: People) -> None:
    login("alice")
    denied = ome_session("sessions", "group", "lab_b")
    assert denied.returncode == 5
    assert "alice is not a member or leader of group 'lab_b'" in denied.stderr
    unknown = ome_session("sessions", "group", "no-such-group")
    assert unknown.returncode == 2
    assert query(lab.dsn, "SELECT group_id FROM experimenters WHERE ome_name = 'alice'") == [(lab.groups["lab_a"],)]


# -- temporary files and the embedded cluster ----------------------------------------------------


def test_tmp_reap_removes_only_the_directories_of_dead_processes(lab: People, tmp_path: Path) -> None:
    root = tmp_path / "tmp" / str(os.getuid())  # this account's, in the tmp_dir the people fixture configured
    root.mkdir(mode=0o700, parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    dead = root / f"{gone.pid}-{process_start_time(gone.pid)}"
    gone.communicate(b"")  # it exits and is reaped: its pid and start time now name nobody
    live = root / f"{os.getpid()}-{process_start_time(os.getpid())}"
    for directory in (dead, live):
        directory.mkdir(mode=0o700)
        (directory / "leftover.tmp").write_text("x")
    done = ome_session("tmp", "reap")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"removed {dead}\nreaped 1 temporary directory of dead processes under {root}\n"
    assert not dead.exists() and (live / "leftover.tmp").exists()


def test_db_start_status_stop_run_a_real_embedded_cluster(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # The server runs as an unprivileged account, which must be able to enter every parent;
        # pytest's base directory is closed to others, so root's cluster goes in a fresh /tmp dir.
        data = Path(tempfile.mkdtemp(prefix="ome-session-cli-"))
        data.chmod(0o755)
    else:
        data = tmp_path / "data"
    env = {"OME_SESSION_DATA_DIR": str(data)}
    cluster = Cluster(data / "cluster")
    try:
        assert ome_session("db", "status", **env).returncode == 3
        started = ome_session("db", "start", **env)
        assert started.returncode == 0, started.stderr
        status = ome_session("db", "status", **env)
        assert status.returncode == 0
        assert f"data directory: {data / 'cluster'}\n" in status.stdout
        assert re.search(r"running: +yes \(pid \d+\)", status.stdout)
        stopped = ome_session("db", "stop", **env)
        assert stopped.stdout.endswith("stopped\n")
        assert re.search(r"running: +no", ome_session("db", "status", **env).stdout)
    finally:
        cluster.destroy()
        shutil.rmtree(data, ignore_errors=True)


# -- tty_login, in process -----------------------------------------------------------------------


def answers(*replies: str) -> tuple[Callable[[str], str], list[str]]:
    """A prompt that gives these replies in turn, and the list of what it was asked."""
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return replies[len(asked) - 1]

    return prompt, asked


def test_tty_login_saves_the_key_then_reuses_it_without_asking(people: People, store: KeyStore) -> None:
    prompt, asked = answers("alice-password")
    session = SessionManager(people.dsn).tty_login(server="lab", user="alice", store=store, prompt=prompt)
    assert asked == ["Password: "] and session.user_name == "alice"
    [entry] = store.list()
    assert entry.key == session.session_key
    assert stat.S_IMODE(store.file_for(entry).stat().st_mode) == 0o600

    never, asked_again = answers()
    again = SessionManager(people.dsn).tty_login(server="lab", user="alice", store=store, prompt=never)
    assert asked_again == [] and again.session_key == entry.key


def test_tty_login_gives_up_after_three_rejected_passwords(people: People, store: KeyStore) -> None:
    prompt, asked = answers("no", "still no", "nope", "alice-password")
    with pytest.raises(AuthenticationError, match=r"\(3 attempts\)"):
        SessionManager(people.dsn).tty_login(server="lab", user="alice", store=store, prompt=prompt)
    assert len(asked) == 3
    assert store.list() == []
