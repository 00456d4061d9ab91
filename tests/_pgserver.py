"""A throwaway PostgreSQL server for the tests: real, private, and always cleaned up.

Cleanup runs on leaving the ``with`` block (also on failure or KeyboardInterrupt) and, as a
fallback, at interpreter exit. Forked children inherit both paths, so each checks that it runs in
the process that started the server: a child exiting must never stop its parent's server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ome_session._cluster import Cluster

# Durability is pointless for data thrown away after the run; these make initdb and tests fast.
DEFAULT_OPTIONS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


@contextmanager
def throwaway_cluster(**server_options: str) -> Iterator[Cluster]:
    """Start a fresh cluster in a new temporary directory; stop and remove it afterwards."""
    datadir = Path(tempfile.mkdtemp(prefix="ome-session-pg-"))
    # Cluster hands the (empty) directory to the server account when we run as root.
    cluster = Cluster(datadir, server_options={**DEFAULT_OPTIONS, **server_options})
    cleanup = _Cleanup(cluster)
    atexit.register(cleanup)
    try:
        cluster.start()
        yield cluster
    finally:
        cleanup()
        atexit.unregister(cleanup)


class _Cleanup:
    """Stops and removes one cluster, once, and only in the process that created it."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._owner = os.getpid()
        self._done = False

    def __call__(self) -> None:
        if self._done or os.getpid() != self._owner:
            return
        self._done = True
        try:
            self._cluster.destroy()
        finally:
            shutil.rmtree(self._cluster.datadir, ignore_errors=True)
