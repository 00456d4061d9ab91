"""Figures of the reliability cases: printed, kept as JSON lines, and summed up at the end.

Each case records what it counted while it ran: ``figures(cycles=..., examples=...,
rows_checked=..., errors=...)``. Cycles are units of work completed, examples inputs tried,
rows_checked rows verified on a connection of the test's own, errors faults observed. Nothing is
recorded that was not counted: a case that counts nothing records only its outcome.

A case that fails counts as at least one error, whatever it recorded before failing, so a red
run can never show ``errors=0``. The values are printed (``pytest -s`` or ``-rA`` shows them),
written to ``reliability-figures.jsonl`` in pytest's base temporary directory, and summed into
one line of the terminal summary, which names only the figures some case counted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ome_session._cluster import Cluster
from tests.helpers import throwaway_cluster

from ._figures import Figures

_FIGURES = pytest.StashKey[list[dict[str, Any]]]()
_FIGURES_FILE = pytest.StashKey[Path]()
_OUTCOMES = pytest.StashKey[Counter[str]]()
_CASE = pytest.StashKey["_Case"]()
_TOTALS = ("cycles", "examples", "errors", "rows_checked")


@dataclass
class _Case:
    """What one case has recorded so far, and how it ended."""

    recorded: bool = False
    errors: int = 0
    outcome: str = "not run"


def _record(item: pytest.Item, values: dict[str, Any]) -> None:
    config = item.config
    case = item.stash.setdefault(_CASE, _Case())
    entry = {"case": item.nodeid, **values}
    config.stash.setdefault(_FIGURES, []).append(entry)
    case.recorded = True
    case.errors += int(values.get("errors") or 0)


@pytest.fixture(autouse=True)
def _figures_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    request.config.stash[_FIGURES_FILE] = tmp_path_factory.getbasetemp() / "reliability-figures.jsonl"


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """Record figures of this case, counted from work it did: printed, written, summed up."""
    item = request.node

    def record(**values: Any) -> None:
        print(f"[reliability] {item.name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        _record(item, values)

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    report = (yield).get_result()
    case = item.stash.setdefault(_CASE, _Case())
    if report.failed:
        case.outcome = "failed" if report.when == "call" else "error"
    elif report.when == "call" or (report.skipped and case.outcome == "not run"):
        case.outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
    if report.when == "teardown":
        item.config.stash.setdefault(_OUTCOMES, Counter())[case.outcome] += 1
        if case.outcome in ("failed", "error") and case.errors == 0:
            _record(item, {"errors": 1, "outcome": case.outcome})  # the failure itself, counted
        elif not case.recorded:
            _record(item, {"outcome": case.outcome})


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of this module alone, which its cases may stop and start at will.

    Commits wait for the WAL write here (the shared server skips it for speed), so an immediate
    shutdown, which is a server crash, keeps every committed row.
    """
    with throwaway_cluster(synchronous_commit="on") as cluster:
        yield cluster


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    entries, path = session.config.stash.get(_FIGURES, []), session.config.stash.get(_FIGURES_FILE, None)
    if entries and path is not None:
        path.write_text("".join(json.dumps(entry, default=str) + "\n" for entry in entries), encoding="utf-8")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    entries = config.stash.get(_FIGURES, [])
    if not entries:
        return
    counted = [name for name in _TOTALS if any(name in e for e in entries)]
    totals = {name: sum(int(e.get(name) or 0) for e in entries) for name in counted}
    # The entries the totals add up (all of them with -v), so that a log shows where each came from.
    shown = entries if config.option.verbose > 0 else [e for e in entries if any(e.get(n) for n in _TOTALS)]
    terminalreporter.write_sep("-", "reliability figures")
    for entry in shown:
        figures = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("case", "problems"))
        terminalreporter.write_line(f"{entry['case']}: {figures}")
    outcomes = config.stash.get(_OUTCOMES, Counter())
    cases = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
    summary = ", ".join(f"{name}={value}" for name, value in totals.items())
    where = config.stash.get(_FIGURES_FILE, None)
    terminalreporter.write_line(f"reliability: {sum(outcomes.values())} cases ({cases}); {summary}"
                                + (f" (figures: {where})" if where else ""))
