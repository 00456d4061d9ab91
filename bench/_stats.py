"""Summaries of timing samples: median and spread, never a single number.

Samples are seconds (floats) as measured; units are applied only when a summary is printed, so
the JSON keeps full precision and a ratio is always taken between samples of the same unit.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

UNITS = {"ns": 1e9, "µs": 1e6, "ms": 1e3, "s": 1.0}


@dataclass(frozen=True)
class Summary:
    """Order statistics of one contender's samples (in seconds, or in the row's unit if not time)."""

    n: int
    p50: float
    p90: float
    p99: float
    q1: float
    q3: float
    min: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("no samples to summarise")
        ordered = sorted(samples)
        return cls(
            n=len(ordered), p50=_quantile(ordered, 0.50), p90=_quantile(ordered, 0.90),
            p99=_quantile(ordered, 0.99), q1=_quantile(ordered, 0.25), q3=_quantile(ordered, 0.75),
            min=ordered[0], max=ordered[-1], mean=statistics.fmean(ordered),
        )

    def scaled(self, factor: float) -> Summary:
        return Summary(self.n, *(getattr(self, f) * factor for f in
                                 ("p50", "p90", "p99", "q1", "q3", "min", "max", "mean")))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on sorted data."""
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@contextmanager
def quiet_gc() -> Iterator[None]:
    """No garbage collection pauses inside a timed batch; collect between batches instead."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_each(op: Callable[[int], object], count: int, start: int = 0) -> list[float]:
    """Run ``op(i)`` ``count`` times and return each call's wall time in seconds."""
    clock = time.perf_counter
    samples = []
    with quiet_gc():
        for i in range(start, start + count):
            t0 = clock()
            op(i)
            samples.append(clock() - t0)
    return samples


def interleaved(contenders: dict[str, Callable[[int], object]], rounds: int, batch: int,
                warmup: int = 20) -> dict[str, list[float]]:
    """Time every contender in alternating batches, so drift (cache, autovacuum, CPU boost)
    lands on all of them alike instead of on whichever ran last."""
    for op in contenders.values():
        time_each(op, warmup)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            samples[name].extend(time_each(contenders[name], batch, start=r * batch))
    return samples
