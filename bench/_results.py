"""What a run found: rows of figures (each beside its baseline) and the targets judged from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._stats import UNITS, Summary


@dataclass
class Row:
    """One contender in one measurement. ``summary`` is in seconds for time units.

    ``baseline`` names another row of the same section; ``ratio`` is this row's median over the
    baseline's median (for throughput: this row's rate over the baseline's rate).
    """

    section: str
    name: str
    unit: str
    summary: Summary | None = None
    baseline: str | None = None
    ratio: float | None = None
    statements: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def in_unit(self) -> Summary | None:
        if self.summary is None:
            return None
        return self.summary.scaled(UNITS[self.unit]) if self.unit in UNITS else self.summary

    def to_json(self) -> dict[str, Any]:
        shown = self.in_unit()
        return {
            "section": self.section, "name": self.name, "unit": self.unit,
            "summary": shown.to_json() if shown else None, "baseline": self.baseline,
            "ratio": self.ratio, "statements_per_op": self.statements, "note": self.note,
            **({"extra": self.extra} if self.extra else {}),
        }


@dataclass
class Target:
    name: str
    met: bool | None  # None: could not be judged in this run
    figure: str

    def to_json(self) -> dict[str, Any]:
        return {"target": self.name, "met": self.met, "figure": self.figure}


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        if row.baseline is not None and row.ratio is None and row.summary is not None:
            base = self.find(row.section, row.baseline)
            if base is not None and base.summary is not None and base.summary.p50:
                row.ratio = row.summary.p50 / base.summary.p50
        self.rows.append(row)
        return row

    def find(self, section: str, name: str) -> Row | None:
        for row in self.rows:
            if row.section == section and row.name == name:
                return row
        return None

    def judge(self, name: str, met: bool | None, figure: str) -> None:
        self.targets.append(Target(name, met, figure))
        verdict = "met" if met else ("missed" if met is not None else "not judged")
        print(f"  target {verdict}: {name} ({figure})", flush=True)
