"""7. What ``import ome_session`` costs a fresh interpreter, against ``import psycopg`` (which it
needs anyway) and an interpreter that imports nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ._context import Context
from ._results import Row
from ._stats import Summary

SECTION = "7. Import time (fresh interpreter)"
NOTHING = 'python -c "pass"'
PSYCOPG = 'python -c "import psycopg"'
OURS = 'python -c "import ome_session"'
_CODE = {NOTHING: "pass", PSYCOPG: "import psycopg", OURS: "import ome_session"}
_PROJECT = Path(__file__).resolve().parent.parent


def run(ctx: Context) -> None:
    env = {**os.environ, "PYTHONPATH": str(_PROJECT), "PYTHONDONTWRITEBYTECODE": "1"}
    for code in _CODE.values():  # compile and cache bytecode first
        _once(code, env)
    samples: dict[str, list[float]] = {name: [] for name in _CODE}
    for _ in range(ctx.size(25, 4)):
        for name, code in _CODE.items():
            samples[name].append(_once(code, env))
    ctx.results.add(Row(SECTION, NOTHING, "ms", Summary.of(samples[NOTHING])))
    ctx.results.add(Row(SECTION, PSYCOPG, "ms", Summary.of(samples[PSYCOPG]), baseline=NOTHING))
    ours = ctx.results.add(Row(SECTION, OURS, "ms", Summary.of(samples[OURS]), baseline=PSYCOPG))
    assert ours.summary is not None
    own = ours.summary.p50 - Summary.of(samples[PSYCOPG]).p50
    ours.note = f"{own * 1e3:.1f} ms more than psycopg alone (median)"
    ctx.results.details["importtime_top"] = _importtime(env)


def _once(code: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd="/")
    return time.perf_counter() - t0


def _importtime(env: dict[str, str], top: int = 20) -> list[dict[str, object]]:
    """The modules with the largest cumulative import time, from ``-X importtime``."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ome_session"], env=env,
                         check=True, cwd="/", capture_output=True, text=True)
    entries = []
    for line in run.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:"):].split("|")
        entries.append({"module": name.strip(), "self_us": int(self_us), "cumulative_us": int(cumulative_us),
                        "depth": (len(name) - len(name.lstrip()) - 1) // 2})
    entries.sort(key=lambda e: -int(e["cumulative_us"]))  # type: ignore[call-overload]
    return entries[:top]
