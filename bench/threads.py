"""9. Threaded workers: gunicorn, 2 workers x 4 threads in thread scope, against sync workers.

The same session app as the pre-fork measurement (resume by key + one query + idle, through
``SessionMiddleware``), served by: 2 sync workers (process scope, the default); 2 gthread workers
with 4 threads each in thread scope (each thread its own session, connections from each worker's
pool); the same threaded workers left in process scope (the middleware then serves one request
at a time per worker); and the bare app on 2 sync workers, the baseline. All run at once on
their own ports and are loaded in alternating rounds by the same load generator, with more
connections than sync workers can serve at once, so waiting shows.
"""

from __future__ import annotations

from contextlib import ExitStack

from . import prefork
from ._context import Context
from ._results import Row
from ._stats import Summary

SECTION = "9. Threaded workers (gunicorn, 2 workers)"
BARE = "bare app, 2 sync workers"
SYNC = "session app, 2 sync workers, process scope"
THREADED = "session app, 2 workers x 4 threads, thread scope"
SERIAL = "session app, 2 workers x 4 threads, process scope (one request at a time)"
_THREADS = ("--worker-class", "gthread", "--threads", "4")
_CONTENDERS: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
    BARE: ("bench._wsgi_apps:bare_app", {}, ("--worker-class", "sync")),
    SYNC: ("bench._wsgi_apps:session_app", {"OME_SESSION_SCOPE": "process"}, ("--worker-class", "sync")),
    THREADED: ("bench._wsgi_apps:session_app", {"OME_SESSION_SCOPE": "thread", "OME_SESSION_POOL_SIZE": "4"},
               _THREADS),
    SERIAL: ("bench._wsgi_apps:session_app", {"OME_SESSION_SCOPE": "process"}, _THREADS),
}


def run(ctx: Context) -> None:
    keys = ctx.main_keys
    keys_file = ctx.root / "keys.txt"
    keys_file.write_text("\n".join(keys) + "\n", encoding="ascii")
    loadgen = prefork._loadgen_choice(ctx)
    rounds, seconds, warmup = ctx.size(3, 1), ctx.size(4, 2), ctx.size(3, 1)
    rates: dict[str, list[float]] = {name: [] for name in _CONTENDERS}
    p50s: dict[str, list[float]] = {name: [] for name in _CONTENDERS}
    errors: dict[str, float] = dict.fromkeys(_CONTENDERS, 0)
    with ExitStack() as stack:
        ports = {name: stack.enter_context(prefork._gunicorn(ctx, app, keys[0], ctx.main_dsn, env=env,
                                                             workers=workers, tag="-threads"))
                 for name, (app, env, workers) in _CONTENDERS.items()}
        for port in ports.values():
            prefork._load(loadgen, port, keys_file, warmup, 0.0)
        for r in range(rounds):
            for name in (list(_CONTENDERS) if r % 2 == 0 else list(_CONTENDERS)[::-1]):
                result = prefork._load(loadgen, ports[name], keys_file, seconds, 0.0)
                rates[name].append(result["rate"])
                p50s[name].append(result["p50"])
                errors[name] += result["errors"]
                print(f"  {name}: {result['rate']:.0f} req/s, p50 {result['p50'] * 1e3:.2f} ms, "
                      f"errors {result['errors']}", flush=True)
    for name in _CONTENDERS:
        note = (f"{rounds} rounds of {seconds:g} s, {prefork.CONNECTIONS} client connections; median p50 "
                f"{Summary.of(p50s[name]).p50 * 1e3:.2f} ms; {errors[name]:g} errors")
        row = Row(SECTION, f"{name}: throughput", "req/s", Summary.of(rates[name]), note=note)
        baseline = None if name == BARE else (BARE if name == SYNC else SYNC)
        if baseline is not None:
            base = ctx.results.find(SECTION, f"{baseline}: throughput")
            assert base is not None and base.summary is not None and row.summary is not None
            row.baseline, row.ratio = f"{baseline}: throughput", row.summary.p50 / base.summary.p50
        ctx.results.add(row)
    threaded = ctx.results.find(SECTION, f"{THREADED}: throughput")
    bare = ctx.results.find(SECTION, f"{BARE}: throughput")
    assert threaded and bare and threaded.summary and bare.summary
    ctx.results.details["threads_vs_bare"] = threaded.summary.p50 / bare.summary.p50
    ctx.results.judge("thread scope serves without errors", errors[THREADED] == 0,
                      f"{errors[THREADED]:g} errors in {rounds} rounds")
