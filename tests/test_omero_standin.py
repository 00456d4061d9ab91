"""The real omero-py client against the stand-in OMERO.blitz server, on loopback.

These pin down the session behaviour the OMERO backend relies on (login, join, detach, kill,
sudo, idle and live expiry, group switching) and that the stand-in answers the way OMERO does,
using the call log to see which remote calls the client really makes.
"""

from __future__ import annotations

# ruff: noqa: E402

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.helpers import import_part

# Checked before the imports below (so skipped, or failed when required, rather than an ImportError).
import_part("omero", "Ice")  # zeroc-ice, built from source by the script that installs the extra
import_part("omero", "omero.gateway")

import Glacier2
import Ice
import omero
import omero.clients
from omero.gateway import BlitzGateway

from tests.helpers import wait_for
from tests.omero_standin import StandinInfo, StandinUser, running_standin

pytestmark = pytest.mark.omero

ALICE = StandinUser(
    "alice", "alice-pw", groups=("lab", "imaging"), leader_of=("lab",),
    first_name="Alice", last_name="Liddell",
)  # fmt: skip
BOB = StandinUser("bob", "bob-pw", groups=("imaging",))
BOSS = StandinUser("boss", "boss-pw", admin=True, first_name="Big", last_name="Boss")
USERS = (ALICE, BOB, BOSS)

MINUTE_MS = 60_000


@pytest.fixture
def server() -> Iterator[StandinInfo]:
    with running_standin(USERS, time_to_idle_ms=10 * MINUTE_MS) as info:
        yield info


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    """Every client a test opens is closed at the end, whatever happened."""
    with ExitStack() as stack:
        yield stack


def client(server: StandinInfo, closing: ExitStack) -> Any:
    c = omero.client(host=server.url_host, port=server.port, args=server.client_args)
    closing.callback(c.__del__)  # closeSession(), then destroy the communicator
    return c


def gateway(server: StandinInfo, closing: ExitStack, user: str = "", pw: str = "") -> Any:
    conn = BlitzGateway(
        user or None, pw or None, host=server.url_host, port=server.port,
        extra_config=[str(server.ice_config)],
    )  # fmt: skip
    closing.callback(conn.close, hard=False)
    return conn


def live(server: StandinInfo) -> dict[str, dict[str, Any]]:
    return {s["uuid"]: s for s in server.sessions()}


# -- omero.client ---------------------------------------------------------------------------


def test_client_login_creates_a_server_session_named_by_the_uuid(server: StandinInfo, closing: ExitStack) -> None:
    c = client(server, closing)
    first_call = len(server.calls())

    c.createSession("alice", "alice-pw")

    session = live(server)[c.getSessionId()]
    assert (session["user"], session["refcount"]) == ("alice", 1)
    assert server.operations(first_call)[0] == "createSession"


def test_wrong_password_is_permission_denied_and_creates_nothing(server: StandinInfo, closing: ExitStack) -> None:
    c = client(server, closing)

    with pytest.raises(Glacier2.PermissionDeniedException):
        c.createSession("alice", "not-her-password")

    assert live(server) == {}


def test_second_client_joins_by_uuid_and_shares_the_session(server: StandinInfo, closing: ExitStack) -> None:
    first, second = client(server, closing), client(server, closing)
    first.createSession("alice", "alice-pw")
    uuid = first.getSessionId()

    sf = second.joinSession(uuid)

    assert second.getSessionId() == uuid
    assert sf.getAdminService().getEventContext().userName == "alice"
    assert live(server)[uuid]["refcount"] == 2


def test_join_needs_the_uuid_as_both_name_and_password(server: StandinInfo, closing: ExitStack) -> None:
    first, second = client(server, closing), client(server, closing)
    first.createSession("alice", "alice-pw")

    with pytest.raises(Glacier2.PermissionDeniedException) as raised:
        second.createSession("alice", first.getSessionId())

    assert "joinSession" in raised.value.reason


def test_plain_client_close_ends_a_session_it_alone_holds(server: StandinInfo, closing: ExitStack) -> None:
    # blitz closes on Glacier2 destroy unless the client asked detachOnDestroy.
    c = client(server, closing)
    c.createSession("alice", "alice-pw")
    uuid = c.getSessionId()

    c.closeSession()

    assert uuid not in live(server)


def test_detach_on_destroy_keeps_the_session_after_client_close(server: StandinInfo, closing: ExitStack) -> None:
    c = client(server, closing)
    c.createSession("alice", "alice-pw").detachOnDestroy()
    uuid = c.getSessionId()

    c.closeSession()

    assert live(server)[uuid]["refcount"] == 0


def test_kill_session_closes_every_reference(server: StandinInfo, closing: ExitStack) -> None:
    first, second = client(server, closing), client(server, closing)
    first.createSession("alice", "alice-pw")
    uuid = first.getSessionId()
    second.joinSession(uuid)

    closes = first.killSession()

    assert closes == 2
    assert uuid not in live(server)
    with pytest.raises(Ice.ObjectNotExistException):
        second.getSession().getAdminService()


def test_looking_up_a_killed_session_is_removed_session_exception(server: StandinInfo, closing: ExitStack) -> None:
    victim, watcher = client(server, closing), client(server, closing)
    victim.createSession("alice", "alice-pw")
    uuid = victim.getSessionId()
    sessions = watcher.createSession("boss", "boss-pw").getSessionService()

    victim.killSession()

    with pytest.raises(omero.RemovedSessionException):
        sessions.getSession(uuid)
    assert sessions.closeSession(omero.model.SessionI()) == -1  # nothing left to close


def test_keep_all_alive_flags_services_the_session_does_not_hold(server: StandinInfo, closing: ExitStack) -> None:
    c = client(server, closing)
    sf = c.createSession("alice", "alice-pw")
    mine = sf.getAdminService()
    stranger = omero.api.ServiceInterfacePrx.uncheckedCast(c.getCommunicator().stringToProxy("x/y"))

    assert sf.keepAllAlive([mine, stranger]) == 0b10
    assert sf.keepAlive(mine) is True


def test_client_context_names_the_client_and_then_its_session(server: StandinInfo, closing: ExitStack) -> None:
    c = client(server, closing)

    c.createSession("alice", "alice-pw").getAdminService().getEventContext()

    login, *later = server.calls()
    assert login["ctx"]["omero.agent"] == "OMERO.py"
    assert all(call["ctx"]["omero.client.uuid"] == login["ctx"]["omero.client.uuid"] for call in later)
    assert later[-1]["ctx"]["omero.session.uuid"] == c.getSessionId()


def test_lost_client_connection_destroys_its_router_session(server: StandinInfo) -> None:
    # A client process that dies without closing: Glacier2 drops its session when the
    # connection goes, and blitz closes the server session it alone held.
    script = (
        "import os, sys, omero, omero.clients\n"
        f"c = omero.client(host={server.url_host!r}, port={server.port}, "
        f"args={server.client_args!r})\n"
        "c.createSession('alice', 'alice-pw')\n"
        "print(c.getSessionId(), flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=120)
    uuid = done.stdout.strip()

    assert uuid
    wait_for("the session to be gone from the server", lambda: uuid not in live(server))


def test_unmodelled_operation_fails_fast_instead_of_hanging(server: StandinInfo, closing: ExitStack) -> None:
    sf = client(server, closing).createSession("alice", "alice-pw")

    with pytest.raises(Ice.OperationNotExistException):
        sf.getContainerService()


def test_unmodelled_query_shape_is_an_api_usage_error(server: StandinInfo, closing: ExitStack) -> None:
    sf = client(server, closing).createSession("alice", "alice-pw")

    with pytest.raises(omero.ApiUsageException):
        sf.getQueryService().findAllByQuery("select i from Image i", None)


# -- BlitzGateway ---------------------------------------------------------------------------


def test_gateway_connects_and_reads_user_and_event_context(server: StandinInfo, closing: ExitStack) -> None:
    conn = gateway(server, closing, "alice", "alice-pw")

    assert conn.connect() is True
    assert conn.getUser().getName() == "alice"
    assert conn.getUser().getFullName() == "Alice Liddell"
    ec = conn.getEventContext()
    assert (ec.userName, ec.groupName) == ("alice", "lab")
    assert ec.leaderOfGroups == [ec.groupId]
    assert conn.isAdmin() is False


def test_gateway_with_wrong_password_does_not_connect(server: StandinInfo, closing: ExitStack) -> None:
    conn = gateway(server, closing, "alice", "wrong")

    assert conn.connect() is False
    assert live(server) == {}


def test_gateway_soft_close_leaves_the_session_joinable(server: StandinInfo, closing: ExitStack) -> None:
    conn = gateway(server, closing, "alice", "alice-pw")
    conn.connect()
    uuid = conn.getSession().getUuid().val

    conn.close(hard=False)
    again = gateway(server, closing)

    assert live(server)[uuid]["refcount"] == 0
    assert again.connect(sUuid=uuid) is True
    assert again.getUser().getName() == "alice"


def test_gateway_hard_close_kills_the_session(server: StandinInfo, closing: ExitStack) -> None:
    conn = gateway(server, closing, "alice", "alice-pw")
    conn.connect()
    uuid = conn.getSession().getUuid().val

    conn.close(hard=True)

    assert uuid not in live(server)
    assert gateway(server, closing).connect(sUuid=uuid) is False
    with pytest.raises(Glacier2.PermissionDeniedException):
        client(server, closing).joinSession(uuid)


def test_admin_sudo_connection_acts_as_the_target_user(server: StandinInfo, closing: ExitStack) -> None:
    admin = gateway(server, closing, "boss", "boss-pw")
    admin.connect()

    su = admin.suConn("bob", ttl=MINUTE_MS)
    closing.callback(su.close)

    assert su.getUser().getName() == "bob"
    ec = su.getEventContext()
    assert (ec.userName, ec.sudoerName.val) == ("bob", "boss")
    session = live(server)[ec.sessionUuid]
    assert (session["time_to_live_ms"], session["time_to_idle_ms"]) == (MINUTE_MS, 0)


def test_normal_user_cannot_sudo(server: StandinInfo, closing: ExitStack) -> None:
    conn = gateway(server, closing, "alice", "alice-pw")
    conn.connect()
    principal = omero.sys.Principal(name="bob", group="imaging", eventType="User")

    assert conn.suConn("bob") is None  # the gateway checks isAdmin() first
    with pytest.raises(omero.SecurityViolation):
        conn.c.sf.getSessionService().createSessionWithTimeout(principal, MINUTE_MS)


def test_full_admin_holds_every_privilege(server: StandinInfo, closing: ExitStack) -> None:
    conn = gateway(server, closing, "boss", "boss-pw")
    conn.connect()

    assert conn.isAdmin() is True
    assert conn.isFullAdmin() is True


def test_set_group_for_session_switches_the_whole_session(server: StandinInfo, closing: ExitStack) -> None:
    conn = gateway(server, closing, "alice", "alice-pw")
    conn.connect()
    imaging = conn.getAdminService().lookupGroup("imaging").getId().val

    assert conn.setGroupForSession(imaging) is True

    assert conn.getEventContext().groupName == "imaging"
    other = client(server, closing)
    other.joinSession(conn.getSession().getUuid().val)
    assert other.sf.getAdminService().getEventContext().groupId == imaging


def test_group_outside_membership_is_refused(server: StandinInfo, closing: ExitStack) -> None:
    conn = gateway(server, closing, "bob", "bob-pw")
    conn.connect()
    lab = conn.getAdminService().lookupGroup("lab").getId().val

    assert conn.setGroupForSession(lab) is False  # the gateway checks memberOfGroups
    with pytest.raises(omero.SecurityViolation):
        conn.c.sf.setSecurityContext(omero.model.ExperimenterGroupI(lab, False))


def test_all_groups_context_reports_group_minus_one(server: StandinInfo, closing: ExitStack) -> None:
    conn = gateway(server, closing, "alice", "alice-pw")
    conn.connect()
    conn.SERVICE_OPTS.setOmeroGroup(-1)

    ec = conn.getAdminService().getEventContext(conn.SERVICE_OPTS)

    assert ec.groupId == -1


def test_guest_logs_in_with_any_password_but_cannot_query(server: StandinInfo, closing: ExitStack) -> None:
    sf = client(server, closing).createSession("guest", "anything")

    assert sf.getAdminService().getEventContext().groupName == "guest"
    with pytest.raises(omero.SecurityViolation):
        sf.getQueryService()


# -- expiry (the server's clock is advanced: nothing sleeps) --------------------------------


def test_idle_session_expires_after_time_to_idle(server: StandinInfo, closing: ExitStack) -> None:
    conn = gateway(server, closing, "alice", "alice-pw")
    conn.connect()
    uuid = conn.getSession().getUuid().val

    server.advance_clock(10 * MINUTE_MS + 1)

    assert conn.keepAlive() is False
    assert uuid not in live(server)
    with pytest.raises(Glacier2.PermissionDeniedException):
        client(server, closing).joinSession(uuid)


def test_each_call_slides_the_idle_timer(server: StandinInfo, closing: ExitStack) -> None:
    c = client(server, closing)
    sf = c.createSession("alice", "alice-pw")

    server.advance_clock(6 * MINUTE_MS)
    sf.keepAlive(None)
    server.advance_clock(6 * MINUTE_MS)

    assert sf.getAdminService().getEventContext().userName == "alice"


def test_first_call_after_expiry_is_a_session_timeout(server: StandinInfo, closing: ExitStack) -> None:
    sf = client(server, closing).createSession("alice", "alice-pw")
    admin = sf.getAdminService()

    server.advance_clock(10 * MINUTE_MS + 1)

    with pytest.raises(omero.SessionTimeoutException):
        admin.getEventContext()
    with pytest.raises(Ice.ObjectNotExistException):
        admin.getEventContext()


def test_time_to_live_ends_a_busy_session(closing: ExitStack) -> None:
    with running_standin(USERS, time_to_live_ms=30 * MINUTE_MS) as server:
        sf = client(server, closing).createSession("alice", "alice-pw")
        for _ in range(3):  # busy: never idle for 10 minutes
            server.advance_clock(9 * MINUTE_MS)
            sf.keepAlive(None)

        server.advance_clock(3 * MINUTE_MS + 1)

        with pytest.raises(omero.SessionTimeoutException):
            sf.keepAlive(None)
        closing.close()


# -- what the client really calls -----------------------------------------------------------


def test_gateway_connect_is_login_then_detach_then_session_lookup(server: StandinInfo, closing: ExitStack) -> None:
    conn = gateway(server, closing, "alice", "alice-pw")

    conn.connect()

    ops = server.operations()
    assert ops[0] == "createSession"
    assert ops.index("detachOnDestroy") < ops.index("getSession") < ops.index("getConfigValue")
    assert ops.count("createSession") == 2  # setSecure(False) re-joins on a second client
    assert live(server)[conn.getSession().getUuid().val]["refcount"] == 1
