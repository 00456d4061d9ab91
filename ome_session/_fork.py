"""Fork safety: a forked child never inherits the parent's session.

A child made by ``fork()`` shares the parent's database socket. Anything it sends there (a query,
a ROLLBACK, the Terminate message of ``close()``) lands in the parent's backend and breaks the
parent's connection or open transaction. So the child *forgets* the session instead: the
singleton is dropped, the inherited socket is pointed at /dev/null, and the parent's temporary
files stay the parent's. The child can log in again with ``SessionManager().reattach()``, which
uses the key (and the database) it inherited.

One hook, registered once at import, runs in every child made by ``os.fork`` (multiprocessing's
fork start method, gunicorn workers, ``subprocess`` with ``preexec_fn``). It takes no lock (a
thread of the parent may have held one at fork time, and that thread does not exist in the child)
and sends nothing to the server. Forks the hook cannot see (``fork()`` called from C, as uWSGI
does unless ``py-call-osafterfork`` is set) are caught the first time the child asks for the
session: ``Session.instance()`` compares the owning pid and forgets then.
"""

from __future__ import annotations

import os
import threading

from .configuration import Configuration
from .session import Session


def after_fork_in_child() -> None:
    """Drop a session this process inherited through fork, sending nothing to the server.

    Runs in the at-fork hook, or later from ``Session.instance()`` for a fork the hook missed.
    Remembers its key and database for ``reattach()``; references kept by user code (the
    Session, its Factory) refuse to work in the child rather than touch the parent's socket.
    """
    # Fresh locks first: the parent's may have been held by a thread that is gone in the child.
    Session._process_pid = os.getpid()
    Session._lock = threading.RLock()
    Configuration._preload_lock = threading.Lock()
    session, Session._instance = Session._instance, None
    if session is None:
        return
    Session._inherited_key = session.session_key
    session._idle = True
    factory = session._factory
    if factory is not None:
        Session._inherited_dsn = factory._connection.dsn
        Session._inherited_options = {"connect_timeout": factory._connection.connect_timeout,
                                      "prepare_threshold": factory._connection.prepare_threshold}
        factory._idle = True
        factory._connection.detach_in_child()
    # A remote backend (OMERO) says what a manager needs to reach its server again.
    options = getattr(session._backend, "options", None)
    Session._inherited_backend = None
    if session._backend is not None and isinstance(options, dict):
        Session._inherited_backend = (session._backend.name, dict(options))
    if session._backend is not None:
        session._backend.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)
