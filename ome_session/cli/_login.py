"""``login``, ``logout`` and ``whoami``: written once, for every backend (see ``_context``)."""

from __future__ import annotations

import argparse
import dataclasses

from .. import _keys, _prompt, _tty
from ..errors import AuthenticationError, NoSessionError
from ..manager import SessionManager
from ..session import Session
from . import _output
from ._context import Asked, Context

PASSWORD_ENV = "OME_SESSION_PASSWORD"


def parse_target(a: argparse.Namespace) -> Asked:
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
    return Asked(server, port, user)


def login(ctx: Context) -> int:
    """Join a live stored session if one fits (unless a password is given), else log in anew."""
    a = ctx.args
    if a.key is not None and (a.password is not None or a.sudo):
        raise ValueError("-k joins an existing session: it takes no password and no --sudo")
    ctx.check_login_options()
    asked = parse_target(a)
    current = ctx.store.current()  # also refuses an unsafe key store before anything is asked
    target = ctx.target(asked, current)
    if target.user is None and a.key is None and current is not None and current.server == target.server:
        target = dataclasses.replace(target, user=current.user)  # as omero login: the last user of that server
    found = None
    if a.key is None and a.password is None:
        found = _tty.resume_stored(ctx.resume, ctx.store, ctx.stored(asked, target, current, a.sudo))
    created = False
    if found is not None:
        session = found[0]
    elif a.key is not None:
        session = _join(ctx.manager_for(target), a.key, target.user)
    else:
        user = target.user or _prompt.ask_user("use -u USER or USER@SERVER")
        session = _password_login(ctx, ctx.manager_for(target), user, a.sudo)
        created = True
    try:
        switched = ctx.switch_group(session, a.group) if a.group else None
        if a.timeout is not None:
            session.update(time_to_idle=a.timeout)
        entry = ctx.remember(session, target, group=switched.name if switched else None, sudo=a.sudo)
    except BaseException:
        if created:
            ctx.logout(session)  # a key nobody can find again must not stay open
        raise
    print(f"{'Created' if created else 'Joined'} session {_keys.key_prefix(entry.key)} "
          f"({entry.user}@{_output.server(entry)}). Idle timeout: {_output.minutes(entry.timeout)}. "
          f"Current group: {entry.group or '-'}")
    return 0


def _join(manager: SessionManager, key: str, user: str | None) -> Session:
    """Join by key (checked before anything is sent); the user, if given, must be its owner."""
    session = manager.create_session(key=key)
    if user is not None and session.user_name != user:
        Session.delete_instance(force=True)  # not ours to end: only let go of it
        raise AuthenticationError(f"that session key belongs to another user than {user!r}")
    return session


def _password_login(ctx: Context, manager: SessionManager, user: str, sudo: str | None) -> Session:
    """A new session from a password (-w, then $OME_SESSION_PASSWORD, then the terminal).

    With ``sudo``, the password is that admin's (or group leader's), who opens the session for
    ``user``; the sudoer's own session is only a means: it is never stored, and ends at once.
    """
    def authenticate(password: str) -> Session:
        if sudo is None:
            return manager.create_session(user, password)
        sudoer = manager.create_session(sudo, password)
        sudoer_key = sudoer.session_key
        assert sudoer_key is not None
        try:
            session = manager.sudo_session(user)
        except BaseException:
            manager.logout(sudoer)
            raise
        ctx.end_key(session, sudoer_key)
        return session

    password = _prompt.given(ctx.args.password, PASSWORD_ENV)
    if password is not None:
        return authenticate(password)
    _prompt.need_terminal("no password", "give -w PASSWORD", f"set {PASSWORD_ENV}")
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
