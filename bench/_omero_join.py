"""8. OMERO backend, against the test suite's stand-in OMERO.blitz server on loopback.

Per request, a worker either re-uses the Ice communicator it kept attached to the caller's
session (``reuse_client=True``, the default) or joins the session by UUID with a new one
(``reuse_client=False``). Beside each: plain omero-py doing the least that achieves the same
(one call on a kept client; a new client, ``joinSession``, detach and close). Remote calls per
request are counted by the stand-in, which logs every call it serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ome_session import Session, SessionManager

from ._context import Context
from ._results import Row
from ._stats import Summary, time_each

RAW_KEPT = "omero-py: one kept client, one call per request (getEventContext)"
REUSE = "ome-session, reuse_client=True: create_session(key=) + idle()"
RAW_JOIN = "omero-py: new client + joinSession + detach + close per request"
JOIN = "ome-session, reuse_client=False: join by UUID per request + idle()"


def run(ctx: Context, section: str) -> None:
    import omero

    from tests.omero_standin import StandinUser, running_standin

    t0 = time.monotonic()
    with running_standin(users=[StandinUser("alice", "alice-pw", groups=("lab",))]) as server:
        ctx.results.details["omero_standin_start_s"] = round(time.monotonic() - t0, 1)
        options: dict[str, Any] = {"backend": "omero", "host": server.host, "port": server.port,
                                   "client_args": server.client_args}
        key = SessionManager(**options).create_session("alice", "alice-pw").session_key
        assert key is not None
        Session.idle()

        kept = omero.client(host=server.url_host, port=server.port, args=server.client_args)
        try:
            kept.joinSession(key).detachOnDestroy()
            admin = kept.getSession().getAdminService()

            def raw_join(i: int) -> None:
                client = omero.client(host=server.url_host, port=server.port, args=server.client_args)
                try:
                    client.joinSession(key).detachOnDestroy()
                finally:
                    client.closeSession()

            ops: dict[str, tuple[Callable[[int], object], int]] = {
                RAW_KEPT: (lambda i: admin.getEventContext(), ctx.size(400, 60)),
                REUSE: (lambda i: _resume(options, key, reuse=True), ctx.size(400, 60)),
                RAW_JOIN: (raw_join, ctx.size(60, 10)),
                JOIN: (lambda i: _resume(options, key, reuse=False), ctx.size(60, 10)),
            }
            samples: dict[str, list[float]] = {}
            calls: dict[str, float] = {}
            for name, (op, count) in ops.items():  # in blocks: switching options makes a new backend
                time_each(op, 5)
                before = len(server.calls())
                samples[name] = time_each(op, count)
                calls[name] = (len(server.calls()) - before) / count
                before = len(server.calls())
                op(0)
                ctx.results.details.setdefault("statements", {})[f"{name} (remote calls)"] = \
                    server.operations(before)
                print(f"  {name}: {Summary.of(samples[name]).p50 * 1e3:.2f} ms, "
                      f"{calls[name]:g} calls per request", flush=True)
        finally:
            Session.delete_instance(force=True)
            kept.closeSession()
    baselines = {REUSE: RAW_KEPT, RAW_JOIN: RAW_KEPT, JOIN: REUSE}
    for name in ops:
        ctx.results.add(Row(section, name, "ms", Summary.of(samples[name]), baseline=baselines.get(name),
                            statements=calls[name], note="stmts/op: remote calls logged by the stand-in"))


def _resume(options: dict[str, Any], key: str, *, reuse: bool) -> None:
    SessionManager(**options, reuse_client=reuse).create_session(key=key)
    Session.idle()
