"""Eight processes log in, resume, write, idle and log out at once: nothing is lost or doubled.

Each cycle logs in by password, and argon2id (the library's PasswordHasher parameters) costs a
fixed few hundred milliseconds of CPU per login, so on CI's two cores the default is fewer cycles
than the soak run's 8 x 500: ``OME_SESSION_RELIABILITY_CYCLES`` (per process) scales it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import _concurrency
from ._figures import Figures, env_int

pytestmark = pytest.mark.reliability

PROCESSES = env_int("OME_SESSION_RELIABILITY_PROCESSES", 8)
CYCLES = env_int("OME_SESSION_RELIABILITY_CYCLES", 30)
# No cycle waits for anything but the database and argon2: a worker still running after this
# long is stuck (a deadlock), not slow. Generous for a loaded two-core machine.
JOIN_TIMEOUT = env_int("OME_SESSION_RELIABILITY_JOIN_TIMEOUT", 120 + CYCLES * PROCESSES)


@pytest.mark.timeout(JOIN_TIMEOUT + 120)
def test_concurrent_login_cycles_lose_nothing_and_never_deadlock(db_dsn: str, tmp_path: Path,
                                                                 figures: Figures) -> None:
    argon2 = _concurrency.argon2_seconds()
    outcome = _concurrency.run_round(db_dsn, tmp_path / "workers", processes=PROCESSES, cycles=CYCLES,
                                     join_timeout=JOIN_TIMEOUT)
    result = _concurrency.check(db_dsn, outcome)
    figures(**result, argon2_verify_cpu_seconds=round(argon2, 3))
    assert result["problems"] == []
    assert result["cycles"] == PROCESSES * CYCLES
    assert result["rows_checked"] == PROCESSES * CYCLES
    assert (result["errors"], result["duplicates"], result["lost"], result["backwards"]) == (0, 0, 0, 0)
