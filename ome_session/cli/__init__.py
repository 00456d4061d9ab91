"""The ``ome-session`` command: install, log in and out, look after sessions and the database.

It follows ``omero login`` and ``omero sessions``: ``ome-session login alice@localhost``, then
``whoami``, ``sessions list``, ``logout``. The key store ($OME_SESSIONDIR) keeps keys, never
passwords. With the local backend SERVER is only a label for the configured database: --dsn,
else OME_SESSION_DSN, else the settings file the installer wrote, else the embedded cluster.
With ``--backend omero`` (or $OME_SESSION_BACKEND, or the settings file's ``backend``) SERVER is
an OMERO.server and the sessions live in the omero CLI's own store (see ``_omero``).

The modules: ``_parser`` (the arguments), ``_context`` (what a command needs of a backend, one
interface; the local backend's), ``_omero`` (the OMERO backend's), ``_login`` (login, logout,
whoami), ``_sessions``, ``_setup`` (install, db, tmp reap), ``_exits`` (the exit codes, also in
``--help``), ``_output`` (how things are printed). Here: choosing the backend, and ``main``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from .._settings import configured_backend
from ._context import BACKEND_ENV, BACKENDS, Context, LocalContext
from ._exits import exit_code
from ._output import one_line
from ._parser import build_parser

__all__ = ["build_parser", "exit_code", "main"]

_BACKEND_COMMANDS = ("login", "logout", "whoami", "sessions", "user", "group")  # the commands --backend applies to


def _context_for(args: argparse.Namespace) -> Context:
    """The context of the backend the command runs with."""
    if _backend(args) == "omero":
        from ._omero import OmeroContext  # only now: it needs the [omero] extra

        return OmeroContext(args)
    return LocalContext(args)


def _backend(args: argparse.Namespace) -> str:
    """--backend, else $OME_SESSION_BACKEND, else the settings file's ``backend``, else local."""
    if args.command not in _BACKEND_COMMANDS:
        return "local"
    chosen = args.backend or os.environ.get(BACKEND_ENV)
    if chosen is None:
        return configured_backend() or "local"
    if chosen not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {', '.join(BACKENDS)}, not {chosen!r}")
    return str(chosen)


class _Formatter(logging.Formatter):
    """Log lines look like the command's own messages: ``ome-session: warning: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"ome-session: {record.levelname.lower()}: {record.getMessage()}"
        return text + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (the console script passes it to ``sys.exit``)."""
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter())
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    try:
        return _context_for(args).run()
    except BaseException as exc:  # one of ours leaves with its code; anything else (a bug) is re-raised
        code = exit_code(exc)
        if code is None:
            raise
        if isinstance(exc, KeyboardInterrupt):
            print("ome-session: interrupted", file=sys.stderr)
        else:
            if args.verbose:
                traceback.print_exc()
            print(f"ome-session: error: {one_line(exc)}", file=sys.stderr)
        return code
