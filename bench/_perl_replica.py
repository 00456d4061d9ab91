"""A stand-in for the original OME's ``createWithKey``, statement for statement, in plain psycopg.

It exists only to be measured against: it reproduces what the Perl session manager sent to the
database when a request resumed a session by key, on tables shaped like the original ones (one
state row per user in ``ome_sessions``, the key in clear text, no index on it, ``timestamp``
without time zone). Written from the behaviour notes, not from the Perl source.

The one deliberate change: the original measured key age with ``abstime()``, which PostgreSQL
12 removed (every non-guest key would be rejected there); this uses ``now() - last_access``,
which costs the same.

Per resume, in order (autocommit off, as DBI ran it, so the driver opens the transaction):
BEGIN; clear keys unused for longer than the lifetime; find the state row by key; load the user
(the guest check compares names); read the key's age; the two ACL queries (visible users,
visible groups; the three-table FROM lists with OR are the original's); store the state row;
``commitTransaction`` stores it again (it stamps ``last_access`` first); COMMIT.
"""

from __future__ import annotations

from typing import Any

import psycopg

LIFETIME_S = 1800

SCHEMA = """
CREATE SEQUENCE attribute_seq;
CREATE SEQUENCE session_seq;
CREATE TABLE groups (
    attribute_id  integer PRIMARY KEY DEFAULT nextval('attribute_seq'),
    name          varchar(256),
    leader        integer,
    contact       integer
);
CREATE TABLE experimenters (
    attribute_id         integer PRIMARY KEY DEFAULT nextval('attribute_seq'),
    ome_name             varchar(256) UNIQUE,
    firstname            varchar(256),
    lastname             varchar(256),
    email                varchar(256),
    password             varchar(64),
    group_id             integer,
    data_dir             varchar(256),
    institution          varchar(256),
    module_execution_id  integer
);
CREATE TABLE experimenter_group_map (
    attribute_id     integer PRIMARY KEY DEFAULT nextval('attribute_seq'),
    experimenter_id  integer,
    group_id         integer
);
CREATE TABLE ome_sessions (
    session_id           integer PRIMARY KEY DEFAULT nextval('session_seq'),
    experimenter_id      integer NOT NULL REFERENCES experimenters DEFERRABLE INITIALLY DEFERRED,
    host                 varchar(256),
    project_id           integer,
    dataset_id           integer,
    module_execution_id  integer,
    image_view           text,
    feature_view         text,
    last_access          timestamp DEFAULT now(),
    started              timestamp DEFAULT now(),
    session_key          varchar(40)
);
"""

TABLES = ("groups", "experimenters", "experimenter_group_map", "ome_sessions")

_INVALIDATE = """
UPDATE ome_sessions SET session_key = NULL
WHERE EXTRACT(EPOCH FROM now() - last_access) > %s
"""

_FIND_STATE = """
SELECT session_id, experimenter_id, host, project_id, dataset_id, module_execution_id,
       image_view, feature_view, last_access, started, session_key
FROM ome_sessions WHERE session_key = %s
"""

_LOAD_USER = """
SELECT attribute_id, ome_name, firstname, lastname, email, password, group_id, data_dir,
       institution, module_execution_id
FROM experimenters WHERE attribute_id = %s
"""

_KEY_AGE = "SELECT EXTRACT(EPOCH FROM now() - last_access) FROM ome_sessions WHERE session_key = %s"

VISIBLE_USERS = """
SELECT DISTINCT e.attribute_id
FROM groups g, experimenter_group_map egm, experimenters e
WHERE (g.leader = %(me)s AND g.attribute_id = egm.group_id AND egm.experimenter_id = e.attribute_id)
   OR (g.leader = %(me)s AND e.group_id = g.attribute_id)
UNION
SELECT e.attribute_id FROM experimenters e WHERE e.attribute_id = %(me)s
"""

_VISIBLE_GROUPS = """
SELECT DISTINCT g.attribute_id
FROM groups g, experimenter_group_map egm
WHERE (g.attribute_id = egm.group_id AND egm.experimenter_id = %(me)s)
   OR g.leader = %(me)s
UNION
SELECT e.group_id FROM experimenters e WHERE e.attribute_id = %(me)s
"""

_STORE = "UPDATE ome_sessions SET last_access = %s, host = %s WHERE session_id = %s"
_STAMP = "UPDATE ome_sessions SET last_access = %s WHERE session_id = %s"


def create_with_key(conn: psycopg.Connection[Any], key: str, *, super_user: int,
                    host: str = "bench-host") -> dict[str, Any] | None:
    """Resume by key the way the original did; returns the state and ACL, or None if refused."""
    if not key or len(key) != 32:
        return None
    conn.execute(_INVALIDATE, (LIFETIME_S,))
    state = conn.execute(_FIND_STATE, (key,)).fetchone()
    if state is None:
        return None
    session_id, user_id = state[0], state[1]
    user = conn.execute(_LOAD_USER, (user_id,)).fetchone()
    if user is None:
        return None
    is_guest = (user[2], user[3]) == ("Guest", "User")
    if not is_guest:
        row = conn.execute(_KEY_AGE, (key,)).fetchone()
        age = float(row[0]) if row and row[0] is not None else LIFETIME_S + 1.0
        if age > LIFETIME_S:
            conn.execute("UPDATE ome_sessions SET session_key = NULL WHERE session_id = %s", (session_id,))
            conn.commit()
            return None
    acl = None
    if super_user != user_id:
        acl = {
            "users": [r[0] for r in conn.execute(VISIBLE_USERS, {"me": user_id})],
            "groups": [r[0] for r in conn.execute(_VISIBLE_GROUPS, {"me": user_id})],
        }
    # The original passed the string 'now()' and let PostgreSQL parse it.
    conn.execute(_STORE, ("now()", host, session_id))
    conn.execute(_STAMP, ("now()", session_id))
    conn.commit()
    return {"session_id": session_id, "experimenter_id": user_id, "acl": acl}
