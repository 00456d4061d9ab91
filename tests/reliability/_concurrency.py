"""Many processes logging in, resuming, writing and logging out at once against one database.

A cycle is what a short-lived worker does: resume a key all workers share (contended
``last_access``), log in by password, resume its own key, write a row and move its user's current
project in one transaction, go idle, log out, and check that the logged-out key is dead. Every
process reports what it committed and every ``last_access`` it saw; ``check`` compares that
with the database. Used by ``test_concurrency`` and by the soak run.
"""

from __future__ import annotations

import datetime
import itertools
import json
import multiprocessing
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ome_session import Session, SessionManager, _passwords
from ome_session.errors import SessionKeyError
from ome_session.model import Project
from tests.helpers import key_digest, password, password_hash, query

from . import _setup

PROJECT_PREFIX = "conc"


@dataclass
class Worker:
    """What one worker process is told."""

    index: int
    dsn: str
    user: str
    shared_key: str
    cycles: int
    result: Path
    deadline: float | None = None  # time.time() after which no new cycle starts (soak)


def _name(index: int, cycle: int) -> str:
    return f"{PROJECT_PREFIX}-w{index}-c{cycle}"


def run_worker(job: Worker) -> None:
    """The body of one worker process; writes its report as JSON to ``job.result``."""
    manager = SessionManager(job.dsn, agent=f"reliability-worker-{job.index}")
    secret = password(job.user)
    report: dict[str, Any] = {"index": job.index, "pid": os.getpid(), "cycles": 0, "committed": [],
                              "errors": [], "own": [], "shared": [], "revived": 0}
    started = time.monotonic()
    for cycle in range(job.cycles):
        if job.deadline is not None and time.time() > job.deadline:
            break
        try:
            shared = manager.create_session(key=job.shared_key)
            report["shared"].append(_iso(shared.last_access))
            session = manager.create_session(job.user, secret)
            key = session.session_key
            own = [_iso(session.last_access)]
            session = manager.create_session(key=key)
            own.append(_iso(session.last_access))
            with session.transaction():
                project = session.factory.new_object(Project, name=_name(job.index, cycle))
                session.project = cast(Project, project)
            report["committed"].append(_name(job.index, cycle))
            Session.idle()
            manager.logout()
            report["own"] += own
            try:
                manager.create_session(key=key)
            except SessionKeyError:
                pass
            else:
                report["revived"] += 1
                manager.logout()
        except Exception as exc:  # every failure is counted, and the worker goes on
            report["errors"].append(f"cycle {cycle}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            Session.delete_instance(force=True)
        report["cycles"] = cycle + 1
    report["seconds"] = time.monotonic() - started
    Session.delete_instance(force=True)
    tmp = job.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    os.replace(tmp, job.result)


def argon2_seconds() -> float:
    """CPU seconds of one password check as a login does it: what bounds the cycles the cores can do."""
    stored = password_hash("measure")
    started = time.process_time()
    _passwords.verify_password(stored, "measure")
    return time.process_time() - started


def _iso(moment: datetime.datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


@dataclass
class Outcome:
    """The reports of a round and what the parent saw (hung or crashed workers)."""

    reports: list[dict[str, Any]] = field(default_factory=list)
    hung: list[int] = field(default_factory=list)
    crashed: list[int] = field(default_factory=list)
    seconds: float = 0.0
    shared_key: str | None = None


def prepare(dsn: str, processes: int, users: int | None = None) -> tuple[list[str], str]:
    """Worker users (two processes per user, so user states are contended) and a shared key."""
    count = users or max(1, processes // 2)
    names = [f"worker{n}" for n in range(count)]
    _setup.add_users(dsn, [*names, "sharer"])
    shared = SessionManager(dsn).create_session("sharer", password("sharer")).session_key
    Session.delete_instance(force=True)  # closes our connection; the key stays valid
    assert shared is not None
    return [names[n % count] for n in range(processes)], shared


def run_round(dsn: str, workdir: Path, *, processes: int, cycles: int, join_timeout: float,
              deadline: float | None = None) -> Outcome:
    """Start the workers (forked, as a pre-fork server would), wait for all, collect reports.

    A worker still running at ``join_timeout`` is counted as hung (a deadlock) and killed.
    """
    users, shared = prepare(dsn, processes)
    workdir.mkdir(parents=True, exist_ok=True)
    jobs = [Worker(n, dsn, users[n], shared, cycles, workdir / f"worker-{n}.json", deadline)
            for n in range(processes)]
    context = multiprocessing.get_context("fork")
    started = time.monotonic()
    procs = [context.Process(target=run_worker, args=(job,), name=f"worker-{job.index}") for job in jobs]
    for proc in procs:
        proc.start()
    outcome = Outcome(shared_key=shared)
    limit = started + join_timeout
    for job, proc in zip(jobs, procs, strict=True):
        proc.join(max(0.0, limit - time.monotonic()))
        if proc.is_alive():
            outcome.hung.append(job.index)
            os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
            proc.join()
        elif proc.exitcode != 0 or not job.result.exists():
            outcome.crashed.append(job.index)
        else:
            outcome.reports.append(json.loads(job.result.read_text()))
    outcome.seconds = time.monotonic() - started
    return outcome


def check(dsn: str, outcome: Outcome) -> dict[str, Any]:
    """Compare the reports with the database; returns figures, ``problems`` listing every fault."""
    problems: list[str] = []
    if outcome.hung:
        problems.append(f"workers {outcome.hung} still ran at the join timeout (deadlock or hang)")
    if outcome.crashed:
        problems.append(f"workers {outcome.crashed} died without a report")
    errors = [e for r in outcome.reports for e in r["errors"]]
    problems += [f"worker error: {e}" for e in errors[:5]]
    revived = sum(r["revived"] for r in outcome.reports)
    if revived:
        problems.append(f"{revived} logged-out keys resumed again")
    rows = query(dsn, "SELECT name, count(*) FROM projects WHERE name LIKE %s GROUP BY name",
                        f"{PROJECT_PREFIX}-%")
    in_db = dict(rows)
    duplicates = {name: n for name, n in in_db.items() if n > 1}
    if duplicates:
        problems.append(f"duplicate rows: {sorted(duplicates)[:5]}")
    committed = [name for r in outcome.reports for name in r["committed"]]
    lost = [name for name in committed if name not in in_db]
    if lost:
        problems.append(f"{len(lost)} committed rows missing: {lost[:5]}")
    phantom = set(in_db) - set(committed)
    if phantom:
        problems.append(f"{len(phantom)} rows nobody reported committing: {sorted(phantom)[:5]}")
    for report in outcome.reports:
        prefix = f"{PROJECT_PREFIX}-w{report['index']}-"
        mine = sum(n for name, n in in_db.items() if name.startswith(prefix))
        if mine != len(report["committed"]):
            problems.append(f"worker {report['index']}: {mine} rows in the database, "
                            f"{len(report['committed'])} committed")
    backwards = 0
    for report in outcome.reports:
        for series in ("own", "shared"):
            seen = [datetime.datetime.fromisoformat(v) for v in report[series]]
            backwards += sum(1 for a, b in itertools.pairwise(seen) if b < a)
    if backwards:
        problems.append(f"last_access moved backwards {backwards} times")
    if outcome.shared_key is not None:
        final = query(dsn, "SELECT last_access, closed_at FROM ome_sessions WHERE key_digest = %s",
                      key_digest(outcome.shared_key))
        samples = [datetime.datetime.fromisoformat(v) for r in outcome.reports for v in r["shared"]]
        if not final or final[0][1] is not None:
            problems.append("the shared session was closed")
        elif samples and final[0][0] < max(samples):
            problems.append("the shared session's last_access is older than a value a worker saw")
    cycles = sum(r["cycles"] for r in outcome.reports)
    seconds = max((r["seconds"] for r in outcome.reports), default=0.0)
    return {
        "processes": len(outcome.reports) + len(outcome.hung) + len(outcome.crashed),
        "cycles": cycles,
        "errors": len(errors) + len(outcome.hung) + len(outcome.crashed) + revived,
        "rows_checked": sum(in_db.values()),
        "duplicates": len(duplicates),
        "lost": len(lost),
        "backwards": backwards,
        "last_access_samples": sum(len(r["own"]) + len(r["shared"]) for r in outcome.reports),
        "seconds": round(outcome.seconds, 1),
        "cycles_per_second": round(cycles / seconds, 2) if seconds else None,
        "problems": problems,
    }
