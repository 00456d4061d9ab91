"""11. ACL and table scale: does a request cost what the user can see, not his groups or the table?

Three targets, each a ratio measured in this run:

- resume by key for a user with one group against a leader of 10,000 members who belongs to
  1,000 groups (<= 1.2x), warm (from the resume cache) and cold (the resume statement);
- ``find_objects("Project", __limit=10)`` and ``count_objects("Project")`` for a user who sees 100
  projects, from 10,000 to 1,000,000 rows (100,000 with --quick), his rows at the start of the
  table, at its end or spread over it, against the 10,000-row table with his rows at the start
  (<= 1.5x);
- the leader's ``count_objects("Project")`` (his members' rows: nearly the whole table) against
  a hand-written SQL count with the same meaning, his groups given to it as constants (<= 1.5x).

Each size is its own database (``_acl_data``: generate_series on the server), vacuumed and
analysed, autovacuum off and JIT off (``jit_above_cost`` would otherwise charge the leader's large
counts a compilation that says nothing about the statements). Reads run inside one open unit of
work, as a request does, with statements prepared after their fifth use as psycopg does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from ome_session import Factory, Session, SessionManager

from . import _acl_data, _data
from ._context import Context, autocommit_execute, resume, session_connection
from ._results import Row
from ._stats import Summary, interleaved, time_each

SECTION = "11. ACL and table scale"
RESUME_FLAT = 1.2
TABLE_FLAT = 1.5
LEADER_VS_SQL = 1.5
SMALL_ROWS = 10_000


def run(ctx: Context) -> None:
    sizes = (SMALL_ROWS, 100_000, *(() if ctx.quick else (1_000_000,)))
    dsns = {rows: _database(ctx, rows) for rows in sizes}
    _resume(ctx, dsns[SMALL_ROWS])
    _reads(ctx, dsns)
    _judge_reads(ctx, sizes)
    _leader_count(ctx, dsns[sizes[-1]], sizes[-1])


def _database(ctx: Context, rows: int) -> str:
    t0 = time.monotonic()
    name = f"bench_acl_{rows}"
    dsn = ctx.server.create_database(name, template=_data.TEMPLATE)
    with psycopg.connect(ctx.server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET jit = off").format(sql.Identifier(name)))
    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE projects CASCADE")
        _acl_data.build_people(conn)
        _acl_data.fill_projects(conn, rows)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"  {rows:,} projects and {_acl_data.MEMBERS:,} members in {time.monotonic() - t0:.1f} s", flush=True)
    return dsn


def _resume(ctx: Context, dsn: str) -> None:
    """Resume by key + idle: one group against 1,000 groups and 10,000 members led; warm (from the
    resume cache) and cold (the key dropped from memory first: the resume statement runs)."""
    small, leader = _acl_data.key("small_early"), _acl_data.key("leader")
    with ctx.session_database(dsn):
        resume(small)
        resume(leader)
        autocommit_execute(session_connection())("SET synchronous_commit = off")
        cache = Session.instance().backend.resume_cache  # type: ignore[attr-defined]

        def cold(key: str) -> Callable[[int], None]:
            def op(i: int) -> None:
                cache.drop(key)
                resume(key)
            return op

        measured = interleaved({"small": lambda i: resume(small), "leader": lambda i: resume(leader),
                                "small cold": cold(small), "leader cold": cold(leader)},
                               rounds=ctx.size(6, 3), batch=ctx.size(300, 100))
    for how, note in (("", "warm: from the resume cache; synchronous_commit off (the same flush wait for both)"),
                      (" cold", "cold: the key dropped from memory first, so the resume statement runs")):
        base = f"resume{how} + idle, a user with 1 group"
        ctx.results.add(Row(SECTION, base, "µs", Summary.of(measured[f"small{how}"]), note=note))
        row = ctx.results.add(Row(SECTION, f"resume{how} + idle, a leader of {_acl_data.MEMBERS:,} members in "
                                  f"{_acl_data.MANY + 1:,} groups", "µs", Summary.of(measured[f"leader{how}"]),
                                  baseline=base))
        assert row.ratio is not None
        ctx.results.judge(f"resume{how or ' warm'} flat in ACL size (<= {RESUME_FLAT}x)", row.ratio <= RESUME_FLAT,
                          f"leader / one group = {row.ratio:.2f}x")


def _name(what: str, rows: int, placement: str) -> str:
    return f"{what}, {rows:,} rows, his 100 {placement}"


def _reads(ctx: Context, dsns: dict[int, str]) -> None:
    """The small users' first page and count, each in his own open unit of work (as a request).

    Every (size, placement) case gets a batch in each round, in alternating order, so drift lands
    on all of them alike; each batch starts with a fresh session and a warm-up.
    """
    cases = [(rows, placement) for rows in dsns for placement in _acl_data.PLACEMENTS]
    reads: dict[str, Callable[[Factory], Any]] = {
        "find limit 10": lambda factory: factory.find_objects("Project", __limit=10),
        "count": lambda factory: factory.count_objects("Project"),
    }
    samples: dict[tuple[str, int, str], list[float]] = {(what, *case): [] for what in reads for case in cases}
    for r in range(ctx.size(6, 3)):
        for rows, placement in cases if r % 2 == 0 else cases[::-1]:
            with ctx.session_database(dsns[rows]):
                factory = SessionManager().create_session(key=_acl_data.key(f"small_{placement}")).factory
                assert len(factory.find_objects("Project")) == _acl_data.VISIBLE == factory.count_objects("Project")
                for what, read in reads.items():
                    samples[(what, rows, placement)] += _batch(read, factory, ctx.size(200, 50))
    for (what, rows, placement), timed in samples.items():
        name, base = _name(what, rows, placement), _name(what, SMALL_ROWS, "early")
        ctx.results.add(Row(SECTION, name, "µs", Summary.of(timed), baseline=None if name == base else base))


def _batch(read: Callable[[Factory], Any], factory: Factory, count: int, budget: float = 2.0) -> list[float]:
    """``count`` timed calls after a warm-up (past psycopg's preparing), fewer when they exceed
    ``budget`` seconds: a read that costs the whole table must not stretch the run to an hour."""
    time_each(lambda i: read(factory), 8)
    timed: list[float] = []
    deadline = time.monotonic() + budget
    while len(timed) < count and (len(timed) < 5 or time.monotonic() < deadline):
        timed += time_each(lambda i: read(factory), 5)
    return timed


def _judge_reads(ctx: Context, sizes: tuple[int, ...]) -> None:
    for what in ("find limit 10", "count"):
        ratios = {}
        for rows in sizes:
            for placement in _acl_data.PLACEMENTS:
                row = ctx.results.find(SECTION, _name(what, rows, placement))
                if row is not None and row.ratio is not None:
                    ratios[(rows, placement)] = row.ratio
        (rows, placement), worst = max(ratios.items(), key=lambda item: item[1])
        ctx.results.judge(f"{what} flat from {sizes[0]:,} to {sizes[-1]:,} rows, wherever the 100 visible "
                          f"rows sit (<= {TABLE_FLAT}x)", worst <= TABLE_FLAT,
                          f"worst {worst:.2f}x ({rows:,} rows, {placement})")


def _leader_count(ctx: Context, dsn: str, rows: int) -> None:
    """The leader's count through the library against the same count in hand-written SQL."""
    with ctx.session_database(dsn):
        factory = SessionManager().create_session(key=_acl_data.key("leader")).factory
        conn = factory.obtain_dbh()
        leader = Session.instance().experimenter_id
        groups = [r[0] for r in conn.execute(
            "SELECT group_id FROM experimenter_group_map WHERE experimenter_id = %(u)s"
            " UNION SELECT group_id FROM experimenters WHERE id = %(u)s"
            " UNION SELECT id FROM groups WHERE leader_id = %(u)s", {"u": leader})]
        by_hand = "SELECT count(*) FROM projects WHERE owner_id = %s OR group_id = ANY(%s)"

        def hand(i: int) -> Any:
            row = conn.execute(by_hand, (leader, groups)).fetchone()
            return row[0] if row else None

        ours: Callable[[int], Any] = lambda i: factory.count_objects("Project")  # noqa: E731
        assert ours(0) == hand(0) == rows - 3 * _acl_data.VISIBLE
        measured = interleaved({"hand": hand, "ours": ours}, rounds=ctx.size(5, 3), batch=ctx.size(6, 4), warmup=3)
        first_page = _batch(lambda f: f.find_objects("Project", __limit=10), factory, ctx.size(500, 100))
    ctx.results.add(Row(SECTION, f"find limit 10 for the leader ({len(groups):,} groups), {rows:,} rows", "µs",
                        Summary.of(first_page), baseline=_name("find limit 10", SMALL_ROWS, "early"),
                        note="the first 10 rows of each of his groups, merged: no target"))
    base = f"hand-written SQL count, the leader's {len(groups):,} groups as constants, {rows:,} rows"
    ctx.results.add(Row(SECTION, base, "ms", Summary.of(measured["hand"]), note=by_hand))
    row = ctx.results.add(Row(SECTION, f"count_objects('Project') for the leader, {rows:,} rows", "ms",
                              Summary.of(measured["ours"]), baseline=base))
    assert row.ratio is not None
    ctx.results.judge(f"leader's count within {LEADER_VS_SQL}x of hand-written SQL", row.ratio <= LEADER_VS_SQL,
                      f"{row.ratio:.2f}x at {rows:,} rows")
