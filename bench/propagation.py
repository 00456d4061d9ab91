"""9. Propagation: how long a change made in one process takes to count in warm workers.

Eight worker processes (forked, each with its own session and connection, as pre-fork web workers
are) each resume their own key from memory, one request per millisecond. The measuring process then
closes the eight sessions with one plain SQL statement on a connection of its own, and each worker
notes the monotonic time (one clock for every process on the machine) of its first refused resume.
A round's figure is the time from just before the statement was sent until the last worker refused:
the commit, the message's way through the server to each worker's socket, and the worker's next
request. Then new sessions, and the next round.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection

import psycopg

from ome_session import Session, SessionManager, _keys
from ome_session.errors import SessionKeyError

from ._context import Context
from ._results import Row
from ._stats import Summary

SECTION = "9. Propagation: a change in one process, 8 warm workers resuming"
WORKERS = 8
PAUSE = 0.001  # between a worker's requests
ALL = "until all 8 workers refuse"
EACH = "until one worker refuses (every worker, every round)"
COMMIT = "context: the change's own round trip (the UPDATE and its commit), before any message leaves"


def run(ctx: Context) -> None:
    rounds = ctx.size(40, 8)
    context = multiprocessing.get_context("fork")
    if Session.has_instance():
        Session.delete_instance(force=True)  # nothing of this process's goes to the workers
    pipes: list[Connection] = []
    workers = []
    for _ in range(WORKERS):
        mine, theirs = context.Pipe()
        process = context.Process(target=_worker, args=(ctx.main_dsn, theirs), daemon=True)
        process.start()
        pipes.append(mine)
        workers.append(process)
    all_refused: list[float] = []
    each: list[float] = []
    commits: list[float] = []
    try:
        with psycopg.connect(ctx.main_dsn, autocommit=True) as conn:
            for r in range(rounds):
                ids = []
                for w, pipe in enumerate(pipes):
                    key = _keys.new_key()
                    row = conn.execute("INSERT INTO ome_sessions (key_digest, experimenter_id) VALUES (%s, %s) "
                                       "RETURNING id", (_keys.digest(key), ctx.lab.user_for(r * WORKERS + w))).fetchone()
                    assert row is not None
                    ids.append(row[0])
                    pipe.send(key)
                for pipe in pipes:
                    assert pipe.recv() == "warm"
                time.sleep(0.01)  # let every worker be in its request loop
                start = time.monotonic()
                conn.execute("UPDATE ome_sessions SET closed_at = now() WHERE id = ANY(%s)", (ids,))
                commits.append(time.monotonic() - start)
                refused = [pipe.recv() for pipe in pipes]
                each += [t - start for t in refused]
                all_refused.append(max(refused) - start)
    finally:
        for pipe in pipes:
            pipe.send(None)
        for process in workers:
            process.join(timeout=30)
    ctx.results.add(Row(SECTION, ALL, "ms", Summary.of(all_refused),
                        note=f"{rounds} rounds; workers resume from memory every {PAUSE * 1e3:g} ms"))
    ctx.results.add(Row(SECTION, EACH, "ms", Summary.of(each)))
    ctx.results.add(Row(SECTION, COMMIT, "ms", Summary.of(commits)))
    p99 = Summary.of(all_refused).p99
    ctx.results.judge("propagation p99 <= 10 ms (until all 8 warm workers refuse)", p99 <= 0.010,
                      f"p99 {p99 * 1e3:.2f} ms, p50 {Summary.of(all_refused).p50 * 1e3:.2f} ms")


def _worker(dsn: str, pipe: Connection) -> None:
    """Resume the key it is given until it is refused; report when, on the shared monotonic clock."""
    manager = SessionManager(dsn)
    while (key := pipe.recv()) is not None:
        manager.create_session(key=key)  # first sight: the statement
        Session.idle()
        manager.create_session(key=key)  # from memory from now on
        Session.idle()
        pipe.send("warm")
        while True:
            try:
                manager.create_session(key=key)
            except SessionKeyError:
                pipe.send(time.monotonic())
                break
            Session.idle()
            time.sleep(PAUSE)
