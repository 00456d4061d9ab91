"""The on-disk key store: session keys kept between CLI runs and scripts, never passwords.

``KeyStore`` is ours (``<dir>/<server>/<user>/<key>``, ``ome.*`` lines, a ``.current`` pointer);
``OmeroSessionStore`` is the ``omero`` CLI's (``<dir>/<url-quoted host>/<user>/<uuid>``, ``omero.*``
lines, ``._LAST*_`` pointers), so ``omero login`` sessions can be joined and ours listed by it.
Every directory is opened relative to its parent without following symlinks and checked (ours, not
writable by others) before it is used; changes are made under a file lock, each file replaced
atomically (the rules are ``_safefs``'s).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

import platformdirs
from filelock import FileLock

from . import _safefs
from ._keyfile import OME, OMERO, StoredSession, backend_of, check_key, check_text, component, read_props
from ._keys import key_prefix
from .backends import registered
from .errors import ConfigurationError

_log = logging.getLogger(__name__)

_MAX_BYTES = 64 * 1024  # an entry is a few short lines; anything bigger is not one
_FIX = "the key store refuses it: remove it, or use another directory"


def _open_dir(name: str, dir_fd: int | None, shown: str, *, create: bool) -> int | None:
    return _safefs.open_private_dir(name, dir_fd=dir_fd, shown=shown, fix=_FIX, create=create)


def _read(dir_fd: int, name: str, shown: str) -> str | None:
    """A small text file of ours, or None if absent; ValueError if it is not such text."""
    data = _safefs.read_private(dir_fd, name, shown=shown, fix=_FIX, limit=_MAX_BYTES)
    if data is None:
        return None
    if b"\0" in data:
        raise ValueError("binary content")
    return data.decode("utf-8")  # UnicodeDecodeError is a ValueError


def _own_file(dir_fd: int, name: str, shown: str) -> bool:
    return _safefs.private_file_exists(dir_fd, name, shown=shown, fix=_FIX)


def _write(dir_fd: int, name: str, text: str, shown: str) -> None:
    _own_file(dir_fd, name, shown)  # never replace what is not ours (a planted symlink, say)
    _safefs.write_atomic(dir_fd, name, text.encode("utf-8"))


class KeyStore:
    """Our own key store: ``$OME_SESSIONDIR``, else ``<user data dir>/ome-session/sessions``.

    A store directory that is a symlink, someone else's or writable by others is refused with
    ``ConfigurationError``; so is a symlinked or foreign entry that a call names. ``list()`` logs
    and skips every entry it cannot read, and nothing here deletes such an entry.
    """

    _format = OME

    def __init__(self, directory: Path | str | None = None) -> None:
        chosen = directory if directory is not None else self._default_directory()
        self.directory = Path(os.path.abspath(chosen))

    @staticmethod
    def _default_directory() -> Path:
        data = Path(platformdirs.user_data_dir("ome-session", appauthor=False))
        return Path(os.environ.get("OME_SESSIONDIR") or data / "sessions")

    def file_for(self, s: StoredSession) -> Path:
        """Where ``s`` is (or would be) stored; what ``sessions file`` prints."""
        return self.directory.joinpath(*self._entry_parts(s))

    def add(self, s: StoredSession, *, make_current: bool = True) -> Path:
        """Store (or replace) an entry; by default it also becomes the current one."""
        parts, text = self._entry_parts(s), self._format.dump(s)
        with self._locked():
            self._write_in(parts[:2], parts[2], text)
            if make_current:
                self._write_current(s, parts)
        return self.directory.joinpath(*parts)

    def get(self, server: str, user: str, key: str) -> StoredSession | None:
        """The entry, or None if absent or unreadable (logged); ValueError for impossible names."""
        parts = self._parts(server, user, key)
        try:
            text = self._read_in(parts[:2], parts[2])
            return None if text is None else self._load(text, parts)
        except ValueError as exc:
            _log.warning("key store: ignoring %s: %s", self._shown(parts), exc)
            return None

    def current(self) -> StoredSession | None:
        """The entry the last login made current, if it is still stored."""
        try:
            pointer = self._read_current()
            return None if pointer is None else self.get(*pointer)
        except ValueError as exc:
            _log.warning("key store: ignoring the current pointer in %s: %s", self.directory, exc)
            return None

    def set_current(self, s: StoredSession) -> None:
        """Make a stored entry the one the next login tries first."""
        parts = self._entry_parts(s)
        with self._locked():
            if self.get(s.server, s.user, s.key) is None:
                raise ValueError("that session is not in the key store; add() it first")
            self._write_current(s, parts)

    def list(self) -> builtins.list[StoredSession]:  # ``list`` is shadowed in the class
        """Every readable entry, sorted by server, user and key."""
        found: builtins.list[StoredSession] = []
        with self._dir([], create=False) as root:
            if root is not None:
                self._collect(root, [], found)
        return sorted(found, key=lambda s: (s.server, s.user, s.key))

    def remove(self, s: StoredSession) -> None:
        """Forget one entry (already gone is fine), and the current pointer if it named it."""
        parts = self._entry_parts(s)
        with self._locked():
            self._remove(parts)

    def clear(self, server: str | None = None, user: str | None = None) -> int:
        """Remove every readable entry matching the filters; return how many went."""
        for what, value in (("server", server), ("user", user)):
            if value is not None:
                check_text(what, value)
        with self._locked():
            doomed = [
                s for s in self.list() if server in (None, s.server) and user in (None, s.user)
            ]
            return sum(self._remove(self._entry_parts(s)) for s in doomed)

    # The current pointer. Ours is one file, <dir>/.current, in the entries' line format.

    def _read_current(self) -> tuple[str, str, str] | None:
        text = self._read_in([], ".current")
        if text is None:
            return None
        props, names = read_props(text), self._format.names
        try:
            return props[names["server"]], props[names["user"]], props[names["key"]]
        except KeyError as exc:
            raise ValueError(f"missing {exc}") from None

    def _write_current(self, s: StoredSession, parts: Sequence[str]) -> None:
        lines = [f"{self._format.names[f]}={getattr(s, f)}\n" for f in ("server", "user", "key")]
        self._write_in([], ".current", "".join(lines))

    def _forget_current(self, parts: Sequence[str]) -> None:
        with contextlib.suppress(ValueError):
            pointer = self._read_current()
            if pointer is not None and self._parts(*pointer) == list(parts):
                self._unlink_in([], ".current")

    # Internals: names, paths and file operations.

    def _parts(self, server: str, user: str, key: str) -> builtins.list[str]:
        """The on-disk names of an entry, checked so that none can leave its directory."""
        check_text("server", server)
        check_text("user", user)
        # Ours holds every backend's keys; the omero CLI's store only OMERO's.
        check_key(key, self._format.backend or backend_of(key))
        host = quote(server, safe="") if self._format.quote_server else server
        return [component(host), component(user), key]

    def _entry_parts(self, s: StoredSession) -> builtins.list[str]:
        if self._format.backend not in (None, s.backend):
            raise ValueError(f"this store holds {self._format.backend} sessions, not {s.backend}")
        return self._parts(s.server, s.user, s.key)

    def _shown(self, parts: Sequence[str]) -> str:
        """A path for messages and logs, the key shortened: logs must not leak live keys."""
        names = [*parts[:2], *(key_prefix(p) + "..." for p in parts[2:3])]
        return str(self.directory.joinpath(*names))

    def _load(self, text: str, parts: Sequence[str]) -> StoredSession:
        s = self._format.parse(text)
        if self._entry_parts(s) != list(parts):
            raise ValueError("its content names another server, user or key than its path")
        return s

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise changes between processes; the root is checked before its lock is made."""
        with self._dir([], create=True), FileLock(self.directory / ".lock", mode=0o600):
            yield

    @contextlib.contextmanager
    def _dir(self, parts: Sequence[str], *, create: bool) -> Iterator[int | None]:
        """A checked fd of ``<dir>/<parts...>``, each level opened relative to the one above."""
        if create:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_dir(str(self.directory), None, str(self.directory), create=create)
        try:
            for i, part in enumerate(parts):
                if fd is None:
                    break
                nxt = _open_dir(part, fd, self._shown(parts[: i + 1]), create=create)
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    def _read_in(self, parts: Sequence[str], name: str) -> str | None:
        with self._dir(parts, create=False) as fd:
            return None if fd is None else _read(fd, name, self._shown([*parts, name]))

    def _write_in(self, parts: Sequence[str], name: str, text: str) -> None:
        with self._dir(parts, create=True) as fd:
            assert fd is not None
            _write(fd, name, text, self._shown([*parts, name]))

    def _unlink_in(self, parts: Sequence[str], name: str) -> bool:
        with self._dir(parts, create=False) as fd:
            if fd is None or not _own_file(fd, name, self._shown([*parts, name])):
                return False
            os.unlink(name, dir_fd=fd)
            return True

    def _remove(self, parts: Sequence[str]) -> bool:
        removed = self._unlink_in(parts[:2], parts[2])
        self._forget_current(parts)
        return removed

    def _collect(
        self, dir_fd: int, parts: Sequence[str], found: builtins.list[StoredSession]
    ) -> None:
        """Gather the entries below ``dir_fd``; whatever cannot be read is logged and skipped."""
        with os.scandir(dir_fd) as it:
            names = sorted(e.name for e in it if not e.name.startswith("."))
        for name in names:
            here = [*parts, name]
            try:
                if len(here) == 3:
                    if (text := _read(dir_fd, name, self._shown(here))) is not None:
                        found.append(self._load(text, here))
                elif (fd := _open_dir(name, dir_fd, self._shown(here), create=False)) is not None:
                    try:
                        self._collect(fd, here, found)
                    finally:
                        os.close(fd)
            except (ConfigurationError, ValueError, OSError) as exc:
                _log.warning("key store: skipping %s: %s", self._shown(here), exc)


class OmeroSessionStore(KeyStore):
    """The ``omero`` CLI's store, in its format, so sessions can be shared with ``omero login``.

    ``$OMERO_SESSIONDIR``, else ``$OMERO_SESSION_DIR/omero/sessions`` (deprecated, as in the omero
    command: a warning says so), else ``$OMERO_USERDIR/sessions``, else ``~/omero/sessions``. Changes
    are locked and atomic here as in ours (see the README's porting notes).
    """

    _format = OMERO

    @staticmethod
    def _default_directory() -> Path:
        if chosen := os.environ.get("OMERO_SESSIONDIR"):
            return Path(chosen)
        if deprecated := os.environ.get("OMERO_SESSION_DIR"):  # as the omero command still reads it
            directory = Path(deprecated) / "omero" / "sessions"
            _log.warning("OMERO_SESSION_DIR is deprecated: set OMERO_SESSIONDIR=%s instead", directory)
            return directory
        userdir = Path(os.environ.get("OMERO_USERDIR") or Path.home() / "omero")
        return userdir / "sessions"

    # The CLI's pointers, written without a newline: ._LASTHOST_ (the raw host) and ._LASTPORT_ in
    # the root, ._LASTUSER_ in the host directory, ._LASTSESS_ in the user directory.

    def _read_current(self) -> tuple[str, str, str] | None:
        host = (self._read_in([], "._LASTHOST_") or "").strip()
        qhost = component(quote(host, safe="")) if host else ""
        user = (self._read_in([qhost], "._LASTUSER_") or "").strip() if host else ""
        if not user:
            return None
        sess = (self._read_in([qhost, component(user)], "._LASTSESS_") or "").strip()
        return (host, user, sess) if sess else None

    def _write_current(self, s: StoredSession, parts: Sequence[str]) -> None:
        self._write_in([], "._LASTHOST_", s.server)
        self._write_in([], "._LASTPORT_", str(s.port or registered("omero").default_port))  # as the omero CLI does
        self._write_in(parts[:1], "._LASTUSER_", s.user)
        self._write_in(parts[:2], "._LASTSESS_", s.key)

    def _forget_current(self, parts: Sequence[str]) -> None:
        # As the CLI does: only the session pointer goes; host and user stay as login defaults.
        with contextlib.suppress(ValueError):
            if (self._read_in(parts[:2], "._LASTSESS_") or "").strip() == parts[2]:
                self._unlink_in(parts[:2], "._LASTSESS_")


__all__ = ["KeyStore", "OmeroSessionStore", "StoredSession"]
