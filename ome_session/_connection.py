"""One owned psycopg connection: connecting, error translation, and fork-safe closing.

The Factory talks to the database only through ``Connection``. It knows which process opened the
socket: only that process may close it (closing sends a Terminate message on the socket it shares
with any forked child, which kills the parent's backend). A child *discards* instead: the libpq
handle is freed with its socket pointed at /dev/null, so nothing reaches the server.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from .errors import DatabaseError, DatabaseUnavailable, IntegrityError, TransactionLost

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
    """A psycopg connection (autocommit off) that this process owns, reopened on demand."""

    def __init__(self, dsn: str, *, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
                 prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.prepare_threshold = prepare_threshold
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = os.getpid()
        self.open()

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self) -> None:
        """Connect (again); raises DatabaseUnavailable naming where and why, within the timeout."""
        try:
            conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=self.connect_timeout)
        except psycopg.Error as exc:
            cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise DatabaseUnavailable(f"cannot connect to {describe_dsn(self.dsn)}: {cause}") from exc
        conn.prepare_threshold = self.prepare_threshold
        self._conn = conn
        self._pid = os.getpid()

    @property
    def raw(self) -> psycopg.Connection[Any]:
        """The psycopg connection, reopened first if it was closed or broke (or is the parent's)."""
        conn = self._own()
        if conn is None or conn.closed:
            self.open()
        assert self._conn is not None
        return self._conn

    @property
    def owned(self) -> bool:
        """Whether this process opened the socket (false in a forked child)."""
        return self._pid == os.getpid()

    def _own(self) -> psycopg.Connection[Any] | None:
        """The connection if this process opened it; one inherited through fork is discarded.

        Every use goes through here, so a Factory kept across a fork (which the at-fork hook did
        not reach) opens its own connection instead of talking on the parent's socket.
        """
        if self._conn is not None and not self.owned:
            self.discard()
        return self._conn

    @property
    def usable(self) -> bool:
        conn = self._own()
        return conn is not None and not conn.closed and not conn.broken and not _hung_up(conn)

    @property
    def in_transaction(self) -> bool:
        """A transaction is open (known locally: asking costs no round trip)."""
        conn = self._own()
        if conn is None or conn.closed:
            return False
        return conn.info.transaction_status != pq.TransactionStatus.IDLE

    def rollback(self) -> None:
        """Roll back if a transaction is open; no round trip otherwise.

        A connection found dead here took its transaction with it, which is all a rollback is
        for: that is no error (the next use reconnects).
        """
        conn = self._conn
        if conn is not None and self.in_transaction and not conn.broken:
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
        if self._conn is not None and self.in_transaction:
            with self.errors():
                self._conn.commit()

    def close(self) -> None:
        """Roll back and close in the owning process; discard silently in a forked child."""
        conn, self._conn = self._conn, None
        if conn is None or conn.closed:
            return
        if not self.owned:
            _discard(conn)
            return
        try:
            conn.close()  # psycopg rolls back an open transaction server-side when the session ends
        except psycopg.Error as exc:
            log.debug("closing the database connection failed: %s", exc)

    def discard(self) -> None:
        """Drop the connection without closing it; in a forked child, without a word to the server."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed and not self.owned:
            _discard(conn)

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

    def detach_in_child(self) -> None:
        """In a freshly forked child: make the inherited socket harmless, take no locks.

        Runs inside the at-fork hook, where another thread of the parent may have held psycopg's
        connection lock: so no psycopg call but reading the socket number (see ``_mute``).
        """
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not conn.closed:
            _mute(conn)
        _INHERITED.append(conn)  # never collected in the child: nothing can reach its socket again

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


_ROLLBACK = "ROLLBACK"

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


def _mute(conn: psycopg.Connection[Any]) -> bool:
    """Point an inherited connection's socket at /dev/null: nothing written to it can reach the
    parent's server any more. The fd stays open (closing it would let the number be reused by an
    unrelated file) and keeps libpq's close-on-exec. Returns whether it worked."""
    try:
        fd = conn.pgconn.socket
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.dup2(devnull, fd, inheritable=False)
        finally:
            os.close(devnull)
    except (OSError, psycopg.Error):
        return False
    return True


def _discard(conn: psycopg.Connection[Any]) -> None:
    """Free an inherited connection without sending anything on the parent's socket.

    PQfinish writes a Terminate message before closing; muting the socket first makes that write
    harmless (libpq ignores the error) and closes the fd in this process only. If the socket
    cannot be muted the connection is only dropped: psycopg PQfinishes only in the owning pid.
    """
    if _mute(conn):
        with suppress(OSError, psycopg.Error):
            conn.close()
