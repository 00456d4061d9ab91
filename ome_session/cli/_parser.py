"""The command line: ``ome-session [--dsn DSN] [--backend B] COMMAND ...``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .. import __version__, _maintenance
from . import _admin, _login, _sessions, _setup
from ._context import BACKEND_ENV, BACKENDS, OMERO_ARGS_ENV, PASSWORD_ENV, Context
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
    p.add_argument("-w", "--password", help=f"password (better: {PASSWORD_ENV}, or the prompt; with "
                   "--backend omero also OMERO_PASSWORD)")
    p.add_argument("-k", "--key", help="join the existing session with this key, or with the one stored key "
                   "that starts with it (as `sessions list` shows keys)")
    p.add_argument("-C", "--create", action="store_true", help="make a new session even if a stored one would do")
    p.add_argument("--sudo", metavar="ADMIN", help="log in as ADMIN (an admin or group leader), then act as USER")
    p.add_argument("-g", "--group", help="work in this group: new objects of this session go there")
    p.add_argument("-t", "--timeout", type=_positive(int), metavar="SECONDS",
                   help="this session's idle timeout (at most what the installation allows)")
    p.add_argument("--retry", type=_non_negative, metavar="SECONDS",
                   help="while the server cannot be reached, try again every 3 s, waiting SECONDS in all")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--insecure", action="store_true", help="OMERO: after logging in, use the server's "
                   "unencrypted router (as omero-py's secure=False)")
    p.set_defaults(handler=_login.login)


def _group_id(text: str) -> int:
    return int(_positive(int)(text))


def _add_admin_commands(command: Callable[..., argparse.ArgumentParser],
                        sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``user`` and ``group``, with the options of ``omero user`` and ``omero group``."""
    user = command(sub, "user", "add and manage users (in the current session, with its rights)", backend=True)
    usub = user.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = command(usub, "add", "add a user", _admin.user_add, backend=True)
    p.add_argument("username", help="the new user's login name")
    p.add_argument("firstname", help="first name")
    p.add_argument("lastname", help="last name")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("-P", "--userpassword", metavar="PASSWORD",
                        help=f"the new user's password (better: {_admin.NEW_PASSWORD_ENV}, or the prompt)")
    secret.add_argument("--no-password", action="store_true", help="a user without a password")
    p.add_argument("--group-name", dest="groups", action="extend", nargs="+", default=[], metavar="GROUP",
                   help="groups to join (the first is the default group)")
    p.add_argument("--group-id", dest="groups", action="extend", nargs="+", type=_group_id, metavar="ID",
                   help="groups to join, by id")
    p.add_argument("-a", "--admin", action="store_true", help="make the user an admin")
    p.add_argument("--guest", action="store_true", help="make the user a guest (read-only)")
    p.add_argument("-e", "--email", help="e-mail address")
    p.add_argument("-i", "--institution", help="institution")
    p.add_argument("--ignore-existing", action="store_true", help="succeed if the user exists already")
    command(usub, "list", "list every user", _admin.user_list, backend=True)
    p = command(usub, "info", "show a user (default: yourself)", _admin.user_info, backend=True)
    p.add_argument("username", nargs="?")
    p = command(usub, "password", f"change your password, or (admins) another user's; your own password "
                f"from {PASSWORD_ENV} or a prompt, the new one from {_admin.NEW_PASSWORD_ENV} or a prompt",
                _admin.user_password, backend=True)
    p.add_argument("username", nargs="?", help="whose password (default: yours)")
    for name, text, handler in (("deactivate", "deactivate a user and end their sessions", _admin.user_deactivate),
                                ("activate", "let a deactivated user log in again", _admin.user_activate)):
        command(usub, name, text, handler, backend=True).add_argument("username")

    group = command(sub, "group", "add groups and manage members and owners", backend=True)
    gsub = group.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = command(gsub, "add", "add a group", _admin.group_add, backend=True)
    p.add_argument("name")
    p.add_argument("--ignore-existing", action="store_true", help="succeed if the group exists already")
    command(gsub, "list", "list every group, its owner and members", _admin.group_list, backend=True)
    for name, text, handler, many in (
            ("adduser", "add users to a group", _admin.group_adduser, True),
            ("removeuser", "remove users from a group", _admin.group_removeuser, True),
            ("owneradd", "make a user the group's owner (one owner per group)", _admin.group_owneradd, False),
            ("ownerremove", "end a user's ownership of the group", _admin.group_ownerremove, False)):
        p = command(gsub, name, text, handler, backend=True)
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--name", help="the group's name")
        which.add_argument("--id", type=_group_id, help="the group's id")
        if many:
            p.add_argument("users", nargs="+", metavar="USER")
        else:
            p.add_argument("user", metavar="USER")
        if name == "owneradd":
            p.add_argument("--replace", action="store_true", help="replace the group's present owner")


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
    p.add_argument("--full-keys", action="store_true", help="show whole keys, not their first 8 characters")
    scommand("who", "list the live sessions on the server (admins: all; others: their own)", _sessions.who)
    scommand("file", "print the path of the current session's entry", _sessions.file)
    scommand("key", "print the current session key", _sessions.key)
    p = scommand("clear", "remove dead sessions from the store", _sessions.clear)
    p.add_argument("--all", action="store_true", help="close and remove every stored session")
    p = scommand("purge", "delete closed and expired session rows (admins only)", _sessions.purge)
    p.add_argument("--batch", type=_positive(int), default=_maintenance.DEFAULT_BATCH,
                   help=f"rows per committed batch (default: {_maintenance.DEFAULT_BATCH})")
    p = scommand("keepalive", "keep the current session alive until interrupted", _sessions.keepalive)
    p.add_argument("-f", "--frequency", type=_positive(float), metavar="SECONDS", default=60.0,
                   help="seconds between keepalives (default: 60)")
    p.add_argument("--once", action="store_true", help="keep it alive once, and exit")
    p = scommand("group", "switch this session\'s group (its new objects go there)", _sessions.group)
    p.add_argument("group", help="group name or id")
    p = scommand("timeout", "show or set this session's idle timeout, and its time left", _sessions.timeout)
    p.add_argument("seconds", nargs="?", type=_non_negative,
                   help="this session's new idle timeout; with --default, every session's default (0: none)")
    p.add_argument("--default", action="store_true",
                   help="the configured default instead (session_idle_timeout; setting it is for the super user)")

    _add_admin_commands(command, sub)

    tmp = command(sub, "tmp", "temporary files of sessions")
    tsub = tmp.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = command(tsub, "reap", "remove the temporary directories of dead processes", _setup.tmp_reap)
    p.add_argument("--dir", help="root to reap (default: the configured tmp_dir)")
    return parser
