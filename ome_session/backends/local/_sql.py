"""The local backend's statements, and the rules of a session row they are made of.

A session row (``ome_sessions``) is over for one of three reasons (``ENDED``): it was closed
(logged out, or found dead), it went unused longer than its idle timeout (``IDLE_TIMEOUT``), or it
outlived its absolute lifetime. It is live when none holds and its user may still be in. The purge
of ``_maintenance`` deletes by the same reasons.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from ..._conditions import SUPER_USER_SQL, active_admin
from ...configuration import VARIABLES

# The idle timeout of a session row ``s`` in seconds (0: none), given ``{cfg}``, the configuration
# (``CFG``): the session's own when it has one (never above the configured maximum as it is now),
# else the configured default. The one source of a session's idle timeout.
IDLE_TIMEOUT = ("CASE WHEN {s}.idle_timeout IS NULL THEN {cfg}.idle WHEN {cfg}.max_idle > 0 "
                "THEN least({s}.idle_timeout, {cfg}.max_idle) ELSE {s}.idle_timeout END")

# Why a session row ``s`` is over, given the configuration as ``{cfg}``.
ENDED = {
    "closed": "{s}.closed_at IS NOT NULL",
    "idle": "{s}.closed_at IS NULL AND ({idle}) > 0 AND {s}.last_access <= now() - ({idle}) * interval '1 second'",
    "expired": "{s}.closed_at IS NULL AND {s}.expires_at <= now()",
}


def idle_timeout(s: str, cfg: str = "cfg") -> str:
    return IDLE_TIMEOUT.format(s=s, cfg=cfg)


def ended(reason: str, s: str, cfg: str = "cfg") -> str:
    return ENDED[reason].format(s=s, idle=idle_timeout(s, cfg))


def live(s: str, cfg: str = "cfg") -> str:
    """A row none of ``ENDED`` holds for (a missing limit, NULL, is no limit)."""
    return " AND ".join(f"NOT coalesce({ended(reason, s, cfg)}, false)" for reason in ENDED)


def close(where: str) -> str:
    """Closing session rows for good: ``closed_at`` is set once and never cleared."""
    return f"UPDATE ome_sessions s SET closed_at = now() WHERE s.closed_at IS NULL AND {where}"


CLOSE_BY_ID = close("s.id = %s") + " RETURNING s.closed_at"
CLOSE_BY_DIGEST = close("s.key_digest = %s")

# The configuration that decides who may be in, read inside the very statement that decides:
# a change (guest access withdrawn, a shorter timeout) counts at once in every running process,
# at no extra round trip. Defaults come from configuration.VARIABLES as parameters. A stored value
# these statements cannot use (``usable`` is false: written before the database checked values)
# is ignored, never a failure; reading the configuration logs an error about it.
def config_defaults() -> dict[str, Any]:
    """The declared defaults ``CFG`` falls back on when a variable is not set."""
    return {"idle_default": VARIABLES["session_idle_timeout"].default(),
            "max_idle_default": VARIABLES["session_max_idle_timeout"].default(),
            "lifetime_default": VARIABLES["session_max_lifetime"].default()}


CFG = """
cfg AS (
    SELECT coalesce((SELECT CASE WHEN usable THEN (value #>> '{}')::bigint END FROM configuration
                     WHERE name = 'session_idle_timeout'), %(idle_default)s) AS idle,
           coalesce((SELECT CASE WHEN usable THEN (value #>> '{}')::bigint END FROM configuration
                     WHERE name = 'session_max_idle_timeout'), %(max_idle_default)s) AS max_idle,
           coalesce((SELECT CASE WHEN usable THEN (value #>> '{}')::bigint END FROM configuration
                     WHERE name = 'session_max_lifetime'), %(lifetime_default)s) AS lifetime,
           coalesce((SELECT CASE WHEN usable THEN (value #>> '{}')::boolean END FROM configuration
                     WHERE name = 'allow_guest_access'), false) AS allow_guest,
           (SELECT CASE WHEN usable THEN (value #>> '{}')::bigint END FROM configuration
            WHERE name = 'super_user') AS super_user
)"""

# The columns a Login is built from, given a ``s`` row of ome_sessions and ``e`` of experimenters,
# with index lookups only: the session's own group (whether the user may still use it is judged
# by the backend, on the Principal these columns make), the session's idle timeout, the groups the
# user belongs to (memberships and default group), the groups he leads, and, for a session a group
# leader opened as a member (sudo by someone who is not an admin), the groups that session is
# confined to. The super user counts only while he is
# an active admin: a super_user value naming anybody else names nobody.
LOGIN_COLUMNS = f"""
    s.id, e.id, e.ome_name, e.group_id, s.group_id, {idle_timeout("s")}, s.started, s.last_access,
    s.expires_at, s.host, s.agent, s.message, s.sudo_by,
    e.is_admin, e.is_guest, coalesce(e.id = cfg.super_user AND {active_admin("e")}, false) AS is_super,
    ARRAY(SELECT m.group_id FROM experimenter_group_map m WHERE m.experimenter_id = e.id
          UNION SELECT e.group_id WHERE e.group_id IS NOT NULL) AS member_of,
    ARRAY(SELECT g.id FROM groups g WHERE g.leader_id = e.id) AS leads,
    CASE WHEN s.sudo_by IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM experimenters a WHERE a.id = s.sudo_by AND {active_admin("a")})
         THEN ARRAY(SELECT g.id FROM groups g WHERE g.leader_id = s.sudo_by) END AS confined_to,
    extract(epoch FROM s.expires_at - clock_timestamp())::float8 AS expires_in,
    extract(epoch FROM clock_timestamp() - s.last_access)::float8 AS unused_for
"""

FIND_USER = f"""
WITH {CFG}
SELECT e.id, e.password_hash, e.is_guest, e.active, cfg.allow_guest
FROM cfg LEFT JOIN experimenters e ON e.ome_name = %(name)s
"""

REHASH = "UPDATE experimenters SET password_hash = %s WHERE id = %s"

OPEN = f"""
WITH {CFG}, s AS (
    INSERT INTO ome_sessions (key_digest, experimenter_id, host, agent, expires_at, sudo_by, su)
    SELECT %(digest)s, %(user_id)s, %(host)s, %(agent)s,
           CASE WHEN cfg.lifetime > 0 THEN now() + cfg.lifetime * interval '1 second' END,
           %(sudo_by)s, %(su)s
    FROM cfg
    RETURNING *
), state AS (
    INSERT INTO user_states (experimenter_id) VALUES (%(user_id)s) ON CONFLICT DO NOTHING
)
SELECT {LOGIN_COLUMNS}
FROM s JOIN experimenters e ON e.id = s.experimenter_id CROSS JOIN cfg
"""

# A live row whose user may still be in: active and, for guests, guest access allowed.
_LIVE = f"{live('s')} AND e.active AND (NOT e.is_guest OR cfg.allow_guest)"


def _check_and_touch(which: str, returning: str) -> str:
    """One statement that finds a session row, closes it for good if it is dead (raising a timeout
    later never revives it), else slides its idle expiry; last_access never moves backwards under
    concurrent use. ``which`` selects the row; ``returning`` is the final SELECT list.

    The slide is written only when last_access is older than ``%(touch_every)s`` seconds (at most
    a tenth of the idle timeout): most requests then read and write nothing, so they cost no WAL
    flush and leave no dead row, and the idle timeout stays exact to that margin.
    """
    return f"""
WITH {CFG}, hit AS (
    SELECT s.id, ({_LIVE}) AS live, {_stale("s")} AS stale
    FROM ome_sessions s JOIN experimenters e ON e.id = s.experimenter_id CROSS JOIN cfg
    WHERE {which}
), dead AS (
    {close("s.id IN (SELECT hit.id FROM hit WHERE NOT hit.live)")}
), touched AS (
    UPDATE ome_sessions s SET last_access = greatest(s.last_access, clock_timestamp())
    FROM hit WHERE s.id = hit.id AND hit.live AND hit.stale
    RETURNING s.id, s.last_access
), s AS (
    SELECT o.id, o.experimenter_id, o.started, coalesce(t.last_access, o.last_access) AS last_access,
           o.expires_at, o.host, o.agent, o.message, o.sudo_by, o.group_id, o.idle_timeout
    FROM hit JOIN ome_sessions o ON o.id = hit.id LEFT JOIN touched t ON t.id = hit.id
    WHERE hit.live
)
SELECT {returning}
FROM s JOIN experimenters e ON e.id = s.experimenter_id CROSS JOIN cfg
"""


def _stale(s: str) -> str:
    """Whether ``s``'s last_access is older than ``%(touch_every)s`` seconds, or a tenth of its idle
    timeout if that is shorter: then using the session writes it (else nothing is written)."""
    return (f"{s}.last_access < clock_timestamp() - interval '1 second' * CASE WHEN {idle_timeout(s)} = 0 "
            f"THEN %(touch_every)s ELSE least(%(touch_every)s, ({idle_timeout(s)}) / 10.0) END")


# Resuming by key reads and writes nothing: whether the row is live, and whether its last_access is
# due (``stale``), come back with the Login. The backend writes a stale last_access behind, at
# ``idle()`` (``TOUCH``), and closes a dead row for good (``CLOSE_DEAD``) on the way to refusing,
# so the request's one statement is a read of indexed rows.
RESUME = f"""
WITH {CFG}
SELECT {LOGIN_COLUMNS}, ({_LIVE}) AS live, {_stale("s")} AS stale
FROM ome_sessions s JOIN experimenters e ON e.id = s.experimenter_id CROSS JOIN cfg
WHERE s.key_digest = %(digest)s
"""
_STILL_DEAD = f"NOT EXISTS (SELECT FROM experimenters e CROSS JOIN cfg WHERE e.id = s.experimenter_id AND {_LIVE})"
CLOSE_DEAD = f"""
WITH {CFG}
{close(f"s.id = %(session_id)s AND {_STILL_DEAD}")}
"""
TOUCH = _check_and_touch("s.id = %(session_id)s", "s.last_access")
REFRESH = _check_and_touch("s.id = %(session_id)s", LOGIN_COLUMNS)

SUPER_USER = sql.SQL("SELECT {}").format(sql.SQL(SUPER_USER_SQL))

# Who may act as whom (see _permissions.SUDO): both the session's user and, in a chain of sudo
# sessions, the original actor must be allowed, judged on the stored rows.
SUDO_TARGET = sql.SQL("""
SELECT t.id FROM experimenters t
WHERE t.ome_name = %s AND t.active AND {} AND {}
""")

# The user's groups: memberships, the default group and the groups he leads; ``current`` is the
# session's group (where new objects go), given as a parameter.
USER_GROUPS = """
SELECT g.id, g.name, g.id IS NOT DISTINCT FROM %(current)s, g.leader_id IS NOT DISTINCT FROM e.id
FROM experimenters e JOIN groups g ON g.id = e.group_id OR g.leader_id = e.id OR g.id IN (
    SELECT m.group_id FROM experimenter_group_map m WHERE m.experimenter_id = e.id)
WHERE e.id = %(user_id)s
ORDER BY g.name
"""

FIND_GROUP = "SELECT id, name FROM groups WHERE name = %(name)s OR id = %(id)s ORDER BY name = %(name)s DESC LIMIT 1"



def _set_own(column: str, returning: str) -> str:
    """One setting of a live session, to ``%(value)s``: only the session's row, so the user's
    default group and his other sessions never move."""
    return f"""
WITH {CFG}
UPDATE ome_sessions s SET {column} = %(value)s FROM cfg WHERE s.id = %(session_id)s AND {live('s')}
RETURNING {returning}
"""


SET_SESSION_GROUP = _set_own("group_id", "s.group_id")
SET_SESSION_IDLE_TIMEOUT = _set_own("idle_timeout", idle_timeout("s"))
SET_SESSION_MESSAGE = _set_own("message", "s.message")

# A session's times as the expiry rule sees them: its idle timeout (its own, and in effect), last
# access, absolute expiry, and the database's clock.
SESSION_TIMES = f"""
WITH {CFG}
SELECT {idle_timeout("s")}, s.idle_timeout, s.last_access, s.expires_at, now()
FROM ome_sessions s CROSS JOIN cfg WHERE s.id = %(session_id)s
"""
