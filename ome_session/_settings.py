"""Finding the database: explicit DSN, environment, the installer's settings file, or the embedded cluster.

The first of these wins: the ``dsn`` argument; ``OME_SESSION_DSN``; the settings file the installer
wrote (``OME_SESSION_CONFIG``, else the user config directory, else ``/etc/ome-session/``); the
embedded cluster in the user's data directory if one was installed. The settings file may hold a
password, so it must not be readable by others; no message ever prints a DSN's password. A settings
file says which database to trust with everything: only root's or one's own is read, and never
one that others can change. One readable by its group is accepted only when it names a service
account (``service_user``) of that group (see ``_service_account``).

The settings file may also choose the scope (``"scope": "process"`` or ``"thread"``) and size
thread scope's connection pool (``"pool_size"``, ``"pool_timeout"`` in seconds); the environment
(``OME_SESSION_SCOPE``, ``OME_SESSION_POOL_SIZE``, ``OME_SESSION_POOL_TIMEOUT``) wins over the file.

The settings file also names the backend (``"backend"``, one of the registry's, ``local`` by
default). A remote backend needs no database: its options (the server) are the object named after
it, as in ``{"backend": "omero", "omero": {"host": "omero.example.org", "port": 4064}}``.
"""

from __future__ import annotations

import json
import math
import os
import pwd
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from . import _safefs, _service_account
from ._connection import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PREPARE_THRESHOLD
from ._pool import DEFAULT_POOL_SIZE, DEFAULT_POOL_TIMEOUT
from ._resume_cache import DEFAULT_SIZE as DEFAULT_RESUME_CACHE
from .backends import NAMES, REGISTRY
from .errors import ConfigurationError

SYSTEM_SETTINGS = _service_account.SYSTEM_SETTINGS
EMBEDDED_DBNAME = "ome_session"
_NOT_FOUND = (
    "no database configured: run `ome-session install` (it sets up a private PostgreSQL cluster, "
    "or pass --dsn for an existing server), or set OME_SESSION_DSN"
)


@dataclass
class Settings:
    """Where the database is and how to talk to it."""

    dsn: str
    source: str
    backend: str = "local"
    embedded_datadir: str | None = None
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    # None switches off server-side prepared statements (pgbouncer in transaction mode).
    prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD
    service_user: str | None = None  # the account that may read the settings file too
    pool_size: int = DEFAULT_POOL_SIZE  # thread scope: connections per database per process
    pool_timeout: float = DEFAULT_POOL_TIMEOUT  # thread scope: seconds to wait for one
    # How many resumed sessions the process keeps in memory (0: none, every resume asks the
    # database), and where it listens for the news that invalidate them (None: on the session's
    # own connection; behind a pooler, the database server itself).
    resume_cache: int = DEFAULT_RESUME_CACHE
    listen_dsn: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def backend_options(self) -> dict[str, Any]:
        """The options of a remote backend (its server), from the object named after it."""
        options = self.extra.get(self.backend)
        return dict(options) if isinstance(options, dict) else {}

    def connection_options(self) -> dict[str, Any]:
        return {"connect_timeout": self.connect_timeout, "prepare_threshold": self.prepare_threshold,
                "resume_cache": self.resume_cache, "listen_dsn": self.listen_dsn}

    def set_cache_options(self, values: dict[str, Any], where: str) -> None:
        """``resume_cache`` and ``listen_dsn`` from ``values``, checked; ConfigurationError naming
        ``where`` they came from."""
        if "resume_cache" in values:
            size = values["resume_cache"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ConfigurationError(f"{where}: resume_cache is how many sessions to keep in memory, "
                                         f"an integer >= 0 (0 switches the cache off), not {size!r}")
            self.resume_cache = size
        if "listen_dsn" in values:
            dsn = values["listen_dsn"]
            if dsn is not None and (not isinstance(dsn, str) or not dsn.strip()):
                raise ConfigurationError(f"{where}: listen_dsn is the DSN of the database server itself "
                                         f"(not a pooler), or null, not {dsn!r}")
            self.listen_dsn = dsn

    def pool_options(self) -> dict[str, Any]:
        """What a thread scope's session borrows its connections with."""
        return {"pool_size": self.pool_size, "pool_timeout": self.pool_timeout}

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"backend": self.backend, "connect_timeout": self.connect_timeout,
                                "prepare_threshold": self.prepare_threshold, **self.extra}
        if self.service_user:
            data["service_user"] = self.service_user
        if self.resume_cache != DEFAULT_RESUME_CACHE:
            data["resume_cache"] = self.resume_cache
        if self.listen_dsn is not None:
            data["listen_dsn"] = self.listen_dsn
        if self.embedded_datadir:
            data["embedded"] = {"datadir": self.embedded_datadir, "dbname": EMBEDDED_DBNAME}
        elif self.dsn:
            data["dsn"] = self.dsn
        return data


def settings_path() -> Path:
    """Where the installer writes the settings file (and where it is read first)."""
    configured = os.environ.get("OME_SESSION_CONFIG")
    if configured:
        return Path(configured)
    return Path(platformdirs.user_config_dir("ome-session")) / "settings.json"


def resolve_dsn(dsn: str | None = None) -> Settings:
    """The database to use, by the rules in the module docstring; ConfigurationError if none."""
    settings = _resolve(dsn)
    size, timeout = os.environ.get("OME_SESSION_POOL_SIZE"), os.environ.get("OME_SESSION_POOL_TIMEOUT")
    if size is not None:
        settings.pool_size = _positive(size, int, "OME_SESSION_POOL_SIZE")
    if timeout is not None:
        settings.pool_timeout = _positive(timeout, float, "OME_SESSION_POOL_TIMEOUT")
    return settings


def configured_scope() -> str | None:
    """The scope ``OME_SESSION_SCOPE`` or the settings file chooses (read without finding the
    database); None when neither says."""
    scope = os.environ.get("OME_SESSION_SCOPE")
    source = "OME_SESSION_SCOPE"
    if scope is None:
        path = next((p for p in (settings_path(), SYSTEM_SETTINGS) if _present(p)), None)
        if path is None:
            return None
        scope, source = _read_file(path)[0].get("scope"), f"settings file {path}"
        if scope is None:
            return None
    if scope not in ("process", "thread"):
        raise ConfigurationError(f"{source}: the scope is 'process' or 'thread', not {scope!r}")
    return str(scope)


def _resolve(dsn: str | None) -> Settings:
    if dsn:
        return Settings(dsn=dsn, source="argument")
    env = os.environ.get("OME_SESSION_DSN")
    if env:
        settings = Settings(dsn=env, source="OME_SESSION_DSN")
        prepare = os.environ.get("OME_SESSION_PREPARE_THRESHOLD")
        if prepare is not None:  # "off" behind pgbouncer in transaction mode
            settings.prepare_threshold = _prepare_threshold(prepare)
        return settings
    for path in (settings_path(), SYSTEM_SETTINGS):
        if _present(path):
            return _from_file(path)
    from . import _cluster

    datadir = _cluster.default_datadir()
    if _cluster.Cluster(datadir).initialized():
        return _embedded(str(datadir), "embedded cluster")
    raise ConfigurationError(_NOT_FOUND)


def _present(path: Path) -> bool:
    """Whether there is a settings file; one this account may not even look at is an error, not
    a reason to try the next place (that could be another database)."""
    try:
        path.lstat()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigurationError(f"cannot read settings file {path}: {exc.strerror}") from exc
    return True


def _read_file(path: Path) -> tuple[dict[str, Any], Any]:
    """The settings file's JSON object and its ``lstat``; ConfigurationError saying what is wrong."""
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise ConfigurationError(f"settings file {path} is a symlink; replace it with a regular file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read settings file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"settings file {path} is not a JSON object; re-run `ome-session install`")
    backend = data.get("backend", "local")
    if backend not in NAMES:
        raise ConfigurationError(f"settings file {path}: backend must be one of {', '.join(NAMES)}, not {backend!r}")
    return data, info


def configured_backend() -> str | None:
    """The backend the settings file names, read without finding (or starting) the database;
    None when there is no settings file."""
    path = next((p for p in (settings_path(), SYSTEM_SETTINGS) if _present(p)), None)
    if path is None:
        return None
    return str(_read_file(path)[0].get("backend", "local"))


def _from_file(path: Path) -> Settings:
    data, info = _read_file(path)
    source = f"settings file {path}"
    timeout = _int_or(data.get("connect_timeout"), DEFAULT_CONNECT_TIMEOUT, path)
    prepare = data.get("prepare_threshold", DEFAULT_PREPARE_THRESHOLD)
    if prepare is not None and not isinstance(prepare, int):
        raise ConfigurationError(f"{path}: prepare_threshold must be an integer or null")
    known = ("dsn", "embedded", "connect_timeout", "prepare_threshold", "backend", "service_user", "scope",
             "pool_size", "pool_timeout", "resume_cache", "listen_dsn")
    extra = {k: v for k, v in data.items() if k not in known}
    backend = str(data.get("backend", "local"))
    service = data.get("service_user")
    if service is not None and not isinstance(service, str):
        raise ConfigurationError(f"{path}: service_user must be an account name")
    _check_trusted(path, info)
    embedded = data.get("embedded")
    if isinstance(embedded, dict) and embedded.get("datadir"):
        settings = _embedded(str(embedded["datadir"]), source)
    elif isinstance(data.get("dsn"), str) and data["dsn"]:
        dsn = data["dsn"]
        if _has_password(dsn) and _read_by_others(info, service):
            raise ConfigurationError(
                f"settings file {path} holds a password and is readable by others: chmod 600 {path}"
                + ("" if service else " (or name the service account that reads it: `ome-session install "
                                      "--service-user ACCOUNT`)"))
        settings = Settings(dsn=dsn, source=source)
    elif REGISTRY[backend].remote:
        settings = Settings(dsn="", source=source)  # the sessions live on the backend's server
    else:
        raise ConfigurationError(f"settings file {path} names no database; re-run `ome-session install`")
    settings.backend = backend
    settings.connect_timeout = timeout
    settings.prepare_threshold = prepare
    settings.service_user = service
    if "pool_size" in data:
        settings.pool_size = _positive(data["pool_size"], int, f"{path}: pool_size")
    if "pool_timeout" in data:
        settings.pool_timeout = _positive(data["pool_timeout"], float, f"{path}: pool_timeout")
    settings.set_cache_options(data, f"settings file {path}")
    if settings.listen_dsn and _has_password(settings.listen_dsn) and _read_by_others(info, service):
        raise ConfigurationError(f"settings file {path} holds a password (listen_dsn) and is readable by others: "
                                 f"chmod 600 {path}")
    settings.extra = extra
    return settings


def _check_trusted(path: Path, info: os.stat_result) -> None:
    if info.st_uid not in (0, os.geteuid()):
        raise ConfigurationError(f"settings file {path} belongs to uid {info.st_uid}, neither root nor you: "
                                 "use your own settings (OME_SESSION_CONFIG) or root's")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigurationError(f"settings file {path} is writable by others (mode "
                                 f"{stat.S_IMODE(info.st_mode):04o}): chmod go-w {path}")


def _read_by_others(info: os.stat_result, service: str | None) -> bool:
    """Whether anyone but its owner (and the named service account's group) can read the file."""
    if info.st_mode & stat.S_IRWXO:
        return True
    return bool(info.st_mode & stat.S_IRWXG) and not _service_account.readable_by_group_of(service, info.st_gid)


def _embedded(datadir: str, source: str) -> Settings:
    """The embedded cluster, started on demand (it stops only when asked: `ome-session db stop`)."""
    from . import _cluster

    cluster = _cluster.Cluster(Path(datadir))
    if not cluster.initialized():
        raise ConfigurationError(f"the embedded cluster in {datadir} is missing: run `ome-session install`")
    if not cluster.status().running:
        cluster.start()
    return Settings(dsn=cluster.dsn(EMBEDDED_DBNAME), source=source, embedded_datadir=datadir)


def write_settings(settings: Settings, path: Path | None = None, *,
                   account: pwd.struct_passwd | None = None) -> Path:
    """Write the settings file atomically with mode 0600 (it may hold a password); for another
    service ``account``, 0640 with that account's group, in a directory it can reach."""
    path = path or settings_path()
    text = (json.dumps(settings.to_json(), indent=2, sort_keys=True) + "\n").encode("utf-8")
    if account is None or account.pw_uid == os.geteuid():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _safefs.write_file_atomic(path, text)
        return path
    _service_account.prepare_directory(path.parent, account)
    try:
        _safefs.write_file_atomic(path, text, group=account.pw_gid)
    except PermissionError as exc:
        raise ConfigurationError(f"cannot give {path} to the group of {account.pw_name!r} ({exc.strerror}): "
                                 "install as root, or as a member of that group") from exc
    return path


def _prepare_threshold(value: str) -> int | None:
    if value.strip().lower() in ("off", "none", "null", ""):
        return None
    try:
        threshold = int(value)
    except ValueError:
        threshold = -1
    if threshold < 0:
        raise ConfigurationError(
            f"OME_SESSION_PREPARE_THRESHOLD must be 'off' or a non-negative integer, not {value!r}")
    return threshold


def _positive(value: Any, kind: type[int] | type[float], what: str) -> Any:
    """A positive number of ``kind`` from a settings value or an environment string."""
    try:
        number = kind(value) if isinstance(value, str) or (kind is float and isinstance(value, int)) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or not isinstance(number, kind) or not 0 < number < math.inf:
        raise ConfigurationError(f"{what} must be a positive {'integer' if kind is int else 'number'}, "
                                 f"not {value!r}")
    return number


def _has_password(dsn: str) -> bool:
    from psycopg.conninfo import conninfo_to_dict

    try:
        return bool(conninfo_to_dict(dsn).get("password"))
    except Exception:  # an unparsable DSN fails later, with a message naming it
        return False


def _int_or(value: Any, default: int, path: Path) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{path}: connect_timeout must be a positive integer")
    return value
