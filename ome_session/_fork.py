"""Fork safety: one protocol for everything that belongs to the process that made it.

A child made by ``fork()`` inherits its parent's objects and shares its sockets and files.
Anything it sends on an inherited socket (a query, a ROLLBACK, the Terminate message of
``close()``) reaches the parent's server session and breaks the parent's connection or open
transaction; anything it deletes may be the parent's. So each object holding such process-bound
state registers a reset here (``register`` for an object, ``at_fork_in_child`` for class- or
module-level state), and one hook, registered once with ``os.register_at_fork``, runs them all in
the child: the session is forgotten, inherited sockets are pointed at /dev/null, the temporary-file
registry starts empty, OMERO clients are parked, fresh locks replace the parent's.

A reset takes no lock and sends nothing to any server: a thread of the parent may have held any
lock at fork time (that thread does not exist in the child), and the hook also runs in
``subprocess`` children with ``preexec_fn``, just before exec.

Forks the hook cannot see (``fork()`` called from C: uWSGI without ``py-call-osafterfork``) are
caught by ``owned()``, the one place the process id is compared. It is asked where a process begins
a unit of work and where bytes would leave for a server or a file would be deleted; the first time
a child asks, the same resets run. Nothing else compares process ids.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from contextlib import suppress
from typing import Protocol, TypeVar


class ProcessBound(Protocol):
    """An object holding state only the process that made it may use."""

    def _reset_after_fork_in_child(self) -> None:
        """Let go of the parent's state without touching it: no lock, no I/O with a server."""


F = TypeVar("F", bound=Callable[[], None])

_owner = os.getpid()  # the process the registered state belongs to
_objects: weakref.WeakSet[ProcessBound] = weakref.WeakSet()
_functions: list[Callable[[], None]] = []


def owned() -> bool:
    """Whether this process owns the registered state (it made it, or reset it after a fork).

    False once, in a child of a fork the hook did not see: the resets have run by then, so the
    caller finds every inherited object already let go of.
    """
    if os.getpid() == _owner:
        return True
    _reset_in_child()
    return False


def register(obj: ProcessBound) -> None:
    """Reset ``obj`` in every forked child from now on (held weakly: it may go away)."""
    owned()  # a missed fork first: what this process makes now must not be reset as the parent's
    _objects.add(obj)


def at_fork_in_child(reset: F) -> F:
    """Run ``reset`` (class- or module-level state) in every forked child; usable as a decorator."""
    _functions.append(reset)
    return reset


def _reset_in_child() -> None:
    global _owner  # noqa: PLW0603  (the one piece of module state that says whose the rest is)
    _owner = os.getpid()
    # One failing reset must not stop the others; nothing can be logged here (logging locks).
    for reset in list(_functions):
        with suppress(Exception):
            reset()
    for obj in list(_objects):
        with suppress(Exception):
            obj._reset_after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
