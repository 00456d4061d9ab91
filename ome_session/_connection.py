"""One owned psycopg connection: connecting, error translation, and fork-safe closing.

The Factory talks to the database only through ``Connection``. Only the process that opened the
socket may use or close it (closing sends a Terminate message on the socket it shares with any
forked child, which kills the parent's backend). In a child the fork protocol (``_fork``) points
the inherited socket at /dev/null and parks the psycopg object for good, so nothing of the child
can reach the parent's server session however it ends.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from . import _fork
from .errors import DatabaseError, DatabaseUnavailable, IntegrityError, SessionClosedError, TransactionLost

if TYPE_CHECKING:
    from ._pool import Pool

log = logging.getLogger(__name__)

# The defaults of the two connection settings (see ``_settings.Settings``).
DEFAULT_CONNECT_TIMEOUT = 10
DEFAULT_PREPARE_THRESHOLD: int | None = 5


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for error messages: host or socket, port, database; never the password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unparsable DSN"
    host = str(params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "the default socket")
    where = f"socket directory {host}" if host.startswith("/") else f"host {host}"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or "(default database)"
    return f"database {dbname} on {where} port {port}"


class Connection:
    """A psycopg connection (autocommit off) that this process owns, reopened when it broke.

    Its own small lifecycle, as psycopg's: open; broken (the server went away: replaced by the
    next use, or by ``revive()`` at the start of a unit of work); closed for good by ``close()``
    (every use then raises). In a forked child the inherited socket is muted by the fork protocol
    and the next use opens a connection of the child's own.

    With a ``pool`` (thread scope) the connection is borrowed instead: for a unit of work, from
    its start (``revive``, or the first use) to ``release()`` at its end, and given back at
    ``close()``; the child of a fork connects on its own.
    """

    def __init__(self, dsn: str, *, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
                 prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD, pool: Pool | None = None) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.prepare_threshold = prepare_threshold
        self._pool = pool
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._opened = False
        self._on_replaced: list[Callable[[], None]] = []
        self.open()
        _fork.register(self)

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self) -> None:
        """Connect (again); raises DatabaseUnavailable naming where and why, within the timeout.

        A connection opened in place of an earlier one (it broke, or the process is a forked
        child) tells the ``on_replaced`` subscribers; one borrowed from the pool does not (it is
        the pool's: whose server session it had before says nothing of this one).
        """
        if self._pool is not None:
            self._conn, self._closed = self._pool.borrow(describe_dsn(self.dsn)), False
            return
        try:
            conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=self.connect_timeout)
        except psycopg.Error as exc:
            cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise DatabaseUnavailable(f"cannot connect to {describe_dsn(self.dsn)}: {cause}") from exc
        conn.prepare_threshold = self.prepare_threshold
        replaced, self._opened = self._opened, True
        self._conn, self._closed = conn, False
        if replaced:
            self._replaced()

    def on_replaced(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the server session this object had is gone: found broken,
        or replaced by a new connection. What was read on it may no longer be true."""
        self._on_replaced.append(listener)

    def _replaced(self) -> None:
        for listener in list(self._on_replaced):
            listener()

    @property
    def raw(self) -> psycopg.Connection[Any]:
        """The psycopg connection, reopened first if it broke (or the process is a forked child)."""
        conn = self._own()
        if conn is None or conn.closed:
            self.open()
            conn = self._conn
        assert conn is not None
        return conn

    def _own(self) -> psycopg.Connection[Any] | None:
        """The connection, if this process may use it: the door every use goes through.

        Closed for good: refused. After a fork the at-fork hook did not see, the fork protocol
        mutes the inherited socket first, so the parent's connection is never written to.
        """
        if self._closed:
            raise SessionClosedError(f"this connection to {describe_dsn(self.dsn)} was closed: log in again")
        if not _fork.owned():
            return None  # the protocol has let go of the parent's connection by now
        return self._conn

    @property
    def closed(self) -> bool:
        """Closed for good by ``close()`` (a broken connection is not: it is replaced on use)."""
        return self._closed

    @property
    def usable(self) -> bool:
        """Open and not hung up on by the server (asking costs no round trip)."""
        if self._closed:
            return False
        conn = self._own()
        return conn is not None and not conn.closed and not conn.broken and not _hung_up(conn)

    def revive(self) -> None:
        """At the start of a unit of work: a connection that broke while idle is replaced (one
        closed for good stays closed); a borrowed one that the server dropped while it sat in the
        pool goes back (the pool drops it) and another is borrowed."""
        if self.usable:
            return
        self._own()  # raises for a connection closed for good
        conn, self._conn = self._conn, None
        if conn is not None:
            self._let_go(conn)
            if self._pool is not None:
                self._replaced()  # a broken one: what was read on it is gone with it
        self.open()
        for _ in range(self._pool.size if self._pool is not None else 0):
            if self.usable:
                return
            conn, self._conn = self._conn, None
            if conn is not None:
                self._let_go(conn)
            self.open()

    @property
    def in_transaction(self) -> bool:
        """A transaction is open (known locally: asking costs no round trip)."""
        conn = self._conn
        if conn is None:
            return False
        # libpq's own status, as an int: asked several times per request, it must cost next to nothing
        # (``conn.info.transaction_status`` builds an object and an enum each time).
        return conn.pgconn.transaction_status not in _NOT_IN_TRANSACTION

    def rollback(self) -> None:
        """Roll back if a transaction is open; no round trip otherwise.

        A connection found dead here took its transaction with it, which is all a rollback is
        for: that is no error (the next use reconnects).
        """
        if not self.in_transaction:
            return
        conn = self._own()
        if conn is not None and not conn.broken:
            try:
                # Sent as a statement, not conn.rollback(): psycopg's rollback() also drops every
                # prepared statement, so the resume statement would be planned again after each
                # request that idles with a transaction open. Named statements live in the
                # server session, outside transactions, so they stay valid after a ROLLBACK.
                conn.execute(_ROLLBACK, prepare=False)
            except psycopg.Error as exc:
                if not (conn.closed or conn.broken):
                    raise self._translate(exc, True) from exc
                log.info("the connection died with its transaction before the rollback: %s", _first_line(exc))

    def commit(self) -> None:
        if not self.in_transaction:
            return
        conn = self._own()
        if conn is not None:
            with self.errors():
                conn.commit()

    def release(self) -> None:
        """The unit of work ended (rolled back): a borrowed connection goes back to its pool;
        an own one stays for the next."""
        if self._pool is None or self._conn is None:
            return
        conn = self._own()
        self._conn = None
        if conn is not None:
            self._let_go(conn)

    def close(self) -> None:
        """Roll back and close, for good (a forked child's inherited socket is never touched)."""
        if self._closed:
            return
        conn = self._own()
        self._conn, self._closed = None, True
        if conn is not None and not conn.closed:
            self._let_go(conn)  # the server rolls back an open transaction when the session ends

    def discard(self) -> None:
        """Drop the connection without closing it (whoever holds it may go on using it); a
        borrowed one goes back to its pool, which is the only other holder it has."""
        conn = self._own()  # after a missed fork, the protocol mutes the socket first
        self._conn, self._closed = None, True
        if conn is not None and self._pool is not None:
            self._pool.give_back(conn)

    def _let_go(self, conn: psycopg.Connection[Any]) -> None:
        """Give a borrowed connection back (the pool rolls back), or close an own one."""
        if self._pool is not None:
            self._pool.give_back(conn)
        else:
            _close_quietly(conn)

    def _reset_after_fork_in_child(self) -> None:
        """In a freshly forked child: make the inherited socket harmless, take no locks.

        Runs inside the at-fork hook, where another thread of the parent may have held psycopg's
        connection lock: so no psycopg call but reading the socket number (see ``_mute``).
        """
        conn, self._conn = self._conn, None
        self._pool = None  # the parent's: the child connects on its own
        if conn is None:
            return
        if not conn.closed:
            _mute(conn)
        _INHERITED.append(conn)  # never collected in the child: nothing can reach its socket again

    # -- statements ------------------------------------------------------------------------------

    @contextmanager
    def autocommit(self) -> Iterator[psycopg.Connection[Any]]:
        """Run statements that commit by themselves: one round trip each, no BEGIN or COMMIT.

        Only when no transaction is open (switching modes then costs nothing); inside a
        transaction the statements simply join it.
        """
        conn = self.raw
        if self.in_transaction or conn.autocommit:
            yield conn
            return
        conn.autocommit = True
        try:
            yield conn
        finally:
            if not conn.closed:
                conn.autocommit = False

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Translate driver errors into ours; a broken connection mid-transaction is reported lost."""
        had_transaction = self.in_transaction
        try:
            yield
        except psycopg.Error as exc:
            raise self._translate(exc, had_transaction) from exc

    def _translate(self, exc: psycopg.Error, had_transaction: bool) -> Exception:
        """The one place a driver error becomes ours."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken or isinstance(exc, psycopg.InterfaceError):
            self._replaced()
            where = describe_dsn(self.dsn)
            if had_transaction:
                return TransactionLost(
                    f"the connection to {where} broke with a transaction open; its uncommitted "
                    f"changes are lost: redo the unit of work ({_first_line(exc)})"
                )
            return DatabaseUnavailable(f"lost the connection to {where}: {_first_line(exc)}")
        sqlstate = getattr(exc, "sqlstate", None)
        if isinstance(exc, psycopg.IntegrityError):
            return IntegrityError(_first_line(exc), sqlstate)
        return DatabaseError(_first_line(exc), sqlstate)


def _close_quietly(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.close()
    except psycopg.Error as exc:
        log.debug("closing the database connection failed: %s", exc)


_ROLLBACK = "ROLLBACK"
_NOT_IN_TRANSACTION = frozenset({pq.TransactionStatus.IDLE, pq.TransactionStatus.UNKNOWN})  # UNKNOWN: closed

# Connections inherited through fork, parked so that no close path of any kind runs on them.
_INHERITED: list[psycopg.Connection[Any]] = []


def _hung_up(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server closed this connection while nothing was asked (a restart, a terminate).

    Costs no round trip: with no statement in flight there is nothing to read unless the server
    said goodbye, so a zero-timeout poll of the socket tells.
    """
    if conn.info.transaction_status == pq.TransactionStatus.ACTIVE:
        return False
    try:
        poller = select.poll()  # not select(): it fails on descriptors above 1023
        poller.register(conn.pgconn.socket, select.POLLIN)
        for _ in range(3):  # a goodbye is a message (FATAL) and then the end of the stream
            if not poller.poll(0):
                return False
            conn.pgconn.consume_input()  # raises at the end of the stream
    except (OSError, psycopg.Error):
        return True
    return conn.pgconn.status == pq.ConnStatus.BAD


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _mute(conn: psycopg.Connection[Any]) -> None:
    """Point an inherited connection's socket at /dev/null: nothing written to it can reach the
    parent's server any more. The fd stays open (closing it would let the number be reused by an
    unrelated file) and keeps libpq's close-on-exec. If it cannot be done, the connection is only
    parked: psycopg finishes a connection (sending Terminate) only in the process that opened it."""
    try:
        fd = conn.pgconn.socket
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.dup2(devnull, fd, inheritable=False)
        finally:
            os.close(devnull)
    except (OSError, psycopg.Error):
        pass
