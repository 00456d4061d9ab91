"""Figures of the reliability cases: printed, kept as JSON lines, and summed up at the end.

Each case calls ``figures(cycles=..., errors=..., rows_checked=...)``; a case that records nothing
gets its outcome recorded. The values are printed (``pytest -s`` or ``-rA`` shows them), appended
to ``reliability-figures.jsonl`` in pytest's base temporary directory, and summed into one line of
the terminal summary.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ome_session._cluster import Cluster
from tests.helpers import throwaway_cluster

from ._figures import Figures

_FIGURES = pytest.StashKey[list[dict[str, Any]]]()
_FIGURES_FILE = pytest.StashKey[Path]()
_OUTCOMES = pytest.StashKey[Counter[str]]()
_RECORDED = pytest.StashKey[bool]()
_CALL_OUTCOME = pytest.StashKey[str]()
_TOTALS = ("cycles", "examples", "errors", "rows_checked")

@pytest.fixture
def figures(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Figures:
    """Record the figures of this case: printed, written to the JSON lines file, summed up."""
    config = request.config

    def record(**values: Any) -> None:
        entry = {"case": request.node.nodeid, **values}
        print(f"[reliability] {request.node.name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        path = tmp_path_factory.getbasetemp() / "reliability-figures.jsonl"
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(entry, default=str) + "\n")
        config.stash[_FIGURES_FILE] = path
        config.stash.setdefault(_FIGURES, []).append(entry)
        request.node.stash[_RECORDED] = True

    return record


@pytest.fixture(autouse=True)
def _every_case_has_figures(request: pytest.FixtureRequest, figures: Figures) -> Iterator[None]:
    """Count each case's outcome, and record it as the figures of a case that recorded none."""
    yield
    outcome = request.node.stash.get(_CALL_OUTCOME, "not run")
    request.config.stash.setdefault(_OUTCOMES, Counter())[outcome] += 1
    if not request.node.stash.get(_RECORDED, False):
        figures(outcome=outcome)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    report = (yield).get_result()
    if report.when == "call":
        item.stash[_CALL_OUTCOME] = "xfailed" if hasattr(report, "wasxfail") else report.outcome


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server of this module alone, which its cases may stop and start at will.

    Commits wait for the WAL write here (the shared server skips it for speed), so an immediate
    shutdown, which is a server crash, keeps every committed row.
    """
    with throwaway_cluster(synchronous_commit="on") as cluster:
        yield cluster


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    entries = config.stash.get(_FIGURES, [])
    if not entries:
        return
    totals = {name: sum(int(e.get(name) or 0) for e in entries) for name in _TOTALS}
    if config.option.verbose > 0:
        terminalreporter.write_sep("-", "reliability figures")
        for entry in entries:
            shown = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("case", "problems"))
            terminalreporter.write_line(f"{entry['case']}: {shown}")
    outcomes = config.stash.get(_OUTCOMES, Counter())
    cases = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
    summary = ", ".join(f"{name}={value}" for name, value in totals.items())
    terminalreporter.write_line(f"reliability: {sum(outcomes.values())} cases ({cases}); {summary} "
                                f"(figures: {config.stash[_FIGURES_FILE]})")
