"""6. Does resuming by key stay flat as ``ome_sessions`` grows from 1,000 to 1,000,000 rows?

Cold resumes (each key dropped from the resume cache first): what grows with the table is the
statement, which a warm resume does not send.

Each size is its own database, filled in bulk (one row in ten open, the rest closed history),
measured (without the WAL flush wait at commit) first with no statistics at all
(autovacuum kept away: a fresh install, or a table that grew faster than autovacuum ran),
then after ANALYZE. The planner's view of the resume
statement is kept for each case: its plan nodes, cost, and whether JIT compilation kicked in.
"""

from __future__ import annotations

import time

from ome_session import Session
from ome_session.backends.local import _sql

from . import _data, _whatif
from ._context import Context, autocommit_execute, resume, session_connection
from ._results import Row
from ._stats import Summary, interleaved

SECTION = "6. Scale: resume by key vs rows in ome_sessions (synchronous_commit off)"
FLAT = 1.25  # "flat": the large table's median within this factor of the small one's
TABLES = ("ome_sessions", "experimenters", "groups", "experimenter_group_map", "user_states")


def run(ctx: Context) -> None:
    small, large = 1_000, ctx.size(1_000_000, 50_000)
    dsns = {}
    for rows in (small, large):
        t0 = time.monotonic()
        dsns[rows] = ctx.server.create_database(f"bench_scale_{rows}", template=_data.TEMPLATE)
        _data.fill_sessions(dsns[rows], rows)
        print(f"  {rows:,} rows inserted in {time.monotonic() - t0:.1f} s", flush=True)
    plans = ctx.results.details.setdefault("scale_plans", {})
    for phase in ("never analysed", "analysed"):
        measured = {}
        for rows in (small, large):
            if phase == "analysed":
                _data.analyse(dsns[rows])
            fresh = _data.never_analysed(dsns[rows], TABLES)
            if (phase == "never analysed") != fresh:
                ctx.results.details.setdefault("warnings", []).append(f"{rows} rows: statistics state unexpected")
            keys = _data.open_keys(rows, 200)
            plans[f"{rows} rows, {phase}"] = _data.explain(dsns[rows], _sql.RESUME, _whatif.params(keys[:1])[0])
            measured[rows] = _measure(ctx, dsns[rows], keys)
        _rows(ctx, phase, (small, large), measured, plans)


def _measure(ctx: Context, dsn: str, keys: list[str]) -> dict[str, list[float]]:
    """Resume by key, interleaved with a bare round trip on the same connection.

    Without the commit's flush wait, which does not depend on the table's size and whose
    jitter would hide what does.
    """
    with ctx.session_database(dsn):
        resume(keys[0])
        conn = session_connection()
        autocommit_execute(conn)("SET synchronous_commit = off")

        def bare(i: int) -> None:
            conn.autocommit = True
            conn.execute(b"SELECT 1").fetchone()
            conn.autocommit = False

        cache = Session.instance().backend.resume_cache  # type: ignore[attr-defined]

        def cold(i: int) -> None:  # the statement is what depends on the table: never from memory
            key = keys[i % len(keys)]
            cache.drop(key)
            resume(key)

        return interleaved({"bare": bare, "resume": cold}, rounds=ctx.size(6, 3), batch=ctx.size(250, 50))


def _rows(ctx: Context, phase: str, sizes: tuple[int, int], measured: dict[int, dict[str, list[float]]],
          plans: dict[str, dict[str, object]]) -> None:
    small, large = sizes
    bare = f"bare round trip ({phase})"
    small_name = f"resume, {small:,} rows, {phase}"
    large_name = f"resume, {large:,} rows, {phase}"
    results = ctx.results
    results.add(Row(SECTION, bare, "µs", Summary.of(measured[small]["bare"]),
                    note=f"SELECT 1 on the session's connection, {small:,}-row database"))
    for rows, name, base in ((small, small_name, bare), (large, large_name, small_name)):
        plan = plans[f"{rows} rows, {phase}"]
        bare_here = Summary.of(measured[rows]["bare"]).p50
        ours = Summary.of(measured[rows]["resume"])
        note = (f"{ours.p50 / bare_here:.2f}x the bare round trip here; plan: "
                f"{', '.join(plan['nodes'][:3])}…; cost {plan['total_cost']}"  # type: ignore[index]
                f"{'; JIT' if plan['jit'] else ''}")
        results.add(Row(SECTION, name, "µs", ours, baseline=base, note=note))
    row = results.find(SECTION, large_name)
    assert row is not None and row.ratio is not None
    results.judge(f"resume latency flat from {small:,} to {large:,} rows ({phase}; flat = within {FLAT}x)",
                  row.ratio <= FLAT, f"p50 ratio {large:,}/{small:,} rows = {row.ratio:.2f}x")
