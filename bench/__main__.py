"""Run the benchmark suite: ``python -m bench [--quick] [--only NAME ...]``.

Starts a private PostgreSQL server in a temporary directory, builds the data, runs each
measurement in this process (the pre-fork and import measurements start their own children),
writes ``bench/results/results.md`` and ``results.json``, and removes the server and every
temporary file at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from ome_session import Session

from . import (
    _data,
    acl_scale,
    imports,
    instance,
    omero,
    prefork,
    propagation,
    resume,
    scale,
    tempfiles,
    threads,
    transactions,
)
from ._context import Context
from ._report import write
from ._results import Results
from ._server import BenchServer

MEASUREMENTS: dict[str, Callable[[Context], None]] = {
    "instance": instance.run,
    "resume": resume.run,
    "propagation": propagation.run,
    "transactions": transactions.run,
    "tempfiles": tempfiles.run,
    "scale": scale.run,
    "prefork": prefork.run,
    "threads": threads.run,
    "imports": imports.run,
    "omero": omero.run,
    "acl": acl_scale.run,
}

MAIN_ROWS = 1000
MAIN_KEYS = 50


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (fewer repetitions, smaller data)")
    parser.add_argument("--only", nargs="+", choices=sorted(MEASUREMENTS), metavar="NAME",
                        help=f"run only these measurements ({', '.join(MEASUREMENTS)})")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator for the pre-fork measurement (auto: wrk if installed)")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="directory for results.md and results.json")
    args = parser.parse_args(argv)

    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="ome-session-bench-"))
    os.chmod(root, 0o711)  # the server's account must pass through to its cluster directory
    _isolate(root)
    signal.signal(signal.SIGTERM, _interrupt)
    server = BenchServer(root)
    results = Results()
    results.details["run"] = {"mode": "quick" if args.quick else "full", "loadgen": args.loadgen,
                              "load_average_start": _load_average()}
    # Sessions are deleted between measurements on purpose; that warning says nothing here.
    warnings.filterwarnings("ignore", message="deleting the process's session")
    try:
        print(f"starting PostgreSQL in {root}", flush=True)
        server.start()
        ctx = _prepare(server, root, args.quick, results)
        for name in args.only or MEASUREMENTS:
            print(f"== {name}", flush=True)
            t0 = time.monotonic()
            try:
                MEASUREMENTS[name](ctx)
            except Exception as exc:  # one broken measurement must not lose the others
                traceback.print_exc()
                results.skipped[name] = f"failed: {type(exc).__name__}: {exc}"
            finally:
                if Session.has_instance():
                    Session.delete_instance(force=True)
            results.details.setdefault("seconds", {})[name] = round(time.monotonic() - t0, 1)
        results.details["run"]["postgres"] = server.version()
    finally:
        if Session.has_instance():
            Session.delete_instance(force=True)
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    results.details["run"]["seconds"] = round(time.monotonic() - started, 1)
    results.details["run"]["load_average_end"] = _load_average()
    md, js = write(results, args.output)
    print(f"\nwrote {md} and {js} in {time.monotonic() - started:.0f} s", flush=True)
    return 1 if any(v.startswith("failed") for v in results.skipped.values()) else 0


def _prepare(server: BenchServer, root: Path, quick: bool, results: Results) -> Context:
    tmp_dir = root / "tmp"
    tmp_dir.mkdir(mode=0o700)
    lab = _data.build_template(server, tmp_dir)
    main_dsn = server.create_database("bench_ome", template=_data.TEMPLATE)
    _data.fill_sessions(main_dsn, MAIN_ROWS)
    _data.analyse(main_dsn)
    return Context(server=server, root=root, lab=lab, quick=quick, results=results, main_dsn=main_dsn,
                   main_keys=_data.open_keys(MAIN_ROWS, MAIN_KEYS))


def _isolate(root: Path) -> None:
    """Nothing of the developer's own ome-session setup is read or written by the run."""
    os.environ.pop("OME_SESSION_DSN", None)
    os.environ["OME_SESSION_CONFIG"] = str(root / "config" / "settings.json")
    os.environ["OME_SESSIONDIR"] = str(root / "sessions")
    os.environ["OME_SESSION_DATA_DIR"] = str(root / "data")


def _load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages: figures from a busy machine are suspect."""
    load = [round(x, 2) for x in os.getloadavg()]
    if load[0] > (os.cpu_count() or 1):
        print(f"warning: the machine is busy (load average {load[0]}): figures will be noisy", flush=True)
    return load


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
