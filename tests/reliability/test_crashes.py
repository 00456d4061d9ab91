"""Workers killed with SIGKILL leave temporary files behind; the next session start and
``ome-session tmp reap`` remove every one of them, and nothing of a process that still runs.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from ome_session import Session, SessionManager, _tempfiles
from tests.helpers import People

from ._figures import Figures, env_int

pytestmark = pytest.mark.reliability

WORKERS = env_int("OME_SESSION_RELIABILITY_CRASH_WORKERS", 100)
BATCH = 10
LIVE = 3
REPORT_TIMEOUT = 120  # seconds for a worker to log in and report; it waits on nothing else

_CONTEXT = multiprocessing.get_context("fork")


def _worker(dsn: str, key: str, report: Connection, hold: Connection, busy: bool) -> None:
    """Log in, make files and a scratch tree through the Session, report them, then wait or churn."""
    session = SessionManager(dsn).create_session(key=key)
    paths = []
    for n in range(3):
        path = session.get_temporary_filename("crash", "dat")
        path.write_bytes(b"data %d" % n)
        paths.append(str(path))
    scratch = session.get_scratch_dir("crash", "dir")
    (scratch / "nested").mkdir()
    (scratch / "nested" / "result.bin").write_bytes(b"x" * 4096)
    paths.append(str(scratch))
    report.send(paths)
    if busy:  # killed at some arbitrary point of making or removing a file
        while True:
            session.finish_temporary_file(session.get_temporary_filename("churn", "dat"))
    hold.recv()  # nothing is ever sent: the worker waits here until it is killed


class _Worker:
    """A forked worker process and the paths it reported."""

    def __init__(self, dsn: str, key: str, busy: bool = False) -> None:
        self._reports, report = _CONTEXT.Pipe(duplex=False)
        hold, self._hold = _CONTEXT.Pipe(duplex=False)
        self.process = _CONTEXT.Process(target=_worker, args=(dsn, key, report, hold, busy))
        self.process.start()
        report.close()
        hold.close()
        self.paths: list[Path] = []

    def wait_for_report(self) -> list[Path]:
        assert self._reports.poll(REPORT_TIMEOUT), f"worker {self.process.pid} reported nothing"
        self.paths = [Path(p) for p in self._reports.recv()]
        return self.paths

    def kill(self) -> None:
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join()
        assert self.process.exitcode == -signal.SIGKILL
        self._reports.close()
        self._hold.close()


def _process_dirs(root: Path) -> set[Path]:
    return {entry for entry in root.iterdir() if entry.is_dir()} if root.exists() else set()


def _snapshot(paths: list[Path]) -> dict[Path, bytes | None]:
    """Each path's content (None for a directory, listed with its files)."""
    seen: dict[Path, bytes | None] = {}
    for path in paths:
        if path.is_dir():
            seen[path] = None
            for inner in path.rglob("*"):
                seen[inner] = inner.read_bytes() if inner.is_file() else None
        else:
            seen[path] = path.read_bytes()
    return seen


def _still_there(snapshot: dict[Path, bytes | None]) -> bool:
    return all(path.exists() and (data is None or path.read_bytes() == data) for path, data in snapshot.items())


def _crash_batches(dsn: str, key: str, count: int) -> list[Path]:
    """Start ``count`` workers, BATCH at a time, kill each batch once all have reported."""
    dirs: list[Path] = []
    for first in range(0, count, BATCH):
        batch = [_Worker(dsn, key, busy=n % 2 == 1) for n in range(first, min(first + BATCH, count))]
        for worker in batch:
            dirs.append(worker.wait_for_report()[0].parent)
        for worker in batch:
            worker.kill()
    return dirs


@pytest.fixture
def key(people: People) -> Iterator[str]:
    session = SessionManager(people.dsn).create_session("alice", "alice-password")
    assert session.session_key is not None
    yield session.session_key


@pytest.fixture
def live_workers(people: People, key: str) -> Iterator[list[_Worker]]:
    workers = [_Worker(people.dsn, key) for _ in range(LIVE)]
    for worker in workers:
        worker.wait_for_report()
    yield workers
    for worker in workers:
        if worker.process.is_alive():
            worker.kill()


def _fresh_login(dsn: str, key: str) -> subprocess.Popen[str]:
    code = ("import sys; from ome_session import SessionManager; "
            "SessionManager(sys.argv[1]).create_session(key=sys.argv[2])")
    return subprocess.Popen([sys.executable, "-c", code, dsn, key], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.timeout(600)
def test_killed_workers_leave_no_orphan_after_the_next_session_start_and_tmp_reap(
        people: People, key: str, live_workers: list[_Worker], tmp_path: Path, figures: Figures) -> None:
    root = tmp_path / "tmp" / str(os.getuid())  # this account's, in the configured tmp_dir
    session = Session.instance()  # this process lives too, and holds a file of its own
    mine = session.get_temporary_filename("parent", "dat")
    mine.write_bytes(b"parent")
    live = _snapshot([mine, *(path for worker in live_workers for path in worker.paths)])

    # Half the workers die, then the next session start (several at once) reaps their directories.
    first = _crash_batches(people.dsn, key, WORKERS // 2)
    orphans_before_login = sum(1 for d in first if d.exists())
    logins = [_fresh_login(people.dsn, key) for _ in range(3)]
    outputs = [(login.communicate(timeout=REPORT_TIMEOUT)[0], login.returncode) for login in logins]
    left_after_login = [d for d in first if d.exists()]
    live_after_login = _still_there(live)

    # The other half die, and one of them looks like a dead process whose pid is now reused.
    second = _crash_batches(people.dsn, key, WORKERS - WORKERS // 2)
    reused = root / f"{live_workers[0].process.pid}-1"
    second[-1].rename(reused)
    second[-1] = reused
    orphans_before_reap = sum(1 for d in second if d.exists())
    reap = subprocess.run([sys.executable, "-m", "ome_session", "tmp", "reap", "--dsn", people.dsn],
                          check=False, capture_output=True, text=True, timeout=REPORT_TIMEOUT)
    left_after_reap = [d for d in second if d.exists()]
    live_after_reap = _still_there(live)

    # Once the live workers are killed too, their directories are orphans like any other.
    for worker in live_workers:
        worker.kill()
    final = _tempfiles.reap(root)
    remaining = _process_dirs(root) - {mine.parent}

    figures(cycles=len(first) + len(second), errors=len(left_after_login) + len(left_after_reap) + len(remaining),
            orphans_reaped_by_login=orphans_before_login - len(left_after_login),
            orphans_reaped_by_cli=orphans_before_reap - len(left_after_reap), live_paths_kept=len(live),
            reaped_after_live_killed=len(final))
    assert orphans_before_login == WORKERS // 2 and orphans_before_reap == WORKERS - WORKERS // 2
    assert all(code == 0 for _, code in outputs), outputs
    assert left_after_login == []
    assert reap.returncode == 0, reap.stderr
    assert f"reaped {orphans_before_reap} temporary directories" in reap.stdout
    assert left_after_reap == []
    assert live_after_login and live_after_reap
    assert mine.read_bytes() == b"parent"
    assert len(final) == LIVE and remaining == set()
