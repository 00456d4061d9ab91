"""``ome-session --backend omero``, run as a real program against the stand-in OMERO.blitz server.

Every run is ``python -m ome_session --backend omero ...`` in a subprocess, with the test's own
omero CLI session store ($OMERO_SESSIONDIR) and the stand-in's Ice arguments (its tcp router and
an invocation timeout) in $OME_SESSION_OMERO_ARGS. What the server holds is read from the
stand-in's session table and call log; what the ``omero`` CLI sees, with omero-py's SessionsStore.
"""

from __future__ import annotations

# ruff: noqa: E402

import json
import shlex
import socket
import stat
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import import_part

# Checked before the imports below (so skipped, or failed when required, rather than an ImportError).
import_part("omero", "Ice")  # zeroc-ice, built from source by the script that installs the extra
import_part("omero", "omero.gateway")

import omero
import omero.clients
from omero.util.sessions import SessionsStore

from tests.omero_standin import StandinInfo, StandinUser, running_standin
from tests.helpers import ome_session

pytestmark = pytest.mark.omero

ALICE = StandinUser("alice", "alice-pw", groups=("lab", "imaging"))
BOB = StandinUser("bob", "bob-pw", groups=("imaging",))
IDLE_MS = 10 * 60_000


@pytest.fixture(scope="module")
def server() -> Iterator[StandinInfo]:
    with running_standin((ALICE, BOB), time_to_idle_ms=IDLE_MS) as info:
        yield info


@pytest.fixture(autouse=True)
def omero_store(server: StandinInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The omero CLI's store of this test, and the Ice arguments that reach the stand-in."""
    directory = tmp_path / "omero-sessions"
    monkeypatch.setenv("OMERO_SESSIONDIR", str(directory))
    monkeypatch.setenv("OME_SESSION_OMERO_ARGS", shlex.join(server.client_args))
    monkeypatch.delenv("OME_SESSION_BACKEND", raising=False)
    return directory


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def omero_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``ome-session --backend omero ARGS``, with no terminal on standard input."""
    return ome_session("--backend", "omero", *args, **env)


def at(server: StandinInfo, user: str = "alice") -> str:
    return f"{user}@{server.host}:{server.port}"


def login(server: StandinInfo, user: str = "alice", *args: str) -> subprocess.CompletedProcess[str]:
    done = omero_cli("login", at(server, user), *args, OME_SESSION_PASSWORD=f"{user}-pw")
    assert done.returncode == 0, done.stderr
    return done


def current_key() -> str:
    done = omero_cli("sessions", "key")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def live(server: StandinInfo) -> dict[str, dict[str, Any]]:
    """The server's live sessions by key."""
    return {s["uuid"]: s for s in server.sessions()}


def uuids_of(server: StandinInfo, user: str) -> set[str]:
    return {s["uuid"] for s in server.sessions() if s["user"] == user}


def raw_session(server: StandinInfo, closing: ExitStack, user: str = "alice", password: str = "alice-pw") -> str:
    """A session made by another program (a plain omero.client), left open on the server."""
    client = omero.client(host=server.url_host, port=server.port, args=server.client_args)
    closing.callback(client.__del__)
    client.createSession(user, password).detachOnDestroy()
    return str(client.getSessionId())


def kill(server: StandinInfo, closing: ExitStack, key: str) -> None:
    """End a session on the server, as another program's logout would."""
    client = omero.client(host=server.url_host, port=server.port, args=server.client_args)
    closing.callback(client.__del__)
    client.joinSession(key)
    client.killSession()


# -- login, whoami, logout ----------------------------------------------------------------------


def test_login_creates_a_server_session_and_whoami_in_another_process_joins_it(server: StandinInfo) -> None:
    done = login(server)

    assert done.stdout.startswith("Created session ")
    assert done.stdout.endswith(f"(alice@{server.host}:{server.port}). Idle timeout: 10.0 min. Current group: lab\n")
    key = current_key()
    assert live(server)[key]["user"] == "alice"

    who = omero_cli("whoami")
    assert who.returncode == 0, who.stderr
    assert "user:        alice (id " in who.stdout
    assert f"server:      {server.host}:{server.port}" in who.stdout
    assert "groups:      lab (current), imaging" in who.stdout
    assert f"session:     {key[:8]}\n" in who.stdout
    assert key not in who.stdout  # only a prefix of the secret is shown
    assert key in live(server)  # whoami only detached from it


def test_second_login_joins_the_stored_session_instead_of_making_one(server: StandinInfo) -> None:
    login(server)
    key, before = current_key(), uuids_of(server, "alice")

    again = login(server)

    assert again.stdout.startswith(f"Joined session {key[:8]} ")
    assert current_key() == key
    assert uuids_of(server, "alice") == before


def test_logout_kills_the_session_on_the_server_and_forgets_it(server: StandinInfo, omero_store: Path) -> None:
    login(server)
    key = current_key()

    done = omero_cli("logout")

    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Logged out alice@{server.host}:{server.port} (session {key[:8]})\n"
    assert key not in live(server)
    assert SessionsStore(str(omero_store)).get_current()[2] is None
    who = omero_cli("whoami")
    assert who.returncode == 1 and "not logged in" in who.stderr


def test_wrong_password_exits_1_and_stores_nothing(server: StandinInfo, omero_store: Path) -> None:
    before = uuids_of(server, "alice")

    done = omero_cli("login", at(server), "-w", "not-alices")

    assert done.returncode == 1
    assert "unknown user or wrong password" in done.stderr
    assert uuids_of(server, "alice") == before
    assert not [p for p in omero_store.rglob("*") if p.is_file() and not p.name.startswith(".")]


def test_malformed_key_exits_1_without_a_call_to_the_server(server: StandinInfo) -> None:
    calls = len(server.calls())

    done = omero_cli("login", "-k", "1b4e28ba-2fa1-11d2-883f-0016d3cca42", f"{server.host}:{server.port}")

    assert done.returncode == 1
    assert "malformed OMERO session key" in done.stderr
    assert len(server.calls()) == calls


def test_unreachable_server_exits_3_naming_it() -> None:
    port = closed_port()
    router = f"--Ice.Default.Router=OMERO.Glacier2/router:tcp -p {port} -h 127.0.0.1"

    done = omero_cli("login", f"alice@127.0.0.1:{port}", OME_SESSION_PASSWORD="alice-pw",
                     OME_SESSION_OMERO_ARGS=shlex.quote(router))

    assert done.returncode == 3
    assert f"OMERO server 127.0.0.1:{port} cannot be reached" in done.stderr


def test_insecure_login_to_a_url_host_is_joined_again_by_whoami(server: StandinInfo,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # No router argument: the tcp:// host alone picks the transport, as in omero-py.
    monkeypatch.setenv("OME_SESSION_OMERO_ARGS", f"--Ice.Default.InvocationTimeout={server.invocation_timeout_ms}")
    target = f"alice@{server.url_host}:{server.port}"

    done = omero_cli("login", target, "--insecure", OME_SESSION_PASSWORD="alice-pw")

    assert done.returncode == 0, done.stderr
    assert f"(alice@{server.url_host}:{server.port})" in done.stdout
    who = omero_cli("whoami")
    assert who.returncode == 0, who.stderr
    assert f"server:      {server.url_host}:{server.port}" in who.stdout


# -- the omero CLI's store ------------------------------------------------------------------------


def test_login_without_credentials_joins_the_current_omero_login(server: StandinInfo, closing: ExitStack,
                                                                  omero_store: Path) -> None:
    key = raw_session(server, closing)
    cli = SessionsStore(str(omero_store))  # what `omero login` writes
    cli.add(server.host, "alice", key, {"omero.port": str(server.port), "omero.group": "lab"})
    cli.set_current(server.host, "alice", key, props={"omero.port": str(server.port)})

    done = omero_cli("login")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Joined session {key[:8]} (alice@{server.host}:{server.port}).")
    assert current_key() == key
    assert cli.get_current() == (server.host, "alice", key, str(server.port))
    assert live(server)[key]["refcount"] == 1  # only the raw client holds it: we detached


def test_our_login_is_the_omero_clis_current_session(server: StandinInfo, omero_store: Path) -> None:
    login(server)
    key = current_key()

    cli = SessionsStore(str(omero_store))

    assert cli.get_current() == (server.host, "alice", key, str(server.port))
    props = cli.get(server.host, "alice", key)
    assert (props["omero.sess"], props["omero.port"], props["omero.group"], props["omero.timeout"]) == (
        key, str(server.port), "lab", str(IDLE_MS // 1000))
    path = Path(omero_cli("sessions", "file").stdout.strip())
    assert path == omero_store / server.host / "alice" / key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "alice-pw" not in path.read_text()


def test_key_from_another_program_joins_and_switches_group(server: StandinInfo, closing: ExitStack) -> None:
    key = raw_session(server, closing)

    done = omero_cli("login", "-k", key, f"{server.host}:{server.port}", "-g", "imaging")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Joined session {key[:8]} (alice@")
    assert done.stdout.endswith("Current group: imaging\n")
    assert "groups:      lab, imaging (current)" in omero_cli("whoami").stdout


def test_sessions_list_marks_the_current_one_and_removes_ended_ones(server: StandinInfo,
                                                                     closing: ExitStack) -> None:
    login(server, "alice")
    alice = current_key()
    login(server, "bob")
    kill(server, closing, alice)

    done = omero_cli("sessions", "list")

    assert done.returncode == 0, done.stderr
    alice_row, bob_row = done.stdout.splitlines()[2:4]
    assert " alice " in alice_row and "False (removed)" in alice_row
    assert " bob " in bob_row and "Logged in" in bob_row
    assert done.stdout.endswith("(2 rows)\n")
    assert "alice" not in omero_cli("sessions", "list").stdout


def test_sessions_list_keeps_the_entries_of_an_unreachable_server(omero_store: Path) -> None:
    port = closed_port()
    key = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    SessionsStore(str(omero_store)).add("127.0.0.1", "bob", key, {"omero.port": str(port)})

    done = omero_cli("sessions", "list", OME_SESSION_OMERO_ARGS="")

    assert done.returncode == 0, done.stderr
    assert "? (unreachable)" in done.stdout
    assert f"127.0.0.1:{port} cannot be reached" in done.stderr
    assert SessionsStore(str(omero_store)).available("127.0.0.1", "bob") == [key]


def test_sessions_clear_all_kills_every_stored_session(server: StandinInfo, omero_store: Path) -> None:
    login(server, "alice")
    alice = current_key()
    login(server, "bob")
    bob = current_key()

    done = omero_cli("sessions", "clear", "--all")

    assert done.returncode == 0, done.stderr
    assert done.stdout == "closed 2 session(s); removed 2 from the key store\n"
    assert not {alice, bob} & set(live(server))
    assert SessionsStore(str(omero_store)).available(server.host, "alice") == []


# -- sudo -----------------------------------------------------------------------------------------


def test_root_sudo_logs_in_as_the_user_and_ends_roots_own_session(server: StandinInfo) -> None:
    done = omero_cli("login", "--sudo", "root", at(server, "bob"), OME_SESSION_PASSWORD="omero")

    assert done.returncode == 0, done.stderr
    assert "(bob@" in done.stdout
    key = current_key()
    assert live(server)[key]["user"] == "bob" and live(server)[key]["sudoer"] == "root"
    assert uuids_of(server, "root") == set()
    who = omero_cli("whoami")
    assert "user:        bob (id " in who.stdout and "sudo by:     root\n" in who.stdout


def test_sudo_by_a_normal_user_exits_5_and_leaves_no_session(server: StandinInfo, omero_store: Path) -> None:
    alices, bobs = uuids_of(server, "alice"), uuids_of(server, "bob")

    done = omero_cli("login", "--sudo", "alice", at(server, "bob"), OME_SESSION_PASSWORD="alice-pw")

    assert done.returncode == 5
    assert "alice may not act as 'bob'" in done.stderr
    assert (uuids_of(server, "alice"), uuids_of(server, "bob")) == (alices, bobs)
    assert omero_cli("sessions", "key").returncode == 1


# -- choosing the backend ---------------------------------------------------------------------------


def test_backend_comes_from_the_environment_or_the_settings_file(server: StandinInfo, tmp_path: Path) -> None:
    login(server)

    from_env = ome_session("whoami", OME_SESSION_BACKEND="omero")
    assert from_env.returncode == 0 and "user:        alice" in from_env.stdout

    settings = tmp_path / "config" / "settings.json"  # $OME_SESSION_CONFIG of the test
    settings.parent.mkdir()
    settings.write_text(json.dumps({"backend": "omero"}))
    from_file = ome_session("whoami")
    assert from_file.returncode == 0 and "user:        alice" in from_file.stdout

    local = ome_session("whoami", "--backend", "local")
    assert local.returncode == 1 and "not logged in" in local.stderr


def test_local_only_commands_are_refused_with_the_omero_backend(server: StandinInfo) -> None:
    done = omero_cli("sessions", "purge")

    assert done.returncode == 2
    assert "for the local backend" in done.stderr


# -- the omero command's habits ---------------------------------------------------------------------


def test_omero_password_is_read_after_ours(server: StandinInfo) -> None:
    done = omero_cli("login", at(server), OMERO_PASSWORD="alice-pw")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Created session ")
    missing = omero_cli("login", at(server), "-C")
    assert missing.returncode == 2 and "set OMERO_PASSWORD" in missing.stderr


def test_the_deprecated_omero_session_dir_is_read_with_a_warning(server: StandinInfo, tmp_path: Path) -> None:
    base = tmp_path / "old-style"
    done = omero_cli("login", at(server), OMERO_SESSIONDIR="", OMERO_SESSION_DIR=str(base),
                     OME_SESSION_PASSWORD="alice-pw")
    assert done.returncode == 0, done.stderr
    assert "warning: OMERO_SESSION_DIR is deprecated: set OMERO_SESSIONDIR=" in done.stderr
    host, user, key, port = SessionsStore(str(base / "omero" / "sessions")).get_current()
    assert (host, user, port) == (server.host, "alice", str(server.port)) and key in live(server)


def test_create_quiet_and_a_key_prefix_as_omero_scripts_use_them(server: StandinInfo) -> None:
    login(server, "alice")
    alice = current_key()
    again = omero_cli("login", at(server), "-C", "-q", OME_SESSION_PASSWORD="alice-pw")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert current_key() != alice and len(uuids_of(server, "alice")) >= 2
    login(server, "bob")

    joined = omero_cli("login", "-k", alice[:8])  # no server: the stored entry names it

    assert joined.returncode == 0, joined.stderr
    assert joined.stdout.startswith(f"Joined session {alice[:8]} (alice@{server.host}:{server.port})")
    assert current_key() == alice


def test_retry_tries_an_unreachable_server_again_then_gives_up() -> None:
    port = closed_port()
    router = f"--Ice.Default.Router=OMERO.Glacier2/router:tcp -p {port} -h 127.0.0.1"

    done = omero_cli("login", f"alice@127.0.0.1:{port}", "--retry", "1", OME_SESSION_PASSWORD="alice-pw",
                     OME_SESSION_OMERO_ARGS=shlex.quote(router))

    assert done.returncode == 3
    assert "login retry #1 in 1 s" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1].startswith("ome-session: error: OMERO server 127.0.0.1:")


@pytest.mark.parametrize("command", [("user", "list"), ("group", "add", "lab"), ("sessions", "who")])
def test_administration_and_who_go_through_the_omero_servers_own_tools(server: StandinInfo,
                                                                      command: tuple[str, ...]) -> None:
    login(server)
    done = omero_cli(*command)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("ome-session: error: this command is for the local backend: ")
    assert "omero " in done.stderr and done.stderr.count("\n") == 1
