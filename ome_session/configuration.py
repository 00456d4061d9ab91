"""Configuration: typed, named values stored as jsonb in the ``configuration`` table.

Values are data only: nothing read from the table is ever evaluated. Every name is declared below
with its type and default, so a typo is a ``ConfigurationError`` instead of a silent ``None``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from . import _fork, _permissions, _resume_cache
from ._conditions import active_admin
from ._tempfiles import account_root, default_root
from .dbobject import check_json, check_text
from .errors import ConfigurationError

if TYPE_CHECKING:
    import psycopg

    from .factory import Factory
    from .model import Experimenter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Variable:
    kind: type | tuple[type, ...]
    default: Callable[[], Any]
    doc: str
    read: Callable[[Any], Any] | None = None  # what a stored value means to this process


def _default_tmp_dir() -> str:
    return str(default_root())


def _account_tmp_dir(stored: str) -> str:
    return str(account_root(stored))


VARIABLES: dict[str, _Variable] = {
    "tmp_dir": _Variable(str, _default_tmp_dir, "directory shared by every account: each has its private root in it",
                         read=_account_tmp_dir),
    "super_user": _Variable(int, lambda: None, "experimenter id of the super user (sees everything)"),
    "allow_guest_access": _Variable(bool, lambda: False, "whether guest accounts may log in"),
    "session_idle_timeout": _Variable(int, lambda: 1800, "seconds a session may go unused (0 = no limit)"),
    "session_max_lifetime": _Variable(int, lambda: 86400, "seconds a session may live at most (0 = no limit)"),
    "session_max_idle_timeout": _Variable(int, lambda: 0, "the longest idle timeout a session may be given, "
                                          "in seconds (0 = only session_max_lifetime bounds it)"),
    "ldap": _Variable(dict, lambda: None, "LDAP bind settings (see the README); absent = local passwords"),
    "db_instance": _Variable(str, lambda: None, "a name for this installation"),
    "lsid_authority": _Variable(str, lambda: None, "the LSID authority of this installation"),
    "installed_version": _Variable(str, lambda: None, "the ome-session version that installed the database"),
}

# Timeouts beyond this (68 years) would overflow timestamp arithmetic and lock everybody out.
# The same bound is in the database's ome_session_config_valid (see the migrations).
_MAX_SECONDS = 2**31 - 1
_MAX_ID = 2**63 - 1

_SELECT_ALL = "SELECT name, value FROM configuration"
_UPSERT = ("INSERT INTO configuration (name, value) VALUES (%s, %s) "
           "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value")
# The super user must be an active admin when named: written only if that holds, in one statement.
_UPSERT_SUPER_USER = ("INSERT INTO configuration (name, value) SELECT 'super_user', %(value)s "
                      f"WHERE EXISTS (SELECT 1 FROM experimenters a WHERE a.id = %(id)s AND {active_admin('a')}) "
                      "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value")
# Serialises concurrent installs: the first writes, the others see a non-empty table.
_LOCK = "LOCK TABLE configuration IN SHARE ROW EXCLUSIVE MODE"


def _check(name: str, value: Any) -> Any:
    """The one place a configuration value is validated."""
    variable = VARIABLES.get(name)
    if variable is None:
        raise ConfigurationError(f"unknown configuration variable {name!r}; known: {', '.join(sorted(VARIABLES))}")
    if value is None:
        return None
    if isinstance(value, bool) and variable.kind is int:
        raise ConfigurationError(f"configuration {name!r} takes an integer, not a boolean")
    if not isinstance(value, variable.kind):
        kind = variable.kind.__name__ if isinstance(variable.kind, type) else variable.kind
        raise ConfigurationError(f"configuration {name!r} takes {kind}, not {type(value).__name__}")
    if isinstance(value, int) and name in ("session_idle_timeout", "session_max_lifetime", "session_max_idle_timeout",
                                           "super_user"):
        return _check_number(name, value)
    try:
        if isinstance(value, str):
            check_text(value, f"configuration {name!r}")
        else:
            check_json(value, f"configuration {name!r}")
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(str(exc)) from None
    return value


def _check_number(name: str, value: int) -> int:
    if name == "super_user":
        if not 0 <= value <= _MAX_ID:
            raise ConfigurationError(f"configuration 'super_user' is an experimenter id, not {value}")
    elif not 0 <= value <= _MAX_SECONDS:
        raise ConfigurationError(
            f"configuration {name!r} must be 0 (no limit) or a number of seconds up to {_MAX_SECONDS}")
    return value


def _check_write(name: str, value: Any) -> Any:
    """What a write must satisfy beyond ``_check``: the values a running install depends on whole."""
    value = _check(name, value)
    if value is None:
        return None
    if name == "tmp_dir" and not os.path.isabs(value):
        raise ConfigurationError(f"configuration 'tmp_dir' must be an absolute path, not {value!r}")
    if name == "ldap":
        from . import _ldap

        _ldap.parse_settings(value)  # a complete, valid block, or ConfigurationError saying what to fix
    return value


class Configuration:
    """The configuration as one Factory sees it, read once and cached."""

    _preloaded: dict[str, Any] | None = None
    _preload_lock = threading.Lock()
    _generation = 0  # bumped by flush(): every Factory's copy is then read again

    def __init__(self, factory: Factory) -> None:
        self._factory = factory
        self._values: dict[str, Any] | None = None
        self._loaded_generation = -1
        # Set when this Factory wrote values in its open transaction: a rollback must drop them.
        self._uncommitted = False

    # -- reading ---------------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if self._values is None or self._loaded_generation != Configuration._generation:
            self._loaded_generation = Configuration._generation
            preloaded = Configuration._preloaded
            self._values = dict(preloaded) if preloaded is not None else _read_all(self._factory)
        return self._values

    def get(self, name: str, default: Any = None) -> Any:
        """The value of ``name``; its declared default (else ``default``) when it is not set.

        A configured ``tmp_dir`` is shared by every account, so what it means to this process is
        this account's root inside it (``<tmp_dir>/<uid>``); ``stored()`` gives the value itself.
        """
        _check(name, None)
        values = self._load()
        if name in values:
            read = VARIABLES[name].read
            return values[name] if read is None else read(values[name])
        declared = VARIABLES[name].default()
        return declared if declared is not None else default

    def stored(self, name: str) -> Any:
        """The value stored for ``name`` as it is, or None when it is not set."""
        _check(name, None)
        return self._load().get(name)

    @property
    def tmp_dir(self) -> Path:
        return Path(self.get("tmp_dir"))

    @property
    def super_user_id(self) -> int | None:
        value = self.get("super_user")
        return int(value) if value is not None else None

    @property
    def super_user(self) -> Experimenter | None:
        user_id = self.super_user_id
        if user_id is None:
            return None
        from .model import Experimenter

        return self._factory.load_object(Experimenter, user_id)  # type: ignore[return-value]

    @property
    def allow_guest_access(self) -> bool:
        return bool(self.get("allow_guest_access"))

    @property
    def session_idle_timeout(self) -> int:
        return int(self.get("session_idle_timeout"))

    @property
    def session_max_lifetime(self) -> int:
        return int(self.get("session_max_lifetime"))

    @property
    def session_max_idle_timeout(self) -> int:
        return int(self.get("session_max_idle_timeout"))

    @property
    def ldap(self) -> dict[str, Any] | None:
        value = self.get("ldap")
        return dict(value) if value else None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in VARIABLES:
            return self.get(name)
        raise ConfigurationError(f"unknown configuration variable {name!r}; known: {', '.join(sorted(VARIABLES))}")

    # -- writing ---------------------------------------------------------------------------------

    @classmethod
    def install(cls, factory: Factory, values: Mapping[str, Any]) -> bool:
        """Write ``values`` if the configuration is empty; returns whether it wrote.

        Write-once: a configuration that exists is never overwritten here (use ``update``). Runs in
        the caller's transaction; commit it to keep the values.
        """
        checked = cls._checked(factory, values)
        conn = factory._connection
        with conn.errors():
            conn.raw.execute(_LOCK)
            row = conn.raw.execute("SELECT count(*) FROM configuration").fetchone()
            if row and row[0]:
                return False
            for name, value in checked.items():
                if value is not None:
                    _write(conn.raw, name, value)
        cls._refresh(factory)
        return True

    @classmethod
    def update(cls, factory: Factory, values: Mapping[str, Any]) -> None:
        """Set (or, with None, remove) each value; runs in the caller's transaction.

        For admins and the super user; ``super_user`` only for the super user (and trusted code),
        and only naming an existing active admin. Every value is checked before anything is sent.
        """
        checked = cls._checked(factory, values)
        dbh = factory.obtain_dbh()
        with factory._connection.errors():
            for name, value in checked.items():
                if value is None:
                    dbh.execute("DELETE FROM configuration WHERE name = %s", (name,))
                else:
                    _write(dbh, name, value)
        cls._refresh(factory)

    @staticmethod
    def _checked(factory: Factory, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values, checked, after the rights to write them: nothing is sent before both."""
        if not isinstance(values, Mapping):
            raise TypeError(f"configuration values come as a mapping of names to values, not {type(values).__name__}")
        for name in values:
            _check(name, None)  # unknown names first: a typo is not a permission problem
        _permissions.may_configure(factory.principal, values)
        # super_user first: its write can still be refused by the database (no such active admin),
        # and then nothing else of the call has been written either.
        names = sorted(values, key=lambda name: name != "super_user")
        return {name: _check_write(name, values[name]) for name in names}

    @classmethod
    def _refresh(cls, factory: Factory) -> None:
        factory.configuration._values = None
        factory.configuration._uncommitted = True
        with cls._preload_lock:
            if cls._preloaded is not None:
                cls._preloaded = None

    # -- process cache ---------------------------------------------------------------------------

    @classmethod
    def preload(cls, factory: Factory) -> None:
        """Read the configuration once for the whole process (e.g. before a server forks)."""
        values = _read_all(factory)
        with cls._preload_lock:
            cls._preloaded = values

    @classmethod
    def flush(cls) -> None:
        """Forget every cached copy in this process, resumed sessions too; the next read of each
        goes to the database."""
        with cls._preload_lock:
            cls._preloaded = None
            cls._generation += 1
        _resume_cache.clear_all()

    def _end_of_transaction(self, committed: bool) -> None:
        """Values written in a transaction that rolled back must not stay cached."""
        if self._uncommitted and not committed:
            self._values = None
        self._uncommitted = False


@_fork.at_fork_in_child
def _new_lock_in_child() -> None:
    """The process cache is kept across a fork (preloading before forking is its purpose), but its
    lock is new: a thread of the parent may have held the old one."""
    Configuration._preload_lock = threading.Lock()


def _write(dbh: psycopg.Connection[Any], name: str, value: Any) -> None:
    if name != "super_user":
        dbh.execute(_UPSERT, (name, Jsonb(value)))
    elif not dbh.execute(_UPSERT_SUPER_USER, {"value": Jsonb(value), "id": value}).rowcount:
        raise ConfigurationError(f"configuration 'super_user' must name an existing, active admin; {value} does not")


def _read_all(factory: Factory) -> dict[str, Any]:
    conn = factory._connection
    with factory._entered(), conn.errors(), conn.autocommit() as raw:
        rows = raw.execute(_SELECT_ALL).fetchall()
    values = {}
    for name, value in rows:
        if name not in VARIABLES:
            continue
        if value is None:  # a JSON null: nothing the statements or the accessors can use
            log.error("configuration value %r ignored (the default applies): it is null", name)
            continue
        try:
            values[name] = _check(name, value)
        except ConfigurationError as exc:  # written by plain SQL: ignored, never fatal
            log.error("configuration value %r ignored (the default applies): %s", name, exc)
    return values
