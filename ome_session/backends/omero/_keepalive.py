"""Keeping the process's OMERO session alive from a daemon thread, for long-running workers.

OMERO ends a session nobody has used for its idle timeout (10 minutes by default). A worker busy
computing for longer makes no calls, so its session would expire under it. One daemon thread per
backend pings the session every ``interval`` seconds while it is *active* (between a login or
resume and the next ``idle()``): an idle worker must not keep its last user's session alive for
ever. Pure-Python work in the main thread cannot starve it: the interpreter hands the GIL to
waiting threads every few milliseconds. (An extension that holds the GIL for minutes can; no
thread helps then.)

It keeps trying while the server is unreachable, and records a definite end (the session expired
or was killed) so that the next call says so with ``SessionKeyError`` (see the README's porting
notes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ...errors import SessionError, SessionKeyError

log = logging.getLogger(__name__)

T = TypeVar("T")


class KeepAlive(Generic[T]):
    """Pings ``target`` with ``ping`` every ``interval`` seconds while one is set.

    ``ping`` raises ``SessionKeyError`` once the session is gone (the thread then stops pinging
    it and remembers it as ``ended``), any other ``SessionError`` for a failure worth retrying.
    """

    def __init__(self, interval: float, ping: Callable[[T], None]) -> None:
        self.interval = interval
        self._ping = ping
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._target: T | None = None
        self._thread: threading.Thread | None = None
        self.last_ping: float | None = None  # time.monotonic() when the last successful ping was sent
        self.ended: T | None = None  # the last target found dead on the server

    def watch(self, target: T) -> None:
        """Keep ``target`` alive from now on (it becomes the only one)."""
        with self._lock:
            if self._stopped:
                return
            self._target = target
            if self.ended is target:
                self.ended = None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ome-session-omero-keepalive", daemon=True)
                self._thread.start()

    def pause(self) -> None:
        """Stop pinging until the next ``watch`` (the session is idle)."""
        with self._lock:
            self._target = None

    def stop(self, wait: bool = True) -> None:
        """End the thread; ``wait`` joins it (a ping in flight is bounded by its call timeout)."""
        with self._lock:
            self._stopped = True
            self._target = None
            thread, self._thread = self._thread, None
        self._wake.set()
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while not self._wake.wait(self.interval):
            with self._lock:
                target = self._target
            if target is None:
                continue
            started = time.monotonic()  # a ping counts from when it was sent
            try:
                self._ping(target)
            except SessionKeyError as exc:
                with self._lock:
                    if self._target is target:
                        self._target = None
                        self.ended = target
                log.warning("keepalive: %s", exc)
            except SessionError as exc:
                log.warning("keepalive: ping failed, trying again in %.3g s: %s", self.interval, exc)
            except Exception:  # a bug must not end the thread silently, nor take the process down
                log.exception("keepalive: unexpected error; trying again in %.3g s", self.interval)
            else:
                self.last_ping = started
