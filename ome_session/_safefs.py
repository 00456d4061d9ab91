"""Private files and directories: the rules that keep keys, settings and temporary files ours.

What holds a secret, or leads to one, must belong to this user and be writable by nobody else, and
nothing another user could have planted (a symlink, a directory of theirs) is followed. Directories
are opened without following a symlink and checked through the open descriptor, so what is checked
is what is used. New files and directories get exactly 0600 / 0700, whatever the umask. A file is
replaced by renaming a fsynced temporary file into place, so a reader sees the old content or the
new, never part of one, even after a crash.

Every check raises ``ConfigurationError`` naming the path (``shown``, after ``what`` it is, if
given) and what to do (``fix``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shlex
import stat

from .errors import ConfigurationError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO cannot hang us
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TMP_PREFIX = ".tmp-"  # a dot name: listings (ours, the omero CLI's) skip a write in progress


def _named(shown: str, what: str) -> str:
    return f"{what} {shown}" if what else shown


def check_private(st: os.stat_result, shown: str, fix: str, what: str = "") -> None:
    """Only what this user owns and nobody else can change may hold private data or lead to it."""
    if st.st_uid != os.geteuid():
        raise ConfigurationError(f"{_named(shown, what)} belongs to uid {st.st_uid}, not to uid {os.geteuid()} "
                                 f"(this process); {fix}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode, wanted = stat.S_IMODE(st.st_mode), "0700" if stat.S_ISDIR(st.st_mode) else "0600"
        raise ConfigurationError(f"{_named(shown, what)} is group- or world-writable (mode {mode:04o}): "
                                 f"run `chmod {wanted} {shlex.quote(shown)}` (or at least `chmod go-w`)")


def _symlink(shown: str, fix: str, what: str = "") -> ConfigurationError:
    return ConfigurationError(f"{_named(shown, what)} is a symlink (a symbolic link could lead anywhere); {fix}")


def _refused(exc: OSError, name: str, dir_fd: int | None, *, shown: str, fix: str,
             what: str = "") -> ConfigurationError:
    """Why an open without following symlinks failed, for a person."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # Linux says ENOTDIR for a symlink opened as a directory
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return _symlink(shown, fix, what)
        if exc.errno == errno.ENOTDIR:
            return ConfigurationError(f"{_named(shown, what)} is not a directory; {fix}")
    return ConfigurationError(f"{_named(shown, what)} cannot be opened ({exc.strerror}); {fix}")


def open_private_dir(name: str, *, dir_fd: int | None = None, shown: str, fix: str, create: bool,
                     what: str = "") -> int | None:
    """An fd of the private directory ``name`` (relative to ``dir_fd``), checked; None if it is
    absent and not ``create``d. A directory made here is exactly 0700."""
    created = False
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            created = True
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as exc:
        raise _refused(exc, name, dir_fd, shown=shown, fix=fix, what=what) from exc
    try:
        if created:
            os.fchmod(fd, 0o700)  # a umask can only take bits away; say exactly what we mean
        check_private(os.fstat(fd), shown, fix, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_dir(path: str | os.PathLike[str], *, fix: str, what: str = "", create: bool = True,
                parents: bool = False) -> bool:
    """Make ``path`` a private directory if ``create`` (its missing ``parents`` too, with the
    default mode) and check it; returns whether it exists."""
    if create and parents:
        os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    fd = open_private_dir(os.fspath(path), shown=os.fspath(path), fix=fix, create=create, what=what)
    if fd is None:
        return False
    os.close(fd)
    return True


def new_file(name: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """Create a file that did not exist (never through a symlink), exactly 0600; returns its fd."""
    fd = os.open(name, _NEW_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def new_dir(path: str | os.PathLike[str]) -> None:
    """Create a directory that did not exist, exactly 0700."""
    os.mkdir(path, 0o700)
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def read_private(dir_fd: int, name: str, *, shown: str, fix: str, limit: int) -> bytes | None:
    """A private regular file of at most ``limit`` bytes, or None if absent; ValueError if longer."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refused(exc, name, dir_fd, shown=shown, fix=fix) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigurationError(f"{shown} is not a regular file; {fix}")
        check_private(st, shown, fix)
        data = b""
        while chunk := os.read(fd, limit + 1 - len(data)):
            data += chunk
            if len(data) > limit:
                raise ValueError(f"larger than {limit // 1024} KiB")
    finally:
        os.close(fd)
    return data


def private_file_exists(dir_fd: int, name: str, *, shown: str, fix: str) -> bool:
    """Whether ``name`` exists; refuses one that is a symlink, not a regular file, or not private."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise _symlink(shown, fix)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigurationError(f"{shown} is not a regular file; {fix}")
    check_private(st, shown, fix)
    return True


def write_atomic(dir_fd: int, name: str, data: bytes, *, group: int | None = None) -> None:
    """Replace ``name`` in the directory ``dir_fd`` by a 0600 file holding ``data``: a crash at any
    point leaves the old content or the new one. With ``group`` (a gid), the file is 0640 and
    belongs to that group: readable by its members, and by nobody else, from the first moment
    it has its name."""
    tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}"
    fd = new_file(tmp, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if group is not None:
                os.fchown(fd, -1, group)
                os.fchmod(fd, 0o640)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)  # the rename itself survives a power cut


def write_file_atomic(path: str | os.PathLike[str], data: bytes, *, group: int | None = None) -> None:
    """``write_atomic`` by path; the directory is the caller's choice, so it is followed as given."""
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        write_atomic(dir_fd, name, data, group=group)
    finally:
        os.close(dir_fd)
