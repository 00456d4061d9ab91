"""Where ``Session.instance()`` finds its session: one per process, or one per thread.

The process scope (the default) keeps the session in one plain object, read with one attribute
lookup (``instance()`` is called everywhere, often in loops), with the lock that serialises
making, replacing and closing it and every use of an idle session's connection. The thread
scope keeps one of each per thread (a ``threading.local``), and closes a thread's session when
the thread ends. ``Session`` owns the holder in force (``session._current``) and swaps it when
the scope is chosen, once, before the first session.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

from . import _fork
from ._lifecycle import ACTIVE, BOOTSTRAP, CLOSED
from .errors import SessionError

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

SCOPES = ("process", "thread")

sessions: weakref.WeakSet[Session] = weakref.WeakSet()  # every Session of the process


class ProcessHolder:
    """The process's session and its lock."""

    __slots__ = ("lock", "session")

    def __init__(self) -> None:
        self.session: Session | None = None
        self.lock = threading.RLock()

    def set(self, session: Session | None) -> None:
        self.session = session


class ThreadHolder(threading.local):
    """Each thread's session and lock (``__init__`` runs in each thread at its first use).

    A thread's session is closed when the thread ends: the holder keeps, per thread, an object
    that dies with the thread's dict, and its finalizer closes the session it was last given.
    """

    def __init__(self) -> None:
        self.session: Session | None = None
        self.lock = threading.RLock()
        self._box: list[Session | None] = [None]  # shared with the finalizer (the dict is not)
        self._ends = _ThreadEnd()
        weakref.finalize(self._ends, _thread_ended, self._box).atexit = False

    def set(self, session: Session | None) -> None:
        self.session = self._box[0] = session


Holder = ProcessHolder | ThreadHolder


def holder(scope: str | None) -> Holder:
    return ThreadHolder() if scope == "thread" else ProcessHolder()


def check_change(scope: str) -> None:
    """A new scope is for a process without sessions: refused while one is not closed."""
    if scope not in SCOPES:
        raise ValueError(f"the scope is 'process' or 'thread', not {scope!r}")
    live = [session for session in list(sessions) if session._state is not CLOSED]
    if live:
        raise SessionError(
            f"the scope is chosen once, before the first session, and {len(live)} session(s) exist "
            f"(such as {live[0]!r}): call Session.set_scope({scope!r}) at start-up, or set "
            f"OME_SESSION_SCOPE={scope}")


class _ThreadEnd:
    """Nothing but a thing that dies with its thread."""


def _thread_ended(box: list[Session | None]) -> None:
    """A thread ended with a session of its own, which nobody can reach any more: closed (rolled
    back, connection back to the pool, temporary files removed). Runs as the thread's state is
    cleared; in a forked child, for the parent's threads, it touches nothing."""
    session, box[0] = box[0], None
    if session is None or not _fork.owned():
        return
    try:
        if session._state is ACTIVE or session._state is BOOTSTRAP:
            log.warning("%s ended without Session.idle(); its unit of work is rolled back", session._work.owner)
        session._close()
    except Exception:
        log.exception("closing the session of a thread that ended failed")
