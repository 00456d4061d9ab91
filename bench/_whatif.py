"""What-if contenders for the resume measurements: not the library, but where its time goes.

``statement``: the library's own resume statement on a plain psycopg connection, so the rest of
``create_session`` + ``idle`` (Python) can be told apart from the server's work. Run once
prepared (what psycopg does after 5 executions) and once unprepared: psycopg forgets its
prepared statements at every ``rollback()``, and ``Session.idle()`` rolls back every request
that ran a query, so in a web worker the statement is parsed and planned on every request.

``function``: the same statement inside a PL/pgSQL function. The server caches the plans of a
function's statements per connection whatever the client does, so an unprepared call does not
plan the big statement again (and nothing depends on client-side prepared statements, which
pgbouncer in transaction mode cannot keep).

``row read``: only the indexed lookup of the session row, nothing else: the floor of any
resume that reads its row, to show how far above a bare round trip even that is.

``throttled``: the statement sliding the idle expiry only when the stored ``last_access`` is
older than a minute. A resume within that minute writes nothing, so it commits without a WAL
flush and leaves no dead row version or new index entries behind; the price is an idle timeout
exact to a minute.

All are built from the library's SQL pieces so they follow them; ``statements()`` is empty
(and the what-ifs are skipped) if those pieces are renamed.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from ome_session import _keys

THROTTLE_S = 60
# The least any resume must do: find its row by key digest through the unique index.
ROW_READ = "SELECT s.id, s.experimenter_id, s.last_access FROM ome_sessions s WHERE s.key_digest = %(digest)s"
FUNCTIONS = {"statement": "bench_resume", "throttled": "bench_resume_throttled"}
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
_SQL_TYPES = {bytes: "bytea", bool: "boolean", int: "bigint", str: "text"}


def statements() -> dict[str, str]:
    """``statement`` (the library's) and ``throttled``, or {} if the library's SQL pieces moved."""
    try:
        from ome_session.backends.local import _sql
    except ImportError:
        return {}
    cfg_with, cfg_join = f"{_sql.CFG},", "CROSS JOIN cfg"  # the configuration read inside the statement
    throttled = f"""
WITH {cfg_with} hit AS (
    SELECT s.id, s.last_access, ({_sql._LIVE}) AS live
    FROM ome_sessions s JOIN experimenters e ON e.id = s.experimenter_id {cfg_join}
    WHERE s.key_digest = %(digest)s
), dead AS (
    UPDATE ome_sessions s SET closed_at = now()
    FROM hit WHERE s.id = hit.id AND NOT hit.live AND s.closed_at IS NULL
), touched AS (
    UPDATE ome_sessions s SET last_access = greatest(s.last_access, clock_timestamp())
    FROM hit WHERE s.id = hit.id AND hit.live
      AND hit.last_access < now() - {THROTTLE_S} * interval '1 second'
)
SELECT {_sql.LOGIN_COLUMNS}, true AS live, false AS stale
FROM hit JOIN ome_sessions s ON s.id = hit.id AND hit.live
JOIN experimenters e ON e.id = s.experimenter_id {cfg_join}
"""
    return {"statement": _sql.RESUME, "throttled": throttled}


def params(keys: list[str]) -> list[dict[str, Any]]:
    """The parameters the library's resume passes, for each key."""
    from ome_session.backends.local import _backend, _sql

    defaults: dict[str, Any] = _sql.config_defaults()
    defaults["touch_every"] = _backend._RESUME_TOUCH_EVERY  # the library slides last_access at most this often
    return [{"digest": _keys.digest(k), **defaults} for k in keys]


def _names(statement: str) -> list[str]:
    return list(dict.fromkeys(_PLACEHOLDER.findall(statement)))


def call(kind: str, statement: str | None = None) -> str:
    """The statement that calls the function wrapping ``kind`` (parameters by the same names)."""
    names = _names(statement if statement is not None else statements()[kind])
    return f"SELECT * FROM {FUNCTIONS[kind]}({', '.join(f'%({n})s' for n in names)})"


def install_functions(dsn: str, keys: list[str]) -> None:
    """Create (or replace) a PL/pgSQL function wrapping each what-if statement in ``dsn``.

    Its result columns are read from the statement itself (run once, rolled back), so the
    function follows the library's statement as it changes.
    """
    values = params(keys)[0]
    with psycopg.connect(dsn) as conn:
        for kind, statement in statements().items():
            cursor = conn.execute(statement, values)  # type: ignore[call-overload]
            oids = [column.type_code for column in cursor.description or ()]
            conn.rollback()
            types = [conn.execute("SELECT format_type(%s, NULL)", (oid,)).fetchone()[0]  # type: ignore[index]
                     for oid in oids]
            names = _names(statement)
            body = _PLACEHOLDER.sub(lambda m: f"p_{m.group(1)}", statement)
            arguments = ", ".join(f"p_{n} {_SQL_TYPES[type(values[n])]}" for n in names)
            columns = ", ".join(f"r_{i} {t}" for i, t in enumerate(types))
            conn.execute(sql.SQL(
                f"CREATE OR REPLACE FUNCTION {FUNCTIONS[kind]}({arguments}) RETURNS TABLE ({columns})"
                f" LANGUAGE plpgsql AS $fn$ BEGIN RETURN QUERY {body}; END $fn$"))  # type: ignore[arg-type]
            conn.commit()


def run(conn: psycopg.Connection[Any], statement: str, values: dict[str, Any]) -> None:
    """One resume on ``conn`` (autocommit: the statement commits by itself, as the library's does)."""
    if conn.execute(statement, values).fetchone() is None:  # type: ignore[call-overload]
        raise RuntimeError("the what-if resume found no live session")
