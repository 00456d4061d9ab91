"""How a reliability case reports its figures, and how CI and the soak run scale the cases.

The ``figures`` fixture (``conftest.py``) records what a case counted; this module holds what the
cases themselves import, since no test module imports a conftest.
"""

from __future__ import annotations

import os
from collections.abc import Callable

# figures(cycles=..., examples=..., errors=..., rows_checked=..., **more): see conftest.py.
Figures = Callable[..., None]


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment (how CI and the soak run scale the cases)."""
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default
