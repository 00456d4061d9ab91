"""The soak run: the concurrency and outage cases, outside pytest, for a number of minutes.

``scripts/soak [MINUTES] [--processes N] [--cycles N]``. Concurrency rounds (N processes x N
cycles, each on a fresh database) run one after another until the time is up; a round that has
started is finished, so every round is complete and its counts exact. Meanwhile another process
stops and starts a second server under a working session, round after round. Both servers are
throwaway ones, removed at the end. Exit status 0 when nothing was lost, doubled or stuck.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.helpers import throwaway_cluster

from . import _concurrency, _outage, _setup


def _outages(stop: Any, result: Path, workdir: Path) -> None:
    """Stop and start a server of its own under a session until told to stop; counts to ``result``."""
    totals: dict[str, Any] = {"rounds": 0, "rows_checked": 0, "problems": []}
    with throwaway_cluster(synchronous_commit="on") as cluster:
        dsn = _outage.prepare(cluster, str(workdir / "outage-tmp"))
        while totals["rounds"] == 0 or not stop.is_set():
            number = totals["rounds"]
            figures = _outage.outage_round(cluster, dsn, number, mode=("fast", "immediate")[number % 2])
            totals["rounds"] += 1
            totals["rows_checked"] = figures["rows_checked"]
            totals["problems"] += figures["problems"]
            print(f"outage round {number + 1}: {figures['rows_checked']} committed rows intact, error after "
                  f"{figures['seconds_to_error']}s, problems: {figures['problems'] or 'none'}", flush=True)
    result.write_text(json.dumps(totals))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.splitlines()[0])
    parser.add_argument("minutes", nargs="?", type=float, default=5.0, help="how long to go on (default 5)")
    parser.add_argument("--processes", type=int, default=8, help="concurrent worker processes (default 8)")
    parser.add_argument("--cycles", type=int, default=500, help="cycles per process and round (default 500)")
    args = parser.parse_args(argv)
    deadline = time.time() + args.minutes * 60
    workdir = Path(tempfile.mkdtemp(prefix="ome-session-soak-"))
    argon2 = _concurrency.argon2_seconds()
    cores = os.cpu_count() or 1
    estimate = args.processes * args.cycles * argon2 / min(cores, args.processes)
    print(f"soak: {args.minutes:g} min; {args.processes} processes x {args.cycles} cycles per round; argon2id "
          f"verify {argon2:.3f}s, so a round takes roughly {estimate / 60:.1f} min on {cores} cores "
          "(a started round is always finished)", flush=True)

    context = multiprocessing.get_context("fork")  # forked before this process has any thread
    stop = context.Event()
    outage_result = workdir / "outages.json"
    outages = context.Process(target=_outages, args=(stop, outage_result, workdir), name="outages")
    outages.start()
    rounds: list[dict[str, Any]] = []
    try:
        with throwaway_cluster() as cluster:
            while not rounds or time.time() < deadline:
                dsn = _setup.new_database(cluster, prefix="soak")
                _setup.add_users(dsn, [], tmp_dir=str(workdir / "tmp"))
                outcome = _concurrency.run_round(
                    dsn, workdir / f"round-{len(rounds)}", processes=args.processes, cycles=args.cycles,
                    join_timeout=max(600.0, 4 * estimate))
                figures = _concurrency.check(dsn, outcome)
                rounds.append(figures)
                print(f"concurrency round {len(rounds)}: " + ", ".join(
                    f"{k}={v}" for k, v in figures.items() if k != "problems"), flush=True)
                for problem in figures["problems"]:
                    print(f"  PROBLEM: {problem}", flush=True)
    finally:
        stop.set()
        outages.join(600)
        if outages.is_alive():
            outages.kill()
    summary = json.loads(outage_result.read_text()) if outage_result.exists() else None
    totals = {name: sum(r[name] for r in rounds) for name in ("cycles", "errors", "rows_checked", "duplicates",
                                                              "lost", "backwards")}
    print("soak: concurrency " + ", ".join(f"{k}={v}" for k, v in totals.items()) + f" in {len(rounds)} rounds")
    if summary is None:
        print("soak: the outage process left no report (it crashed or hung)")
        return 1
    print(f"soak: outages rounds={summary['rounds']}, committed rows intact={summary['rows_checked']}, "
          f"problems={len(summary['problems'])}")
    for problem in summary["problems"]:
        print(f"  PROBLEM: {problem}")
    bad = any(r["problems"] for r in rounds) or summary["problems"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
