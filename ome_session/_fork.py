"""Fork safety: a forked child never inherits the parent's session.

One hook, registered once at import, runs in every child made by ``os.fork`` (multiprocessing's
fork start method, gunicorn and uWSGI workers, ``subprocess`` with ``preexec_fn``). It only
drops references and points the inherited database socket at /dev/null: it takes no lock (another
thread of the parent may have held one at fork time) and sends nothing to the server, so the
parent's connection and open transaction are untouched. The child can log in again with
``SessionManager().reattach()``, which uses the key it inherited.
"""

from __future__ import annotations

import os
import threading

from .session import Session


def _after_fork_in_child() -> None:
    Session._lock = threading.RLock()  # the parent's lock may have been held by another thread
    session, Session._instance = Session._instance, None
    if session is None:
        return
    Session._inherited_key = session.session_key
    factory = session._factory
    if factory is not None:
        factory._idle = True  # a Factory reference kept by user code refuses to work in the child
        factory._connection.detach_in_child()
    if session._backend is not None:
        session._backend.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
