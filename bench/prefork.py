"""5. A pre-fork server: gunicorn, 2 sync workers on loopback, with and without a session per request.

Both apps run at once on their own ports (an idle server costs nothing) and are loaded in
alternating rounds from a separate load-generator process: wrk when installed, else
``_loadgen``. Throughput is requests per second per round; latency percentiles come from the
load generator. A separate, short pass with statement logging on counts what one request sends.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.helpers import free_port

from ._context import Context
from ._results import Row
from ._server import statements_since
from ._stats import Summary

SECTION = "5. Pre-fork server (gunicorn, 2 sync workers)"
BARE = "bare app: per-worker psycopg connection, no session"
OURS = "session app: resume by key + query + idle"
FUNCTION = "what-if: session app, resume statement in a PL/pgSQL function"
THROTTLED = "what-if: session app, function + expiry slid at most once a minute"
_PROJECT = Path(__file__).resolve().parent.parent
_APPS = {BARE: "bench._wsgi_apps:bare_app", OURS: "bench._wsgi_apps:session_app"}
# The what-ifs serve the session app with the library's resume statement swapped for a call of a
# function wrapping it (see _whatif): the same single round trip, planned once per connection.
_CONTENDERS: dict[str, tuple[str, dict[str, str]]] = {
    BARE: (_APPS[BARE], {}), OURS: (_APPS[OURS], {}),
    FUNCTION: (_APPS[OURS], {"BENCH_RESUME_VIA": "statement"}),
    THROTTLED: (_APPS[OURS], {"BENCH_RESUME_VIA": "throttled"}),
}
CONNECTIONS = 8


def run(ctx: Context) -> None:
    keys = ctx.main_keys
    keys_file = ctx.root / "keys.txt"
    keys_file.write_text("\n".join(keys) + "\n", encoding="ascii")
    loadgen = _loadgen_choice(ctx)
    ctx.results.details["run"]["loadgen_used"] = (
        f"{loadgen} ({CONNECTIONS} connections, keys rotated per request)")
    from . import _whatif, _wsgi_apps

    ctx.results.details["prefork_session_app"] = _wsgi_apps.SESSION_APP_KIND
    contenders = dict(_CONTENDERS)
    if _whatif.statements():
        _whatif.install_functions(ctx.main_dsn, keys)
    else:
        del contenders[FUNCTION], contenders[THROTTLED]
    statements = _count(ctx, keys)
    rounds, seconds, warmup = ctx.size(3, 1), ctx.size(4, 2), ctx.size(3, 1)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    p50s: dict[str, list[float]] = {name: [] for name in contenders}
    p99s: dict[str, list[float]] = {name: [] for name in contenders}
    errors: dict[str, float] = dict.fromkeys(contenders, 0)
    with ExitStack() as stack:
        ports = {name: stack.enter_context(_gunicorn(ctx, app, keys[0], ctx.main_dsn, env=env))
                 for name, (app, env) in contenders.items()}
        for port in ports.values():  # warm-up: connections, prepared statements, caches
            _load(loadgen, port, keys_file, warmup, 0.0)
        for r in range(rounds):
            for name in (list(contenders) if r % 2 == 0 else list(contenders)[::-1]):
                result = _load(loadgen, ports[name], keys_file, seconds, 0.0)
                rates[name].append(result["rate"])
                p50s[name].append(result["p50"])
                p99s[name].append(result["p99"])
                errors[name] += result["errors"]
                print(f"  {name}: {result['rate']:.0f} req/s, p50 {result['p50'] * 1e3:.2f} ms, "
                      f"p99 {result['p99'] * 1e3:.2f} ms, errors {result['errors']}", flush=True)
    kind = ctx.results.details["prefork_session_app"]
    base_name = f"{BARE}: throughput"
    for name in contenders:
        note = (f"{rounds} rounds of {seconds:g} s; median of the rounds' p50 {_median(p50s[name]) * 1e3:.2f} ms, "
                f"p99 {_median(p99s[name]) * 1e3:.2f} ms; {errors[name]:g} errors")
        if name != BARE:
            note += f"; {kind}"
        row = Row(SECTION, f"{name}: throughput", "req/s", Summary.of(rates[name]),
                  statements=statements.get(name), note=note)
        if name != BARE:
            base = ctx.results.find(SECTION, base_name)
            assert base is not None and base.summary is not None and row.summary is not None
            row.baseline, row.ratio = base_name, row.summary.p50 / base.summary.p50
        ctx.results.add(row)
        if name in (BARE, OURS):
            ctx.results.add(Row(SECTION, f"{name}: p50 latency", "ms", Summary.of(p50s[name]),
                                baseline=None if name == BARE else f"{BARE}: p50 latency"))
            ctx.results.add(Row(SECTION, f"{name}: p99 latency", "ms", Summary.of(p99s[name]),
                                baseline=None if name == BARE else f"{BARE}: p99 latency"))
    ours = ctx.results.find(SECTION, f"{OURS}: throughput")
    base = ctx.results.find(SECTION, base_name)
    assert ours and base and ours.summary and base.summary and ours.ratio is not None
    ctx.results.judge("pre-fork keeps >= 90% of bare throughput", ours.ratio >= 0.9,
                      f"{ours.summary.p50:.0f} vs {base.summary.p50:.0f} req/s = {ours.ratio:.0%}")


def _median(values: list[float]) -> float:
    return Summary.of(values).p50


def _loadgen_choice(ctx: Context) -> str:
    choice = ctx.results.details["run"].get("loadgen", "auto")
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if choice == "wrk" and not shutil.which("wrk"):
        raise RuntimeError("--loadgen wrk: wrk is not installed (apt-get install wrk)")
    return str(choice)


@contextmanager
def _gunicorn(ctx: Context, app: str, key: str, dsn: str, *, tag: str = "",
              env: dict[str, str] | None = None, workers: tuple[str, ...] = ("--worker-class", "sync"),
              ) -> Iterator[int]:
    """A gunicorn master with 2 workers (sync unless ``workers`` says) serving ``app``; stopped
    (by its pid) on exit."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(_PROJECT), "OME_SESSION_DSN": dsn, "BENCH_BARE_DSN": dsn,
           **(env or {})}
    log = (ctx.root / f"gunicorn-{port}{tag}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "2", *workers, "--preload",
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "--backlog", "256", app],
        env=env, cwd=str(ctx.root), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_ready(port, key, process)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def _get(port: int, key: str, path: str = "/1") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"X-OME-Session-Key": key})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_ready(port: int, key: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode} before serving")
        try:
            status, _body = _get(port, key)
        except OSError:
            time.sleep(0.1)
            continue
        if status != 200:
            raise RuntimeError(f"the app answered HTTP {status} to a valid key")
        return
    raise RuntimeError(f"gunicorn did not serve on port {port} within {timeout:.0f} s")


def _load(loadgen: str, port: int, keys_file: Path, seconds: float, warmup: float) -> dict[str, float]:
    if loadgen == "wrk":
        return _wrk(port, keys_file, seconds)
    run = subprocess.run(
        [sys.executable, "-m", "bench._loadgen", "--port", str(port), "--connections", str(CONNECTIONS),
         "--duration", str(seconds), "--warmup", str(warmup), "--keys", str(keys_file)],
        env={**os.environ, "PYTHONPATH": str(_PROJECT)}, capture_output=True, text=True, check=True,
        timeout=seconds + warmup + 60)
    data = json.loads(run.stdout)
    latencies = Summary.of(data["latencies"]) if data["latencies"] else None
    return {"rate": data["requests"] / data["seconds"], "errors": data["errors"],
            "p50": latencies.p50 if latencies else float("nan"), "p99": latencies.p99 if latencies else float("nan")}


_WRK_SCRIPT = """
local keys = {}
for line in io.lines("%s") do keys[#keys + 1] = line end
local i = math.random(#keys)
request = function()
  i = i + 1
  return wrk.format("GET", "/" .. i, {["X-OME-Session-Key"] = keys[(i %% #keys) + 1]})
end
"""


def _wrk(port: int, keys_file: Path, seconds: float) -> dict[str, float]:
    script = keys_file.with_suffix(".lua")
    script.write_text(_WRK_SCRIPT % keys_file, encoding="utf-8")
    run = subprocess.run(
        ["wrk", "--threads", "2", "--connections", str(CONNECTIONS), "--duration", f"{seconds:g}s",
         "--timeout", "10s", "--latency", "--script", str(script), f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True, timeout=seconds + 60)
    out = run.stdout
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    percentiles = {int(p): _seconds(v, unit) for p, v, unit in
                   re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)}
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return {"rate": float(rate.group(1)), "errors": errors, "p50": percentiles[50], "p99": percentiles[99]}


def _seconds(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def _count(ctx: Context, keys: list[str]) -> dict[str, float]:
    """Statements per request for each app, from a server run with statement logging on."""
    per_request: dict[str, float] = {}
    for name, app in _APPS.items():
        label = "count_wsgi_" + ("bare" if name == BARE else "session")
        dsn = ctx.server.dsn(_dsn_name(ctx.main_dsn), application_name=label, options="-c log_statement=all")
        with _gunicorn(ctx, app, keys[0], dsn, tag="-count") as port:
            workers: set[bytes] = set()
            for i in range(200):  # until both workers have served a few (first-request costs)
                workers.add(_get(port, keys[i % len(keys)], f"/{i}")[1].rpartition(b"(")[2])
                if len(workers) == 2 and i >= 20:
                    break
            start = _settled(ctx.server.log_file)
            requests = 30
            for i in range(requests):
                _get(port, keys[i % len(keys)], f"/{i}")
            _settled(ctx.server.log_file)
            logged = statements_since(ctx.server, start, label)
        per_request[name] = len(logged) / requests
        kinds = Counter(" ".join(s.split())[:60] for _pid, s in logged)
        ctx.results.details.setdefault("prefork_statement_kinds", {})[name] = {
            **kinds, "database connections": len({pid for pid, _s in logged})}
        one_worker = [s for pid, s in logged if pid == logged[0][0]] if logged else []
        ctx.results.details.setdefault("statements", {})[f"{name} (per request)"] = [
            " ".join(s.split())[:160] for s in one_worker[: round(per_request[name])]]
        print(f"  {name}: {per_request[name]:g} statements per request", flush=True)
    return per_request


def _settled(log: Path, quiet: float = 0.3) -> int:
    """The log's size once nothing was added for ``quiet`` seconds.

    A worker idles the session (its ROLLBACK) after the response reached the client, so the
    last request's statements can land just after the client has its answer.
    """
    size = log.stat().st_size
    while True:
        time.sleep(quiet)
        now = log.stat().st_size
        if now == size:
            return size
        size = now


def _dsn_name(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(dsn)["dbname"])

