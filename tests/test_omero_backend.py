"""The OMERO backend with the real omero-py client against the stand-in OMERO.blitz server.

Everything goes over the real Ice protocol on loopback; the stand-in's call log shows which
remote calls each step makes, and its session table what the server holds. Every client has an
invocation timeout (the stand-in's ``client_args``), so nothing can hang.
"""

from __future__ import annotations

# ruff: noqa: E402

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import import_part

# Checked before the imports below (so skipped, or failed when required, rather than an ImportError).
import_part("omero", "Ice")  # zeroc-ice, built from source by the script that installs the extra
import_part("omero", "omero.gateway")

import Ice
import omero
import omero.clients
from omero.util.sessions import SessionsStore

from ome_session import Session, SessionManager
from ome_session.backends import BAD_LOGIN
from ome_session.backends.omero import OmeroBackend
from ome_session.backends.omero._parking import OPEN as OPEN_CLIENTS
from ome_session.errors import (
    AuthenticationError,
    ConfigurationError,
    DatabaseUnavailable,
    NoSessionError,
    PermissionDenied,
    SessionError,
    SessionKeyError,
)
from ome_session._settings import Settings, write_settings
from ome_session.keystore import OmeroSessionStore
from ome_session.omero_login import join_current_omero_login, remember_omero_login
from tests.helpers import People, wait_for
from tests.omero_standin import StandinInfo, StandinUser, running_standin

pytestmark = pytest.mark.omero

ALICE = StandinUser("alice", "alice-pw", groups=("lab", "imaging"), first_name="Alice", last_name="Liddell")
BOB = StandinUser("bob", "bob-pw", groups=("imaging",))
BOSS = StandinUser("boss", "boss-pw", admin=True)
MINUTE_MS = 60_000
IDLE_MS = 10 * MINUTE_MS
PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server() -> Iterator[StandinInfo]:
    with running_standin((ALICE, BOB, BOSS), time_to_idle_ms=IDLE_MS) as info:
        yield info


@pytest.fixture(autouse=True)
def _nothing_left_open() -> Iterator[None]:
    """After every test the session is closed and no omero.client of ours is left open."""
    yield
    Session.delete_instance(force=True)
    Session._inherited = None
    assert list(OPEN_CLIENTS) == []


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def manager(server: StandinInfo, **options: Any) -> SessionManager:
    return SessionManager(backend="omero", host=server.host, port=server.port,
                          client_args=server.client_args, **options)


def raw_client(server: StandinInfo, closing: ExitStack) -> Any:
    """A plain omero.client, as another program would use it; closed at the end of the test."""
    c = omero.client(host=server.url_host, port=server.port, args=server.client_args)
    closing.callback(c.__del__)
    return c


def live(server: StandinInfo) -> dict[str | None, dict[str, Any]]:
    """The server's live sessions by key."""
    return {s["uuid"]: s for s in server.sessions()}


def uuids_of(server: StandinInfo, user: str) -> set[str]:
    return {s["uuid"] for s in server.sessions() if s["user"] == user}


def group_id(server: StandinInfo, closing: ExitStack, name: str) -> int:
    sf = raw_client(server, closing).createSession("root", "omero")
    return int(sf.getAdminService().lookupGroup(name).getId().val)


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def spin_until(condition: Callable[[], bool], limit_s: float = 60.0) -> None:
    """Pure-Python busy work in this thread (no sleep, no I/O) until ``condition`` holds."""
    deadline, spins = time.monotonic() + limit_s, 0
    while not condition():
        spins += 1
        if spins % 200_000 == 0 and time.monotonic() > deadline:
            pytest.fail(f"still not true after {limit_s} s of busy work")


def run_python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=120, cwd=PROJECT, check=False)


# -- login ----------------------------------------------------------------------------------


def test_login_creates_a_server_session_named_by_the_key(server: StandinInfo) -> None:
    session = manager(server).create_session("alice", "alice-pw")

    held = live(server)[session.session_key]
    assert (held["user"], held["refcount"]) == ("alice", 1)
    assert session.user_name == "alice"
    assert session.login is not None and session.login.group_id == held["group_id"]
    assert session.gateway.getEventContext().userId == session.experimenter_id
    assert session.started is not None and session.acl is None
    assert not (session.is_su_session() or session.is_guest_session())


def test_full_admin_is_su_session_and_guest_is_guest_session(server: StandinInfo) -> None:
    admin = manager(server).create_session("boss", "boss-pw")
    assert admin.is_su_session() and admin.login is not None and admin.login.is_admin

    guest = manager(server).create_session("guest", "any password")
    assert guest.is_guest_session() and not guest.is_su_session()


def test_wrong_password_is_the_local_message_and_changes_nothing(server: StandinInfo) -> None:
    alice = manager(server).create_session("alice", "alice-pw")
    key, bobs = alice.session_key, uuids_of(server, "bob")

    with pytest.raises(AuthenticationError) as raised:
        manager(server).create_session("bob", "not-bobs")

    assert str(raised.value) == BAD_LOGIN
    assert Session.instance() is alice and alice.session_key == key and alice.user_name == "alice"
    assert uuids_of(server, "bob") == bobs
    assert alice.gateway.getUser().getName() == "alice"


def test_unreachable_server_is_database_unavailable_naming_host_and_port() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(DatabaseUnavailable, match=f"127.0.0.1:{port}"):
        SessionManager(backend="omero", host="127.0.0.1", port=port,
                       client_args=[f"--Ice.Default.Router=OMERO.Glacier2/router:tcp -p {port} -h 127.0.0.1"],
                       ).create_session("alice", "alice-pw")
    assert not Session.has_instance()


def test_omero_manager_without_a_server_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="host="):
        SessionManager(backend="omero").create_session("alice", "alice-pw")


def test_a_manager_told_nothing_logs_in_with_the_settings_files_backend(server: StandinInfo) -> None:
    write_settings(Settings(dsn="", source="test", backend="omero",
                            extra={"omero": {"host": server.host, "port": server.port,
                                             "client_args": list(server.client_args)}}))
    session = SessionManager().create_session("alice", "alice-pw")

    assert session.backend.name == "omero" and session.session_key in live(server)
    with pytest.raises(SessionError, match="no local Factory"):
        session.factory  # noqa: B018


def test_a_settings_file_naming_the_omero_backend_but_no_server_says_what_is_missing() -> None:
    write_settings(Settings(dsn="", source="test", backend="omero"))
    with pytest.raises(ConfigurationError, match="needs its server"):
        SessionManager().create_session("alice", "alice-pw")
    assert not Session.has_instance()


@pytest.mark.parametrize("key", [
    "", "alice", "0" * 32, "1b4e28ba-2fa1-11d2-883f-0016d3cca42", "1b4e28ba-2fa1-11d2-883f-0016d3cca427\n",
    "1b4e28ba_2fa1_11d2_883f_0016d3cca427", "g" * 8 + "-2fa1-11d2-883f-0016d3cca427", None, 42,
    b"1b4e28ba-2fa1-11d2-883f-0016d3cca427",
])  # fmt: skip
def test_malformed_keys_are_refused_before_any_call(server: StandinInfo, key: object) -> None:
    before = len(server.calls())

    with pytest.raises(SessionKeyError):
        manager(server).create_session(key=key)

    assert len(server.calls()) == before


def test_uppercase_key_names_the_same_session(server: StandinInfo) -> None:
    key = manager(server).create_session("alice", "alice-pw").session_key
    assert key is not None
    Session.idle()

    assert manager(server).create_session(key=key.upper()).session_key == key


# -- join, idle, logout ---------------------------------------------------------------------


def test_second_process_joins_by_key_and_leaves_the_session_open(server: StandinInfo) -> None:
    key = manager(server).create_session("alice", "alice-pw").session_key
    assert key is not None
    script = (
        "import json, sys\n"
        "from ome_session import Session, SessionManager\n"
        "s = SessionManager(backend='omero', host=sys.argv[1], port=int(sys.argv[2]),\n"
        "                   client_args=json.loads(sys.argv[3])).create_session(key=sys.argv[4])\n"
        "print(s.user_name, s.gateway.getUser().getName())\n"
        "Session.delete_instance(force=True)\n"
    )

    done = run_python(script, server.host, str(server.port), json.dumps(server.client_args), key)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["alice", "alice"]
    assert live(server)[key]["refcount"] == 1  # ours; the other process detached


def test_resuming_the_same_key_after_idle_is_one_call(server: StandinInfo) -> None:
    m = manager(server)
    key = m.create_session("alice", "alice-pw").session_key
    Session.idle()
    assert live(server)[key]["refcount"] == 1  # still attached, for re-use
    before = len(server.calls())

    session = m.create_session(key=key)

    assert server.operations(before) == ["getEventContext"]
    assert session.user_name == "alice" and not session.is_idle()


def test_idle_without_client_reuse_detaches_and_the_key_joins_again(server: StandinInfo) -> None:
    m = manager(server, reuse_client=False)
    key = m.create_session("alice", "alice-pw").session_key

    Session.idle()

    assert live(server)[key]["refcount"] == 0  # detached, not killed
    before = len(server.calls())
    assert m.create_session(key=key).user_name == "alice"
    assert server.operations(before)[0] == "createSession"
    assert live(server)[key]["refcount"] == 1


def test_another_key_detaches_the_previous_session(server: StandinInfo) -> None:
    m = manager(server)
    alice = m.create_session("alice", "alice-pw").session_key
    Session.idle()

    m.create_session("bob", "bob-pw")

    assert live(server)[alice]["refcount"] == 0
    assert Session.instance().user_name == "bob"


def test_logout_kills_the_session_for_every_holder(server: StandinInfo, closing: ExitStack) -> None:
    m = manager(server)
    key = m.create_session("alice", "alice-pw").session_key
    other = raw_client(server, closing)
    sf = other.joinSession(key)
    assert live(server)[key]["refcount"] == 2

    m.logout()

    assert key not in live(server)
    assert not Session.has_instance()
    with pytest.raises(Ice.ObjectNotExistException):
        sf.getAdminService()


def test_logged_out_key_is_refused(server: StandinInfo) -> None:
    m = manager(server)
    key = m.create_session("alice", "alice-pw").session_key
    m.logout()

    with pytest.raises(SessionKeyError):
        m.create_session(key=key)


def drop_connection(server: StandinInfo, session: Session) -> None:
    """Cut the client's connection, as a network hiccup or a router timeout would; the server
    then drops the client's router session (the OMERO session lives on, detached)."""
    assert session.login is not None
    key = session.session_key
    session.login.handle.client.getSession().ice_getConnection().close(True)
    wait_for("the server to drop the client's router session", lambda: live(server)[key]["refcount"] == 0)


def test_keep_alive_after_a_lost_connection_joins_again(server: StandinInfo) -> None:
    session = manager(server).create_session("alice", "alice-pw")
    drop_connection(server, session)

    session.keep_alive()

    assert live(server)[session.session_key]["refcount"] == 1
    assert session.gateway.getUser().getName() == "alice"


def test_resume_after_a_lost_connection_joins_with_a_new_client(server: StandinInfo) -> None:
    m = manager(server)
    session = m.create_session("alice", "alice-pw")
    key = session.session_key
    drop_connection(server, session)
    Session.idle()
    before = len(server.calls())

    assert m.create_session(key=key).gateway.getUser().getName() == "alice"

    ops = server.operations(before)
    assert ops[:2] == ["getEventContext", "createSession"]  # the re-use failed, a join decided
    assert live(server)[key]["refcount"] == 1


def test_insecure_mode_moves_the_session_to_the_insecure_router(server: StandinInfo) -> None:
    session = SessionManager(backend="omero", host=server.url_host, port=server.port, secure=False,
                             client_args=[f"--Ice.Default.InvocationTimeout={server.invocation_timeout_ms}"],
                             ).create_session("alice", "alice-pw")

    assert session.gateway.getUser().getName() == "alice"
    assert live(server)[session.session_key]["refcount"] == 1  # the secure client detached


# -- sudo and su ----------------------------------------------------------------------------


def test_admin_sudo_acts_as_the_target_and_records_the_admin(server: StandinInfo) -> None:
    m = manager(server)
    admin = m.create_session("boss", "boss-pw")
    admin_key, admin_id = admin.session_key, admin.experimenter_id

    bob = m.sudo_session("bob")

    assert bob.user_name == "bob" and bob.sudo_by == admin_id
    held = live(server)
    assert held[bob.session_key]["sudoer"] == "boss"
    assert held[admin_key]["refcount"] == 0  # the admin's own session lives on, detached
    assert bob.gateway.getUser().getName() == "bob"


def test_normal_user_sudo_is_permission_denied_and_keeps_the_session(server: StandinInfo) -> None:
    m = manager(server)
    alice = m.create_session("alice", "alice-pw")
    bobs = uuids_of(server, "bob")

    with pytest.raises(PermissionDenied, match="alice may not act as 'bob'"):
        m.sudo_session("bob")

    assert Session.instance() is alice and alice.user_name == "alice"
    assert uuids_of(server, "bob") == bobs


def test_su_session_is_refused_with_a_pointer_to_sudo(server: StandinInfo) -> None:
    with pytest.raises(PermissionDenied, match="sudo_session"):
        manager(server).su_session()


# -- groups ---------------------------------------------------------------------------------


def test_set_group_by_name_switches_the_whole_session(server: StandinInfo, closing: ExitStack) -> None:
    session = manager(server).create_session("alice", "alice-pw")
    imaging = group_id(server, closing, "imaging")

    session.set_group("imaging")

    assert session.login is not None and session.login.group_id == imaging
    assert live(server)[session.session_key]["group_id"] == imaging
    assert session.gateway.getEventContext().groupName == "imaging"


def test_set_group_by_id_and_the_group_option(server: StandinInfo, closing: ExitStack) -> None:
    imaging, lab = group_id(server, closing, "imaging"), group_id(server, closing, "lab")
    session = manager(server, group="imaging").create_session("alice", "alice-pw")
    assert session.login is not None and session.login.group_id == imaging

    session.set_group(lab)

    assert live(server)[session.session_key]["group_id"] == lab


def test_all_groups_context_lasts_until_idle(server: StandinInfo) -> None:
    m = manager(server)
    session = m.create_session("alice", "alice-pw")
    own = session.login.group_id if session.login else None

    session.set_group(-1)
    assert session.gateway.getAdminService().getEventContext().groupId == -1

    Session.idle()
    session = m.create_session(key=session.session_key)
    assert session.login is not None and session.login.group_id == own
    assert session.gateway.getAdminService().getEventContext().groupId == own


def test_group_outside_membership_is_refused_and_unknown_group_is_value_error(server: StandinInfo) -> None:
    session = manager(server).create_session("bob", "bob-pw")

    with pytest.raises(PermissionDenied, match="not a member"):
        session.set_group("lab")
    with pytest.raises(ValueError, match="no OMERO group"):
        session.set_group("no-such-group")


# -- expiry and keepalive -------------------------------------------------------------------


def test_expired_session_is_session_key_error_on_the_next_call(server: StandinInfo) -> None:
    m = manager(server)
    session = m.create_session("alice", "alice-pw")
    key = session.session_key

    server.advance_clock(IDLE_MS + 1)

    with pytest.raises(SessionKeyError):
        session.keep_alive()
    with pytest.raises(SessionKeyError):
        session.gateway  # noqa: B018
    Session.idle()
    with pytest.raises(SessionKeyError):
        m.create_session(key=key)


def test_keepalive_keeps_the_session_alive_while_the_main_thread_computes(server: StandinInfo) -> None:
    session = manager(server, keepalive=0.05).create_session("alice", "alice-pw")
    backend = session.backend
    assert isinstance(backend, OmeroBackend)

    def pinged_since(mark: float) -> Callable[[], bool]:
        return lambda: (backend.last_keepalive or 0.0) > mark

    for _ in range(3):  # 27 minutes of server time with no call from this thread
        server.advance_clock(9 * MINUTE_MS)
        spin_until(pinged_since(time.monotonic()))

    assert session.session_key in live(server)
    session.keep_alive()


def test_without_keepalive_the_same_time_expires_the_session(server: StandinInfo) -> None:
    session = manager(server).create_session("alice", "alice-pw")

    for _ in range(3):
        server.advance_clock(9 * MINUTE_MS)

    with pytest.raises(SessionKeyError):
        session.keep_alive()


def test_every_path_closes_what_it_opened(server: StandinInfo) -> None:
    baseline = os_threads()
    m = manager(server, keepalive=30)
    key = m.create_session("alice", "alice-pw").session_key
    Session.instance().gateway.getUser()
    Session.instance().set_group("imaging")
    Session.idle()
    m.create_session(key=key)
    with pytest.raises(AuthenticationError):
        m.create_session("alice", "wrong")
    with pytest.raises(SessionKeyError):
        m.create_session(key="1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    with pytest.raises(PermissionDenied):
        m.sudo_session("bob")
    Session.idle()
    m.create_session("bob", "bob-pw")
    m.logout()
    m.create_session(key=key)
    Session.delete_instance(force=True)

    assert list(OPEN_CLIENTS) == []
    assert os_threads() <= baseline  # every communicator's threads (and the keepalive) are gone
    assert live(server)[key]["refcount"] == 0


# -- fork -----------------------------------------------------------------------------------


def test_forked_child_reattaches_with_the_inherited_key(server: StandinInfo) -> None:
    session = manager(server).create_session("alice", "alice-pw")
    key = session.session_key
    read, write = os.pipe()

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            child = SessionManager().reattach()  # no options: the parent's server is inherited
            report = {"key": child.session_key, "user": child.gateway.getUser().getName(), "pid": os.getpid()}
            Session.delete_instance(force=True)
            os.write(write, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = json.loads(pipe.read() or "{}")
    _, status = os.waitpid(pid, 0)

    assert status == 0 and report["key"] == key and report["user"] == "alice"
    session.keep_alive()
    assert session.gateway.getAdminService().getEventContext().userName == "alice"
    assert live(server)[key]["refcount"] == 1


_PARENT = """
import gc, json, os, sys
from ome_session import Session, SessionManager
host, port, args, how = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
session = SessionManager(backend="omero", host=host, port=port, client_args=args).create_session("alice", "alice-pw")
gateway = session.gateway  # user code holding omero-py objects across the fork
pid = os.fork()
if pid == 0:
    if how == "close":  # even explicit closes in the child must not reach the parent's session
        gateway.close()
        Session.delete_instance(force=True)
    elif how == "gc":
        del gateway, session
        gc.collect()
    elif how == "use":  # what the parent's gateway does in the child: fail at once, send nothing
        try:
            gateway.getAdminService().getEventContext()
            os._exit(3)
        except Exception:
            pass
    if how == "os._exit":
        os._exit(0)
    sys.exit(0)  # atexit handlers, then the interpreter's own teardown
_, status = os.waitpid(pid, 0)
session.keep_alive()
print(json.dumps({"status": status, "key": session.session_key,
                  "user": gateway.getAdminService().getEventContext().userName}))
Session.delete_instance(force=True)
"""


@pytest.mark.parametrize("how", ["sys.exit", "gc", "close", "use", "os._exit"])
def test_child_exit_never_touches_the_parents_session(server: StandinInfo, how: str) -> None:
    before = len(server.calls())

    done = run_python(_PARENT, server.host, str(server.port), json.dumps(server.client_args), how)

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    result = json.loads(done.stdout)
    assert (result["status"], result["user"]) == (0, "alice")
    ops = server.operations(before)
    assert ops.count("destroySession") == 1 and ops[-1] == "destroySession"  # the parent's own detach
    assert "closeSession" not in ops
    assert live(server)[result["key"]]["refcount"] == 0


# -- the omero CLI's session store ----------------------------------------------------------


def test_joins_the_session_of_the_current_omero_login(server: StandinInfo, closing: ExitStack,
                                                       tmp_path: Path) -> None:
    c = raw_client(server, closing)
    c.createSession("alice", "alice-pw").detachOnDestroy()
    key = c.getSessionId()
    cli = SessionsStore(str(tmp_path))  # what `omero login` writes
    cli.add(server.host, "alice", key, {"omero.port": str(server.port), "omero.group": "lab"})
    cli.set_current(server.host, "alice", key, props={"omero.port": str(server.port)})

    session = join_current_omero_login(OmeroSessionStore(tmp_path), client_args=server.client_args)

    assert (session.session_key, session.user_name) == (key, "alice")


def test_no_current_omero_login_is_no_session_error(tmp_path: Path) -> None:
    with pytest.raises(NoSessionError, match="omero login"):
        join_current_omero_login(OmeroSessionStore(tmp_path))


def test_our_session_is_stored_where_the_omero_cli_finds_it(server: StandinInfo, tmp_path: Path) -> None:
    session = manager(server).create_session("alice", "alice-pw")

    remember_omero_login(session, OmeroSessionStore(tmp_path))

    cli = SessionsStore(str(tmp_path))
    assert cli.get_current() == (server.host, "alice", session.session_key, str(server.port))
    props = cli.get(server.host, "alice", session.session_key)
    assert (props["omero.sess"], props["omero.group"], props["omero.timeout"]) == (
        session.session_key, "lab", str(IDLE_MS // 1000))


# -- the Session API for other backends -----------------------------------------------------


def test_gateway_is_only_for_omero_sessions(people: People) -> None:
    session = SessionManager(people.dsn).create_session("alice", People.password("alice"))

    with pytest.raises(SessionError, match="only an OMERO session"):
        session.gateway  # noqa: B018
