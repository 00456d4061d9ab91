"""2. Resuming a session by key, the per-request pattern, against three other ways to do it.

Contenders, each on its own connection to the same server, each cycling through many users' keys:
the bare round trip (``SELECT 1`` on the session's own connection: the physical limit of any
resume), ome-session (``SessionManager().create_session(key=...)`` then ``Session.idle()``) warm
(a key this process resumed before: from memory, after draining the socket) and cold (first sight:
the key is dropped from the resume cache first, so the one statement runs), the original OME
sequence (``_perl_replica``) and Django's database session backend. Warm and cold cycle through
two disjoint halves of the keys, so neither disturbs the other.

Every resume writes (it slides the key's idle expiry), so it ends in a commit; with PostgreSQL's
default ``synchronous_commit = on`` that commit waits for a WAL flush, which a bare ``SELECT 1``
never does. The contest therefore runs twice: with the default, and with ``synchronous_commit =
off`` (no flush wait), which isolates the cost of the round trips themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg

from . import _data, _django, _perl_replica, _whatif
from ome_session import Session

from ._context import Context, autocommit_execute, resume, session_connection
from ._results import Row
from ._server import counting
from ._stats import Summary, interleaved, time_each

BARE = "bare round trip: SELECT 1 on the session's connection"
OURS = "ome-session warm: create_session(key=) from memory + Session.idle()"
COLD = "ome-session cold: create_session(key=) of a key not in memory + Session.idle()"
PERL = "original OME createWithKey (replica, plain psycopg)"
PERL_FRESH = "original OME createWithKey, never-analysed tables"
DJANGO = "Django db SessionStore(key): load + save"
STATEMENT = "what-if: the library's resume statement alone, prepared (plain psycopg)"
UNPREPARED = "what-if: that statement unprepared (as after every rollback)"
FUNCTION = "what-if: that statement in a PL/pgSQL function, called unprepared"
THROTTLED = f"what-if: that statement sliding expiry at most every {_whatif.THROTTLE_S} s"
ROW_READ = "what-if floor: only the indexed read of the session row (no ACL, no touch)"
_LABELS = {BARE: "bare", OURS: "ome", COLD: "cold", PERL: "perl", DJANGO: "django", STATEMENT: "stmt",
           UNPREPARED: "unprepared", FUNCTION: "function", THROTTLED: "throttled", ROW_READ: "row_read"}

MODES = {"on": "2a. Resume by key (synchronous_commit on, the default)",
         "off": "2b. Resume by key (synchronous_commit off)"}


def run(ctx: Context) -> None:
    server = ctx.server
    super_user, perl_keys = _data.build_perl_database(server, "bench_perl", analysed=True)
    fresh_super, fresh_keys = _data.build_perl_database(server, "bench_perl_fresh", analysed=False)
    django_keys = _django.setup(server, users=len(ctx.lab.user_ids))
    keys, cold_keys = ctx.main_keys[::2], ctx.main_keys[1::2]
    perl = psycopg.connect(server.dsn("bench_perl"))
    fresh = psycopg.connect(server.dsn("bench_perl_fresh"))
    plain = psycopg.connect(ctx.main_dsn, autocommit=True)
    unprepared = psycopg.connect(ctx.main_dsn, autocommit=True, prepare_threshold=None)
    try:
        with ctx.session_database(ctx.main_dsn):
            for key in keys:  # seen once: from memory from now on
                resume(key)
            conn = session_connection()
            cache = Session.instance().backend.resume_cache  # type: ignore[attr-defined]

            def cold(i: int) -> None:
                key = cold_keys[i % len(cold_keys)]
                cache.drop(key)
                resume(key)

            def bare(i: int) -> None:
                conn.autocommit = True
                conn.execute(b"SELECT 1").fetchone()
                conn.autocommit = False

            ops: dict[str, Callable[[int], object]] = {
                BARE: bare,
                OURS: lambda i: resume(keys[i % len(keys)]),
                COLD: cold,
                PERL: lambda i: _perl_replica.create_with_key(perl, perl_keys[i % len(perl_keys)],
                                                              super_user=super_user),
                DJANGO: lambda i: _django.resume(django_keys[i % len(django_keys)]),
            }
            runs: dict[str, Callable[[str], object]] = {
                BARE: autocommit_execute(conn), OURS: autocommit_execute(conn), COLD: autocommit_execute(conn),
                PERL: autocommit_execute(perl), DJANGO: _django.execute(),
            }
            whatif = _whatif.statements()
            if whatif:
                _whatif.install_functions(ctx.main_dsn, keys)
                values = _whatif.params(keys)
                function = _whatif.call("statement")
                ops[STATEMENT] = lambda i: _whatif.run(plain, whatif["statement"], values[i % len(values)])
                ops[UNPREPARED] = lambda i: _whatif.run(unprepared, whatif["statement"], values[i % len(values)])
                ops[FUNCTION] = lambda i: _whatif.run(unprepared, function, values[i % len(values)])
                ops[THROTTLED] = lambda i: _whatif.run(plain, whatif["throttled"], values[i % len(values)])
                ops[ROW_READ] = lambda i: _whatif.run(plain, _whatif.ROW_READ, values[i % len(values)])
                runs[STATEMENT] = runs[THROTTLED] = runs[ROW_READ] = autocommit_execute(plain)
                runs[UNPREPARED] = runs[FUNCTION] = autocommit_execute(unprepared)
            else:
                ctx.results.skipped["resume what-if"] = "skipped: the library's resume SQL pieces moved"
            statements = _count(ctx, ops, runs)
            for mode, section in MODES.items():
                for execute in {id(r): r for r in runs.values()}.values():
                    execute(f"SET synchronous_commit = {mode}")
                samples = interleaved(ops, rounds=ctx.size(10, 3), batch=ctx.size(200, 30))
                for name in ops:
                    note = ""
                    if name == STATEMENT:
                        cold = Summary.of(samples[COLD]).p50 - Summary.of(samples[STATEMENT]).p50
                        note = f"a cold create_session + idle adds {cold * 1e6:.0f} µs to the statement (medians)"
                    ctx.results.add(Row(section, name, "µs", Summary.of(samples[name]),
                                        baseline=None if name == BARE else BARE,
                                        statements=statements[name], note=note))
                _judge(ctx, section, mode)
            _never_analysed(ctx, fresh, fresh_super, fresh_keys, statements)
    finally:
        perl.close()
        fresh.close()
        plain.close()
        unprepared.close()
    ctx.results.details["resume_versions"] = {"django": _django.version(), "psycopg": psycopg.__version__}


def _count(ctx: Context, ops: dict[str, Callable[[int], object]],
           runs: dict[str, Callable[[str], object]]) -> dict[str, float]:
    """Statements per operation, counted by the server, after a warm-up (prepared statements)."""
    per_op: dict[str, float] = {}
    samples = ctx.results.details.setdefault("statements", {})
    for name, op in ops.items():
        time_each(op, 10)
        label = "count_" + _LABELS[name]
        with counting(ctx.server, runs[name], label) as count:
            count.ops = 20
            for i in range(count.ops):
                op(i)
        per_op[name] = count.per_op
        samples[name] = count.sample()
        print(f"  {name}: {count.per_op:g} statements per resume", flush=True)
    return per_op


def _judge(ctx: Context, section: str, mode: str) -> None:
    results = ctx.results
    ours, cold = results.find(section, OURS), results.find(section, COLD)
    bare, perl = results.find(section, BARE), results.find(section, PERL)
    assert ours and cold and bare and perl and ours.summary and cold.summary and bare.summary and perl.summary
    assert ours.ratio is not None and cold.ratio is not None
    results.judge(f"warm resume + idle <= 0.1x a bare round trip (synchronous_commit {mode})",
                  ours.ratio <= 0.1,
                  f"{ours.summary.p50 * 1e6:.1f} µs vs {bare.summary.p50 * 1e6:.0f} µs = {ours.ratio:.3f}x")
    results.judge(f"cold resume + idle <= 1.5x a bare round trip (synchronous_commit {mode})",
                  cold.ratio <= 1.5,
                  f"{cold.summary.p50 * 1e6:.0f} µs vs {bare.summary.p50 * 1e6:.0f} µs = {cold.ratio:.2f}x")
    speedup = perl.summary.p50 / ours.summary.p50
    results.judge(f"the original sequence >= 10x slower than a warm resume (synchronous_commit {mode})",
                  speedup >= 10.0,
                  f"{perl.summary.p50 * 1e6:.0f} µs / {ours.summary.p50 * 1e6:.1f} µs = {speedup:.0f}x")
    if mode == "on":
        results.judge("a warm resume sends nothing", ours.statements == 0.0,
                      f"{ours.statements:g} statements per resume, counted by the server")
        results.judge("a cold resume is exactly one statement (one round trip)", cold.statements == 1.0,
                      f"{cold.statements:g} statements per resume, counted by the server")


def _never_analysed(ctx: Context, conn: psycopg.Connection[object], super_user: int, keys: list[str],
                    statements: dict[str, float]) -> None:
    """The original sequence on tables nobody analysed: where the planner's JIT trap shows."""
    section = MODES["on"]
    autocommit_execute(conn)("SET synchronous_commit = on")
    plans = ctx.results.details.setdefault("original_acl_query_plans", {})
    for name, analysed_or_not in (("bench_perl", "analysed"), ("bench_perl_fresh", "never analysed")):
        dsn = ctx.server.dsn(name)
        with psycopg.connect(dsn) as lookup:
            row = lookup.execute("SELECT attribute_id FROM experimenters WHERE ome_name = 'user001'").fetchone()
        plan = _data.explain(dsn, _perl_replica.VISIBLE_USERS, {"me": row[0] if row else 0})
        plans[analysed_or_not] = {k: plan[k] for k in ("planning_ms", "execution_ms", "jit", "total_cost")}
    fresh_ok = _data.never_analysed(ctx.server.dsn("bench_perl_fresh"), _perl_replica.TABLES)
    samples = time_each(lambda i: _perl_replica.create_with_key(conn, keys[i % len(keys)], super_user=super_user),
                        ctx.size(40, 10))
    fresh_plan = plans["never analysed"]
    note = "tables never analysed" if fresh_ok else "autovacuum analysed the tables meanwhile"
    note += (f"; its visible-users query: planner cost {fresh_plan['total_cost']} "
             f"(analysed: {plans['analysed']['total_cost']}), JIT {'used' if fresh_plan['jit'] else 'not used'}")
    ctx.results.add(Row(section, PERL_FRESH, "µs", Summary.of(samples), baseline=BARE,
                        statements=statements[PERL], note=note))
