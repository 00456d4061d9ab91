"""Writing a run down: ``results.md`` (tables a person reads) and ``results.json`` (everything)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from ._results import Results, Row


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        total_kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{total_kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions: dict[str, str | None] = {}
    for dist in ("ome-session", "psycopg", "psycopg-binary", "gunicorn", "django"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "memory": memory,
        "kernel": platform.release(), "os": _os_name(), "python": platform.python_version(),
        "packages": versions, "commit": _commit(),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _commit() -> str | None:
    try:
        run = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "--short",
                              "HEAD"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout.strip() or None


def write(results: Results, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    info = machine()
    data = {
        "machine": info, "run": results.details.get("run", {}),
        "targets": [t.to_json() for t in results.targets],
        "rows": [r.to_json() for r in results.rows],
        "skipped": results.skipped,
        "details": {k: v for k, v in results.details.items() if k != "run"},
    }
    js = directory / "results.json"
    js.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    md = directory / "results.md"
    md.write_text(_markdown(results, info), encoding="utf-8")
    return md, js


def _markdown(results: Results, info: dict[str, Any]) -> str:
    run = results.details.get("run", {})
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    out = [
        "# ome-session benchmark results", "",
        f"- Date: {info['date']}; commit {info['commit'] or '?'}; mode: {run.get('mode', '?')}; "
        f"total {run.get('seconds', '?')} s",
        f"- Machine: {info['cores']} cores ({info['cpu']}), {info['memory']}, {info['os']}, "
        f"kernel {info['kernel']}",
        f"- Python {info['python']}; PostgreSQL {run.get('postgres', '?')} (private cluster, unix socket, "
        f"PostgreSQL's durability defaults); {packages}",
        f"- Load generator (section 5): {run.get('loadgen_used', run.get('loadgen', '?'))}",
        f"- Load average (1, 5, 15 min) at start {run.get('load_average_start')}, at end "
        f"{run.get('load_average_end')}",
        "", "Ratios compare medians (p50) with the baseline named in the same section, measured in the "
        "same run; for throughput, rate over rate. Statements per operation are counted by the server "
        "(`log_statement` on for that connection only, in a separate pass).", "",
        "## Targets", "", "| Target | Result | Figure |", "| --- | --- | --- |",
    ]
    for target in results.targets:
        verdict = {True: "met", False: "**missed**", None: "not judged"}[target.met]
        out.append(f"| {target.name} | {verdict} | {target.figure} |")
    out += ["", "## Figures", ""]
    for section, rows in _sections(results.rows).items():
        out += _section_table(section, rows)
    notes = [row for row in results.rows if row.note]
    if notes:
        out += ["", "## Notes", ""]
        out += [f"- {row.section} / {row.name}: {row.note}" for row in notes]
    if results.skipped:
        out += ["", "## Not measured", ""]
        out += [f"- {name}: {reason}" for name, reason in results.skipped.items()]
    statements = results.details.get("statements", {})
    if statements:
        out += ["", "## Statements per operation (one operation, as the server logged them)", ""]
        for name, sample in statements.items():
            out.append(f"- {name}:")
            out += [f"  - `{s.replace('`', chr(39))}`" for s in sample]
    for line in results.details.get("findings", []):
        out.append(line)
    return "\n".join(out) + "\n"


def _sections(rows: list[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row.section, []).append(row)
    return dict(sorted(grouped.items()))


def _section_table(section: str, rows: list[Row]) -> list[str]:
    """One table per measurement; rows are lettered and a ratio names its baseline's letter."""
    letters = {row.name: chr(ord("a") + i) for i, row in enumerate(rows)}
    out = [f"### {section}", "",
           "| | Contender | unit | n | p50 | p90 | p99 | IQR | min – max | ratio (p50) | stmts/op |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        s = row.in_unit()
        ratio = f"{row.ratio:.2f}x ({letters.get(row.baseline or '', '?')})" if row.ratio is not None else ""
        stmts = "" if row.statements is None else f"{row.statements:g}"
        figures = (f"{s.n} | {_fmt(s.p50)} | {_fmt(s.p90)} | {_fmt(s.p99)} | {_fmt(s.q1)} – {_fmt(s.q3)} | "
                   f"{_fmt(s.min)} – {_fmt(s.max)}") if s else "| | | | | "
        out.append(f"| {letters[row.name]} | {row.name} | {row.unit} | {figures} | {ratio} | {stmts} |")
    return [*out, ""]


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
