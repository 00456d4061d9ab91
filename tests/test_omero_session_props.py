"""An OMERO session's properties and ``update()`` through the real omero-py client, against the
stand-in OMERO.blitz server; the stand-in's session table is the oracle."""

from __future__ import annotations

# ruff: noqa: E402

import datetime
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import import_part

import_part("omero", "Ice")
import_part("omero", "omero.gateway")

from ome_session import Session, SessionManager
from ome_session.backends.omero._parking import OPEN as OPEN_CLIENTS
from ome_session.errors import PermissionDenied, SessionError
from tests.omero_standin import StandinInfo, StandinUser, running_standin

pytestmark = pytest.mark.omero

ALICE = StandinUser("alice", "alice-pw", groups=("lab",))
BOB = StandinUser("bob", "bob-pw", groups=("lab",))
IDLE_MS, LIFE_MS, MAX_IDLE_MS = 600_000, 7_200_000, 3_600_000


@pytest.fixture(scope="module")
def server() -> Iterator[StandinInfo]:
    with running_standin((ALICE, BOB), time_to_idle_ms=IDLE_MS, time_to_live_ms=LIFE_MS,
                         config={"omero.sessions.max_user_time_to_idle": str(MAX_IDLE_MS)}) as info:
        yield info


@pytest.fixture(autouse=True)
def _nothing_left_open() -> Iterator[None]:
    yield
    Session.delete_instance(force=True)
    assert list(OPEN_CLIENTS) == []


def manager(server: StandinInfo, **options: Any) -> SessionManager:
    return SessionManager(backend="omero", host=server.host, port=server.port, client_args=server.client_args,
                          **options)


def held(server: StandinInfo, key: str | None) -> dict[str, Any]:
    return next(s for s in server.sessions() if s["uuid"] == key)


def test_the_properties_are_the_servers(server: StandinInfo) -> None:
    session = manager(server, agent="props-test").create_session("alice", "alice-pw")
    row = held(server, session.session_key)
    started = datetime.datetime.fromtimestamp(row["started_ms"] / 1000, datetime.timezone.utc)
    assert session.started == started
    assert session.time_to_idle == datetime.timedelta(milliseconds=IDLE_MS)
    assert session.time_to_live == datetime.timedelta(milliseconds=LIFE_MS)
    assert session.expires_at == started + datetime.timedelta(milliseconds=LIFE_MS)
    assert session.agent == row["agent"] == "props-test"
    assert session.message is None and session.closed_at is None
    assert session.last_access is not None and session.last_access >= started
    key = session.session_key
    SessionManager(backend="omero").logout(session)
    assert session.closed_at is not None and session.closed_at >= started
    assert key not in {s["uuid"] for s in server.sessions()}


def test_update_time_to_idle_changes_that_session_on_the_server(server: StandinInfo) -> None:
    other = manager(server).create_session("alice", "alice-pw").session_key
    session = manager(server).create_session("alice", "alice-pw")
    session.update(time_to_idle=datetime.timedelta(minutes=20))
    assert held(server, session.session_key)["time_to_idle_ms"] == 1_200_000
    assert held(server, other)["time_to_idle_ms"] == IDLE_MS  # that one only
    assert session.time_to_idle == datetime.timedelta(minutes=20)
    resumed = manager(server).create_session(key=session.session_key)
    assert resumed.time_to_idle == datetime.timedelta(minutes=20)
    assert [c["operation"] for c in server.calls() if c["operation"] in ("submit", "getResponse", "close")][-3:] \
        == ["submit", "getResponse", "close"]  # a command, as omero sessions timeout sends, and its handle closed


def test_what_the_server_refuses_is_permission_denied_and_bad_input_never_reaches_it(server: StandinInfo) -> None:
    session = manager(server).create_session("bob", "bob-pw")
    with pytest.raises(PermissionDenied, match="refused an idle timeout of 3601 s"):
        session.update(time_to_idle=MAX_IDLE_MS // 1000 + 1)
    submitted = sum(c["operation"] == "submit" for c in server.calls())
    for bad in (0, -5, True, "600", 1.5):
        with pytest.raises((TypeError, ValueError)):
            session.update(time_to_idle=bad)  # type: ignore[arg-type]
    assert sum(c["operation"] == "submit" for c in server.calls()) == submitted
    with pytest.raises(SessionError, match="no call that changes a session's message"):
        session.update(message="hello")
    assert held(server, session.session_key)["time_to_idle_ms"] == IDLE_MS


def test_the_session_is_a_context_manager_that_idles_on_the_way_out(server: StandinInfo) -> None:
    with pytest.raises(RuntimeError), manager(server).create_session("alice", "alice-pw") as session:
        assert not session.is_idle()
        raise RuntimeError("the work failed")
    assert session.is_idle() and not session.closed
    assert manager(server).create_session(session.session_key).user_name == "alice"  # still live: one argument
