"""Temporary files and scratch directories that a session owns and cleans up.

Each process writes only inside its own private directory, ``<root>/<pid>-<start time>``, so that
names cannot be guessed or raced by other users, a forked child never deletes its parent's files,
and the directories of crashed processes can be recognised and reaped later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from . import _fork, _safefs
from .errors import ConfigurationError

__all__ = ["TempFiles", "account_root", "default_root", "reap"]

_log = logging.getLogger(__name__)

_NAME_MAX = 100
# Allow-list, not deny-list: anything outside it (separators, NUL, spaces, shell or glob
# characters, non-ASCII look-alikes) is refused instead of being rewritten behind the caller's back.
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
# "<pid>-<start>": the pid never starts with 0 (os.kill(0, ...) would mean "my process group").
_PROCESS_DIR = re.compile(r"([1-9][0-9]{0,9})-([0-9]{1,20}|nostart)")
# Written instead of a start time where /proc cannot tell one: the pid is then all we go on.
_NO_START = "nostart"
_ATTEMPTS = 100


def default_root() -> Path:
    """Where temporary files go when configuration names no ``tmp_dir``: one root per user."""
    return Path(tempfile.gettempdir()) / f"ome-session-{os.getuid()}"


def account_root(shared: str | os.PathLike[str]) -> Path:
    """This account's root inside a configured ``tmp_dir``: ``<tmp_dir>/<uid>``.

    The configured directory is the installation's, shared by every account that uses it (root
    running an installer, ``www-data`` serving requests), as ``/tmp`` is: each account has its
    own private root in it, so the first to come never makes it unusable for the others.
    """
    return Path(shared) / str(os.getuid())


def _check_name(value: str, what: str) -> None:
    """Refuse a name part that could leave the process directory or surprise a shell."""
    if (
        not isinstance(value, str)
        or len(value) > _NAME_MAX
        or not _NAME_CHARS.fullmatch(value)
        or ".." in value
        or value == "."
    ):
        raise ValueError(
            f"{what} {value!r} is not allowed: use 1 to {_NAME_MAX} letters, digits, "
            "'-', '_' or '.', and no '..'"
        )


def _fix(path: Path) -> str:
    return f"point tmp_dir at a directory of your own with mode 0700 (e.g. remove {path})"


def _make_private_dir(path: Path, what: str) -> None:
    """Create *path* as 0700 if missing, then check that whatever is there is really ours."""
    _safefs.private_dir(path, what=what, fix=_fix(path))


def make_shared_dir(shared: Path) -> None:
    """The directory every account's root is in, made when missing as /tmp is (1777: anyone may
    add a directory, only its owner may remove it; parents searchable), and never a symlink,
    which could lead anywhere."""
    if not os.path.lexists(shared):
        for directory in reversed(shared.parents):
            if not directory.exists():
                with contextlib.suppress(FileExistsError):
                    directory.mkdir()
                    directory.chmod(0o755)
        with contextlib.suppress(FileExistsError):
            shared.mkdir()
            shared.chmod(0o1777)
    if shared.is_symlink():
        raise ConfigurationError(f"temporary-file directory {shared} is a symlink (a symbolic link could lead "
                                 "anywhere); point tmp_dir at a real directory")


def _make_root(root: Path) -> None:
    """This account's private root, in the directory shared by every account."""
    make_shared_dir(root.parent)
    _make_private_dir(root, "temporary-file root")


def _read_start_time(pid: int) -> str | None:
    """Start time of *pid* (field 22 of /proc/<pid>/stat, clock ticks since boot).

    Returns "" when the process is gone or a zombie, None when /proc cannot tell.
    """
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return "" if os.path.isdir("/proc/self") else None
    except OSError:
        return None
    # The command name (field 2) may itself contain spaces and ')': split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return ""  # exited: it will never touch its files again
    return fields[19].decode("ascii")


def _owner_alive(pid: int, start: str) -> bool:
    """Whether the process that made directory ``<pid>-<start>`` still runs: the one reap rule.

    A pid alone is not enough because pids are reused; the start time must match as well.
    When either side has no start time, a running pid is taken as the owner: keeping stale files
    is the safe mistake, deleting a live process's files is not.
    """
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the pid exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass  # it exists, though it belongs to someone else
    current = _read_start_time(pid)
    if current == "":
        return False
    if current is None or start == _NO_START:
        return True
    return current == start


def _remove(path: Path) -> None:
    """Remove a file or a whole tree without ever following a symbolic link."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        # rmtree unlinks links inside the tree instead of descending into them, and on Linux
        # works through directory file descriptors, so a link swapped in mid-way is not followed.
        shutil.rmtree(path)
    else:
        os.unlink(path)  # a file, or a link put where our file or directory was


def _make_file(path: Path) -> None:
    os.close(_safefs.new_file(path))


class _Registry:
    """What one process has created; a forked child starts a new one instead of inheriting it."""

    __slots__ = ("_dir_name", "lock", "paths")

    def __init__(self) -> None:
        # Made in the at-fork hook too: no I/O here (the directory name reads /proc, later).
        self._dir_name: str | None = None
        # A fresh lock too: a thread of the parent may have held the old one at fork time.
        self.lock = threading.Lock()
        self.paths: set[Path] = set()

    @property
    def dir_name(self) -> str:
        if self._dir_name is None:
            pid = os.getpid()
            self._dir_name = f"{pid}-{_read_start_time(pid) or _NO_START}"
        return self._dir_name


class TempFiles:
    """Creates private temporary files and directories and deletes only those it created."""

    def __init__(self, root: Path | None = None) -> None:
        # Absolute, so a later chdir cannot change what a registered path means; not resolved,
        # because resolving would follow links we mean to refuse.
        self.root = Path(os.path.abspath(root if root is not None else default_root()))
        self._registry = _Registry()
        _fork.register(self)

    def _reset_after_fork_in_child(self) -> None:
        """The parent's paths are simply not the child's: it starts with none."""
        self._registry = _Registry()

    def _current(self) -> _Registry:
        """This process's registry (after a fork the hook missed, the protocol resets it first)."""
        _fork.owned()
        return self._registry

    def _create(
        self, prog_name: str, extension: str, make: Callable[[Path], None]
    ) -> Path:
        _check_name(prog_name, "prog_name")
        _check_name(extension, "extension")
        registry = self._current()
        with registry.lock:
            for _ in range(_ATTEMPTS):
                directory = self.root / registry.dir_name
                _make_root(self.root)
                _make_private_dir(directory, "process temporary directory")
                path = directory / f"{prog_name}-{secrets.token_hex(8)}.{extension}"
                try:
                    make(path)
                except FileExistsError:
                    continue  # a random name collided: draw another
                except FileNotFoundError:
                    continue  # another TempFiles of this process closed the directory just now
                registry.paths.add(path)
                return path
        raise FileExistsError(
            f"no free temporary name in {self.root / registry.dir_name}"
        )

    def new_file(self, prog_name: str = "ome", extension: str = "tmp") -> Path:
        """Create an empty 0600 file named ``<prog_name>-<random>.<extension>`` and register it."""
        return self._create(prog_name, extension, _make_file)

    def new_dir(self, prog_name: str = "ome", extension: str = "dir") -> Path:
        """Create an empty 0700 scratch directory and register it."""
        return self._create(prog_name, extension, _safefs.new_dir)

    def finish(self, path: str | os.PathLike[str]) -> None:
        """Delete a path this process created here (a file or a whole tree) and unregister it.

        Anything else raises ``ValueError`` and is left alone. A registered path that is
        already gone is unregistered quietly.
        """
        self._finish(Path(os.path.abspath(path)), strict=True)

    def _finish(self, target: Path, *, strict: bool) -> None:
        registry = self._current()
        with registry.lock:
            if target not in registry.paths:
                if not strict:
                    return  # the block already finished it, or we are now a forked child
                raise ValueError(
                    f"{os.fspath(target)!r} was not created by this process's temporary files "
                    "(or is already finished); refusing to delete it"
                )
            _remove(target)
            registry.paths.discard(target)

    def finish_all(self) -> list[Path]:
        """Delete every registered path; returns those deleted.

        A path that cannot be removed is logged and stays registered: one bad path must not stop
        the caller's clean-up (such as rolling back) from going on.
        """
        if not self._registry.paths:
            return []  # the usual case at idle(): nothing to do, not even a process-id check
        registry = self._current()
        finished: list[Path] = []
        with registry.lock:
            for path in sorted(registry.paths):
                try:
                    _remove(path)
                except OSError as exc:
                    _log.warning("could not remove temporary path %s: %s", path, exc)
                    continue
                registry.paths.discard(path)
                finished.append(path)
        return finished

    def registered(self) -> list[Path]:
        """Paths created by this process and not yet finished."""
        registry = self._current()
        with registry.lock:
            return sorted(registry.paths)

    @contextmanager
    def file(self, prog_name: str = "ome", extension: str = "tmp") -> Iterator[Path]:
        """A temporary file that is deleted when the block ends, also on error."""
        path = self.new_file(prog_name, extension)
        try:
            yield path
        finally:
            self._finish(path, strict=False)

    @contextmanager
    def scratch_dir(
        self, prog_name: str = "ome", extension: str = "dir"
    ) -> Iterator[Path]:
        """A scratch directory that is deleted with its contents when the block ends."""
        path = self.new_dir(prog_name, extension)
        try:
            yield path
        finally:
            self._finish(path, strict=False)

    def forget(self) -> None:
        """Drop the registry without deleting anything (someone else finishes those paths)."""
        self._registry = _Registry()

    def close(self) -> None:
        """Finish every registered path, then remove this process's directory if it is empty."""
        self.finish_all()
        with contextlib.suppress(OSError):  # never made, or holds files of another TempFiles here
            os.rmdir(self.root / self._current().dir_name)


def reap(root: Path | None = None) -> list[Path]:
    """Remove the directories of processes that are no longer running; returns those removed.

    Run under a file lock so that concurrent sessions starting at once do not trip over each
    other. Directories of live processes, including our own, are kept.
    """
    root = Path(os.path.abspath(root if root is not None else default_root()))
    if not _safefs.private_dir(root, what="temporary-file root", fix=_fix(root), create=False):
        return []
    removed: list[Path] = []
    from filelock import FileLock  # only reaping locks: keep `import ome_session` light

    with FileLock(root / ".reap.lock", mode=0o600):
        with os.scandir(root) as entries:
            candidates = [
                entry for entry in entries if entry.is_dir(follow_symlinks=False)
            ]
        for entry in candidates:
            match = _PROCESS_DIR.fullmatch(entry.name)
            if match is None or _owner_alive(int(match[1]), match[2]):
                continue
            try:
                _remove(Path(entry.path))
            except OSError as exc:
                _log.warning(
                    "could not reap temporary directory %s: %s", entry.path, exc
                )
                continue
            removed.append(Path(entry.path))
    return removed
