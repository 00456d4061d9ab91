"""1. ``Session.instance()`` per call, against the floor: a function returning a module global."""

from __future__ import annotations

import os
import timeit

from ome_session import Session, SessionManager

from ._context import Context
from ._results import Row
from ._stats import Summary

SECTION = "1. Session.instance()"
GETPID = "context: os.getpid() alone"
_FLOOR = object()


def _floor() -> object:
    return _FLOOR


def run(ctx: Context) -> None:
    with ctx.session_database(ctx.main_dsn):
        SessionManager().create_session(key=ctx.main_keys[0])  # a live session, as in a request
        loops = ctx.size(1_000_000, 200_000)
        repeats = ctx.size(15, 5)
        namespace = {"Session": Session, "floor": _floor, "os": os}
        timers = {
            "floor: function returning a module global": timeit.Timer("floor()", globals=namespace),
            "Session.instance()": timeit.Timer("Session.instance()", globals=namespace),
            GETPID: timeit.Timer("os.getpid()", globals=namespace),
        }
        samples: dict[str, list[float]] = {name: [] for name in timers}
        for _ in range(repeats):  # alternate, so neither gets the quieter moments
            for name, timer in timers.items():
                samples[name].append(timer.timeit(loops) / loops)
        Session.idle()
    floor_name, ours_name, _ = list(timers)
    note = f"timeit, {loops:,} calls per sample; spread over {repeats} samples"
    ctx.results.add(Row(SECTION, floor_name, "ns", Summary.of(samples[floor_name]), note=note))
    ours = ctx.results.add(Row(SECTION, ours_name, "ns", Summary.of(samples[ours_name]),
                               baseline=floor_name, note=note))
    ctx.results.add(Row(SECTION, GETPID, "ns", Summary.of(samples[GETPID]), baseline=floor_name,
                        note="for scale: the cost of one system call"))
    assert ours.ratio is not None and ours.summary is not None
    ctx.results.judge("Session.instance() within 3x of the floor", ours.ratio <= 3.0,
                      f"{ours.summary.p50 * 1e9:.1f} ns vs floor "
                      f"{ours.summary.p50 * 1e9 / ours.ratio:.1f} ns = {ours.ratio:.2f}x")
