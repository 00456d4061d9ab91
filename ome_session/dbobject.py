"""Declarative database classes: a table, its typed columns, references and one-to-many links.

A class declares what it maps; the Factory does every read and write. Users of the library declare
their own tables the same way the core classes in ``model.py`` are declared::

    class Sample(DBObject):
        __table__ = "samples"
        name = Column(str, nullable=False)
        weight = Column(float)
        owner = Reference("Experimenter")   # column owner_id, like the original
        group = Reference("Group")

A class with both ``owner`` and ``group`` references is *owned*: the Factory filters its reads by
the session's ACL and fills those two in from the session on ``new_object``. A class declaring
``__link__ = ("a", "b")`` names two references whose objects it links: a link row is visible only
when both ends are, and only those who may change both ends may make or remove one.

A column declared ``private=True`` (``password_hash``) is never loaded into objects, never usable in
criteria, ordering or ``__distinct``, and never written through the Factory: it has its own API.
"""

from __future__ import annotations

import datetime
import math
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .factory import Factory

_MISSING: Any = object()

# Which Python values a column of each declared type accepts (bool is not an int here).
_ACCEPTS: dict[type, tuple[type, ...]] = {
    int: (int,),
    float: (float, int),
    str: (str,),
    bool: (bool,),
    datetime.datetime: (datetime.datetime,),
    datetime.date: (datetime.date,),
    dict: (dict, list, str, int, float, bool),
    bytes: (bytes, bytearray, memoryview),
}


class Column:
    """A plain column. ``type`` is one of int, float, str, bool, datetime, date, dict (jsonb), bytes.

    ``private=True`` keeps the column out of everything the Factory reads and writes (see the
    module docstring); trusted code reaches it with SQL.
    """

    def __init__(
        self, type: type = str, *, nullable: bool = True, default: Any = _MISSING, column: str | None = None,
        private: bool = False,
    ) -> None:
        if type not in _ACCEPTS:
            raise TypeError(f"unsupported column type {type!r}; use one of {sorted(t.__name__ for t in _ACCEPTS)}")
        self.type = type
        self.nullable = nullable
        self.default = default
        self.column = column
        self.private = private
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.column = self.column or name

    def check(self, cls_name: str, value: Any) -> Any:
        """Return ``value`` if this column can hold it, else raise a TypeError naming the column."""
        if value is None:
            if not self.nullable:
                raise TypeError(f"{cls_name}.{self.name} cannot be None")
            return None
        if isinstance(value, bool) and self.type in (int, float):
            raise TypeError(f"{cls_name}.{self.name} takes {self.type.__name__}, not bool")
        if not isinstance(value, _ACCEPTS[self.type]):
            raise TypeError(
                f"{cls_name}.{self.name} takes {self.type.__name__}, not {type(value).__name__} ({value!r:.40})"
            )
        if isinstance(value, str):
            check_text(value, f"{cls_name}.{self.name}")
        elif self.type is dict:
            check_json(value, f"{cls_name}.{self.name}")
        return value

    def __get__(self, obj: DBObject | None, owner: type) -> Any:
        if obj is None:
            return self
        if self.private:
            raise AttributeError(private_column_message(owner.__name__, self.name))
        return obj._values.get(self.name)

    def __set__(self, obj: DBObject, value: Any) -> None:
        if self.private:
            raise AttributeError(private_column_message(type(obj).__name__, self.name))
        obj._set(self.name, self.check(type(obj).__name__, value))


def private_column_message(cls_name: str, name: str) -> str:
    return (f"{cls_name}.{name} is private: it is never loaded, compared or written through the Factory"
            + (" (use ome_session.admin.set_password)" if name == "password_hash" else ""))


def check_text(value: str, where: str) -> str:
    """``value`` if PostgreSQL text can hold it: no NUL, and no lone surrogate (which cannot be
    encoded at all and would otherwise surface as a driver error with the transaction aborted)."""
    if "\x00" in value:
        raise ValueError(f"{where}: text cannot contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: text cannot contain lone surrogates ({value!r:.40})") from None
    return value


def check_json(value: Any, where: str) -> Any:
    """``value`` if jsonb can hold it: text as in ``check_text``, string keys, finite numbers."""
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: JSON has no {value!r}")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: JSON object keys are text, not {type(key).__name__}")
            check_text(key, where)
            check_json(item, where)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_json(item, where)
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise TypeError(f"{where}: {type(value).__name__} is not a JSON value")
    return value


class Reference(Column):
    """A many-to-one reference; stored in ``<name>_id`` (as in the original), read as an object."""

    def __init__(self, target: str, *, nullable: bool = True, column: str | None = None) -> None:
        super().__init__(int, nullable=nullable, column=column)
        self.target = target

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.column = self.column or f"{name}_id"

    def target_class(self) -> type[DBObject]:
        return resolve(self.target)

    def __get__(self, obj: DBObject | None, owner: type) -> Any:
        if obj is None:
            return self
        ref_id = obj._values.get(self.column or "")
        if ref_id is None:
            return None
        return obj._require_factory().load_object(self.target_class(), ref_id)

    def __set__(self, obj: DBObject, value: Any) -> None:
        if isinstance(value, DBObject):
            if not isinstance(value, self.target_class()):
                raise TypeError(f"{type(obj).__name__}.{self.name} refers to {self.target}, not {type(value).__name__}")
            value = value.id
        obj._set(self.column or "", Column.check(self, type(obj).__name__, value))


class HasMany:
    """The other side of a Reference: ``project.dataset_links`` lists the rows pointing here."""

    def __init__(self, target: str, via: str) -> None:
        self.target = target
        self.via = via
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def target_class(self) -> type[DBObject]:
        return resolve(self.target)

    def reference(self) -> Reference:
        cls = self.target_class()
        ref = cls.__references__.get(self.via)
        if ref is None:
            raise ValueError(f"{cls.__name__} has no reference {self.via!r} for {self.name!r}")
        return ref

    def __get__(self, obj: DBObject | None, owner: type) -> Any:
        if obj is None:
            return self
        return obj._require_factory().find_objects(self.target_class(), **{self.reference().column or "": obj.id})


class DBObject:
    """Base of every mapped class. Instances come from a Factory; ``store()`` writes them back."""

    __table__: ClassVar[str]
    __ome_name__: ClassVar[str | None] = None
    __columns__: ClassVar[dict[str, Column]] = {}
    __references__: ClassVar[dict[str, Reference]] = {}
    __has_many__: ClassVar[dict[str, HasMany]] = {}
    __private__: ClassVar[dict[str, Column]] = {}
    __owned__: ClassVar[bool] = False
    # The two references a link class joins (see the module docstring); None for other classes.
    __link__: ClassVar[tuple[str, str] | None] = None
    # Columns identifying a row; a link table may use its two references instead of an id.
    __primary_key__: ClassVar[tuple[str, ...]] = ("id",)

    id = Column(int)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        columns: dict[str, Column] = {}
        private: dict[str, Column] = {}
        references: dict[str, Reference] = {}
        has_many: dict[str, HasMany] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                if isinstance(attr, Reference):
                    references[name] = attr
                    columns[attr.column or name] = attr
                elif isinstance(attr, Column):
                    (private if attr.private else columns)[attr.column or name] = attr
                elif isinstance(attr, HasMany):
                    has_many[name] = attr
                elif attr is None and name in columns:  # ``id = None`` drops the inherited id
                    del columns[name]
        cls.__columns__ = columns
        cls.__private__ = private
        cls.__references__ = references
        cls.__has_many__ = has_many
        cls.__owned__ = "owner" in references and "group" in references
        link = cls.__link__
        if link is not None:
            if not (isinstance(link, tuple) and len(link) == 2 and all(end in references for end in link)):
                raise TypeError(f"{cls.__name__}.__link__ names the two references it links, not {link!r}")
            if cls.__owned__:
                raise TypeError(f"{cls.__name__} is a link: it is visible through its ends, so it has no owner")
        if "__table__" in vars(cls):
            _register(cls)

    def __init__(self, **values: Any) -> None:
        raise TypeError(f"create {type(self).__name__} objects with factory.new_object({type(self).__name__}, ...)")

    @classmethod
    def _from_row(cls, factory: Factory | None, values: Mapping[str, Any]) -> DBObject:
        obj = object.__new__(cls)
        obj._values = dict(values)
        obj._dirty = set()
        obj._factory = factory
        return obj

    _values: dict[str, Any]
    _dirty: set[str]
    _factory: Factory | None

    def __getattr__(self, name: str) -> Any:
        """Reference columns read by column name too: ``project.owner_id`` as well as ``project.owner``."""
        if not name.startswith("_") and name in type(self).__columns__:
            return self._values.get(name)
        if name in type(self).__private__:
            raise AttributeError(private_column_message(type(self).__name__, name))
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        """A reference set by its column name (``project.owner_id = 3``) goes through the reference,
        as it reads; otherwise the value would sit on the instance and ``store()`` would ignore it."""
        column = type(self).__columns__.get(name)
        if column is not None and column.name != name:
            column.__set__(self, value)
            return
        object.__setattr__(self, name, value)

    def _set(self, column: str, value: Any) -> None:
        if column == "id" and self._values.get("id") is not None:
            raise AttributeError(f"{type(self).__name__}.id cannot change")
        self._values[column] = value
        self._dirty.add(column)

    def _require_factory(self) -> Factory:
        if self._factory is None:
            raise RuntimeError(f"{self!r} is not attached to a Factory")
        return self._factory

    def store(self) -> None:
        """Write changed columns back (in the session's current transaction)."""
        self._require_factory()._store(self)

    def delete(self) -> None:
        """Delete the row (in the session's current transaction)."""
        self._require_factory()._delete(self)

    def primary_key(self) -> tuple[Any, ...]:
        return tuple(self._values.get(c) for c in self.__primary_key__)

    def values(self) -> dict[str, Any]:
        """A copy of the row's column values, keyed by column name."""
        return dict(self._values)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self._values.get('id')}>"


_REGISTRY: dict[str, type[DBObject]] = {}
_REGISTRY_LOCK = threading.Lock()


def _register(cls: type[DBObject]) -> None:
    names = {cls.__name__, f"{cls.__module__}.{cls.__qualname__}"}
    if cls.__ome_name__:
        names.add(cls.__ome_name__)
    with _REGISTRY_LOCK:
        for name in names:
            existing = _REGISTRY.get(name)
            if existing is not None and existing.__table__ != cls.__table__:
                raise ValueError(f"DBObject name {name!r} is already registered for table {existing.__table__!r}")
            _REGISTRY[name] = cls


def resolve(cls: type[DBObject] | str) -> type[DBObject]:
    """A DBObject class from itself, its registered name ("Project") or OME name ("OME::Project")."""
    if isinstance(cls, type) and issubclass(cls, DBObject) and "__table__" in vars(cls):
        return cls
    if isinstance(cls, str):
        found = _REGISTRY.get(cls)
        if found is not None:
            return found
        known = ", ".join(sorted(n for n in _REGISTRY if "." not in n))
        raise ValueError(f"unknown DBObject class {cls!r}; known classes: {known}")
    raise ValueError(f"{cls!r} is not a DBObject class with a __table__")


def registered() -> Iterator[type[DBObject]]:
    return iter(sorted(set(_REGISTRY.values()), key=lambda c: c.__name__))
