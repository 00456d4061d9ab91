"""The Factory: one database connection per session, and every read and write of DBObjects.

Reads go through the session's ACL and every write through the permission gate (``_permissions``);
a Factory made directly from the database credentials, or by a bootstrap session, is trusted code
and passes both. Objects are kept in an identity cache (the same row loads as the same object) that
is cleared on rollback and on idle, so no stale object outlives an aborted transaction or leaks to
the next user of the process.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

from psycopg import sql

from . import _permissions, _query
from ._connection import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PREPARE_THRESHOLD, Connection
from ._lifecycle import FILES
from ._permissions import ROW, TRUSTED, Acl, Principal
from ._pool import DEFAULT_POOL_TIMEOUT, pool_for
from .dbobject import DBObject, private_column_message, resolve
from .errors import SessionError

if TYPE_CHECKING:
    import psycopg

    from ._lifecycle import State
    from .configuration import Configuration

ClassRef = type[DBObject] | str

# LOCK TABLE modes PostgreSQL knows; anything else never reaches SQL.
_LOCK_MODES = frozenset({
    "ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE",
    "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE",
})

_ITER_BATCH = 2000
# Sets the planner's cursor_tuple_fraction for the transaction and returns what it was.
_CURSOR_FRACTION = sql.SQL("SELECT current_setting('cursor_tuple_fraction'), "
                           "set_config('cursor_tuple_fraction', %s, true)")

# The savepoints of nested transaction() blocks, named ome_session_<depth>.
_SAVEPOINT = sql.SQL("SAVEPOINT {}")
_RELEASE = sql.SQL("RELEASE SAVEPOINT {}")
_ROLLBACK_TO = sql.SQL("ROLLBACK TO SAVEPOINT {}")


class _Owner(Protocol):
    """Whoever decides whether a Factory may be used: its session (``Session._check``)."""

    def _check(self) -> None: ...

    def _entered(self, allowed: frozenset[State]) -> AbstractContextManager[None]: ...

    def _check_may_end_transaction(self, what: str) -> None: ...


class Factory:
    """Database access for one session. Create it through a ``SessionManager``, not directly.

    A Factory has no state of its own to say whether it may be used: a session's Factory asks its
    session (``Session._check``) on every use; one made directly from a DSN is trusted code and
    always may, until ``close()``.
    """

    def __init__(self, dsn: str, *, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
                 prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD, pool_size: int | None = None,
                 pool_timeout: float = DEFAULT_POOL_TIMEOUT) -> None:
        # With a pool_size (thread scope), the connection is borrowed from the process's pool for
        # each unit of work and given back at its end.
        pool = None if pool_size is None else pool_for(dsn, connect_timeout=connect_timeout,
                                                       prepare_threshold=prepare_threshold, size=pool_size,
                                                       timeout=pool_timeout)
        self._db = Connection(dsn, connect_timeout=connect_timeout, prepare_threshold=prepare_threshold, pool=pool)
        self._session: _Owner | None = None
        self._cache: weakref.WeakValueDictionary[tuple[Any, ...], DBObject] = weakref.WeakValueDictionary()
        self._configuration: Configuration | None = None
        # Who acts: trusted code until a login binds a user (see Session).
        self.principal: Principal = TRUSTED
        # The group new objects of owned classes go to (the user's default group).
        self.group_id: int | None = None
        self._cursor_seq = 0
        # What was read on a server session that is gone (the connection broke and was replaced)
        # must not be served as if it were still true.
        self._db.on_replaced(self._cache.clear)

    # -- connection and transaction ------------------------------------------------------------

    def obtain_dbh(self) -> psycopg.Connection[Any]:
        """The psycopg connection (autocommit off). Do not close it: the session owns it."""
        self._check()
        return self._db.raw

    def commit_transaction(self) -> None:
        self._check_may_end("commit_transaction()")
        self._commit()

    def _commit(self) -> None:
        self._db.commit()
        if self._configuration is not None:
            self._configuration._end_of_transaction(committed=True)

    def rollback_transaction(self) -> None:
        """Roll back; objects loaded in the transaction are dropped from the identity cache."""
        self._check_may_end("rollback_transaction()")
        self._rollback()

    def _rollback(self) -> None:
        if len(self._cache):  # clearing an empty WeakValueDictionary still costs an exception
            self._cache.clear()
        self._db.rollback()
        if self._configuration is not None:
            self._configuration._end_of_transaction(committed=False)

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    def _check(self) -> None:
        """The one guard of every use: the session's state decides (see ``Session._check``)."""
        if self._session is not None:
            self._session._check()

    def _entered(self) -> AbstractContextManager[None]:
        """Around a read that an idle session allows too (the configuration): its session checks
        the caller and keeps other threads' logins off the connection meanwhile."""
        if self._session is None:
            return nullcontext()
        return self._session._entered(FILES)

    def _check_may_end(self, what: str) -> None:
        if self._session is not None:
            self._session._check_may_end_transaction(what)

    # -- the session's unit of work (called by the session, through its backend) -------------

    def _attach(self, session: _Owner) -> None:
        """``session`` owns this Factory from now on: its state decides what the Factory may do."""
        self._session = session

    def _begin(self, principal: Principal, group_id: int | None) -> None:
        """A unit of work begins for ``principal``: nothing of the previous user is kept."""
        if len(self._cache):  # clearing an empty WeakValueDictionary still costs an exception
            self._cache.clear()
        self.principal = principal
        self.group_id = principal.default_group(group_id)

    def _end(self) -> None:
        """The unit of work ended: roll back (no round trip when nothing is open), drop the caches,
        give a borrowed connection back to its pool."""
        self._rollback()
        self._db.release()

    def _enter_block(self, depth: int) -> None:
        """A ``transaction()`` block begins; nested ones (``depth`` > 0) make a savepoint."""
        if depth:
            self._savepoint(_SAVEPOINT, depth)

    def _leave_block(self, depth: int, *, commit: bool) -> None:
        """The block at ``depth`` ends: commit (release its savepoint) or roll back (to it)."""
        if commit:
            if depth:
                self._savepoint(_RELEASE, depth)
            else:
                self._commit()
            return
        self._cache.clear()
        if not self._db.usable:
            return  # the transaction went with the connection: nothing left to roll back
        if depth:
            self._savepoint(_ROLLBACK_TO, depth)
        else:
            self._rollback()

    def _savepoint(self, statement: sql.SQL, depth: int) -> None:
        with self._db.errors():
            self._db.raw.execute(statement.format(sql.Identifier(f"ome_session_{depth}")))

    def _has_uncommitted_changes(self) -> bool:
        """Whether the open transaction wrote anything (a read-only one may end unnoticed)."""
        if not self._db.in_transaction:
            return False
        with self._db.errors():
            row = self._db.raw.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL").fetchone()
        return bool(row and row[0])

    @property
    def acl(self) -> Acl | None:
        """What the session may read (None: everything)."""
        return self.principal.acl()

    @property
    def owner_id(self) -> int | None:
        """The owner of new objects of owned classes: the session's user."""
        return self.principal.user_id

    @property
    def _connection(self) -> Connection:
        return self._db

    def close(self) -> None:
        """Roll back and close, for good (in a forked child nothing reaches the parent's backend)."""
        self._cache.clear()
        self._db.close()

    def forget(self) -> None:
        """Drop the connection without closing it (whoever holds ``obtain_dbh()`` keeps it)."""
        self._cache.clear()
        self._db.discard()

    @property
    def configuration(self) -> Configuration:
        from .configuration import Configuration

        if self._configuration is None:
            self._configuration = Configuration(self)
        return self._configuration

    # -- reads -----------------------------------------------------------------------------------

    def load_object(self, cls: ClassRef, id: Any) -> DBObject | None:
        """The object with primary key ``id`` (a tuple for composite keys), or None."""
        klass = resolve(cls)
        key = _query.check_key(klass, id)
        cached = self._cache.get((klass, *key))
        if cached is not None:
            return cached
        return self.find_object(klass, **dict(zip(klass.__primary_key__, key, strict=True)))

    def find_objects(self, cls: ClassRef, **criteria: Any) -> list[DBObject]:
        """Every object matching ``criteria`` (see the criteria language in the README)."""
        klass = self._readable(cls)
        query, params = _query.compile_select(klass, criteria, self.acl)
        rows = self._execute(query, params).fetchall()
        return [self._materialise(klass, row) for row in rows]

    def find_object(self, cls: ClassRef, **criteria: Any) -> DBObject | None:
        """The first match in a deterministic order (``__order``, then the primary key), or None."""
        _query.check_paging(criteria)  # replaced below, but bad input is still refused
        criteria["__limit"] = 1
        found = self.find_objects(cls, **criteria)
        return found[0] if found else None

    def iter_objects(self, cls: ClassRef, **criteria: Any) -> Iterator[DBObject]:
        """Stream matches through a server-side cursor: constant memory however many rows match.

        Objects streamed this way are not kept in the identity cache. Consume the iterator inside
        the transaction that started it.
        """
        klass = self._readable(cls)
        query, params = _query.compile_select(klass, criteria, self.acl)
        conn = self.obtain_dbh()
        self._cursor_seq += 1
        names = list(klass.__columns__)
        cur = conn.cursor(name=f"ome_iter_{self._cursor_seq}")
        try:
            with self._db.errors():
                # A cursor is planned for its first tenth by default: for a user who sees little of
                # a large table, a walk of the primary key past everything he may not read. Planned
                # for all of its rows, it reads the rows he may read and sorts them.
                row = conn.execute(_CURSOR_FRACTION, ["1"]).fetchone()
                cur.execute(query, params)
                conn.execute(_CURSOR_FRACTION, [row[0] if row else "0.1"])
            while True:
                # Each batch is a round trip: asked for only while the unit of work is still this
                # one's (not idled, not another thread's), like every other use of the Factory.
                self._check()
                with self._db.errors():
                    rows = cur.fetchmany(_ITER_BATCH)
                if not rows:
                    break
                for row in rows:
                    yield klass._from_row(self, dict(zip(names, row, strict=True)))
        finally:
            self._close_cursor(cur)

    def _close_cursor(self, cur: psycopg.ServerCursor[Any]) -> None:
        """Close a server-side cursor, unless its unit of work is over (the cursor went with its
        transaction, and the connection may be another thread's by now: nothing is sent)."""
        try:
            self._check()
        except SessionError:
            cur._closed = True  # nothing to close on the server; and no warning when collected
            return
        with self._db.errors():
            cur.close()

    def count_objects(self, cls: ClassRef, **criteria: Any) -> int:
        query, params = _query.compile_count(self._readable(cls), criteria, self.acl)
        row = self._execute(query, params).fetchone()
        return int(row[0]) if row else 0

    def object_exists(self, cls: ClassRef, **criteria: Any) -> bool:
        return self.find_object(cls, **criteria) is not None

    # -- writes ----------------------------------------------------------------------------------

    def new_object(self, cls: ClassRef, **values: Any) -> DBObject:
        """INSERT a row now (in the current transaction) and return its object.

        Owned classes get the session's user and group unless given. Values may be objects for
        references, by reference name (``owner=user``) or column name (``owner_id=3``).
        """
        klass = resolve(cls)
        row = self._checked_values(klass, values)
        if klass.__owned__:
            row.setdefault("owner_id", self.owner_id)
            row.setdefault("group_id", self.group_id)
        condition = _permissions.may_write(self.principal, "create", klass, row)
        table = sql.Identifier(klass.__table__)
        returning = sql.SQL(", ").join(map(sql.Identifier, klass.__columns__))
        names = sql.SQL(", ").join(map(sql.Identifier, row))
        values_sql = sql.SQL(", ").join(sql.Placeholder() * len(row))
        params = list(row.values())
        if condition is not None and row:
            # Decided by the stored rows (a leader's member, the ends of a link): inserted only if
            # the condition holds, in the same statement.
            query = sql.SQL("INSERT INTO {} ({}) SELECT {} WHERE {} RETURNING {}").format(
                table, names, values_sql, condition[0], returning)
            params += condition[1]
        elif condition is not None:
            raise _permissions.refusal(self.principal, "create", klass)
        elif row:
            query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(table, names, values_sql, returning)
        else:
            query = sql.SQL("INSERT INTO {} DEFAULT VALUES RETURNING {}").format(table, returning)
        result = self._execute(query, params).fetchone()
        if result is None:
            raise _permissions.refusal(self.principal, "create", klass, detail=_NOT_ALLOWED_HERE)
        return self._materialise(klass, result)

    def maybe_new_object(self, cls: ClassRef, **values: Any) -> DBObject:
        """The first object with exactly these values, or a new one with them."""
        found = self.find_object(cls, **values)
        return found if found is not None else self.new_object(cls, **values)

    def lock_table(self, cls: ClassRef, mode: str = "EXCLUSIVE") -> None:
        """LOCK TABLE until the transaction ends; ``mode`` is one of PostgreSQL's lock modes."""
        normal = " ".join(str(mode).upper().split())
        if normal not in _LOCK_MODES:
            raise ValueError(f"unknown lock mode {mode!r}; use one of {sorted(_LOCK_MODES)}")
        klass = resolve(cls)
        _permissions.may_lock(self.principal, klass)
        self._execute(sql.SQL("LOCK TABLE {} IN " + normal + " MODE").format(sql.Identifier(klass.__table__)), [])

    def _store(self, obj: DBObject) -> None:
        klass = type(obj)
        changed = {c: obj._values[c] for c in obj._dirty if c not in klass.__primary_key__}
        if not changed:
            return
        # Only declared, public columns, each checked again: the object may have been tampered with.
        changed = self._checked_values(klass, changed)
        key = _query.check_key(klass, obj.primary_key())
        condition = _permissions.may_write(self.principal, "update", klass, changed, key)
        where, params = _guarded(klass, key, condition)
        query = sql.SQL("UPDATE {} AS {} SET {} WHERE {}").format(
            sql.Identifier(klass.__table__), sql.Identifier(ROW),
            sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in changed), where,
        )
        if not self._execute(query, [*changed.values(), *params]).rowcount and condition is not None:
            raise _permissions.refusal(self.principal, "update", klass, detail=_NOT_ALLOWED_HERE)
        obj._dirty.clear()

    def _delete(self, obj: DBObject) -> None:
        klass = type(obj)
        key = _query.check_key(klass, obj.primary_key())
        condition = _permissions.may_write(self.principal, "delete", klass, {}, key)
        where, params = _guarded(klass, key, condition)
        query = sql.SQL("DELETE FROM {} AS {} WHERE {}").format(sql.Identifier(klass.__table__), sql.Identifier(ROW),
                                                                where)
        if not self._execute(query, params).rowcount and condition is not None:
            raise _permissions.refusal(self.principal, "delete", klass, detail=self._why_not_deleted(klass, key))
        self._cache.pop((klass, *key), None)

    def _why_not_deleted(self, klass: type[DBObject], key: tuple[Any, ...]) -> str:
        """The refusal's reason; a second look only for the case a user can act on, and only at
        what every user may read (a user's default group), so it reveals nothing hidden."""
        if _permissions.kind_of(klass) == _permissions.MEMBERSHIP:
            row = self._execute(sql.SQL("SELECT group_id = %s FROM experimenters WHERE id = %s"),
                                [key[1], key[0]]).fetchone()
            if row and row[0]:
                return "it is the user's default group: change the default group first"
        return _NOT_ALLOWED_HERE

    def _readable(self, cls: ClassRef) -> type[DBObject]:
        klass = resolve(cls)
        _permissions.may_read(self.principal, klass)
        return klass

    # -- helpers ---------------------------------------------------------------------------------

    def _execute(self, query: sql.SQL | sql.Composed, params: list[Any]) -> psycopg.Cursor[Any]:
        conn = self.obtain_dbh()
        with self._db.errors():
            cursor: psycopg.Cursor[Any] = conn.execute(query, params)
        return cursor

    def _materialise(self, klass: type[DBObject], row: tuple[Any, ...]) -> DBObject:
        """One object per row identity: a cached object is refreshed from the row, not replaced."""
        values = dict(zip(klass.__columns__, row, strict=True))
        key = (klass, *(values.get(c) for c in klass.__primary_key__))
        obj = self._cache.get(key)
        if obj is None:
            obj = klass._from_row(self, values)
            self._cache[key] = obj
        else:
            pending = {c: obj._values[c] for c in obj._dirty}
            obj._values.update(values)
            obj._values.update(pending)  # unsaved changes win over what the database holds
        return obj

    @staticmethod
    def _checked_values(klass: type[DBObject], values: Mapping[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for name, given in values.items():
            value = given
            ref = klass.__references__.get(name)
            column = klass.__columns__.get(ref.column if ref else name)  # type: ignore[arg-type]
            if column is None and name in klass.__private__:
                raise ValueError(private_column_message(klass.__name__, name))
            if column is None:
                raise ValueError(
                    f"{klass.__name__} has no column {name!r}; columns: {', '.join(klass.__columns__)}"
                )
            if isinstance(value, DBObject):
                if ref is None or not isinstance(value, ref.target_class()):
                    raise TypeError(f"{klass.__name__}.{name} cannot take a {type(value).__name__}")
                value = value.id
            row[column.column or name] = column.check(klass.__name__, value)
        return row


_NOT_ALLOWED_HERE = "not theirs to change, or it no longer exists"


def _guarded(klass: type[DBObject], key: tuple[Any, ...],
             condition: _permissions.Fragment | None) -> tuple[sql.Composable, list[Any]]:
    """WHERE the row has this key and (when the gate asks for one) the condition holds."""
    texts: list[sql.Composable] = [sql.SQL("{} = %s").format(sql.Identifier(ROW, c)) for c in klass.__primary_key__]
    params = list(key)
    if condition is not None:
        texts.append(condition[0])
        params += condition[1]
    return sql.SQL(" AND ").join(texts), params
