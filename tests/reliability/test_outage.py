"""The database goes away under a session: typed errors at once, nothing lost, recovery in-process.

These cases stop and start a PostgreSQL server of their own (never the shared one). Every
stopped or frozen server is started again before the case ends, also when it fails.

"At once" is a condition, not a stopwatch: the error must come from the server refusing or
closing the connection, not from a wait cut short by the connect timeout; only a frozen server,
which answers nothing, ends in the connect timeout, and its error says so. The seconds each
error took are printed as figures, never compared with a bound.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ome_session import Session
from ome_session._cluster import Cluster
from ome_session.errors import DatabaseUnavailable, SessionKeyError, TransactionLost
from tests.helpers import password, query

from . import _outage
from ._figures import Figures, env_int
from ._outage import USER, waited_out_a_timeout

pytestmark = pytest.mark.reliability

PASSWORD = password(USER)
ROUNDS = env_int("OME_SESSION_RELIABILITY_OUTAGES", 3)


@pytest.fixture
def cluster(own_cluster: Cluster) -> Iterator[Cluster]:
    own_cluster.start()
    yield own_cluster
    pid = own_cluster.status().pid
    if pid is not None:
        os.kill(pid, signal.SIGCONT)  # a case that froze the server may have failed before thawing it
    own_cluster.start()


@pytest.fixture
def dsn(cluster: Cluster, tmp_path: Path) -> str:
    return _outage.prepare(cluster, str(tmp_path / "tmp"))


def _timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def test_server_stopped_mid_session_raises_database_unavailable_then_the_process_recovers(
        cluster: Cluster, dsn: str, figures: Figures) -> None:
    manager = _outage.manager(dsn)
    session = manager.create_session(USER, PASSWORD)
    key = session.session_key
    with session.transaction():
        session.factory.new_object("Project", name="kept")

    cluster.stop(mode="fast")
    error, waited = _timed(lambda: session.factory.find_objects("Project"))
    again, _ = _timed(lambda: session.factory.find_objects("Project"))
    cluster.start()

    assert type(error) is DatabaseUnavailable  # no transaction was open: nothing was lost
    assert not waited_out_a_timeout(error), error
    assert isinstance(again, DatabaseUnavailable) and str(cluster.socket_dir) in str(again)
    assert [p.name for p in session.factory.find_objects("Project")] == ["kept"]  # type: ignore[attr-defined]
    assert manager.create_session(key=key).user_name == USER  # the key made before the outage
    assert manager.create_session(USER, PASSWORD).user_name == USER
    committed = _outage.committed_names(dsn)
    figures(rows_checked=len(committed), seconds_to_error=round(waited, 3))
    assert committed == {"kept"}


@pytest.mark.parametrize("next_call", ["statement", "commit", "transaction_block"])
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_stopped_mid_transaction_reports_the_transaction_lost_and_never_retries_it(
        cluster: Cluster, dsn: str, figures: Figures, next_call: str, mode: str) -> None:
    manager = _outage.manager(dsn)
    session = manager.create_session(USER, PASSWORD)
    with session.transaction():
        session.factory.new_object("Project", name="committed")

    stopped: list[float] = []

    def stop() -> None:
        cluster.stop(mode=mode)
        stopped.append(time.monotonic())

    def unit_of_work() -> None:
        if next_call == "transaction_block":
            with session.transaction():
                session.factory.new_object("Project", name="uncommitted")
                stop()
                session.factory.new_object("Project", name="after the stop")
            return
        session.factory.new_object("Project", name="uncommitted")
        stop()
        if next_call == "commit":
            session.commit_transaction()
        else:
            session.factory.new_object("Project", name="after the stop")

    try:
        unit_of_work()
        error: BaseException | None = None
    except Exception as exc:
        error = exc
    waited = time.monotonic() - stopped[0]
    cluster.start()

    committed = _outage.committed_names(dsn)
    figures(rows_checked=len(committed), seconds_to_error=round(waited, 3))
    assert isinstance(error, TransactionLost), repr(error)
    assert not waited_out_a_timeout(error), error
    assert committed == {"committed"}
    # The next call works on a new connection, in a new transaction: the lost one is not replayed.
    assert [p.name for p in session.factory.find_objects("Project")] == ["committed"]  # type: ignore[attr-defined]
    session.rollback_transaction()
    assert manager.create_session(USER, PASSWORD).user_name == USER


def test_connecting_while_the_server_is_down_raises_database_unavailable_naming_the_socket_directory(
        cluster: Cluster, dsn: str, figures: Figures) -> None:
    manager = _outage.manager(dsn)
    key = manager.create_session(USER, PASSWORD).session_key
    Session.delete_instance(force=True)

    cluster.stop(mode="fast")
    try:
        attempts = {
            "password": _timed(lambda: manager.create_session(USER, PASSWORD)),
            "key": _timed(lambda: manager.create_session(key=key)),
            "bootstrap": _timed(lambda: Session.bootstrap_instance(dsn)),
        }
    finally:
        cluster.start()

    figures(attempts=len(attempts), seconds_to_error=max(round(waited, 3) for _, waited in attempts.values()))
    for how, (error, _waited) in attempts.items():
        assert type(error) is DatabaseUnavailable, (how, repr(error))
        assert str(cluster.socket_dir) in str(error), how
        assert not waited_out_a_timeout(error), (how, error)
    assert not Session.has_instance()
    assert manager.create_session(key=key).user_name == USER


def test_connecting_to_a_frozen_server_gives_up_within_the_connect_timeout(
        cluster: Cluster, dsn: str, figures: Figures) -> None:
    timeout = 2
    manager = _outage.manager(dsn)
    key = manager.create_session(USER, PASSWORD).session_key
    Session.delete_instance(force=True)
    postmaster = cluster.status().pid
    assert postmaster is not None

    os.kill(postmaster, signal.SIGSTOP)  # accepts nothing, answers nothing, like a hung host
    try:
        error, waited = _timed(lambda: type(manager)(dsn, connect_timeout=timeout).create_session(key=key))
    finally:
        os.kill(postmaster, signal.SIGCONT)

    figures(seconds_to_error=round(waited, 3))
    assert type(error) is DatabaseUnavailable, repr(error)
    assert str(cluster.socket_dir) in str(error)
    assert waited_out_a_timeout(error), error  # it gave up on the connect timeout, not on anything else
    assert manager.create_session(key=key).user_name == USER


def test_an_idle_session_survives_a_server_restart(cluster: Cluster, dsn: str) -> None:
    manager = _outage.manager(dsn)
    key = manager.create_session(USER, PASSWORD).session_key
    Session.idle()

    cluster.stop(mode="fast")
    cluster.start()
    session = manager.create_session(key=key)

    assert session.user_name == USER
    assert session.factory.count_objects("Project") == 0


def test_a_transaction_broken_by_a_restart_does_not_break_idle(cluster: Cluster, dsn: str) -> None:
    manager = _outage.manager(dsn)
    session = manager.create_session(USER, PASSWORD)
    key = session.session_key
    session.factory.new_object("Project", name="uncommitted")

    cluster.stop(mode="fast")
    cluster.start()
    Session.idle()  # ends the unit of work: its uncommitted work was to be discarded anyway

    assert manager.create_session(key=key).factory.count_objects("Project") == 0


def test_a_transaction_broken_by_a_restart_does_not_fail_the_next_login(cluster: Cluster, dsn: str) -> None:
    manager = _outage.manager(dsn)
    session = manager.create_session(USER, PASSWORD)
    key = session.session_key
    session.factory.new_object("Project", name="uncommitted")

    cluster.stop(mode="fast")
    cluster.start()
    resumed = manager.create_session(key=key)

    assert resumed.user_name == USER and not resumed.is_idle()
    assert resumed.factory.count_objects("Project") == 0


def test_logout_after_a_restart_still_revokes_the_key(cluster: Cluster, dsn: str) -> None:
    manager = _outage.manager(dsn)
    session = manager.create_session(USER, PASSWORD)
    key = session.session_key
    session.factory.count_objects("Project")  # a read: the session now holds an open transaction

    cluster.stop(mode="fast")
    cluster.start()
    manager.logout()

    assert query(dsn, "SELECT count(*) FROM ome_sessions WHERE closed_at IS NULL") == [(0,)]
    assert not Session.has_instance()
    with pytest.raises(SessionKeyError):
        manager.create_session(key=key)


def test_repeated_outages_lose_no_committed_row(cluster: Cluster, dsn: str, figures: Figures) -> None:
    problems: list[str] = []
    rounds = rows = 0
    try:
        for number in range(ROUNDS):
            result = _outage.outage_round(cluster, dsn, number, mode=("fast", "immediate")[number % 2])
            problems += result["problems"]
            rows += result["rows_checked"]
            rounds += 1
    finally:
        figures(cycles=rounds, errors=len(problems), rows_checked=rows)
    assert problems == []
    assert _outage.committed_names(dsn) == {f"committed-{n}" for n in range(ROUNDS)}
