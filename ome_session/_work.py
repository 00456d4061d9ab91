"""A session's unit of work: from the login or resume that began it to the next ``idle()``.

It holds what belongs to that one unit of work and to nothing after it: the ``transaction()``
blocks open in it and the tasks deferred to its end. ``Session._begin`` makes a new one each time
a unit of work begins: the one place where "this unit of work began", so whatever must be true of
a whole unit of work (say, which thread or task may use it) is recorded here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ._lifecycle import refusal_in_block

if TYPE_CHECKING:
    from .factory import Factory

log = logging.getLogger(__name__)


class UnitOfWork:
    __slots__ = ("deferred", "depth")

    def __init__(self) -> None:
        self.depth = 0  # transaction() blocks open, the outermost is 1
        self.deferred: list[Callable[[], object]] = []

    def check_outside_blocks(self, what: str) -> None:
        """Ending the transaction by hand is the blocks' job while one is open."""
        if self.depth:
            raise refusal_in_block(what)

    @contextmanager
    def transaction(self, factory: Factory) -> Iterator[None]:
        """Commit on success, roll back on an exception; a nested block is a savepoint."""
        depth = self.depth
        factory._enter_block(depth)
        self.depth = depth + 1
        try:
            yield
        except BaseException:
            self.depth = depth
            factory._leave_block(depth, commit=False)
            raise
        self.depth = depth
        factory._leave_block(depth, commit=True)

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
        """The unit of work is over: its blocks are gone with its transaction."""
        self.depth = 0
