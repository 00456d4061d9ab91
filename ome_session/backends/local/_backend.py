"""``LocalBackend``: the verbs of the backend interface, on ome-session's own database."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from ... import _keys, _ldap, _passwords, _permissions
from ..._connection import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PREPARE_THRESHOLD, Connection
from ..._pool import DEFAULT_POOL_TIMEOUT
from ..._principal import Principal
from ..._resume_cache import DEFAULT_SIZE, Entry, Listener, ResumeCache, shared_listener
from ...errors import AuthenticationError, DatabaseUnavailable, PermissionDenied, SessionError, SessionKeyError
from ...factory import Factory
from .. import BAD_LOGIN, AuthBackend, GroupInfo, Login, idle_seconds, plausible, session_message
from . import _sql

log = logging.getLogger(__name__)

_BAD_KEY = "session key not accepted: it is unknown, expired or revoked; log in again"
# How stale last_access may get before a resume writes it (keep_alive always writes).
_RESUME_TOUCH_EVERY = 60


def _refuse_guests(login: Login[Any]) -> None:
    """Guests are read-only, their sessions included (a guest session is often everybody's)."""
    if login.is_guest:
        raise PermissionDenied("a guest may not change the session's settings (group, idle timeout, message): "
                               "guests are read-only")


@dataclass(frozen=True)
class LocalHandle:
    """The local backend's part of a Login: the session row."""

    session_id: int


class LocalBackend(AuthBackend[LocalHandle]):
    """Logins against the ``experimenters`` and ``ome_sessions`` tables, on the session's Factory.

    The backend owns the session's Factory (one connection): every statement of a login or a
    resume runs on it in autocommit mode when no transaction is open, so it commits by itself.

    A key resumed once is kept in a resume cache (``_resume_cache``) of ``resume_cache`` sessions
    (0: off, every resume asks the database); its news come on the session's own connection, or on
    a connection of its own to ``listen_dsn`` (needed behind a pooler such as pgbouncer, where the
    session's connection cannot listen: without it the cache stays off there). In thread scope
    (``pool_size``) the cache and its listening connection are the process's, shared by the
    backends of every thread's session.
    """

    name = "local"

    def __init__(self, dsn: str, *, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
                 prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD, pool_size: int | None = None,
                 pool_timeout: float = DEFAULT_POOL_TIMEOUT, resume_cache: int = DEFAULT_SIZE,
                 listen_dsn: str | None = None) -> None:
        self._factory = Factory(dsn, connect_timeout=connect_timeout, prepare_threshold=prepare_threshold,
                                pool_size=pool_size, pool_timeout=pool_timeout)
        self._db = self._factory._connection
        self._pool = {"pool_size": pool_size, "pool_timeout": pool_timeout} if pool_size is not None else {}
        self._listen_dsn = listen_dsn or None
        self._cache: ResumeCache | None = None
        self._listener: Listener | None = None  # None: the cache listens on the session's connection
        self._touch_due: Entry | None = None  # a warm resume's last_access, written at idle()
        if not resume_cache:
            pass
        elif pool_size is not None:  # thread scope: a borrowed connection cannot listen
            self._listener = shared_listener(dsn, self._listen_dsn, resume_cache, connect_timeout)
            self._cache = self._listener.cache
        else:
            self._cache = ResumeCache(resume_cache)
            if self._listen_dsn is None:
                self._db.on_replaced(self._cache.forget_source)
            else:
                self._listener = Listener(self._cache, self._listen_dsn, connect_timeout=connect_timeout,
                                          shared=False)

    # -- where it is -----------------------------------------------------------------------------

    @property
    def options(self) -> dict[str, Any]:
        return {"dsn": self._db.dsn, "connect_timeout": self._db.connect_timeout,
                "prepare_threshold": self._db.prepare_threshold, **self._pool,
                "resume_cache": self._cache.size if self._cache is not None else 0,
                "listen_dsn": self._listen_dsn}

    @property
    def resume_cache(self) -> ResumeCache | None:
        """The sessions this backend resumes from memory (None: the cache is off)."""
        return self._cache

    def serves(self, options: dict[str, Any]) -> bool:
        return options.get("dsn") == self._db.dsn

    def busy(self) -> bool:
        # A failed login must leave the current user's open transaction untouched.
        return self._factory.in_transaction

    @property
    def factory(self) -> Factory:
        return self._factory

    # -- the unit of work ------------------------------------------------------------------------

    def begin(self, login: Login[LocalHandle]) -> None:
        # Never trusted: a login that knows no more about its user gets a user with no rights.
        principal = login.principal or Principal(user_id=login.experimenter_id, name=login.user_name,
                                                 is_guest=login.is_guest)
        self._factory._begin(principal, login.group_id)

    def idle(self) -> None:
        self._factory._end()
        due, self._touch_due = self._touch_due, None
        if due is not None:
            self._write_behind(due)
            self._db.release()  # in thread scope, the connection the write borrowed

    def close(self) -> None:
        self._stop_listening(close=True)
        self._factory.close()

    def forget(self) -> None:
        self._stop_listening(close=False)
        self._factory.forget()

    # -- verbs -----------------------------------------------------------------------------------

    def validate_key(self, key: object) -> str:
        return _keys.validate_key(key)

    def login(self, username: str, password: str, *, host: str | None, agent: str | None) -> Login[LocalHandle]:
        if not plausible(username) or not plausible(password):
            _passwords.verify_password(None, "")  # same cost as a real miss
            raise AuthenticationError(BAD_LOGIN)
        self._db.revive()
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_sql.FIND_USER, {"name": username, **_sql.config_defaults()}).fetchone()
        assert row is not None  # one row whether or not the user exists
        user_id, stored_hash, is_guest, active, allow_guest = row
        ldap = self._factory.configuration.ldap
        if ldap and not stored_hash and user_id is not None and active:
            # No local password: the directory decides, and a refusal is final (no fallback).
            # The dummy hash keeps a refused directory user as slow as an unknown name.
            _passwords.verify_password(None, password)
            ok, rehash = _ldap.bind(ldap, username, password), False
        else:
            ok, rehash = _passwords.verify_password(stored_hash, password)
        # A guest while guest access is off gets the very same message: a different one would
        # confirm the password to whoever tried it.
        if not ok or not active or user_id is None or (is_guest and not allow_guest):
            raise AuthenticationError(BAD_LOGIN)
        if rehash:
            with self._db.errors(), self._db.autocommit() as conn:
                conn.execute(_sql.REHASH, (_passwords.hash_password(password), user_id))
            log.info("password of user id %s upgraded to argon2id", user_id)
        return self._open(user_id, host=host, agent=agent)

    def resume(self, key: str) -> Login[LocalHandle]:
        key = self.validate_key(key)
        cache = self._cache
        if cache is not None:
            entry = cache.get(key)  # drains the news first
            listener = self._listener
            if entry is not None and (listener is None or listener.shared or self._db.usable):
                if _monotonic() - entry.written >= entry.touch_every:
                    self._touch_due = entry
                if listener is not None and listener.shared:
                    return copy.copy(entry.login)  # type: ignore[no-any-return]  # each thread's own
                return entry.login  # type: ignore[no-any-return]
        params = {"digest": _keys.digest(key), "touch_every": _RESUME_TOUCH_EVERY, **_sql.config_defaults()}
        self._db.revive()  # a connection the server dropped while idle (a restart) is replaced
        generation = self._listening() if cache is not None else None
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_sql.RESUME, params).fetchone()
            if row is not None and not row[_LIVE]:  # dead: closed for good, never to come back
                conn.execute(_sql.CLOSE_DEAD, {"session_id": row[0], **_sql.config_defaults()})
                row = None
        if row is None:
            raise SessionKeyError(_BAD_KEY)
        login = self._login_from_row(key, row)
        shared = self._listener is not None and self._listener.shared
        entry = _entry(copy.copy(login) if shared else login, row)  # in thread scope, the threads' own
        if row[_STALE]:
            self._touch_due = entry  # written behind, at idle()
        if cache is not None and generation is not None:
            cache.put(key, entry, generation)
        return login

    # -- the resume cache ------------------------------------------------------------------------

    def _listening(self) -> int | None:
        """Make sure the cache's source listens before the resume statement reads (so no change
        committed after the read can go unannounced); the cache's generation, or None when the
        cache cannot be trusted with what this resume reads."""
        cache, listener = self._cache, self._listener
        assert cache is not None
        if listener is None:
            return _listen_on(self._db, cache)
        with listener.lock:  # in thread scope, other threads' resumes share it
            return _listen_on(listener.connection(), cache)

    def _stop_listening(self, *, close: bool) -> None:
        """This backend is done: its cache can trust nothing more. The process's shared cache and
        listener (thread scope) outlive any one thread's session."""
        listener = self._listener
        if listener is not None and listener.shared:
            return
        if listener is not None:
            listener.stop(close=close)
        elif self._cache is not None:
            self._cache.forget_source()

    def _write_behind(self, entry: Entry) -> None:
        """Slide last_access of a resumed session, at idle (after the response), when it is older
        than ``touch_every``; a row found dead is closed and forgotten."""
        try:
            self.touch(entry.login)
            entry.written = _monotonic()
        except SessionKeyError:
            if self._cache is not None:
                self._cache.drop(entry.login.key)
        except DatabaseUnavailable as exc:
            log.info("could not write last_access behind: %s", exc)

    def touch(self, login: Login[LocalHandle]) -> Login[LocalHandle]:
        params = {"session_id": login.handle.session_id, "touch_every": 0, **_sql.config_defaults()}
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_sql.TOUCH, params).fetchone()
        if row is None:
            raise SessionKeyError(_BAD_KEY)
        login.last_access = row[0]
        return login

    def logout(self, login: Login[LocalHandle]) -> None:
        # Logging out ends the unit of work: the revocation commits by itself, and a rollback
        # of the caller's work afterwards cannot undo it.
        if self._cache is not None:
            self._cache.drop(login.key)
        self._db.rollback()
        self._db.revive()
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_sql.CLOSE_BY_ID, (login.handle.session_id,)).fetchone()
        if row is not None:
            login.closed_at = row[0]

    def sudo(self, actor: Login[LocalHandle], username: str, *, host: str | None,
             agent: str | None) -> Login[LocalHandle]:
        if not plausible(username):
            raise PermissionDenied(f"{actor.user_name} may not act as that user")
        # A sudo from a sudo session: the original actor must be allowed too, and is recorded.
        original = actor.sudo_by if actor.sudo_by is not None else actor.experimenter_id
        query = _sql.SUDO_TARGET.format(
            _permissions.sudo_condition((sql.Placeholder(), [actor.experimenter_id]), "t")[0],
            _permissions.sudo_condition((sql.Placeholder(), [original]), "t")[0])
        self._db.revive()
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(query, [username, actor.experimenter_id, original]).fetchone()
        if row is None:
            raise PermissionDenied(
                f"{actor.user_name} may not act as {username!r}: the super user may act as anyone, admins "
                f"as anyone but the super user, group leaders as the non-admin members of the groups they "
                f"lead (or there is no such active user)"
            )
        log.info("user id %s (via %s, id %s) opened a session as %s", original, actor.user_name,
                 actor.experimenter_id, username)
        return self._open(row[0], host=host, agent=agent, sudo_by=original)

    def su(self, *, host: str | None, agent: str | None) -> Login[LocalHandle]:
        self._db.revive()
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_sql.SUPER_USER).fetchone()
        super_user = row[0] if row else None
        if super_user is None:
            raise PermissionDenied("no super user: the configured super_user must name an active admin "
                                   "(run `ome-session install`, which sets one)")
        login = self._open(super_user, host=host, agent=agent, su=True)
        log.warning("su session opened as the super user %s (id %s) from %s by %s", login.user_name,
                    super_user, host, agent)
        return login

    # -- groups ----------------------------------------------------------------------------------

    def groups(self, login: Login[LocalHandle]) -> list[GroupInfo]:
        """The user's groups (memberships, default group, groups he leads), by name."""
        with self._db.errors(), self._db.autocommit() as conn:
            rows = conn.execute(_sql.USER_GROUPS, {"user_id": login.experimenter_id,
                                                   "current": login.group_id}).fetchall()
        return [GroupInfo(*row) for row in rows]

    def set_group(self, login: Login[LocalHandle], group: str | int) -> GroupInfo:
        """Make ``group`` (a name, or an id) this session's group; committed at once.

        Only this session's: the user's default group and his other sessions stay as they are.
        Only a group the user may use (``Principal.may_use_group``): the session's group is where
        its new objects go, so any other group would widen his rights.
        """
        group = str(group)
        if not group or "\x00" in group:
            raise ValueError("a group is named by its name or its id")
        self._outside_transaction("set_group()")
        group_id = int(group) if group.isdigit() and len(group) < 19 else None
        with self._db.errors(), self._db.autocommit() as conn:
            found = conn.execute(_sql.FIND_GROUP, {"name": group, "id": group_id}).fetchone()
        if found is None:
            raise ValueError(f"there is no group {group!r}; `ome-session whoami` lists yours")
        _refuse_guests(login)
        principal = self._principal_now(login)
        if not principal.may_use_group(found[0]):
            raise PermissionDenied(f"{login.user_name} is not a member or leader of group {found[1]!r}; "
                                   "ask one of its leaders or an admin to add you")
        self._update_session(login, _sql.SET_SESSION_GROUP, found[0])
        self._factory.group_id = login.group_id = found[0]  # new objects of this session go there now
        return GroupInfo(found[0], found[1], True, found[0] in principal.led)

    def set_idle_timeout(self, login: Login[LocalHandle], seconds: int) -> int:
        """This session's own idle timeout, in seconds: at least 1, at most the configured
        ``session_max_idle_timeout`` and ``session_max_lifetime`` (where they are not 0)."""
        seconds = idle_seconds(seconds)
        _refuse_guests(login)
        configuration = self._factory.configuration
        limits = [(configuration.session_max_idle_timeout, "session_max_idle_timeout"),
                  (configuration.session_max_lifetime, "session_max_lifetime")]
        for limit, name in limits:
            if 0 < limit < seconds:
                raise PermissionDenied(f"an idle timeout of {seconds} s is more than this installation allows: "
                                       f"at most {limit} s ({name}; an admin may change it)")
        self._outside_transaction("changing the idle timeout")
        row = self._update_session(login, _sql.SET_SESSION_IDLE_TIMEOUT, seconds)
        login.idle_timeout = row[0]
        return int(row[0])

    def set_message(self, login: Login[LocalHandle], message: str | None) -> None:
        """Leave a message on this session (None removes it); committed at once."""
        message = session_message(message)
        _refuse_guests(login)
        self._outside_transaction("changing the session's message")
        self._update_session(login, _sql.SET_SESSION_MESSAGE, message)
        login.message = message

    def _principal_now(self, login: Login[LocalHandle]) -> Principal:
        """The login's user and rights as the rows say now (memberships may have changed since the
        unit of work began); SessionKeyError once the session has ended."""
        params = {"session_id": login.handle.session_id, "touch_every": _RESUME_TOUCH_EVERY,
                  **_sql.config_defaults()}
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_sql.REFRESH, params).fetchone()
        if row is None:
            raise SessionKeyError(_BAD_KEY)
        principal = self._login_from_row(login.key, row).principal
        assert principal is not None
        return principal

    def _outside_transaction(self, what: str) -> None:
        if self._factory.in_transaction:
            raise SessionError(f"{what} commits as it goes: commit or roll back the open transaction first")

    def _update_session(self, login: Login[LocalHandle], statement: str, value: Any) -> tuple[Any, ...]:
        """One change to the login's own session row, while it lives; SessionKeyError once it has ended."""
        params = {"session_id": login.handle.session_id, "value": value, **_sql.config_defaults()}
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(statement, params).fetchone()
        if row is None:
            raise SessionKeyError(_BAD_KEY)
        return tuple(row)

    # -- helpers ---------------------------------------------------------------------------------

    def _open(self, user_id: int, *, host: str | None, agent: str | None, sudo_by: int | None = None,
              su: bool = False) -> Login[LocalHandle]:
        key = _keys.new_key()
        params = {"digest": _keys.digest(key), "user_id": user_id, "host": host, "agent": agent,
                  "sudo_by": sudo_by, "su": su, **_sql.config_defaults()}
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_sql.OPEN, params).fetchone()
        assert row is not None
        return self._login_from_row(key, row)

    def _login_from_row(self, key: str, row: tuple[Any, ...]) -> Login[LocalHandle]:
        (session_id, user_id, name, default_group, session_group, idle_timeout, started, last_access, expires_at,
         host, agent, message, sudo_by, is_admin, is_guest, is_super, member_of, leads,
         confined_to) = row[:_LOGIN_WIDTH]
        principal = Principal(
            user_id=user_id, name=name, is_super=is_super, is_admin=is_admin, is_guest=is_guest,
            groups=frozenset(member_of), led=frozenset(leads),
            confined_to=None if confined_to is None else frozenset(confined_to),
            confined_by=None if confined_to is None else sudo_by,
        )
        # The session's own group while the user may still use it, else his default group.
        group_id = session_group if principal.may_use_group(session_group) else default_group
        return Login(
            key=key, experimenter_id=user_id, user_name=name, handle=LocalHandle(session_id), group_id=group_id,
            started=started, last_access=last_access, expires_at=expires_at, host=host, agent=agent,
            message=message, sudo_by=sudo_by, idle_timeout=idle_timeout,
            is_admin=principal.admin, is_guest=is_guest, is_super=principal.admin and is_super,
            acl=principal.acl(), principal=principal,
        )


_LOGIN_WIDTH = 19  # the columns of LOGIN_COLUMNS a Login is made of; then what the cache needs
_LIVE, _STALE = _LOGIN_WIDTH + 2, _LOGIN_WIDTH + 3  # then what RESUME adds: live, and last_access due
_monotonic = time.monotonic


def _listen_on(holder: Connection, cache: ResumeCache) -> int | None:
    """Make sure ``holder`` listens for ``cache`` before a resume statement reads (so no change
    committed after the read can go unannounced); the cache's generation, or None when the cache
    cannot be trusted with what the resume reads."""
    if holder.in_transaction:
        return None  # LISTEN would count only at commit
    conn = holder.raw
    if cache.listening is not conn:
        with holder.errors(), holder.autocommit() as autocommit:
            cache.listen(autocommit)
    return cache.generation if cache.listening is conn else None


def _entry(login: Login[LocalHandle], row: tuple[Any, ...]) -> Entry:
    """What the resume cache keeps of a resume: the Login, and its expiry on the local clock."""
    idle = row[5]  # the session's idle timeout in effect (its own, or the configured one)
    expires_in, unused_for = row[_LOGIN_WIDTH:_LOGIN_WIDTH + 2]
    now = _monotonic()
    idle = float(idle or 0)
    touch_every = min(_RESUME_TOUCH_EVERY, idle / 10) if idle else _RESUME_TOUCH_EVERY
    users = (login.experimenter_id,) if login.sudo_by is None else (login.experimenter_id, login.sudo_by)
    return Entry(login=login, session_id=login.handle.session_id, users=users, idle=idle,
                 expires=math.inf if expires_in is None else now + expires_in,
                 written=now - max(unused_for or 0.0, 0.0), touch_every=touch_every)
