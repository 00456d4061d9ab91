"""The command line: ``ome-session [--dsn DSN] [--backend B] COMMAND ...``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .. import __version__, _maintenance
from . import _login, _sessions, _setup
from ._context import BACKEND_ENV, BACKENDS, OMERO_ARGS_ENV, Context
from ._exits import EPILOG

Handler = Callable[[Context], int]


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def check(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
        return value
    check.__name__ = kind.__name__  # argparse names the type in its messages
    return check


def _add_login_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("connection", nargs="?", metavar="[USER@]SERVER[:PORT]",
                   help="server label (default: localhost) with an optional user and port")
    p.add_argument("-s", "--server", help="server label (the local backend uses the configured database)")
    p.add_argument("-p", "--port", type=int, help="port, recorded with the server label")
    p.add_argument("-u", "--user", help="user to log in as")
    p.add_argument("-w", "--password", help=f"password (better: {_login.PASSWORD_ENV}, or the prompt)")
    p.add_argument("-k", "--key", help="join the existing session with this key")
    p.add_argument("--sudo", metavar="ADMIN", help="log in as ADMIN (an admin or group leader), then act as USER")
    p.add_argument("-g", "--group", help="work in this group: new objects of this session go there")
    p.add_argument("-t", "--timeout", type=_positive(int), metavar="SECONDS",
                   help="this session's idle timeout (at most what the installation allows)")
    p.add_argument("--insecure", action="store_true", help="OMERO: after logging in, use the server's "
                   "unencrypted router (as omero-py's secure=False)")
    p.set_defaults(handler=_login.login)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    with_backend = argparse.ArgumentParser(add_help=False, parents=[common])
    with_backend.add_argument("--backend", choices=BACKENDS, default=argparse.SUPPRESS,
                              help="local (the database) or omero (an OMERO.server); see `ome-session --help`")
    parser = argparse.ArgumentParser(
        prog="ome-session", description="Install ome-session, log in and out, and manage sessions.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="PostgreSQL connection string (default: $OME_SESSION_DSN, the "
                        "installer's settings file, then the embedded cluster)")
    parser.add_argument("--backend", choices=BACKENDS, help="where logins are checked, for login, logout, "
                        f"whoami and sessions: local (the database, the default) or omero (an OMERO.server; "
                        f"Ice arguments in {OMERO_ARGS_ENV}); default: ${BACKEND_ENV}, then the settings file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str,
                handler: Handler | None = None, *, backend: bool = False) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=text, description=text, epilog=EPILOG,
                              parents=[with_backend if backend else common],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        if handler is not None:
            p.set_defaults(handler=handler)
        return p

    p = command(sub, "install", "create or upgrade the database, configuration and first admin", _setup.install)
    p.add_argument("--admin", default=None, help="name of the first admin (default: admin; a re-run "
                   "keeps the installed one); the password comes from OME_SESSION_ADMIN_PASSWORD or a prompt")
    p.add_argument("--tmp-dir", help="root of the temporary directories of sessions")
    p.add_argument("--allow-guest", action="store_true", help="let guest accounts log in")
    p.add_argument("--service-user", metavar="ACCOUNT", help="the account a service runs as (www-data, ...): "
                   "the settings file is left readable by it and nobody else (0640, its group), in "
                   "/etc/ome-session unless OME_SESSION_CONFIG says where")
    p = command(sub, "db", "start, stop or show the embedded PostgreSQL cluster", _setup.db)
    p.add_argument("action", choices=["start", "stop", "status"])
    _add_login_arguments(command(sub, "login", "log in, or join a stored session", backend=True))
    command(sub, "logout", "close the current session and forget its key", _login.logout, backend=True)
    command(sub, "whoami", "show who the current session is", _login.whoami, backend=True)

    sessions = command(sub, "sessions", "manage stored sessions", backend=True)
    ssub = sessions.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    def scommand(name: str, text: str, handler: Handler | None = None) -> argparse.ArgumentParser:
        return command(ssub, name, text, handler, backend=True)

    _add_login_arguments(scommand("login", "the same as `ome-session login`"))
    scommand("logout", "the same as `ome-session logout`", _login.logout)
    p = scommand("list", "list stored sessions, checking each (dead ones are removed)", _sessions.list_)
    p.add_argument("--no-purge", action="store_true", help="keep sessions found dead in the store")
    scommand("file", "print the path of the current session's entry", _sessions.file)
    scommand("key", "print the current session key", _sessions.key)
    p = scommand("clear", "remove dead sessions from the store", _sessions.clear)
    p.add_argument("--all", action="store_true", help="close and remove every stored session")
    p = scommand("purge", "delete closed and expired session rows (admins only)", _sessions.purge)
    p.add_argument("--batch", type=_positive(int), default=_maintenance.DEFAULT_BATCH,
                   help=f"rows per committed batch (default: {_maintenance.DEFAULT_BATCH})")
    p = scommand("keepalive", "keep the current session alive", _sessions.keepalive)
    p.add_argument("-f", "--frequency", type=_positive(float), metavar="SECONDS",
                   help="repeat every SECONDS until interrupted")
    p = scommand("group", "switch this session's group (its new objects go there)", _sessions.group)
    p.add_argument("group", help="group name or id")
    p = scommand("timeout", "show or set this session's idle timeout, and its time left", _sessions.timeout)
    p.add_argument("seconds", nargs="?", type=_non_negative,
                   help="this session's new idle timeout; with --default, every session's default (0: none)")
    p.add_argument("--default", action="store_true",
                   help="the configured default instead (session_idle_timeout; setting it is for the super user)")

    tmp = command(sub, "tmp", "temporary files of sessions")
    tsub = tmp.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = command(tsub, "reap", "remove the temporary directories of dead processes", _setup.tmp_reap)
    p.add_argument("--dir", help="root to reap (default: the configured tmp_dir)")
    return parser
