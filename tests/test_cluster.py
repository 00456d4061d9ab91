"""The private cluster against a real PostgreSQL server: lifecycle, crash recovery, isolation."""

from __future__ import annotations

import atexit
import os
import pwd
import select
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ome_session._cluster import Cluster, default_datadir, find_bindir
from ome_session.errors import ConfigurationError, DatabaseUnavailable
from tests.helpers import FAST_OPTIONS, query, throwaway_cluster


def wait_for_exit(pid: int) -> None:
    """Block until ``pid`` has exited (an event from the kernel, not a guess about timing)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], 120)[0], f"process {pid} is still running"
    finally:
        os.close(fd)


def listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    inodes.add(fields[9])
    return inodes


@pytest.fixture
def scratch() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="ome-session-test-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def cluster(scratch: Path) -> Iterator[Cluster]:
    cluster = Cluster(scratch, server_options=FAST_OPTIONS)  # handed to the server account
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="module")
def shared() -> Iterator[Cluster]:
    with throwaway_cluster(log_statement="all") as cluster:
        yield cluster


def test_started_cluster_accepts_connections_until_stopped(cluster: Cluster) -> None:
    cluster.init()
    cluster.start()
    assert query(cluster.dsn(), "SELECT 1") == [(1,)]
    cluster.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.dsn(), connect_timeout=5)


def test_init_and_start_are_idempotent(cluster: Cluster) -> None:
    cluster.init()
    cluster.init()
    cluster.start()
    first = cluster.status().pid
    cluster.start()
    assert cluster.status().pid == first
    assert query(cluster.dsn(), "SELECT pg_backend_pid() > 0") == [(True,)]


def test_stop_of_a_stopped_cluster_does_nothing(cluster: Cluster) -> None:
    cluster.stop()
    cluster.start()
    cluster.stop()
    cluster.stop()
    assert not cluster.status().running


def test_status_reports_running_then_stopped(cluster: Cluster) -> None:
    before = cluster.status()
    assert (before.initialized, before.running, before.pid) == (False, False, None)
    cluster.start()
    running = cluster.status()
    assert running.initialized and running.running and running.pid is not None
    assert running.bindir == find_bindir()
    assert running.version is not None and running.version[0].isdigit()
    cluster.stop()
    stopped = cluster.status()
    assert stopped.initialized and not stopped.running and stopped.pid is None


def test_stale_postmaster_pid_after_sigkill_does_not_block_start(cluster: Cluster) -> None:
    cluster.start()
    killed = cluster.status().pid
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    wait_for_exit(killed)
    assert (cluster.pgdata / "postmaster.pid").exists()
    assert not cluster.status().running
    cluster.start()
    assert cluster.status().pid not in (None, killed)
    assert query(cluster.dsn(), "SELECT 1") == [(1,)]


def test_destroy_stops_the_server_and_removes_everything(cluster: Cluster) -> None:
    cluster.start()
    pid = cluster.status().pid
    assert pid is not None
    cluster.destroy()
    wait_for_exit(pid)
    assert not cluster.datadir.exists()
    cluster.destroy()  # nothing left to do


def test_failed_start_raises_database_unavailable_with_server_log(cluster: Cluster) -> None:
    broken = Cluster(cluster.datadir, server_options={"shared_buffers": "plenty"})
    with pytest.raises(DatabaseUnavailable, match="shared_buffers"):
        broken.start()
    assert not broken.status().running


def test_server_listens_on_no_tcp_port(shared: Cluster) -> None:
    assert query(shared.dsn(), "SHOW listen_addresses") == [("",)]
    targets = [os.readlink(fd) for fd in Path(f"/proc/{shared.status().pid}/fd").iterdir()]
    sockets = {target[len("socket:["):-1] for target in targets if target.startswith("socket:[")}
    assert sockets, "the postmaster should hold its unix socket"
    assert not sockets & listening_tcp_inodes()


def test_server_options_are_applied(shared: Cluster) -> None:
    assert query(shared.dsn(), "SHOW fsync") == [("off",)]
    assert query(shared.dsn(), "SHOW synchronous_commit") == [("off",)]
    assert query(shared.dsn(), "SHOW full_page_writes") == [("off",)]
    assert query(shared.dsn(), "SHOW max_connections") == [("200",)]
    assert query(shared.dsn(), "SHOW log_statement") == [("all",)]


def test_dsn_connects_as_the_invoking_os_user_without_password(shared: Cluster) -> None:
    assert query(shared.dsn(), "SELECT current_user") == [(pwd.getpwuid(os.geteuid()).pw_name,)]
    assert query(shared.dsn(), "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == [(True,)]


def test_ensure_database_creates_a_missing_database_once(shared: Cluster) -> None:
    shared.ensure_database("ome session")
    shared.ensure_database("ome session")
    [(count,)] = query(shared.dsn(), "SELECT count(*) FROM pg_database WHERE datname = 'ome session'")
    assert count == 1
    with psycopg.connect(shared.dsn("ome session")) as conn:
        assert conn.info.dbname == "ome session"


def test_fixed_server_options_cannot_be_overridden(scratch: Path) -> None:
    with pytest.raises(ValueError, match="listen_addresses"):
        Cluster(scratch, server_options={"listen_addresses": "*"})


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_throwaway_cluster_removes_its_directory_when_the_body_raises(
        error: type[BaseException]) -> None:
    with pytest.raises(error), throwaway_cluster() as cluster:
        datadir, status = cluster.datadir, cluster.status()
        raise error("the test body failed")
    assert status.pid is not None
    wait_for_exit(status.pid)
    assert not datadir.exists()


def test_forked_child_exiting_keeps_the_parents_server() -> None:
    with throwaway_cluster() as cluster:
        child = os.fork()
        if child == 0:
            try:
                atexit._run_exitfuncs()  # what an exiting interpreter does
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        assert cluster.status().running
        assert query(cluster.dsn(), "SELECT 1") == [(1,)]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another account")
def test_unreachable_directory_for_the_server_account_is_named(scratch: Path) -> None:
    os.chmod(scratch, 0o700)  # root's, like /root: the server account cannot enter it
    with pytest.raises(ConfigurationError, match=str(scratch)):
        Cluster(scratch / "inner" / "cluster").init()


def test_default_datadir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OME_SESSION_DATA_DIR", "/srv/ome")
    assert default_datadir() == Path("/srv/ome/cluster")
    monkeypatch.delenv("OME_SESSION_DATA_DIR")
    if os.geteuid() == 0:
        assert default_datadir() == Path("/var/lib/ome-session/cluster")
    else:
        assert default_datadir().parts[-2:] == ("ome-session", "cluster")


def test_find_bindir_holds_the_server_programs() -> None:
    bindir = find_bindir()
    for program in ("initdb", "pg_ctl", "postgres"):
        assert os.access(bindir / program, os.X_OK)
