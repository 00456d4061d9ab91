"""The ``ome-session`` command: install, log in and out, look after sessions and the database.

It follows ``omero login`` and ``omero sessions``: ``ome-session login alice@localhost``, then
``whoami``, ``sessions list``, ``logout``. The key store ($OME_SESSIONDIR) keeps keys, never
passwords. With the local backend SERVER is only a label for the configured database: --dsn,
else OME_SESSION_DSN, else the settings file the installer wrote, else the embedded cluster.
With ``--backend omero`` (or $OME_SESSION_BACKEND, or the settings file's ``backend``) SERVER is
an OMERO.server and the sessions live in the omero CLI's own store (see ``_cli_omero``).

Exit codes (also in ``--help``):
  0  success
  1  not logged in, or the login or session key was rejected
  2  usage error, or input missing (no password and no terminal to ask for one)
  3  database unavailable (and ``db status`` when the embedded cluster is not running)
  4  configuration or file error (no database configured, unsafe key store, newer schema, ...)
  5  permission denied
  130 interrupted
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import getpass
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, _keys, _maintenance, _tempfiles, _tty
from .errors import (
    AuthenticationError,
    ConfigurationError,
    DatabaseUnavailable,
    NoSessionError,
    PermissionDenied,
    SessionError,
    SessionKeyError,
)
from .keystore import KeyStore, StoredSession
from .manager import SessionManager
from .session import Session

EXIT_CODES = """\
exit codes:
  0    success
  1    not logged in, or the login or session key was rejected
  2    usage error, or input missing (no password and no terminal to ask for one)
  3    database unavailable (and `db status` when the embedded cluster is not running)
  4    configuration or file error (no database configured, unsafe key store, newer schema, ...)
  5    permission denied
  130  interrupted
"""

# Most specific first: the exit code of one of our errors (or of a bad argument).
_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (PermissionDenied, 5),
    (ConfigurationError, 4),
    (DatabaseUnavailable, 3),
    (ValueError, 2),
    (SessionError, 1),
    (OSError, 4),  # a file or directory we need (key store, temporary files) is unusable
)
_PASSWORD_ENV = "OME_SESSION_PASSWORD"
_BACKEND_ENV = "OME_SESSION_BACKEND"
_BACKENDS = ("local", "omero")
_BACKEND_COMMANDS = ("login", "logout", "whoami", "sessions")  # the commands --backend applies to
_OMERO_ARGS_ENV = "OME_SESSION_OMERO_ARGS"  # Ice arguments for each omero.client, shell-quoted
_DATE = "%a %b %d %H:%M:%S %Y"  # as `omero sessions list` shows it

Handler = Callable[["_Context"], int]


class _Exit(Exception):
    """Leave with ``code``, printing ``message`` as an error (input missing, nothing to do)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Context:
    """What every command needs, made on first use: a command that needs no database makes none.

    This is the local backend's; ``_cli_omero.OmeroContext`` overrides the store and how a
    stored entry is resumed, so the commands that only do that serve both backends.
    """

    remote = False  # whether stored entries may belong to several servers

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dsn: str | None = args.dsn
        self._manager: SessionManager | None = None
        self._store: KeyStore | None = None

    def run(self, handler: Handler) -> int:
        return handler(self)

    @property
    def manager(self) -> SessionManager:
        if self._manager is None:  # "local" said outright: the settings file's backend is not ours
            self._manager = SessionManager(self.dsn, backend="local", agent="ome-session")
        return self._manager

    @property
    def store(self) -> KeyStore:
        if self._store is None:
            self._store = KeyStore()
        return self._store

    @property
    def database(self) -> str:
        return _tty.database_label(self.manager.settings.dsn)

    def ours(self, entry: StoredSession) -> bool:
        """Whether a stored key was made by the database (and backend) this run uses."""
        return _tty.same_database(entry, self.database, self.manager.settings.backend)

    def resume(self, entry: StoredSession) -> Session:
        """The stored entry's session, resumed; ``SessionKeyError`` if it has ended."""
        return self.manager.create_session(key=entry.key)

    def logout(self, session: Session) -> None:
        self.manager.logout(session)

    def current(self) -> tuple[Session, StoredSession]:
        """The current stored session, resumed; ``NoSessionError`` saying why when there is none."""
        entry = self.store.current()
        if entry is None:
            raise NoSessionError("not logged in: run `ome-session login`")
        where = f"{entry.user}@{_server(entry)}"
        if not self.ours(entry):
            raise NoSessionError(f"the current session ({where}) belongs to database "
                                 f"{entry.extra.get(_tty.DATABASE_FIELD)}, not {self.database}: "
                                 "log in again, or pass the --dsn it was made with")
        try:
            return self.resume(entry), entry
        except SessionKeyError:
            raise NoSessionError(f"not logged in: the session of {where} has expired or was "
                                 "logged out; run `ome-session login`") from None


# -- install and the embedded cluster -------------------------------------------------------------


def _cmd_install(ctx: _Context) -> int:
    from . import installer

    a = ctx.args
    installer.install(ctx.dsn, admin=a.admin, tmp_dir=a.tmp_dir, allow_guest=a.allow_guest,
                      report=lambda line: print(line, flush=True))
    return 0


def _cmd_db(ctx: _Context) -> int:
    from . import _cluster

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


# -- login and logout -----------------------------------------------------------------------------


def _parse_target(a: argparse.Namespace) -> tuple[str | None, int | None, str | None]:
    """Server, port and user from ``[USER@]SERVER[:PORT]``, -s, -p and -u (None: not given).

    The port is the text after the last colon when that is all digits, so ``tcp://host:4064``
    is server ``tcp://host``, port 4064.
    """
    user, server, port = a.user, a.server, a.port
    if a.connection:
        if server is not None:
            raise ValueError("give the server once: as [USER@]SERVER[:PORT] or with -s")
        named, at, rest = a.connection.rpartition("@")
        if at:
            if user is not None and user != named:
                raise ValueError(f"two different users given: {named!r} and -u {user!r}")
            user = named or user
        server, colon, tail = rest.rpartition(":")
        if not colon or not tail.isdigit():
            server = rest
        elif port is not None and port != int(tail):
            raise ValueError(f"two different ports given: {tail} and -p {port}")
        else:
            port = int(tail)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port must be from 1 to 65535, not {port}")
    return server, port, user


def _target(a: argparse.Namespace, store: KeyStore) -> tuple[str, int | None, str | None]:
    """Server label (default: localhost), port and user, checked against the key store."""
    server, port, user = _parse_target(a)
    server = server or _tty.DEFAULT_SERVER
    # Refuse names the key store cannot hold before anything happens in the database.
    store.file_for(StoredSession(server=server, user=user or "-", key="0" * 32, port=port))
    return server, port, user


def _password_login(ctx: _Context, user: str, sudo: str | None) -> Session:
    """A new session from a password (-w, then $OME_SESSION_PASSWORD, then the terminal)."""
    manager = ctx.manager

    def authenticate(password: str) -> Session:
        session = manager.create_session(sudo or user, password)
        if sudo is None:
            return session
        admin_key = session.session_key
        assert admin_key is not None
        try:
            return manager.sudo_session(user)
        finally:  # the admin's own session was only a means: it is never stored, so close it
            _maintenance.revoke_key(Session.instance(), admin_key)

    return _with_password(ctx.args, authenticate, sudo)


def _with_password(a: argparse.Namespace, authenticate: Callable[[str], Session], sudo: str | None) -> Session:
    """``authenticate`` with -w, else $OME_SESSION_PASSWORD, else up to 3 passwords typed on the terminal."""
    password = a.password if a.password is not None else os.environ.get(_PASSWORD_ENV) or None
    if password is not None:
        return authenticate(password)
    if not sys.stdin.isatty():
        raise _Exit(2, f"no password: give -w PASSWORD, set {_PASSWORD_ENV}, or run in a terminal")
    return _tty.ask_password(authenticate, prompt=getpass.getpass,
                             label=f"Password for {sudo}: " if sudo else "Password: ")


def _cmd_login(ctx: _Context) -> int:
    a = ctx.args
    if a.key is not None and (a.password is not None or a.sudo):
        raise ValueError("-k joins an existing session: it takes no password and no --sudo")
    if a.insecure:
        raise ValueError("--insecure is for OMERO servers (--backend omero)")
    store = ctx.store
    server, port, user = _target(a, store)
    current = store.current()  # also refuses an unsafe key store before the database is touched
    database = ctx.database
    if user is None and a.key is None and current is not None and current.server == server:
        user = current.user  # as omero login: the last user of that server is the default
    created = False
    if a.key is not None:
        session = ctx.manager.create_session(key=a.key)
        if user is not None and session.user_name != user:
            Session.delete_instance(force=True)  # not ours to revoke: just do not use it
            raise AuthenticationError(f"that session key belongs to another user than {user!r}")
    else:
        found = None
        if user is not None and a.password is None:
            found = _tty.resume_stored(ctx.manager, store, _tty.candidates(
                store, server=server, user=user, database=database, sudo=a.sudo, port=port,
                backend=ctx.manager.settings.backend))
        if found is not None:
            session = found[0]
        else:
            session = _password_login(ctx, user or _ask_user(), a.sudo)
            created = True
    try:
        if a.group:
            group: str | None = _maintenance.switch_group(session, a.group).name
        else:
            group = next((g.name for g in _maintenance.user_groups(session) if g.current), None)
        entry = _tty.remember(store, session, server=server, database=database, port=port,
                              group=group, sudo=a.sudo)
    except BaseException:
        if created:
            ctx.manager.logout(session)  # a key nobody can find again must not stay open
        raise
    print(f"{'Created' if created else 'Joined'} session {_keys.key_prefix(entry.key)} "
          f"({entry.user}@{_server(entry)}). Idle timeout: {_minutes(entry.timeout)}. "
          f"Current group: {group or '-'}")
    return 0


def _ask_user() -> str:
    if not sys.stdin.isatty():
        raise _Exit(2, "no user given: use -u USER or USER@SERVER, or run in a terminal")
    name = input("Username: ").strip()
    if not name:
        raise _Exit(2, "no user given")
    return name


def _cmd_logout(ctx: _Context) -> int:
    entry = ctx.store.current()
    if entry is None:
        raise NoSessionError("not logged in: nothing to log out")
    what = f"{entry.user}@{_server(entry)} (session {_keys.key_prefix(entry.key)})"
    try:
        session, entry = ctx.current()
    except NoSessionError:
        if not ctx.ours(entry):
            raise  # another database's key: it may well be alive there
        ctx.store.remove(entry)
        print(f"{what} had already ended; removed it from the key store")
        return 0
    ctx.logout(session)
    ctx.store.remove(entry)
    print(f"Logged out {what}")
    return 0


def _cmd_whoami(ctx: _Context) -> int:
    session, entry = ctx.current()
    groups = _maintenance.user_groups(session)
    role = "super user" if session.is_su_session() else "admin" if _maintenance.is_admin(session) else "user"
    names = ", ".join(g.name + "".join(f" ({m})" for m, on in (("current", g.current), ("leader", g.leads)) if on)
                      for g in groups)
    rows = [("user", f"{session.user_name} (id {session.experimenter_id}, {role})"),
            ("server", _server(entry)), ("groups", names or "-"),
            ("session", _keys.key_prefix(entry.key)), ("started", _when(session.started)),
            ("last access", _when(session.last_access))]
    if session.sudo_by is not None:
        rows.append(("sudo by", entry.sudo or f"experimenter id {session.sudo_by}"))
    for name, value in rows:
        print(f"{name + ':':<13}{value}")
    return 0


# -- sessions ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Checked:
    entry: StoredSession
    active: str  # as omero shows it: "Logged in" (the current one), "True", "False", "?"
    started: str = ""


def _check_entries(ctx: _Context, *, purge: bool) -> list[_Checked]:
    """Each stored entry, its key tried if it belongs to this database; dead ones removed if ``purge``.

    Trying a key touches it (as any use does); a dead key is closed for good, so removing its
    entry loses nothing. Keys of another database are not ours to judge and stay, and so do
    the keys of a remote server that cannot be reached now (the one database is another matter:
    down, it fails the command).
    """
    checked: list[_Checked] = []
    current = ctx.store.current()
    for entry in ctx.store.list():
        if not ctx.ours(entry):
            checked.append(_Checked(entry, "?"))
            continue
        try:
            session = ctx.resume(entry)
        except SessionKeyError:
            if purge:
                ctx.store.remove(entry)
            checked.append(_Checked(entry, "False (removed)" if purge else "False"))
            continue
        except DatabaseUnavailable as exc:
            if not ctx.remote:
                raise
            print(f"ome-session: warning: {_one_line(exc)}", file=sys.stderr)
            checked.append(_Checked(entry, "? (unreachable)"))
            continue
        active = "Logged in" if current is not None and current.key == entry.key else "True"
        checked.append(_Checked(entry, active, _when(session.started)))
    return checked


def _cmd_sessions_list(ctx: _Context) -> int:
    rows = [[_server(c.entry), c.entry.user, c.entry.group or "", _keys.key_prefix(c.entry.key), c.active, c.started]
            for c in _check_entries(ctx, purge=not ctx.args.no_purge)]
    print(_table(["Server", "User", "Group", "Session", "Active", "Started"], rows))
    return 0


def _cmd_sessions_file(ctx: _Context) -> int:
    entry = ctx.store.current()
    if entry is None:
        raise NoSessionError("not logged in: there is no current session")
    print(ctx.store.file_for(entry))
    return 0


def _cmd_sessions_key(ctx: _Context) -> int:
    entry = ctx.store.current()
    if entry is None:
        raise NoSessionError("not logged in: there is no current session")
    print(entry.key)
    return 0


def _cmd_sessions_clear(ctx: _Context) -> int:
    if not ctx.args.all:
        checked = _check_entries(ctx, purge=True)
        gone = sum(c.active.startswith("False") for c in checked)
        print(f"removed {gone} inactive session(s); {len(checked) - gone} remain")
        return 0
    closed = removed = 0
    for entry in ctx.store.list():
        if ctx.ours(entry):
            try:
                ctx.logout(ctx.resume(entry))
                closed += 1
            except SessionKeyError:
                pass
        ctx.store.remove(entry)
        removed += 1
    print(f"closed {closed} session(s); removed {removed} from the key store")
    return 0


def _cmd_sessions_purge(ctx: _Context) -> int:
    session, _ = ctx.current()
    report = _maintenance.purge_sessions(session, batch=ctx.args.batch)
    reasons = ", ".join(f"{reason}: {count}" for reason, count in report.deleted.items())
    print(f"purged {report.total} session row(s) ({reasons}) in {report.batches} batch(es)")
    return 0


def _cmd_sessions_keepalive(ctx: _Context) -> int:
    session, entry = ctx.current()
    what = f"session {_keys.key_prefix(entry.key)} ({entry.user}@{_server(entry)})"
    every = ctx.args.frequency
    try:
        while True:
            try:
                session.keep_alive()
                print(f"kept {what} alive at {_when(session.last_access)}", flush=True)
            except DatabaseUnavailable as exc:
                if not every:
                    raise
                print(f"ome-session: warning: {_one_line(exc)}; trying again", file=sys.stderr, flush=True)
            if not every:
                return 0
            time.sleep(every)
    except KeyboardInterrupt:
        print(f"stopped keeping {what} alive", flush=True)
        return 0


def _cmd_sessions_group(ctx: _Context) -> int:
    session, entry = ctx.current()
    group = _maintenance.switch_group(session, ctx.args.group)
    ctx.store.add(dataclasses.replace(entry, group=group.name))
    print(f"Now using group {group.name} (id {group.id}): new objects of {entry.user} go there")
    return 0


def _cmd_sessions_timeout(ctx: _Context) -> int:
    session, _ = ctx.current()
    if ctx.args.seconds is not None:
        _maintenance.set_idle_timeout(session, ctx.args.seconds)
        print(f"session_idle_timeout set to {ctx.args.seconds} s for every session")
    times = _maintenance.session_times(session)
    left = times.time_left
    print(f"idle timeout: {_minutes(times.idle_timeout)} ({times.idle_timeout} s)")
    print(f"time left:    {'no limit' if left is None else _duration(left)}")
    return 0


# -- temporary files -----------------------------------------------------------------------------


def _cmd_tmp_reap(ctx: _Context) -> int:
    if ctx.args.dir:
        root = Path(ctx.args.dir)
    else:  # the configured tmp_dir: reading configuration needs no login
        session = Session.bootstrap_instance(ctx.dsn)
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


# -- output helpers ------------------------------------------------------------------------------


def _server(entry: StoredSession) -> str:
    return entry.server if entry.port is None else f"{entry.server}:{entry.port}"


def _when(moment: datetime.datetime | None) -> str:
    return "-" if moment is None else moment.astimezone().strftime(_DATE)


def _minutes(seconds: int | None) -> str:
    return "none" if not seconds else f"{seconds / 60:.1f} min"


def _duration(delta: datetime.timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    return (f"{hours} h " if hours else "") + f"{rest // 60} min {rest % 60} s"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table as `omero sessions list` prints it, with a row count."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return " " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), "+".join("-" * (w + 2) for w in widths)[:-1], *(line(r) for r in rows)]
    return "\n".join(out) + f"\n({len(rows)} row{'' if len(rows) == 1 else 's'})"


def _one_line(exc: BaseException) -> str:
    """One line a person can read: the lines of a message joined, runs of whitespace (tabs) as one."""
    return "; ".join(" ".join(part.split()) for part in str(exc).splitlines() if part.strip()) or type(exc).__name__


# -- the parser ----------------------------------------------------------------------------------


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
    p.add_argument("-w", "--password", help=f"password (better: {_PASSWORD_ENV}, or the prompt)")
    p.add_argument("-k", "--key", help="join the existing session with this key")
    p.add_argument("--sudo", metavar="ADMIN", help="log in as ADMIN (an admin or group leader), then act as USER")
    p.add_argument("-g", "--group", help="switch to this group (make it the primary group)")
    p.add_argument("--insecure", action="store_true", help="OMERO: after logging in, use the server's "
                   "unencrypted router (as omero-py's secure=False)")
    p.set_defaults(handler=_cmd_login)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    with_backend = argparse.ArgumentParser(add_help=False, parents=[common])
    with_backend.add_argument("--backend", choices=_BACKENDS, default=argparse.SUPPRESS,
                              help="local (the database) or omero (an OMERO.server); see `ome-session --help`")
    parser = argparse.ArgumentParser(
        prog="ome-session", description="Install ome-session, log in and out, and manage sessions.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="PostgreSQL connection string (default: $OME_SESSION_DSN, the "
                        "installer's settings file, then the embedded cluster)")
    parser.add_argument("--backend", choices=_BACKENDS, help="where logins are checked, for login, logout, "
                        f"whoami and sessions: local (the database, the default) or omero (an OMERO.server; "
                        f"Ice arguments in {_OMERO_ARGS_ENV}); default: ${_BACKEND_ENV}, then the settings file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str,
                handler: Handler | None = None, *, backend: bool = False) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=text, description=text, epilog=EXIT_CODES,
                              parents=[with_backend if backend else common],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        if handler is not None:
            p.set_defaults(handler=handler)
        return p

    p = command(sub, "install", "create or upgrade the database, configuration and first admin", _cmd_install)
    p.add_argument("--admin", default=None, help="name of the first admin (default: admin; a re-run "
                   "keeps the installed one); the password comes from OME_SESSION_ADMIN_PASSWORD or a prompt")
    p.add_argument("--tmp-dir", help="root of the temporary directories of sessions")
    p.add_argument("--allow-guest", action="store_true", help="let guest accounts log in")
    p = command(sub, "db", "start, stop or show the embedded PostgreSQL cluster", _cmd_db)
    p.add_argument("action", choices=["start", "stop", "status"])
    _add_login_arguments(command(sub, "login", "log in, or join a stored session", backend=True))
    command(sub, "logout", "close the current session and forget its key", _cmd_logout, backend=True)
    command(sub, "whoami", "show who the current session is", _cmd_whoami, backend=True)

    sessions = command(sub, "sessions", "manage stored sessions", backend=True)
    ssub = sessions.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    def scommand(name: str, text: str, handler: Handler | None = None) -> argparse.ArgumentParser:
        return command(ssub, name, text, handler, backend=True)

    _add_login_arguments(scommand("login", "the same as `ome-session login`"))
    scommand("logout", "the same as `ome-session logout`", _cmd_logout)
    p = scommand("list", "list stored sessions, checking each (dead ones are removed)", _cmd_sessions_list)
    p.add_argument("--no-purge", action="store_true", help="keep sessions found dead in the store")
    scommand("file", "print the path of the current session's entry", _cmd_sessions_file)
    scommand("key", "print the current session key", _cmd_sessions_key)
    p = scommand("clear", "remove dead sessions from the store", _cmd_sessions_clear)
    p.add_argument("--all", action="store_true", help="close and remove every stored session")
    p = scommand("purge", "delete closed and expired session rows (admins only)", _cmd_sessions_purge)
    p.add_argument("--batch", type=_positive(int), default=_maintenance.DEFAULT_BATCH,
                   help=f"rows per committed batch (default: {_maintenance.DEFAULT_BATCH})")
    p = scommand("keepalive", "keep the current session alive", _cmd_sessions_keepalive)
    p.add_argument("-f", "--frequency", type=_positive(float), metavar="SECONDS",
                   help="repeat every SECONDS until interrupted")
    p = scommand("group", "switch the primary group (new objects go there)", _cmd_sessions_group)
    p.add_argument("group", help="group name or id")
    p = scommand("timeout", "show the idle timeout and time left; set it (super user)", _cmd_sessions_timeout)
    p.add_argument("seconds", nargs="?", type=_non_negative, help="new session_idle_timeout (0: none)")

    tmp = command(sub, "tmp", "temporary files of sessions")
    tsub = tmp.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = command(tsub, "reap", "remove the temporary directories of dead processes", _cmd_tmp_reap)
    p.add_argument("--dir", help="root to reap (default: the configured tmp_dir)")
    return parser


class _Formatter(logging.Formatter):
    """Log lines look like the command's own messages: ``ome-session: warning: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"ome-session: {record.levelname.lower()}: {record.getMessage()}"
        return text + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


def exit_code(exc: BaseException) -> int | None:
    """The exit code for one of our errors; None for anything else (a bug: show its traceback)."""
    return next((code for kind, code in _CODES if isinstance(exc, kind)), None)


def _backend(args: argparse.Namespace) -> str:
    """--backend, else $OME_SESSION_BACKEND, else the settings file's ``backend``, else local."""
    if args.command not in _BACKEND_COMMANDS:
        return "local"
    chosen = args.backend or os.environ.get(_BACKEND_ENV)
    if chosen is None:
        return _settings_backend() or "local"
    if chosen not in _BACKENDS:
        raise ValueError(f"{_BACKEND_ENV} must be one of {', '.join(_BACKENDS)}, not {chosen!r}")
    return chosen


def _settings_backend() -> str | None:
    """The ``backend`` of the settings file, if there is one that says; an unreadable file is
    left to the database lookup, which explains what is wrong with it."""
    from ._settings import SYSTEM_SETTINGS, settings_path

    path = next((p for p in (settings_path(), SYSTEM_SETTINGS) if p.exists()), None)
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
    except (OSError, ValueError):
        return None
    chosen = data.get("backend") if isinstance(data, dict) else None
    if chosen is not None and chosen not in _BACKENDS:
        raise ConfigurationError(f"settings file {path}: backend must be one of {', '.join(_BACKENDS)}, "
                                 f"not {chosen!r}")
    return chosen


def _context(args: argparse.Namespace) -> _Context:
    if _backend(args) == "omero":
        from . import _cli_omero  # only now: it needs the [omero] extra

        return _cli_omero.OmeroContext(args)
    return _Context(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (the console script passes it to ``sys.exit``)."""
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter())
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler])
    try:
        return int(_context(args).run(args.handler))
    except _Exit as exc:
        print(f"ome-session: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("ome-session: interrupted", file=sys.stderr)
        return 130
    except (SessionError, ValueError, OSError) as exc:
        code = exit_code(exc)
        assert code is not None
        if args.verbose:
            traceback.print_exc()
        print(f"ome-session: error: {_one_line(exc)}", file=sys.stderr)
        return code
