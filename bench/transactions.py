"""3. Ending units of work: ``Session.idle()`` with and without an open transaction, and
``commit_transaction()`` after a small write, each beside what plain psycopg needs for the same.

Only the call itself is timed; the resume before it (which makes the session active) is not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import psycopg
from psycopg import pq

from ome_session import Session, SessionManager

from ._context import Context, autocommit_execute, resume, session_connection
from ._results import Row
from ._server import counting
from ._stats import Summary, quiet_gc

SECTION = "3. Ending a unit of work"
BARE_RT = "bare round trip: SELECT 1 (autocommit)"
IDLE_NO_TX = "Session.idle(), no transaction open"
RAW_ROLLBACK = "psycopg: rollback() of an open transaction"
IDLE_TX = "Session.idle(), transaction open"
RAW_COMMIT = "psycopg: commit() after a one-row UPDATE"
COMMIT = "session.commit_transaction() after a one-row UPDATE"

_WRITE = "UPDATE user_states SET image_view = %s WHERE experimenter_id = %s"


def run(ctx: Context) -> None:
    keys, users = ctx.main_keys, ctx.lab.user_ids
    count = ctx.size(2000, 160)
    raw = psycopg.connect(ctx.main_dsn)
    try:
        with ctx.session_database(ctx.main_dsn):
            resume(keys[0])

            def bare(i: int) -> Callable[[], object]:
                raw.autocommit = True
                return lambda: raw.execute(b"SELECT 1").fetchone()

            def idle_no_tx(i: int) -> Callable[[], object]:
                SessionManager().create_session(key=keys[i % len(keys)])
                return Session.idle

            def raw_rollback(i: int) -> Callable[[], object]:
                raw.autocommit = False
                raw.execute(b"SELECT 1")
                return raw.rollback

            def idle_tx(i: int) -> Callable[[], object]:
                session = SessionManager().create_session(key=keys[i % len(keys)])
                session.factory.obtain_dbh().execute(b"SELECT 1")
                return Session.idle

            def raw_commit(i: int) -> Callable[[], object]:
                raw.autocommit = False
                raw.execute(_WRITE, (f"view {i}", users[i % len(users)]))
                return raw.commit

            def commit(i: int) -> Callable[[], object]:
                session = SessionManager().create_session(key=keys[i % len(keys)])
                session.factory.obtain_dbh().execute(_WRITE, (f"view {i}", users[i % len(users)]))
                return session.commit_transaction

            contenders = {BARE_RT: bare, IDLE_NO_TX: idle_no_tx, RAW_ROLLBACK: raw_rollback,
                          IDLE_TX: idle_tx, RAW_COMMIT: raw_commit, COMMIT: commit}
            counted = _count(ctx, contenders, raw)
            samples: dict[str, list[float]] = {name: [] for name in contenders}
            rounds = 4
            for r in range(rounds):
                for name, prepare in contenders.items():
                    samples[name].extend(_time_prepared(prepare, count // rounds, r * count))
            Session.idle()
    finally:
        raw.close()
    baselines = {IDLE_NO_TX: BARE_RT, IDLE_TX: RAW_ROLLBACK, COMMIT: RAW_COMMIT}
    for name in contenders:
        ctx.results.add(Row(SECTION, name, "µs", Summary.of(samples[name]), baseline=baselines.get(name),
                            statements=counted[name]))
    idle = ctx.results.find(SECTION, IDLE_NO_TX)
    assert idle is not None and idle.summary is not None
    ctx.results.judge("idle() with no open transaction costs no round trip", idle.statements == 0,
                      f"{idle.statements:g} statements per idle (server count); "
                      f"{idle.summary.p50 * 1e6:.1f} µs")


def _time_prepared(prepare: Callable[[int], Callable[[], object]], count: int, start: int) -> list[float]:
    """Time only the call ``prepare(i)`` returns, not the preparation."""
    samples = []
    with quiet_gc():
        for i in range(start, start + count):
            call = prepare(i)
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
    return samples


def _count(ctx: Context, contenders: Mapping[str, Callable[[int], Callable[[], object]]],
           raw: psycopg.Connection[object]) -> dict[str, float]:
    """Statements sent by the timed call alone: those the server logs after a marker statement
    sent between the preparation and the call (inside the transaction, if one is open)."""
    counted: dict[str, float] = {}
    for name, prepare in contenders.items():
        _time_prepared(prepare, 10, 0)  # warm up: prepared statements, caches
        conn = session_connection() if name in (IDLE_NO_TX, IDLE_TX, COMMIT) else raw
        label = "count_tx_" + "".join(ch for ch in name.lower() if ch.isalnum())[:24]
        execute = autocommit_execute(conn)
        ops = 20
        with counting(ctx.server, execute, label) as count:
            count.ops = ops
            for i in range(ops):
                call = prepare(i)
                if conn.info.transaction_status == pq.TransactionStatus.IDLE:
                    execute(_MARK)
                else:
                    conn.execute(_MARK.encode())
                call()
                execute(_END)
        timed = _after_marks(count.statements)
        counted[name] = len(timed) / ops
        ctx.results.details.setdefault("statements", {})[name] = timed[: max(1, round(counted[name]))]
        print(f"  {name}: {counted[name]:g} statements", flush=True)
    return counted


_MARK = "SELECT 'bench mark: call'"
_END = "SELECT 'bench mark: end'"


def _after_marks(statements: list[str]) -> list[str]:
    """The statements between each pair of markers: what the timed calls sent."""
    timed: list[str] = []
    inside = False
    for statement in statements:
        if "bench mark: " in statement:
            inside = "bench mark: call" in statement
            continue
        if inside:
            timed.append(statement)
    return timed
