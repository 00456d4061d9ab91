"""``install``, ``db start|stop|status`` and ``tmp reap``: what needs no login."""

from __future__ import annotations

from pathlib import Path

from .. import _tempfiles
from ..session import Session
from ._context import Context


def install(ctx: Context) -> int:
    from .. import installer

    a = ctx.args
    installer.install(a.dsn, admin=a.admin, tmp_dir=a.tmp_dir, allow_guest=a.allow_guest, service_user=a.service_user,
                      report=lambda line: print(line, flush=True))
    return 0


def db(ctx: Context) -> int:
    from .. import _cluster

    cluster = _cluster.Cluster(_cluster.default_datadir())
    action = ctx.args.action
    if action == "start":
        cluster.start()
        print(f"embedded cluster running in {cluster.datadir} (pid {cluster.status().pid})")
    elif action == "stop":
        running = cluster.status().running
        cluster.stop()
        print(f"embedded cluster in {cluster.datadir} {'stopped' if running else 'was not running'}")
    status = cluster.status()
    if action != "status":
        return 0
    print(f"data directory: {cluster.datadir}")
    print(f"initialized:    {'yes' if status.initialized else 'no (run `ome-session db start`)'}")
    print(f"running:        {f'yes (pid {status.pid})' if status.running else 'no'}")
    print(f"socket:         {status.socket_dir}")
    print(f"postgresql:     {status.version or 'not found'} ({status.bindir or 'no server programs'})")
    return 0 if status.running else 3


def tmp_reap(ctx: Context) -> int:
    if ctx.args.dir:
        root = Path(ctx.args.dir)
    else:  # the configured tmp_dir: reading configuration needs no login
        session = Session.bootstrap_instance(ctx.args.dsn)
        try:
            root = session.configuration.tmp_dir
        finally:
            session.finish_bootstrap()
    removed = _tempfiles.reap(root)
    for path in removed:
        print(f"removed {path}")
    print(f"reaped {len(removed)} temporary director{'y' if len(removed) == 1 else 'ies'} "
          f"of dead processes under {root}")
    return 0
