"""Compile Factory criteria into one parameterised SELECT or COUNT.

The language (every clause ANDed; keys are column names, reference names or dotted paths)::

    name="x"                      equality; None means IS NULL; a DBObject means its id
    name=("ilike", "a%")          an operator from the whitelist in ``_OPERATORS``
    id=[1, 2, None]               a list means ``in`` (None in it also matches NULL)
    **{"owner.ome_name": "ann"}   dotted paths through references and has-many links
    __order=["!created", "owner.ome_name"], __distinct="name", __limit=10, __offset=20

Only declared names reach SQL, always as ``psycopg.sql.Identifier``; every value is bound.

Reference hops become ``LEFT JOIN``s on the target's key (one join per distinct path prefix), so a
missing target reads as NULL and ordering by a path never drops rows. A has-many hop becomes a
correlated ``EXISTS`` subquery instead of a join: a join would repeat the object once per related
row and need a DISTINCT over every column to undo it, while EXISTS returns each matching object
once, keeps COUNT exact and lets the planner use the link table's key index. Conditions under the
same has-many prefix share one EXISTS, so they must hold for the same related row.

The session's ACL is applied at every hop, not only to the class read: a joined row the user may
not read joins as NULL and an EXISTS scope sees only readable rows, so no criterion, order or count
reveals anything behind the ACL (see ``_permissions.visible``). A limited read in key order also
names its candidates, the first rows of each way the user may read them (``_first_readable``), so
that its cost follows what he sees, not the size of the table or where his rows sit in it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from ._permissions import Acl, readable_ways, visible
from .dbobject import Column, DBObject, HasMany, Reference, resolve

__all__ = ["Acl", "check_key", "check_paging", "compile_count", "compile_select", "criterion_columns"]

# The operator whitelist: spelling accepted in criteria -> SQL text. Nothing else reaches SQL.
_OPERATORS: dict[str, str] = {
    "=": "=", "!=": "<>", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=",
    "like": "LIKE", "ilike": "ILIKE", "in": "IN", "not in": "NOT IN", "is": "IS", "is not": "IS NOT",
}  # fmt: skip
_NULL_OPERATORS = {"=": "IS NULL", "is": "IS NULL", "!=": "IS NOT NULL", "<>": "IS NOT NULL", "is not": "IS NOT NULL"}

# Array types for binding ``in`` lists: one typed parameter keeps the statement text stable.
_ARRAY_TYPES: dict[type, str] = {
    int: "int8[]", float: "float8[]", str: "text[]", bool: "bool[]", bytes: "bytea[]",
    datetime.datetime: "timestamptz[]", datetime.date: "date[]", dict: "jsonb[]",
}  # fmt: skip

_SPECIAL_KEYS = ("__order", "__distinct", "__limit", "__offset")
_INT8_MIN, _INT8_MAX = -(2**63), 2**63 - 1

_Fragment = tuple[sql.Composable, list[Any]]


def criterion_columns(cls: type[DBObject] | str) -> list[str]:
    """The names a criteria key (or one hop of a path) may use on ``cls``, for error messages."""
    klass = resolve(cls)
    names = set(klass.__columns__) | set(klass.__references__) | set(klass.__has_many__)
    if _column(klass, "id") is not None:
        names.add("id")
    return sorted(names)


def compile_select(
    cls: type[DBObject] | str, criteria: Mapping[str, Any], acl: Acl | None, *, for_update: bool = False
) -> tuple[sql.Composed, list[Any]]:
    """SELECT every column of ``cls`` (aliased to its name) matching ``criteria``, in a total order."""
    query = _Query(resolve(cls), criteria, acl)
    distinct = query.distinct()
    order = query.order()
    by_key_alone = distinct is None and not order
    if distinct is not None and (not order or order[0][0] != distinct):
        order.insert(0, (distinct, False))  # DISTINCT ON must lead the ORDER BY
    order += [(sql.Identifier("t0", key), False) for key in query.cls.__primary_key__]
    columns = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(sql.Identifier("t0", name), sql.Identifier(name)) for name in query.cls.__columns__
    )
    head = sql.SQL("SELECT DISTINCT ON ({}) ").format(distinct) if distinct is not None else sql.SQL("SELECT ")
    from_clause, params = query.root.from_clause()
    where, where_params = query.where()
    params += where_params
    order_by = sql.SQL(", ").join(sql.SQL("{} DESC").format(expr) if desc else expr for expr, desc in order)
    paging = [(keyword, _non_negative(key, criteria[key]))
              for key, keyword in (("__limit", " LIMIT "), ("__offset", " OFFSET ")) if key in criteria]
    if by_key_alone and "__limit" in criteria and not _names_keys(query.cls, criteria):
        first = _first_readable(query, min(sum(value for _, value in paging), _INT8_MAX))
        if first is not None:
            where = sql.SQL("{} AND {}").format(where, first[0])  # never empty: the ACL is in it
            params += first[1]
    parts = [head, columns, from_clause, where, sql.SQL(" ORDER BY "), order_by]
    for keyword, value in paging:
        parts.append(sql.SQL(keyword) + sql.Placeholder())
        params.append(value)
    if for_update:
        if distinct is not None:
            raise ValueError("__distinct cannot be combined with FOR UPDATE")
        parts.append(sql.SQL(" FOR UPDATE OF {}").format(sql.Identifier("t0")))
    return sql.Composed(parts), params


def compile_count(
    cls: type[DBObject] | str, criteria: Mapping[str, Any], acl: Acl | None
) -> tuple[sql.Composed, list[Any]]:
    """COUNT the objects ``compile_select`` would return without limits (distinct values with __distinct)."""
    query = _Query(resolve(cls), criteria, acl)
    distinct = query.distinct()
    _Query(query.cls, {}, acl).order(criteria.get("__order"))  # validated, then ignored
    check_paging(criteria)
    from_clause, params = query.root.from_clause()
    where, where_params = query.where()
    params += where_params
    body = sql.Composed([from_clause, where])
    if distinct is None:
        return sql.SQL("SELECT count(*)") + body, params
    # A subquery (not count(DISTINCT x)) so that NULL counts as one value, as DISTINCT ON groups it.
    return sql.SQL("SELECT count(*) FROM (SELECT DISTINCT {}{}) AS d").format(distinct, body), params


def _names_keys(cls: type[DBObject], criteria: Mapping[str, Any]) -> bool:
    """Whether ``criteria`` name rows by key (``id=3``, ``id=[3, 4]``): the key's index finds them."""
    keys = {"id", *cls.__primary_key__}
    return any(name in keys and (not isinstance(value, tuple) or _operator(value[0]) in ("=", "in"))
               for name, value in criteria.items())


def _first_readable(query: _Query, count: int) -> _Fragment | None:
    """``t0.id IN (the first ``count`` readable matches)``, for a read ordered by the key alone.

    With a limit and that order, the plain statement leaves the planner two bad plans for a user
    who sees little of a large table: walk the primary key past every row he may not read, or read
    all he may read and sort. Here each way a row is readable (his own rows; each of his groups,
    see ``readable_ways``) gives its first ``count`` matches from an index in key order, so the
    statement reads at most ``count`` rows per way, whatever the table's size and wherever his
    rows sit. The outer statement keeps every condition: this narrows the rows it looks at, never
    what it may return.
    """
    ways = readable_ways(query.cls, query.root.alias, query.acl)
    if ways is None or len(query.cls.__primary_key__) != 1:
        return None
    mine, group_column, group_ids = ways
    t0 = query.root.alias
    key = sql.Identifier(t0, query.cls.__primary_key__[0])
    from_clause, from_params = query.root.from_clause()
    texts, params = query.root.rendered_conditions()

    def first(condition: _Fragment) -> _Fragment:
        where = sql.SQL(" AND ").join([*texts, condition[0]])
        return (sql.SQL("SELECT {} AS acl_id{} WHERE {} ORDER BY {} LIMIT {}").format(
            key, from_clause, where, key, sql.Placeholder()), [*from_params, *params, *condition[1], count])

    in_group = first((sql.SQL("{} = acl_g.id").format(sql.Identifier(t0, group_column)), []))
    arms = [] if mine is None else [first(mine)]
    arms.append((sql.SQL("SELECT acl_c.acl_id FROM (SELECT DISTINCT acl_g.id FROM {} AS acl_g(id)) AS acl_g"
                         " CROSS JOIN LATERAL ({}) AS acl_c").format(group_ids[0], in_group[0]),
                 [*group_ids[1], *in_group[1]]))
    union = sql.SQL(" UNION ").join(sql.SQL("({})").format(text) for text, _ in arms)
    return (sql.SQL("{} IN (SELECT acl_c.acl_id FROM ({}) AS acl_c ORDER BY acl_c.acl_id LIMIT {})").format(
        key, union, sql.Placeholder()), [p for _, values in arms for p in values] + [count])


class _Scope:
    """One FROM clause: the outer query, or the EXISTS subquery behind one has-many hop."""

    def __init__(self, query: _Query, cls: type[DBObject], alias: str, link: sql.Composable | None) -> None:
        self.query, self.cls, self.alias, self.link = query, cls, alias, link
        self.joins: list[_Fragment] = []
        self.conditions: list[_Fragment | _Scope] = []
        self._hops: dict[tuple[str, str], tuple[type[DBObject], str] | _Scope] = {}

    def reference(self, alias: str, ref: Reference) -> tuple[type[DBObject], str]:
        """The alias of ``alias.ref``'s target, joining it on its key the first time the path is seen."""
        hop = self._hops.get((alias, ref.name))
        if not isinstance(hop, tuple):
            target, new = ref.target_class(), self.query.new_alias()
            on = sql.SQL("{} = {}").format(sql.Identifier(new, _key(target)), sql.Identifier(alias, ref.column or ""))
            params: list[Any] = []
            readable = visible(target, new, self.query.acl)
            if readable is not None:  # a row the user may not read joins as NULL
                on = sql.SQL("{} AND {}").format(on, readable[0])
                params = readable[1]
            self.joins.append((sql.SQL(" LEFT JOIN {} AS {} ON {}").format(
                sql.Identifier(target.__table__), sql.Identifier(new), on), params))
            hop = self._hops[(alias, ref.name)] = (target, new)
        return hop

    def has_many(self, alias: str, link: HasMany) -> _Scope:
        """The EXISTS scope of ``alias.link``, created (and ANDed here) the first time it is seen."""
        hop = self._hops.get((alias, link.name))
        if not isinstance(hop, _Scope):
            ref, new = link.reference(), self.query.new_alias()
            on = sql.SQL("{} = {}").format(
                sql.Identifier(new, ref.column or ""), sql.Identifier(alias, _key(ref.target_class()))
            )
            hop = self._hops[(alias, link.name)] = _Scope(self.query, link.target_class(), new, on)
            readable = visible(hop.cls, new, self.query.acl)
            if readable is not None:  # only rows the user may read can match
                hop.conditions.append(readable)
            self.conditions.append(hop)
        return hop

    def from_clause(self) -> tuple[sql.Composed, list[Any]]:
        head = sql.SQL(" FROM {} AS {}").format(sql.Identifier(self.cls.__table__), sql.Identifier(self.alias))
        return sql.Composed([head, *(text for text, _ in self.joins)]), [p for _, params in self.joins for p in params]

    def rendered_conditions(self) -> tuple[list[sql.Composable], list[Any]]:
        texts: list[sql.Composable] = [] if self.link is None else [self.link]
        params: list[Any] = []
        for item in self.conditions:
            text, values = item.exists() if isinstance(item, _Scope) else item
            texts.append(text)
            params += values
        return texts, params

    def exists(self) -> _Fragment:
        from_clause, params = self.from_clause()
        texts, where_params = self.rendered_conditions()
        where = sql.SQL(" AND ").join(texts)
        return sql.SQL("EXISTS (SELECT 1{} WHERE {})").format(from_clause, where), params + where_params


class _Query:
    """The parsed criteria of one statement: scopes, aliases t0, t1, ... and the special keys."""

    def __init__(self, cls: type[DBObject], criteria: Mapping[str, Any], acl: Acl | None) -> None:
        self.cls, self.criteria, self.acl, self._aliases = cls, criteria, acl, 0
        self.root = _Scope(self, cls, self.new_alias(), None)
        for key, value in criteria.items():
            if not isinstance(key, str):
                raise TypeError(f"criteria keys are names, not {key!r}")
            if key.startswith("__"):
                if key not in _SPECIAL_KEYS:
                    raise ValueError(f"unknown criteria option {key!r}; use one of {', '.join(_SPECIAL_KEYS)}")
                continue
            scope, alias, owner, column = self.path(key, has_many=True)
            scope.conditions.append(_condition(sql.Identifier(alias, column.column or ""), owner, column, value))

    def new_alias(self) -> str:
        self._aliases += 1
        return f"t{self._aliases - 1}"

    def path(self, key: str, *, has_many: bool) -> tuple[_Scope, str, type[DBObject], Column]:
        """Walk ``a.b.c`` from t0: every hop but the last is a reference or has-many link."""
        scope, cls, alias = self.root, self.cls, self.root.alias
        *hops, last = key.split(".")
        for hop in hops:
            if hop in cls.__references__:
                cls, alias = scope.reference(alias, cls.__references__[hop])
            elif hop in cls.__has_many__:
                if not has_many:
                    raise ValueError(f"{key!r} goes through the has-many link {cls.__name__}.{hop}; "
                                     "it can filter but not order or select distinct values")  # fmt: skip
                scope = scope.has_many(alias, cls.__has_many__[hop])
                cls, alias = scope.cls, scope.alias
            else:
                raise _unknown(cls, hop, key, "reference or has-many link")
        column = _column(cls, last)
        if column is None:
            if last in cls.__private__:
                raise ValueError(f"{cls.__name__}.{last} is private: it cannot be used in criteria, "
                                 f"__order or __distinct (criteria key {key!r})")
            raise _unknown(cls, last, key, "column or reference")
        return scope, alias, cls, column

    def expression(self, key: Any, option: str) -> sql.Composable:
        if not isinstance(key, str):
            raise TypeError(f"{option} takes a column name or path, not {key!r}")
        _, alias, _, column = self.path(key, has_many=False)
        return sql.Identifier(alias, column.column or "")

    def distinct(self) -> sql.Composable | None:
        key = self.criteria.get("__distinct")
        return None if key is None else self.expression(key, "__distinct")

    def order(self, value: Any = None) -> list[tuple[sql.Composable, bool]]:
        """``__order`` as (expression, descending) pairs; ``"!name"`` sorts descending."""
        value = self.criteria.get("__order") if value is None else value
        if value is None or isinstance(value, str):
            items = [] if value is None else [value]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise TypeError(f"__order takes a name or a list of names, not {value!r}")
        order = []
        for item in items:
            descending = isinstance(item, str) and item.startswith("!")
            order.append((self.expression(item[1:] if descending else item, "__order"), descending))
        return order

    def where(self) -> tuple[sql.Composable, list[Any]]:
        texts, params = self.root.rendered_conditions()
        readable = visible(self.cls, self.root.alias, self.acl)
        if readable is not None:
            texts.append(readable[0])
            params += readable[1]
        if not texts:
            return sql.SQL(""), params
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(texts), params


def _operator(op: Any) -> str:
    """The single gate for operators: a whitelisted spelling (any case or spacing) or ValueError."""
    canonical = " ".join(op.lower().split()) if isinstance(op, str) else None
    if canonical not in _OPERATORS:
        allowed = " ".join(repr(name) for name in _OPERATORS)
        raise ValueError(f"unknown criteria operator {op!r}; use one of {allowed}")
    return canonical


def _condition(expr: sql.Composable, owner: type[DBObject], column: Column, raw: Any) -> _Fragment:
    """One clause: ``value``, ``[values]`` (in) or ``(op, value)`` against one column expression."""
    if isinstance(raw, tuple):
        if len(raw) != 2:
            raise ValueError(f"{owner.__name__}.{column.name}: use (operator, value) or a list for 'in', not {raw!r}")
        op, value = _operator(raw[0]), raw[1]
    else:
        op, value = ("in" if isinstance(raw, (list, set, frozenset)) else "="), raw
    if op in ("in", "not in"):
        return _membership(expr, owner, column, op, value)
    if value is None:
        if op not in _NULL_OPERATORS:
            raise ValueError(f"{owner.__name__}.{column.name}: {op!r} cannot compare with None; use 'is' or 'is not'")
        return sql.SQL("{} {}").format(expr, sql.SQL(_NULL_OPERATORS[op])), []
    if op in ("is", "is not"):
        raise ValueError(f"{owner.__name__}.{column.name}: {op!r} only takes None")
    if op in ("like", "ilike") and column.type is not str:
        raise TypeError(f"{owner.__name__}.{column.name} is {column.type.__name__}; {op!r} needs a text column")
    value = _value(owner, column, value)
    return sql.SQL("{} {} {}").format(expr, sql.SQL(_OPERATORS[op]), sql.Placeholder()), [value]


def _membership(expr: sql.Composable, owner: type[DBObject], column: Column, op: str, value: Any) -> _Fragment:
    """``in``: any listed value (None adds IS NULL); ``not in``: none of them, as SQL, never NULL rows."""
    if not isinstance(value, (list, tuple, set, frozenset)):
        kind = type(value).__name__
        raise TypeError(f"{owner.__name__}.{column.name}: {op!r} takes a list, tuple or set, not {kind}")
    items = [_value(owner, column, item) for item in value if item is not None]
    with_null = len(items) < len(value)
    array = sql.SQL("{}::{}").format(sql.Placeholder(), sql.SQL(_ARRAY_TYPES[column.type]))
    if op == "not in":
        if items:
            return sql.SQL("{} <> ALL({})").format(expr, array), [items]
        return (sql.SQL("{} IS NOT NULL").format(expr) if with_null else sql.SQL("TRUE")), []
    texts: list[sql.Composable] = [sql.SQL("{} = ANY({})").format(expr, array)] if items else []
    if with_null:
        texts.append(sql.SQL("{} IS NULL").format(expr))
    if not texts:
        return sql.SQL("FALSE"), []
    return sql.SQL("({})").format(sql.SQL(" OR ").join(texts)), [items] if items else []


def _value(owner: type[DBObject], column: Column, value: Any) -> Any:
    """``value`` checked against the column's declared type and made ready to bind."""
    if isinstance(value, DBObject):
        target: type[DBObject] | None = None
        if isinstance(column, Reference):
            target = column.target_class()
        elif column.column in owner.__primary_key__:
            target = owner
        if target is None or not isinstance(value, target):
            raise TypeError(f"{owner.__name__}.{column.name} does not refer to {type(value).__name__} objects")
        value = value.primary_key()[0]
    value = column.check(owner.__name__, value)
    if column.type is int and not _INT8_MIN <= value <= _INT8_MAX:
        raise ValueError(f"{owner.__name__}.{column.name}: {value} is outside the 64-bit integer range")
    if column.type is float:
        return float(value)
    if column.type is bytes:
        return bytes(value)
    return Jsonb(value) if column.type is dict else value


def check_key(cls: type[DBObject], id: Any) -> tuple[Any, ...]:
    """The primary key ``id`` of ``cls`` as a tuple of checked values (a tuple in, for composite keys).

    Only values: an operator tuple, a list, None, a bool or a value of the wrong type is refused
    here, before any SQL, instead of turning into criteria or reaching the driver.
    """
    names = cls.__primary_key__
    given = id if isinstance(id, tuple) else (id,)
    if len(given) != len(names):
        raise ValueError(f"{cls.__name__} has primary key {names}, got {id!r}")
    key = []
    for name, value in zip(names, given, strict=True):
        if value is None or isinstance(value, (tuple, list, set, frozenset, dict)):
            raise TypeError(f"{cls.__name__}.{name}: load_object takes a key value, not {value!r:.60}")
        checked = _value(cls, cls.__columns__[name], value)
        key.append(checked if isinstance(value, DBObject) else value)
    return tuple(key)


def _column(cls: type[DBObject], name: str) -> Column | None:
    """A column by column name or reference name; ``id`` means the (single-column) primary key."""
    if name == "id" and "id" not in cls.__columns__ and len(cls.__primary_key__) == 1:
        name = cls.__primary_key__[0]
    return cls.__columns__.get(name) or cls.__references__.get(name)


def _key(cls: type[DBObject]) -> str:
    """The column a reference to ``cls`` points at."""
    if len(cls.__primary_key__) != 1:
        raise ValueError(f"{cls.__name__} has a composite primary key; it cannot be the target of a path")
    return cls.__primary_key__[0]


def check_paging(criteria: Mapping[str, Any]) -> None:
    """``__limit`` and ``__offset``, where given, are ints PostgreSQL can take (see ``_non_negative``)."""
    for key in ("__limit", "__offset"):
        if key in criteria:
            _non_negative(key, criteria[key])


def _non_negative(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} takes a non-negative int, not {value!r}")
    if not 0 <= value <= _INT8_MAX:
        raise ValueError(f"{key} takes an int from 0 to {_INT8_MAX}, not {value}")
    return value


def _unknown(cls: type[DBObject], name: str, key: str, wanted: str) -> ValueError:
    return ValueError(
        f"{cls.__name__} has no {wanted} {name!r} (criteria key {key!r}); "
        f"available on {cls.__name__}: {', '.join(criterion_columns(cls))}"
    )
