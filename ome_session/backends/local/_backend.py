"""``LocalBackend``: the verbs of the backend interface, on ome-session's own database."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from ... import _keys, _ldap, _passwords, _permissions
from ..._connection import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PREPARE_THRESHOLD
from ..._pool import DEFAULT_POOL_TIMEOUT
from ..._principal import Principal
from ...errors import AuthenticationError, PermissionDenied, SessionError, SessionKeyError
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
    """

    name = "local"

    def __init__(self, dsn: str, *, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
                 prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD, pool_size: int | None = None,
                 pool_timeout: float = DEFAULT_POOL_TIMEOUT) -> None:
        self._factory = Factory(dsn, connect_timeout=connect_timeout, prepare_threshold=prepare_threshold,
                                pool_size=pool_size, pool_timeout=pool_timeout)
        self._db = self._factory._connection
        self._pool = {"pool_size": pool_size, "pool_timeout": pool_timeout} if pool_size is not None else {}

    # -- where it is -----------------------------------------------------------------------------

    @property
    def options(self) -> dict[str, Any]:
        return {"dsn": self._db.dsn, "connect_timeout": self._db.connect_timeout,
                "prepare_threshold": self._db.prepare_threshold, **self._pool}

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

    def close(self) -> None:
        self._factory.close()

    def forget(self) -> None:
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
        params = {"digest": _keys.digest(key), "touch_every": _RESUME_TOUCH_EVERY, **_sql.config_defaults()}
        self._db.revive()  # a connection the server dropped while idle (a restart) is replaced
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_sql.RESUME, params).fetchone()
        if row is None:
            raise SessionKeyError(_BAD_KEY)
        return self._login_from_row(key, row)

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
         host, agent, message, sudo_by, is_admin, is_guest, is_super, member_of, leads, confined_to) = row
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
