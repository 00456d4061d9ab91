"""``login``, ``logout`` and ``whoami``: written once, for every backend (see ``_context``)."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import itertools
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from .. import _keys, _prompt, _tty
from ..backends import REGISTRY
from ..errors import AuthenticationError, DatabaseUnavailable, NoSessionError, SessionKeyError
from ..keystore import StoredSession
from ..manager import SessionManager
from ..session import Session
from . import _output
from ._context import PASSWORD_ENV, Asked, Context, Target

__all__ = ["PASSWORD_ENV", "login", "logout", "parse_target", "whoami"]

T = TypeVar("T")

RETRY_EVERY = 3.0  # seconds between attempts under --retry, as the omero command waits


def parse_target(a: argparse.Namespace) -> Asked:
    """Server, port and user from ``[USER@]SERVER[:PORT]``, -s, -p and -u (None: not given).

    The port is the text after the last colon when that is all digits, so ``tcp://host:4064``
    is server ``tcp://host``, port 4064.
    """
    user, server, port = a.user, a.server, a.port
    if a.connection:
        if server is not None:
            raise ValueError("give the server once: as [USER@]SERVER[:PORT] or with -s")
        named = _parse_connection(a.connection)
        if named.user is not None and user is not None and user != named.user:
            raise ValueError(f"two different users given: {named.user!r} and -u {user!r}")
        if named.port is not None and port is not None and port != named.port:
            raise ValueError(f"two different ports given: {named.port} and -p {port}")
        user, server, port = user or named.user, named.server, port or named.port
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port must be from 1 to 65535, not {port}")
    return Asked(server, port, user)


def _parse_connection(text: str) -> Asked:
    """``[USER@]SERVER[:PORT]``; the last ``@`` ends the user (user names may be e-mail addresses)."""
    named, _, rest = text.rpartition("@")
    server, colon, tail = rest.rpartition(":")
    if not colon or not tail.isdigit():
        server, tail = rest, ""
    return Asked(server or None, int(tail) if tail else None, named or None)


class _Retry:
    """``--retry SECONDS``: while the server cannot be reached, wait a few seconds and try again,
    until SECONDS of waiting are used up. Only an unreachable server is retried, never a refused
    password. The waits are counted, not the attempts' own time: how many retries SECONDS buys
    (one every 3 s, at least one) does not depend on how slowly an attempt fails."""

    def __init__(self, seconds: int | None, *, quiet: bool) -> None:
        self.seconds = seconds or 0
        self.quiet = quiet

    def __call__(self, attempt: Callable[[], T]) -> T:
        left = float(self.seconds)
        for tries in itertools.count(1):
            try:
                return attempt()
            except DatabaseUnavailable as exc:
                if left <= 0:
                    raise
                wait = min(RETRY_EVERY, left)
                left -= wait
                if not self.quiet:
                    print(f"ome-session: warning: {_output.one_line(exc)}; login retry #{tries} in {wait:.0f} s",
                          file=sys.stderr, flush=True)
                time.sleep(wait)
        raise AssertionError("unreachable")


def login(ctx: Context) -> int:
    """Join a live stored session if one fits (unless a password or -C is given), else log in anew."""
    a = ctx.args
    if a.key is not None and (a.password is not None or a.sudo or a.create):
        raise ValueError("-k joins an existing session: it takes no password, no --sudo and no -C")
    ctx.check_login_options()
    asked = parse_target(a)
    current = ctx.store.current()  # also refuses an unsafe key store before anything is asked
    session, target, created = _open(ctx, asked, current, _Retry(a.retry, quiet=a.quiet))
    try:
        switched = ctx.switch_group(session, a.group) if a.group else None
        if a.timeout is not None:
            session.update(time_to_idle=a.timeout)
        entry = ctx.remember(session, target, group=switched.name if switched else None, sudo=a.sudo)
    except BaseException:
        if created:
            ctx.logout(session)  # a key nobody can find again must not stay open
        raise
    if not a.quiet:
        print(f"{'Created' if created else 'Joined'} session {_keys.key_prefix(entry.key)} "
              f"({entry.user}@{_output.server(entry)}). Idle timeout: {_output.minutes(entry.timeout)}. "
              f"Current group: {entry.group or '-'}")
    return 0


def _open(ctx: Context, asked: Asked, current: StoredSession | None,
          retrying: _Retry) -> tuple[Session, Target, bool]:
    """The session a login ends with, where it went, and whether it was created (not joined)."""
    a = ctx.args
    if a.key is not None:
        key, entry = _resolve_key(ctx, a.key, asked)
        if entry is not None:  # the stored entry says where its session lives
            asked = Asked(asked.server or entry.server, asked.port or entry.port, asked.user)
        target = ctx.target(asked, current)
        manager = ctx.manager_for(target)
        return retrying(lambda: _join(manager, key, target.user)), target, False
    target = _with_last_user(ctx.target(asked, current), current)
    joins = a.password is None and not a.create

    def stored() -> Session | None:
        found = retrying(lambda: _tty.resume_stored(ctx.resume, ctx.store, ctx.stored(asked, target, current, a.sudo)))
        return found[0] if found is not None else None

    if joins and (session := stored()) is not None:
        return session, target, False
    if _prompt.on_terminal() and (asked.server is None or asked.user is None):
        asked, target = _ask_missing(ctx, asked, target, current)
        if joins and (session := stored()) is not None:
            return session, target, False
    user = target.user or _prompt.ask_user("use -u USER or USER@SERVER")
    return _password_login(ctx, ctx.manager_for(target), user, a.sudo, retrying), target, True


def _with_last_user(target: Target, current: StoredSession | None) -> Target:
    """As ``omero login``: no user given means the last user of that server."""
    if target.user is None and current is not None and current.server == target.server:
        return dataclasses.replace(target, user=current.user)
    return target


def _ask_missing(ctx: Context, asked: Asked, target: Target,
                 current: StoredSession | None) -> tuple[Asked, Target]:
    """On a terminal, as ``omero login``: the server and the user not given are asked for, each
    with its default in brackets (Enter takes it: the last server, its last user or the account's
    name), after saying where the last login went."""
    if current is not None and not ctx.args.quiet:
        print(f"Previously logged in to {_output.server(current)} as {current.user}", flush=True)
    if asked.server is None:
        default = f"{target.server}:{target.port}" if target.port else target.server
        typed = _prompt.ask_with_default("Server", default)
        named = Asked(target.server, target.port, None) if typed == default else _parse_connection(typed)
        asked = Asked(named.server, named.port, asked.user or named.user)
        target = _with_last_user(ctx.target(asked, current), current)
    if asked.user is None:
        user = _prompt.ask_with_default("Username", target.user or _os_user())
        asked = dataclasses.replace(asked, user=user)
        target = dataclasses.replace(target, user=user)
    return asked, target


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        return "root"


def _resolve_key(ctx: Context, given: str, asked: Asked) -> tuple[str, StoredSession | None]:
    """A whole key as it is; a prefix (as ``sessions list`` shows) becomes the one stored key of this
    backend that starts with it, also fitting what was asked. Several or none: ``NoSessionError``
    listing the candidates, never a guess. Only the store is read: nothing is sent for a prefix."""
    text = given.lower()
    if _complete_key(given) or not text or any(c not in "0123456789abcdef-" for c in text):
        return given, None  # a key, or nothing like one: the backend checks it and says why
    matches = [e for e in ctx.store.list() if e.key.startswith(text) and ctx.ours(e)
               and asked.server in (None, e.server) and asked.user in (None, e.user) and asked.port in (None, e.port)]
    if len(matches) == 1:
        return matches[0].key, matches[0]
    if not matches:
        raise NoSessionError(f"{_not_whole(ctx, given)}, and no stored session key starts with the {len(text)} "
                             "characters given: `ome-session sessions list` shows the stored ones")
    shown = _distinguishing([e.key for e in matches])
    listing = ", ".join(f"{e.key[:shown]}... ({e.user}@{_output.server(e)})" for e in matches)
    raise NoSessionError(f"the key prefix matches {len(matches)} stored sessions: {listing}; give more of the key")


def _not_whole(ctx: Context, given: str) -> str:
    """Why ``given`` is not a whole key of this backend, in the registry's words."""
    try:
        REGISTRY[ctx.backend].validate_key(given)
    except SessionKeyError as exc:
        return str(exc)
    return "not a whole key"


def _complete_key(key: str) -> bool:
    """A whole key of any backend (OMERO's in any letter case), never taken for a prefix."""
    return any(entry.is_key(key) or entry.is_key(key.lower()) for entry in REGISTRY.values())


def _distinguishing(keys: list[str]) -> int:
    """How many leading characters tell these keys apart (at least the usual 8)."""
    def shared(a: str, b: str) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))

    longest = max((shared(a, b) for a, b in itertools.combinations(keys, 2)), default=0)
    return max(len(_keys.key_prefix(keys[0])), longest + 1)


def _join(manager: SessionManager, key: str, user: str | None) -> Session:
    """Join by key (checked before anything is sent); the user, if given, must be its owner."""
    session = manager.create_session(key=key)
    if user is not None and session.user_name != user:
        Session.delete_instance(force=True)  # not ours to end: only let go of it
        raise AuthenticationError(f"that session key belongs to another user than {user!r}")
    return session


def _password_login(ctx: Context, manager: SessionManager, user: str, sudo: str | None,
                    retrying: _Retry) -> Session:
    """A new session from a password (-w, then the backend's password variables, then the terminal).

    With ``sudo``, the password is that admin's (or group leader's), who opens the session for
    ``user``; the sudoer's own session is only a means: it is never stored, and ends at once.
    """
    def authenticate(password: str) -> Session:
        if sudo is None:
            return retrying(lambda: manager.create_session(user, password))
        sudoer = retrying(lambda: manager.create_session(sudo, password))
        sudoer_key = sudoer.session_key
        assert sudoer_key is not None
        try:
            session = manager.sudo_session(user)
        except BaseException:
            manager.logout(sudoer)
            raise
        ctx.end_key(session, sudoer_key)
        return session

    password = ctx.args.password
    for env in ctx.password_envs:
        password = _prompt.given(password, env)
    if password is not None:
        return authenticate(password)
    _prompt.need_terminal("no password", "give -w PASSWORD", *(f"set {env}" for env in ctx.password_envs))
    return _prompt.ask_password(authenticate, label=f"Password for {sudo}: " if sudo else "Password: ")


def logout(ctx: Context) -> int:
    entry = ctx.store.current()
    if entry is None:
        raise NoSessionError("not logged in: nothing to log out")
    what = f"{entry.user}@{_output.server(entry)} (session {_keys.key_prefix(entry.key)})"
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


def whoami(ctx: Context) -> int:
    session, entry = ctx.current()
    groups = session.groups()
    names = ", ".join(g.name + "".join(f" ({m})" for m, on in (("current", g.current), ("leader", g.leads)) if on)
                      for g in groups)
    rows = [("user", f"{session.user_name} (id {session.experimenter_id}, {ctx.role(session)})"),
            ("server", _output.server(entry)), ("groups", names or "-"),
            ("session", _keys.key_prefix(entry.key)), ("started", _output.when(session.started)),
            ("last access", _output.when(session.last_access))]
    if session.sudo_by is not None:
        rows.append(("sudo by", ctx.sudoer(session, entry) or f"experimenter id {session.sudo_by}"))
    for name, value in rows:
        print(f"{name + ':':<13}{value}")
    return 0
