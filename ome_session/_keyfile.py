"""One remembered login, ``StoredSession``, and the two formats a key store file is written in.

An entry is a few ``name=value`` lines: ours (``ome.*``) or the ``omero`` CLI's (``omero.*``).
Everything that reaches a file or a path is checked here first: no control character, no name
that could leave its directory, no key of the wrong shape, no field that looks like a password.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from .backends import NAMES, REGISTRY, registered
from .errors import SessionError

_EXTRA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_text(what: str, value: object, *, empty: bool = False) -> str:
    """Reject what would break a ``key=value`` line or a terminal."""
    if not isinstance(value, str) or not (value or empty):
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"{what} contains a control character: {value!r}")
    return value


def component(part: str) -> str:
    """A name that stays inside its directory and cannot collide with the store's dot files."""
    check_text("path component", part)
    if "/" in part or part.startswith(".") or len(part.encode("utf-8")) > 255:
        raise ValueError(f"{part!r} cannot be a key store path component (no '/', no leading '.')")
    return part


def check_key(key: object, backend: str) -> None:
    """The key shape ``backend`` issues, exactly as it issues it (OMERO's UUIDs in lowercase); the
    message never echoes the key, a secret."""
    entry = registered(backend)
    if entry.is_key(key):
        return
    try:
        entry.validate_key(key)
    except SessionError as exc:
        raise ValueError(str(exc)) from None
    raise ValueError(f"malformed {backend} session key: not in the form its server issues (lowercase)")


def backend_of(key: object) -> str:
    """The backend whose keys look like ``key`` (every backend's keys have a shape of their own)."""
    return next((entry.name for entry in REGISTRY.values() if entry.is_key(key)), "local")


@dataclass(frozen=True)
class StoredSession:
    """One remembered login: where, who, and the key to rejoin it. There is no password field."""

    server: str
    user: str
    key: str = field(repr=False)  # a live key must not end up in a log by way of a repr
    port: int | None = None
    group: str | None = None
    sudo: str | None = None  # the admin or group owner who logged in as ``user``
    timeout: int | None = None
    backend: str = "local"  # the registry's name: "local" (32 hex key) or "omero" (UUID key)
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for what in ("server", "user", "group", "sudo"):
            if what in ("server", "user") or getattr(self, what) is not None:
                check_text(what, getattr(self, what))
        if self.backend not in NAMES:
            raise ValueError(f"backend must be one of {', '.join(NAMES)}, not {self.backend!r}")
        check_key(self.key, self.backend)
        if self.port is not None and (type(self.port) is not int or not 0 < self.port < 65536):
            raise ValueError(f"port must be an integer from 1 to 65535, not {self.port!r}")
        if self.timeout is not None and (type(self.timeout) is not int or self.timeout < 0):
            raise ValueError(f"timeout must be a whole number of seconds, not {self.timeout!r}")
        extra = dict(self.extra)
        for name, value in extra.items():
            if not isinstance(name, str) or _EXTRA_NAME.fullmatch(name) is None:
                raise ValueError(f"extra field name {name!r}: use letters, digits, '_', '.', '-'")
            if "pass" in name.lower():
                raise ValueError(f"extra field {name!r} looks like a password; none is ever stored")
            check_text(f"extra field {name!r}", value, empty=True)
        object.__setattr__(self, "extra", MappingProxyType(extra))  # frozen means frozen

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle through the constructor: a mappingproxy cannot be pickled, and this re-checks."""
        values = [getattr(self, f.name) for f in fields(self)]
        return (type(self), (*values[:-1], dict(self.extra)))


@dataclass(frozen=True)
class Format:
    """What differs between our files and the omero CLI's."""

    names: Mapping[str, str]  # StoredSession field -> property name in the file
    quote_server: bool  # the CLI url-quotes the host, so "wss://h/x" is one path component
    backend: str | None  # None: recorded in each entry

    def dump(self, s: StoredSession) -> str:
        lines = [f"{p}={getattr(s, f)}" for f, p in self.names.items() if getattr(s, f) is not None]
        for name, value in sorted(s.extra.items()):
            if name in self.names.values():
                raise ValueError(f"extra field {name!r} would overwrite a field of the entry")
            lines.append(f"{name}={value}")
        return "\n".join(lines) + "\n"

    def parse(self, text: str) -> StoredSession:
        props = read_props(text)
        fields: dict[str, Any] = {}
        for f, p in self.names.items():
            if value := props.pop(p, ""):  # the CLI may leave optional values empty
                fields[f] = int(value) if f in ("port", "timeout") else value
        if missing := [self.names[f] for f in ("server", "user", "key") if f not in fields]:
            raise ValueError(f"missing {', '.join(missing)}")
        if self.backend is not None:
            fields["backend"] = self.backend
        return StoredSession(**fields, extra=props)


_FIELDS = ("server", "user", "key", "port", "group", "sudo", "timeout", "backend")
OME = Format({f: f"ome.{f}" for f in _FIELDS}, quote_server=False, backend=None)
_OMERO_WORDS = {"server": "host", "key": "sess"}  # the CLI's names for two of our fields
OMERO = Format(
    {f: "omero." + _OMERO_WORDS.get(f, f) for f in _FIELDS if f != "backend"},
    quote_server=True,
    backend="omero",
)


def read_props(text: str) -> dict[str, str]:
    """``key=value`` lines read as the omero CLI reads them: the last duplicate wins."""
    props = {}
    for line in text.split("\n"):
        if line := line.rstrip("\r"):
            name, _, value = line.partition("=")
            props[name] = value
    return props
