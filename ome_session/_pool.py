"""The bounded connection pools of thread scope: one per database (and settings) per process.

In thread scope every thread has a session of its own, and each session borrows a connection for
its unit of work and gives it back at ``idle()``, at close and when its thread ends; a bounded
pool (psycopg_pool) keeps the number of server sessions under the configured size however many
threads there are. A thread that finds every connection lent out waits up to the pool timeout,
then gets ``PoolExhausted``.

psycopg_pool knows nothing of ``fork()``: a child that closed an inherited pool, or just used
one, would talk on its parent's sockets. So the fork protocol forgets every pool in the child
without touching it (no close, no lock: its worker threads are the parent's and do not exist
here); the child's sessions make pools of their own.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import psycopg

from . import _fork
from .errors import DatabaseUnavailable, PoolExhausted

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 10
DEFAULT_POOL_TIMEOUT = 10.0  # seconds a thread waits for a connection before PoolExhausted

_Key = tuple[str, int, "int | None", int, float]
_pools: dict[_Key, Pool] = {}
_lock = threading.Lock()
_INHERITED: list[Any] = []  # a parent's pools, in a forked child: never touched, never collected


class Pool:
    """One database's pool in this process, and what a borrower needs to know of it."""

    def __init__(self, dsn: str, *, connect_timeout: int, prepare_threshold: int | None, size: int,
                 timeout: float) -> None:
        from psycopg_pool import ConnectionPool  # only in thread scope: keep `import ome_session` light

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.prepare_threshold = prepare_threshold

        self.size, self.timeout = size, timeout
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn, min_size=0, max_size=size, timeout=timeout, open=True, name="ome-session",
            kwargs={"autocommit": False, "connect_timeout": connect_timeout}, configure=configure)

    def borrow(self, where: str) -> psycopg.Connection[Any]:
        """A connection of the pool, for one unit of work; ``PoolExhausted`` after the timeout."""
        from psycopg_pool import PoolTimeout

        try:
            return self._pool.getconn()
        except PoolTimeout as exc:
            stats = self._pool.get_stats()
            if stats.get("pool_size", 0) >= self.size and not stats.get("pool_available", 0):
                raise PoolExhausted(
                    f"all {self.size} connections of the pool to {where} stayed in use for {self.timeout:g} s: "
                    "raise pool_size (settings file or OME_SESSION_POOL_SIZE) to the number of threads that "
                    "work at once, or make threads call Session.idle() sooner") from exc
            raise DatabaseUnavailable(f"cannot connect to {where}: no connection could be opened in "
                                      f"{self.timeout:g} s (see the log for why)") from exc

    def give_back(self, conn: psycopg.Connection[Any]) -> None:
        """Return a borrowed connection; the pool rolls back what is open, or drops a broken one."""
        try:
            self._pool.putconn(conn)
        except (psycopg.Error, ValueError) as exc:
            log.warning("could not return a connection to its pool: %s", exc)

    def close(self) -> None:
        self._pool.close()


def pool_for(dsn: str, *, connect_timeout: int, prepare_threshold: int | None, size: int, timeout: float) -> Pool:
    """This process's pool for that database and those settings, made at the first ask."""
    _fork.owned()  # a fork the hook missed: the parent's pools are forgotten first
    key = (dsn, connect_timeout, prepare_threshold, size, timeout)
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = Pool(dsn, connect_timeout=connect_timeout, prepare_threshold=prepare_threshold,
                                      size=size, timeout=timeout)
        return pool


def close_pools(dsn: str | None = None) -> None:
    """Close this process's pools (of one database, or all): for the end of a test or a program."""
    with _lock:
        keys = [key for key in _pools if dsn is None or key[0] == dsn]
        closing = [_pools.pop(key) for key in keys]
    for pool in closing:
        pool.close()


@_fork.at_fork_in_child
def _forget_in_child() -> None:
    """The parent's pools stay the parent's: parked, never closed or used here; a fresh lock."""
    global _lock  # noqa: PLW0603  (a thread of the parent may have held it at fork time)
    _lock = threading.Lock()
    _INHERITED.extend(_pools.values())
    _pools.clear()
