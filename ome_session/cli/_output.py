"""How the command prints what it found: as ``omero login`` and ``omero sessions`` do."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from ..keystore import StoredSession

_DATE = "%a %b %d %H:%M:%S %Y"  # as `omero sessions list` shows it


def server(entry: StoredSession) -> str:
    return entry.server if entry.port is None else f"{entry.server}:{entry.port}"


def when(moment: datetime.datetime | None) -> str:
    return "-" if moment is None else moment.astimezone().strftime(_DATE)


def minutes(seconds: int | None) -> str:
    return "none" if not seconds else f"{seconds / 60:.1f} min"


def duration(delta: datetime.timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    return (f"{hours} h " if hours else "") + f"{rest // 60} min {rest % 60} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table as `omero sessions list` prints it, with a row count."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return " " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), "+".join("-" * (w + 2) for w in widths)[:-1], *(line(r) for r in rows)]
    return "\n".join(out) + f"\n({len(rows)} row{'' if len(rows) == 1 else 's'})"


def one_line(exc: BaseException) -> str:
    """One line a person can read: the lines of a message joined, runs of whitespace (tabs) as one."""
    return "; ".join(" ".join(part.split()) for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
