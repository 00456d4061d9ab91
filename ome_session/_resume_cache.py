"""The resume cache: a key seen once in this process resumes from memory, with no statement.

Memory is trusted only as far as the database says nothing against it. Every change that decides
whether a key is accepted or what its user may see is announced by the database itself (the
triggers of the ``change_notifications`` migration send a message on the ``ome_session`` channel
when the change commits); the process listens on one connection, its *source*: the session's own
connection (idle between requests, so a message waits in its socket buffer), or a dedicated one
(``listen_dsn``) where the session's cannot listen. Before memory is trusted, the messages already
on the source's socket are drained without a round trip (a zero-timeout poll, libpq's
``consume_input`` and ``notifies``), and what they name is dropped.

In thread scope the sessions' connections are borrowed from a pool for each unit of work, so none
of them can listen (and another thread's socket must never be read): the process keeps one cache
per database for all its threads, and one ``Listener`` connection of its own (to ``listen_dsn``, or
to the database itself), opened at the first resume that needs it and drained under the cache's
lock. A forked child forgets it without closing it (the fork protocol) and listens afresh.

Whatever may have missed a message empties the cache: a source found gone or replaced, a fork (the
fork protocol), ``Configuration.flush()``, a switch of database, a message that cannot be read.
Idle and absolute expiry are checked against the local clock; passing either only sends the key
back to the database, which decides. The cache is bounded (least recently used first out).
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from . import _fork
from ._connection import Connection

log = logging.getLogger(__name__)

CHANNEL = "ome_session"
DEFAULT_SIZE = 10_000
# Start listening, and learn whether the messages can reach this connection at all: behind a
# pooler (pgbouncer) the server process is not the one the connection was told about, and LISTEN
# is the state of a server session the pooler hands to others; a standby cannot LISTEN at all.
LISTEN = f"LISTEN {CHANNEL}; SELECT pg_backend_pid()"

_monotonic = time.monotonic
_all: weakref.WeakSet[ResumeCache] = weakref.WeakSet()


@dataclass(eq=False)
class Entry:
    """One resumed session as memory holds it."""

    login: Any  # the backend's Login, returned as it is
    session_id: int
    users: tuple[int, ...]  # the user, and the user who opened it by sudo: a change to either counts
    idle: float  # seconds of idle timeout (0: none)
    expires: float  # monotonic time of the absolute expiry (inf: none)
    written: float  # the database's last_access, on the monotonic clock: idle expiry counts from it
    touch_every: float  # how stale last_access may get before it is written (as the statement says)


class ResumeCache:
    """Resumed sessions of one database in this process, and the source their news comes from.

    Thread-safe: one lock guards the entries and the draining of the source.
    """

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"the resume cache holds at least one session, not {size!r}")
        self.size = size
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._by_session: dict[int, str] = {}
        self._by_user: dict[int, set[str]] = {}
        self._source: psycopg.Connection[Any] | None = None
        self._refused: psycopg.Connection[Any] | None = None  # found unable to listen (behind a pooler)
        self._poll: Callable[[int], list[tuple[int, int]]] | None = None
        self._lock = threading.Lock()
        self.generation = 0  # moves on every message and every emptying: a cold read racing one is not kept
        _fork.register(self)
        _all.add(self)

    # -- the source of news ----------------------------------------------------------------------

    @property
    def listening(self) -> psycopg.Connection[Any] | None:
        """The connection whose socket brings the news (None: nothing cached can be trusted)."""
        return self._source

    def listen(self, conn: psycopg.Connection[Any]) -> bool:
        """Make ``conn`` (autocommit, no transaction open) the source: LISTEN on it, and refuse it
        if messages cannot reach it (for good: it is not asked again). Returns whether the cache is
        on."""
        if conn is self._refused:
            return False
        with self._lock:
            self._clear()
            self._source = self._poll = None
        try:
            cursor = conn.execute(LISTEN, prepare=False)
            cursor.nextset()  # past LISTEN's result, to the backend's pid
            row = cursor.fetchone()
        except psycopg.Error as exc:
            log.warning("the resume cache is off: cannot LISTEN on this connection (%s)", exc)
            self._refused = conn
            return False
        if row is None or row[0] != conn.info.backend_pid:
            log.warning("the resume cache is off: a connection pooler sits between this process and the "
                        "server, so notifications cannot reach it; set listen_dsn to the server itself")
            _unlisten(conn)
            self._refused = conn
            return False
        with contextlib.suppress(ValueError):  # listening on it again: one handler is enough
            conn.remove_notify_handler(self._notified)
        conn.add_notify_handler(self._notified)
        poller = select.poll()
        poller.register(conn.pgconn.socket, select.POLLIN)
        with self._lock:
            self._source, self._poll = conn, poller.poll
            self.generation += 1
        return True

    def forget_source(self) -> None:
        """The source's server session is gone (or replaced): it may have missed messages."""
        with self._lock:
            self._source = self._poll = None
            self._clear()

    def _drain(self) -> bool:
        """Handle the messages waiting on the source's socket; False (and emptied) when the source
        is gone or cannot be trusted. Called with the lock held."""
        poll = self._poll
        source = self._source
        if poll is None or source is None:
            return False
        try:
            pgconn = source.pgconn
            for _ in range(3):  # a goodbye is a message (FATAL) and then the end of the stream
                if not poll(0):
                    break
                pgconn.consume_input()  # raises at the end of the stream (the server hung up)
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the listening connection is gone")
            while (message := pgconn.notifies()) is not None:
                self._handle(message.relname.decode(), message.extra.decode())
        except (OSError, psycopg.Error, UnicodeDecodeError):
            self._source = self._poll = None
            self._clear()
            return False
        return True

    def _notified(self, notify: psycopg.Notify) -> None:
        """A message psycopg read while a statement ran on the source."""
        with self._lock:
            self._handle(notify.channel, notify.payload)

    def _handle(self, channel: str, payload: str) -> None:
        """Drop what a message names; a message that cannot be read empties everything."""
        if channel != CHANNEL:
            return
        self.generation += 1
        kind, _, listed = payload.partition(":")
        try:
            ids = [int(part) for part in listed.split(",")] if kind in ("s", "u") else None
        except ValueError:
            ids = None
        if ids is None:
            if payload != "*":
                log.warning("unreadable change notification %r: the resume cache is emptied", payload[:80])
            self._clear()
            return
        if kind == "s":
            for session_id in ids:
                if (key := self._by_session.get(session_id)) is not None:
                    self._drop(key)
        else:
            for user in ids:
                for key in list(self._by_user.get(user, ())):
                    self._drop(key)

    # -- entries ---------------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """The entry for ``key`` if memory may be trusted with it, after draining the news."""
        with self._lock:
            if not self._entries or not self._drain():
                return None
            entry = self._entries.get(key)
            if entry is None:
                return None
            now = _monotonic()
            if now >= entry.expires or (entry.idle and now >= entry.written + entry.idle):
                self._drop(key)  # the database decides: maybe another process kept it alive
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: Entry, generation: int) -> None:
        """Keep ``entry``, read from the database while ``generation`` was current: if any message
        came in meanwhile, the read may be older than the change it announced, so it is not kept."""
        with self._lock:
            if self._source is None or generation != self.generation:
                return
            if key in self._entries:
                self._drop(key)
            self._entries[key] = entry
            self._by_session[entry.session_id] = key
            for user in entry.users:
                self._by_user.setdefault(user, set()).add(key)
            while len(self._entries) > self.size:
                self._drop(next(iter(self._entries)))

    def drop(self, key: str) -> None:
        with self._lock:
            if key in self._entries:
                self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held (news not drained: what the next resume would check)."""
        return key in self._entries

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._by_session.pop(entry.session_id, None)
        for user in entry.users:
            keys = self._by_user.get(user)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_user[user]

    def _clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_session.clear()
        self._by_user.clear()

    def _reset_after_fork_in_child(self) -> None:
        """The parent's source is muted in the child, and the child has missed nothing yet only
        because it has nothing: start empty, with a lock of its own."""
        self._lock = threading.Lock()
        self._source = self._poll = self._refused = None
        self._clear()


class Listener:
    """A connection that only listens, for a cache whose sessions' connections cannot: to
    ``listen_dsn`` (behind a pooler), or in thread scope, where it is the process's one per
    database, shared by every thread's session (``shared``). Opened at the first resume that needs
    it; every use of it is made under ``lock``."""

    def __init__(self, cache: ResumeCache, dsn: str, *, connect_timeout: int, shared: bool) -> None:
        self.cache, self.shared = cache, shared
        self.lock = threading.Lock()
        self._dsn, self._connect_timeout = dsn, connect_timeout
        self._conn: Connection | None = None
        _fork.register(self)

    def connection(self) -> Connection:
        """The listening connection (call with ``lock`` held); a new server session behind it
        (it broke, or this is a forked child) empties the cache."""
        if self._conn is None:
            self._conn = Connection(self._dsn, connect_timeout=self._connect_timeout, prepare_threshold=None)
            self._conn.on_replaced(self.cache.forget_source)
        return self._conn

    def stop(self, *, close: bool) -> None:
        """Stop listening: the cache can trust nothing more; the connection is closed, or (in a
        child that inherited it, or when the session is forgotten) dropped untouched."""
        self.cache.forget_source()
        with self.lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close() if close else conn.discard()

    def _reset_after_fork_in_child(self) -> None:
        """A lock of the child's own; the connection's own reset mutes the parent's socket, and the
        next use opens one for the child."""
        self.lock = threading.Lock()


_shared: dict[tuple[str, str, int, int], Listener] = {}
_shared_lock = threading.Lock()


def shared_listener(dsn: str, listen_dsn: str | None, size: int, connect_timeout: int) -> Listener:
    """Thread scope: this process's cache of the sessions of ``dsn`` and the connection that
    listens for their news, made at the first ask and shared by every thread."""
    key = (dsn, listen_dsn or dsn, size, connect_timeout)
    with _shared_lock:
        listener = _shared.get(key)
        if listener is None:
            listener = _shared[key] = Listener(ResumeCache(size), listen_dsn or dsn, connect_timeout=connect_timeout,
                                               shared=True)
        return listener


def close_shared() -> None:
    """Close the thread scope's listening connections (for the end of a test or a program)."""
    with _shared_lock:
        closing = list(_shared.values())
        _shared.clear()
    for listener in closing:
        listener.stop(close=True)


@_fork.at_fork_in_child
def _fresh_lock_in_child() -> None:
    global _shared_lock  # noqa: PLW0603  (a thread of the parent may have held it at fork time)
    _shared_lock = threading.Lock()


def clear_all() -> None:
    """Empty every resume cache of this process (``Configuration.flush()``)."""
    for cache in list(_all):
        cache.clear()


def _unlisten(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.execute(f"UNLISTEN {CHANNEL}", prepare=False)
    except psycopg.Error as exc:
        log.debug("UNLISTEN failed: %s", exc)
