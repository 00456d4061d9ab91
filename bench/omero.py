"""8. The OMERO backend: joining a session by UUID per request, against keeping one communicator.

Needs the backend (``ome_session.backends.omero``), the stand-in OMERO.blitz server of the test
suite and an importable Ice runtime; without any of them the measurement is recorded as skipped,
with the reason.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ._context import Context

SECTION = "8. OMERO backend (stand-in OMERO.blitz on loopback)"
_PROJECT = Path(__file__).resolve().parent.parent


def missing() -> str | None:
    """Why the measurement cannot run here, or None."""
    if importlib.util.find_spec("ome_session.backends.omero") is None:
        return "ome_session.backends.omero does not exist yet"
    if not (_PROJECT / "tests" / "omero_standin" / "__init__.py").exists():
        return "the stand-in server (tests/omero_standin) is missing"
    for module in ("Ice", "omero"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not importable (install the omero extra: scripts/install-omero-extra)"
    return None


def run(ctx: Context) -> None:
    reason = missing()
    if reason is not None:
        ctx.results.skipped["omero"] = f"skipped: {reason}"
        print(f"  skipped: {reason}", flush=True)
        return
    from . import _omero_join

    _omero_join.run(ctx, SECTION)
