"""A session's unit of work: from the login or resume that began it to the next ``idle()``.

It holds what belongs to that one unit of work and to nothing after it: the ``transaction()``
blocks open in it, the tasks deferred to its end, and who it belongs to. ``Session._begin`` makes
a new one each time a unit of work begins: the one place where "this unit of work began".

A unit of work belongs to the thread that began it, and, if that was an asyncio task, to that
task; a ``transaction()`` block opened by a task belongs to that task until it ends. Any other
thread or task is refused while it is open (``refusal``), so nobody else's statement lands in
its transaction, and no two threads are ever inside one psycopg connection at once. A thread is
told apart by a token of its own (``this_thread``), not by its ident, which the system hands on
to the next thread once one ends.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ._lifecycle import refusal_in_block
from .errors import SessionError

if TYPE_CHECKING:
    from .factory import Factory

log = logging.getLogger(__name__)


class Owner:
    """One thread, for as long as it runs: what a unit of work belongs to."""

    __slots__ = ("thread",)

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread

    def __str__(self) -> str:
        return f"thread {self.thread.name!r} (ident {self.thread.ident})"


_local = threading.local()  # each thread's Owner, made at its first unit of work


def this_thread() -> Owner:
    """The calling thread's token: the same object for as long as the thread runs, never another's."""
    try:
        owner: Owner = _local.owner
    except AttributeError:
        owner = _local.owner = Owner(threading.current_thread())
    return owner


def this_task() -> object | None:
    """The asyncio task running in this thread, if any (asyncio is not imported for the asking)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None or asyncio.events._get_running_loop() is None:
        return None
    task: object | None = asyncio.current_task()
    return task


def _task_name(task: object) -> str:
    get_name = getattr(task, "get_name", None)
    return f"task {get_name()!r}" if get_name is not None else f"task {task!r}"


def _task_done(task: object) -> bool:
    done = getattr(task, "done", None)
    return bool(done()) if done is not None else False


class UnitOfWork:
    __slots__ = ("deferred", "depth", "owner", "task")

    def __init__(self, owner: Owner | None = None, task: object | None = None) -> None:
        self.depth = 0  # transaction() blocks open, the outermost is 1
        self.deferred: list[Callable[[], object]] = []
        self.owner = owner  # None once it ended: an idle session belongs to nobody
        self.task = task

    # -- who it belongs to -----------------------------------------------------------------------

    def check_owner(self, what: str = "use this session", *, state_open: bool = True,
                    take_over: bool = False) -> None:
        """Refuse the calling thread or task unless the unit of work is its own (or nobody's).

        ``Session._check`` inlines the cheap test and calls this when it fails. ``state_open``:
        the session's state says a unit of work is open (then one without an owner is a login
        in progress on another thread). ``take_over``: a transition (logging in, ``idle()``,
        closing) may end the unit of work of a thread or task that ended without ``idle()``;
        a mere use may not (it would act as that thread's user).
        """
        owner = self.owner
        if owner is None:
            if state_open:
                raise SessionError(f"cannot {what} from {this_thread()}: another thread is logging in on "
                                   "this session right now")
            return
        if owner is this_thread() and (self.task is None or self.task is this_task()):
            return
        if not self.abandoned():
            raise self.refusal(what)
        if not take_over:
            raise SessionError(f"cannot {what} from {this_thread()}: the session's unit of work belonged to "
                               f"{self._who()}, which ended without Session.idle(); log in again here")
        log.warning("the unit of work of %s was left open when it ended; rolled back for %s", self._who(),
                    this_thread())

    def abandoned(self) -> bool:
        """Its thread (or task) ended without ``idle()``: nobody can be inside it any more."""
        owner = self.owner
        if owner is None or not owner.thread.is_alive():
            return True
        return self.task is not None and owner is this_thread() and _task_done(self.task)

    def refusal(self, what: str = "use this session") -> SessionError:
        """Why the calling thread or task may not ``what``: whose unit of work it is, what to do."""
        return SessionError(
            f"cannot {what} from {this_thread()}{self._task_suffix(this_task())}: the session's unit of "
            f"work belongs to {self._who()}, which logged in and has not called Session.idle(); "
            "a unit of work is never shared. Log in in this thread (or task) after that one idles, "
            "or give each thread a session of its own with Session.set_scope('thread')"
        )

    def _who(self) -> str:
        return f"{self.owner}{self._task_suffix(self.task)}"

    @staticmethod
    def _task_suffix(task: object | None) -> str:
        return f", {_task_name(task)}" if task is not None else ""

    # -- transaction blocks ----------------------------------------------------------------------

    def check_outside_blocks(self, what: str) -> None:
        """Ending the transaction by hand is the blocks' job while one is open."""
        if self.depth:
            raise refusal_in_block(what)

    @contextmanager
    def transaction(self, factory: Factory) -> Iterator[None]:
        """Commit on success, roll back on an exception; a nested block is a savepoint.

        A block opened by an asyncio task in a unit of work begun outside any task belongs to
        that task until it ends: another task of the thread is refused meanwhile. A block whose
        unit of work ended inside it (``idle()``, another login) sends nothing when it ends: its
        transaction was rolled back then, and the connection may be another thread's by now.
        """
        depth = self.depth
        task = this_task() if depth == 0 and self.task is None else None
        factory._enter_block(depth)
        if task is not None:
            self.task = task
        self.depth = depth + 1
        try:
            yield
        except BaseException:
            if self.owner is not None:
                self.depth = depth
                factory._leave_block(depth, commit=False)
            raise
        finally:
            if task is not None and self.task is task:
                self.task = None
        if self.owner is None:
            raise SessionError("the unit of work ended inside a `with session.transaction():` block (idle(), "
                               "a login or logout): its transaction was rolled back then, and nothing of the "
                               "block was committed")
        self.depth = depth
        factory._leave_block(depth, commit=True)

    # -- deferred tasks --------------------------------------------------------------------------

    def defer(self, fn: Callable[[], object]) -> None:
        if not callable(fn):
            raise TypeError(f"defer() takes a callable, not {type(fn).__name__}")
        self.deferred.append(fn)

    def run_deferred(self) -> None:
        """Each task once, in order; a failing one is logged and the others still run."""
        tasks, self.deferred = self.deferred, []
        for task in tasks:
            try:
                task()
            except Exception:
                log.exception("a deferred task failed (%r); going on", task)

    def end(self) -> None:
        """The unit of work is over: its blocks are gone with its transaction, and it is nobody's."""
        self.depth = 0
        self.owner = None
        self.task = None
