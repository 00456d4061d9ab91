"""The local backend: users, passwords and session keys in ome-session's own PostgreSQL database.

Every statement here runs on the session's own connection in autocommit mode when no transaction
is open, so a login or a resume commits by itself: resuming by key is one round trip, one
statement that checks the key, touches it, and returns the user, the user state and the ACL.
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg import sql

from .. import _keys, _ldap, _passwords, _permissions
from .._connection import Connection
from .._principal import Principal
from ..configuration import VARIABLES, Configuration
from ..errors import AuthenticationError, PermissionDenied, SessionKeyError
from . import AuthBackend, Login

log = logging.getLogger(__name__)

_BAD_LOGIN = "login failed: unknown user or wrong password"
_BAD_KEY = "session key not accepted: it is unknown, expired or revoked; log in again"
_MAX_FIELD = 4096  # longer user names or passwords are refused before hashing or SQL

# The configuration that decides who may be in, read inside the very statement that decides:
# a change (guest access withdrawn, a shorter timeout) counts at once in every running process,
# at no extra round trip. Defaults come from configuration.VARIABLES as parameters. A stored value
# these statements cannot use (``usable`` is false: written before the database checked values)
# is ignored, never a failure; reading the configuration logs an error about it.
_CFG = """
cfg AS (
    SELECT coalesce((SELECT CASE WHEN usable THEN (value #>> '{}')::bigint END FROM configuration
                     WHERE name = 'session_idle_timeout'), %(idle_default)s) AS idle,
           coalesce((SELECT CASE WHEN usable THEN (value #>> '{}')::bigint END FROM configuration
                     WHERE name = 'session_max_lifetime'), %(lifetime_default)s) AS lifetime,
           coalesce((SELECT CASE WHEN usable THEN (value #>> '{}')::boolean END FROM configuration
                     WHERE name = 'allow_guest_access'), false) AS allow_guest,
           (SELECT CASE WHEN usable THEN (value #>> '{}')::bigint END FROM configuration
            WHERE name = 'super_user') AS super_user
)"""

# The columns a Login is built from, given a ``s`` row of ome_sessions and ``e`` of experimenters,
# with index lookups only: the groups the user belongs to (memberships and default group), the
# groups he leads, and, for a session a group leader opened as a member (sudo by someone who is
# not an admin), the groups that session is confined to. The super user counts only while he is
# an active admin: a super_user value naming anybody else names nobody.
_LOGIN_COLUMNS = """
    s.id, e.id, e.ome_name, e.group_id, s.started, s.last_access, s.expires_at, s.host, s.sudo_by,
    e.is_admin, e.is_guest, us.project_id, us.dataset_id,
    coalesce(e.id = cfg.super_user AND e.is_admin AND NOT e.is_guest, false) AS is_super,
    ARRAY(SELECT m.group_id FROM experimenter_group_map m WHERE m.experimenter_id = e.id
          UNION SELECT e.group_id WHERE e.group_id IS NOT NULL) AS member_of,
    ARRAY(SELECT g.id FROM groups g WHERE g.leader_id = e.id) AS leads,
    CASE WHEN s.sudo_by IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM experimenters a WHERE a.id = s.sudo_by AND a.is_admin AND a.active AND NOT a.is_guest)
         THEN ARRAY(SELECT g.id FROM groups g WHERE g.leader_id = s.sudo_by) END AS confined_to
"""

_FIND_USER = f"""
WITH {_CFG}
SELECT e.id, e.password_hash, e.is_guest, e.active, cfg.allow_guest
FROM cfg LEFT JOIN experimenters e ON e.ome_name = %(name)s
"""

_REHASH = "UPDATE experimenters SET password_hash = %s WHERE id = %s"

_OPEN = f"""
WITH {_CFG}, s AS (
    INSERT INTO ome_sessions (key_digest, experimenter_id, host, agent, expires_at, sudo_by, su)
    SELECT %(digest)s, %(user_id)s, %(host)s, %(agent)s,
           CASE WHEN cfg.lifetime > 0 THEN now() + cfg.lifetime * interval '1 second' END,
           %(sudo_by)s, %(su)s
    FROM cfg
    RETURNING *
), state AS (
    INSERT INTO user_states (experimenter_id) VALUES (%(user_id)s) ON CONFLICT DO NOTHING
)
SELECT {_LOGIN_COLUMNS}
FROM s JOIN experimenters e ON e.id = s.experimenter_id CROSS JOIN cfg
LEFT JOIN user_states us ON us.experimenter_id = e.id
"""

# Liveness of a session row, in one place: open, within its lifetime, used recently enough, and
# its user still active and, for guests, guest access allowed.
_LIVE = """
    s.closed_at IS NULL
    AND (s.expires_at IS NULL OR s.expires_at > now())
    AND (cfg.idle = 0 OR s.last_access > now() - cfg.idle * interval '1 second')
    AND e.active AND (NOT e.is_guest OR cfg.allow_guest)
"""

def _check_and_touch(which: str, returning: str) -> str:
    """One statement that finds a session row, closes it for good if it is dead (raising a timeout
    later never revives it), else slides its idle expiry; last_access never moves backwards under
    concurrent use. ``which`` selects the row; ``returning`` is the final SELECT list.

    The slide is written only when last_access is older than ``%(touch_every)s`` seconds (at most
    a tenth of the idle timeout): most requests then read and write nothing, so they cost no WAL
    flush and leave no dead row, and the idle timeout stays exact to that margin.
    """
    return f"""
WITH {_CFG}, hit AS (
    SELECT s.id, ({_LIVE}) AS live,
           s.last_access < clock_timestamp() - interval '1 second' * CASE WHEN cfg.idle = 0
               THEN %(touch_every)s ELSE least(%(touch_every)s, cfg.idle / 10.0) END AS stale
    FROM ome_sessions s JOIN experimenters e ON e.id = s.experimenter_id CROSS JOIN cfg
    WHERE {which}
), dead AS (
    UPDATE ome_sessions s SET closed_at = now()
    FROM hit WHERE s.id = hit.id AND NOT hit.live AND s.closed_at IS NULL
), touched AS (
    UPDATE ome_sessions s SET last_access = greatest(s.last_access, clock_timestamp())
    FROM hit WHERE s.id = hit.id AND hit.live AND hit.stale
    RETURNING s.id, s.last_access
), s AS (
    SELECT o.id, o.experimenter_id, o.started, coalesce(t.last_access, o.last_access) AS last_access,
           o.expires_at, o.host, o.sudo_by
    FROM hit JOIN ome_sessions o ON o.id = hit.id LEFT JOIN touched t ON t.id = hit.id
    WHERE hit.live
)
SELECT {returning}
FROM s JOIN experimenters e ON e.id = s.experimenter_id CROSS JOIN cfg
LEFT JOIN user_states us ON us.experimenter_id = e.id
"""


_RESUME = _check_and_touch("s.key_digest = %(digest)s", _LOGIN_COLUMNS)
_TOUCH = _check_and_touch("s.id = %(session_id)s", "s.last_access")
# How stale last_access may get before a resume writes it (keep_alive always writes).
_RESUME_TOUCH_EVERY = 60

_SUPER_USER = sql.SQL("SELECT {}").format(sql.SQL(_permissions.SUPER_USER_SQL))

_CLOSE = "UPDATE ome_sessions SET closed_at = now() WHERE id = %s AND closed_at IS NULL"

# Who may act as whom (see _permissions.SUDO): both the session's user and, in a chain of sudo
# sessions, the original actor must be allowed, judged on the stored rows.
_SUDO_TARGET = sql.SQL("""
SELECT t.id FROM experimenters t
WHERE t.ome_name = %s AND t.active AND {} AND {}
""")


def _config_defaults() -> dict[str, Any]:
    """The declared defaults the statements fall back on when a variable is not set."""
    return {"idle_default": VARIABLES["session_idle_timeout"].default(),
            "lifetime_default": VARIABLES["session_max_lifetime"].default()}


class LocalBackend(AuthBackend):
    """Logins against the ``experimenters`` and ``ome_sessions`` tables."""

    name = "local"

    def __init__(self, connection: Connection, configuration: Configuration) -> None:
        self._db = connection
        self._config = configuration

    def validate_key(self, key: object) -> str:
        return _keys.validate_key(key)

    # -- verbs -----------------------------------------------------------------------------------

    def login(self, username: str, password: str, *, host: str | None, agent: str | None) -> Login:
        if not _plausible(username) or not _plausible(password):
            _passwords.verify_password(None, "")  # same cost as a real miss
            raise AuthenticationError(_BAD_LOGIN)
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_FIND_USER, {"name": username, **_config_defaults()}).fetchone()
        assert row is not None  # one row whether or not the user exists
        user_id, stored_hash, is_guest, active, allow_guest = row
        ldap = self._config.ldap
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
            raise AuthenticationError(_BAD_LOGIN)
        if rehash:
            with self._db.errors(), self._db.autocommit() as conn:
                conn.execute(_REHASH, (_passwords.hash_password(password), user_id))
            log.info("password of user id %s upgraded to argon2id", user_id)
        return self._open(user_id, host=host, agent=agent)

    def resume(self, key: str) -> Login:
        key = self.validate_key(key)
        params = {"digest": _keys.digest(key), "touch_every": _RESUME_TOUCH_EVERY, **_config_defaults()}
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_RESUME, params).fetchone()
        if row is None:
            raise SessionKeyError(_BAD_KEY)
        return self._login_from_row(key, row)

    def touch(self, login: Login) -> Login:
        params = {"session_id": login.extra["session_id"], "touch_every": 0, **_config_defaults()}
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_TOUCH, params).fetchone()
        if row is None:
            raise SessionKeyError(_BAD_KEY)
        login.last_access = row[0]
        return login

    def logout(self, login: Login) -> None:
        with self._db.errors(), self._db.autocommit() as conn:
            conn.execute(_CLOSE, (login.extra["session_id"],))

    def sudo(self, actor: Login, username: str, *, host: str | None, agent: str | None) -> Login:
        if not _plausible(username):
            raise PermissionDenied(f"{actor.user_name} may not act as that user")
        # A sudo from a sudo session: the original actor must be allowed too, and is recorded.
        original = actor.sudo_by if actor.sudo_by is not None else actor.experimenter_id
        query = _SUDO_TARGET.format(_permissions.sudo_condition((sql.Placeholder(), [actor.experimenter_id]), "t")[0],
                                    _permissions.sudo_condition((sql.Placeholder(), [original]), "t")[0])
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

    def su(self, *, host: str | None, agent: str | None) -> Login:
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_SUPER_USER).fetchone()
        super_user = row[0] if row else None
        if super_user is None:
            raise PermissionDenied("no super user: the configured super_user must name an active admin "
                                   "(run `ome-session install`, which sets one)")
        login = self._open(super_user, host=host, agent=agent, su=True)
        log.warning("su session opened as the super user %s (id %s) from %s by %s", login.user_name,
                    super_user, host, agent)
        return login

    # -- helpers ---------------------------------------------------------------------------------

    def _open(self, user_id: int, *, host: str | None, agent: str | None, sudo_by: int | None = None,
              su: bool = False) -> Login:
        key = _keys.new_key()
        params = {
            "digest": _keys.digest(key),
            "user_id": user_id,
            "host": host,
            "agent": agent,
            "sudo_by": sudo_by,
            "su": su,
            **_config_defaults(),
        }
        with self._db.errors(), self._db.autocommit() as conn:
            row = conn.execute(_OPEN, params).fetchone()
        assert row is not None
        return self._login_from_row(key, row)

    def _login_from_row(self, key: str, row: tuple[Any, ...]) -> Login:
        (session_id, user_id, name, group_id, started, last_access, expires_at, host, sudo_by,
         is_admin, is_guest, project_id, dataset_id, is_super, member_of, leads, confined_to) = row
        principal = Principal(
            user_id=user_id, name=name, is_super=is_super, is_admin=is_admin, is_guest=is_guest,
            groups=frozenset(member_of), led=frozenset(leads),
            confined_to=None if confined_to is None else frozenset(confined_to),
        )
        return Login(
            key=key, experimenter_id=user_id, user_name=name, group_id=group_id, started=started,
            last_access=last_access, expires_at=expires_at, host=host, sudo_by=sudo_by,
            is_admin=principal.admin, is_guest=is_guest, is_super=principal.admin and is_super,
            acl=principal.acl(), principal=principal,
            project_id=project_id, dataset_id=dataset_id, extra={"session_id": session_id},
        )


def _plausible(value: object) -> bool:
    """A user name or password that can be checked at all: PostgreSQL text cannot hold NUL, and a
    lone surrogate cannot be encoded for it or for argon2 (it would escape as UnicodeEncodeError)."""
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_FIELD or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
