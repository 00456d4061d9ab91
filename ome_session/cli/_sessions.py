"""``sessions list|who|file|key|clear|purge|keepalive|group|timeout``: the stored sessions."""

from __future__ import annotations

import dataclasses
import select
import sys
import time

from .. import _keys, _maintenance
from ..errors import DatabaseUnavailable, NoSessionError, SessionKeyError
from ..keystore import StoredSession
from . import _output
from ._context import Context


@dataclasses.dataclass(frozen=True)
class _Checked:
    entry: StoredSession
    active: str  # as omero shows it: "Logged in" (the current one), "True", "False", "?"
    started: str = ""


def _check_entries(ctx: Context, *, purge: bool) -> list[_Checked]:
    """Each stored entry, its key tried if it belongs here; dead ones removed if ``purge``.

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
            print(f"ome-session: warning: {_output.one_line(exc)}", file=sys.stderr)
            checked.append(_Checked(entry, "? (unreachable)"))
            continue
        active = "Logged in" if current is not None and current.key == entry.key else "True"
        checked.append(_Checked(entry, active, _output.when(session.started)))
    return checked


def list_(ctx: Context) -> int:
    shown = (lambda key: key) if ctx.args.full_keys else _keys.key_prefix
    rows = [[_output.server(c.entry), c.entry.user, c.entry.group or "", shown(c.entry.key), c.active,
             c.started] for c in _check_entries(ctx, purge=not ctx.args.no_purge)]
    print(_output.table(["Server", "User", "Group", "Session", "Active", "Started"], rows))
    return 0


def who(ctx: Context) -> int:
    """The live sessions on the server: every one for admins, one's own for anybody else; the
    asking session marked (*). Keys are never shown: the server keeps only their digests."""
    session, _ = ctx.current()
    rows = [[s.user, s.group or "", _output.when(s.started) + (" (*)" if s.current else ""),
             _output.when(s.last_access), s.host or "", s.agent or "", s.sudo_by or ""]
            for s in _maintenance.live_sessions(session)]
    print(_output.table(["User", "Group", "Logged in", "Last access", "Host", "Agent", "Sudo by"], rows))
    return 0


def _current_entry(ctx: Context) -> StoredSession:
    entry = ctx.store.current()
    if entry is None:
        raise NoSessionError("not logged in: there is no current session")
    return entry


def file(ctx: Context) -> int:
    print(ctx.store.file_for(_current_entry(ctx)))
    return 0


def key(ctx: Context) -> int:
    print(_current_entry(ctx).key)
    return 0


def clear(ctx: Context) -> int:
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


def purge(ctx: Context) -> int:
    session, _ = ctx.current()
    report = _maintenance.purge_sessions(session, batch=ctx.args.batch)
    reasons = ", ".join(f"{reason}: {count}" for reason, count in report.deleted.items())
    print(f"purged {report.total} session row(s) ({reasons}) in {report.batches} batch(es)")
    return 0


def keepalive(ctx: Context) -> int:
    """Keep the current session alive every ``-f`` seconds until interrupted (or, on a terminal,
    until Enter is pressed), as ``omero sessions keepalive`` does; ``--once`` for a single touch."""
    session, entry = ctx.current()
    what = f"session {_keys.key_prefix(entry.key)} ({entry.user}@{_output.server(entry)})"
    every = ctx.args.frequency
    watch_stdin = not ctx.args.once and sys.stdin.isatty()
    if not ctx.args.once:
        stop = "press Enter or Ctrl-C to stop" if watch_stdin else "Ctrl-C to stop"
        print(f"Keeping {what} alive every {every:g} s; {stop}", flush=True)
    try:
        while True:
            try:
                session.keep_alive()
                print(f"kept {what} alive at {_output.when(session.last_access)}", flush=True)
            except DatabaseUnavailable as exc:
                if ctx.args.once:
                    raise
                print(f"ome-session: warning: {_output.one_line(exc)}; trying again", file=sys.stderr, flush=True)
            if ctx.args.once or _pressed_enter(watch_stdin, every):
                break
    except KeyboardInterrupt:
        pass
    if not ctx.args.once:
        print(f"stopped keeping {what} alive", flush=True)
    return 0


def _pressed_enter(watch: bool, seconds: float) -> bool:
    """Wait ``seconds``; on a terminal, return early (True) when a line is typed."""
    if not watch:
        time.sleep(seconds)
        return False
    ready, _, _ = select.select([sys.stdin], [], [], seconds)
    if ready:
        sys.stdin.readline()
    return bool(ready)


def group(ctx: Context) -> int:
    session, entry = ctx.current()
    switched = ctx.switch_group(session, ctx.args.group)
    name = switched.name if switched is not None else ctx.args.group
    ctx.store.add(dataclasses.replace(entry, group=name))
    where = f" (id {switched.id})" if switched is not None else ""
    print(f"Now using group {name}{where}: new objects of {entry.user} go there")
    return 0


def timeout(ctx: Context) -> int:
    """This session's idle timeout (``--default``: the configured one), set if SECONDS is given."""
    session, entry = ctx.current()
    seconds = ctx.args.seconds
    if ctx.args.default:
        if seconds is not None:
            _maintenance.set_idle_timeout(session, seconds)
            print(f"session_idle_timeout set to {seconds} s: the default of every session without its own")
        default = session.configuration.session_idle_timeout
        print(f"default idle timeout: {_output.minutes(default)} ({default} s)")
        return 0
    if seconds is not None:
        session.update(time_to_idle=seconds)
        ctx.store.add(dataclasses.replace(entry, timeout=session.login.idle_timeout if session.login else None))
    times = _maintenance.session_times(session)
    whose = "this session's own" if times.own_idle_timeout is not None else "the configured default"
    left = times.time_left
    print(f"idle timeout: {_output.minutes(times.idle_timeout)} ({times.idle_timeout} s, {whose})")
    print(f"time left:    {'no limit' if left is None else _output.duration(left)}")
    return 0
