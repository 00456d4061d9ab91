"""What the tests share, written once: a throwaway PostgreSQL server, SQL on a connection of its
own, passwords and their hashes, logging in, the server process behind a session, free ports,
waiting for a condition, running the command, and the oracles for secrets.

The oracles never share code with what they check: SQL runs on a separate connection (what the
server holds, not what a session believes); a key's digest is computed here with hashlib;
password hashes are made and checked with the argon2 library itself, never with
``ome_session._passwords``; leaks are searched for in every column of every table, in the
server's log and in files, as text and as the hex and base64 of the secret's bytes.

No pytest at module level: the benchmark suite (``bench/``) and the soak run use the same server
and ports outside pytest. A failed wait raises ``AssertionError``, which pytest shows as a failure.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import http.client
import importlib
import os
import pty
import pwd
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlencode

import argon2
import argon2.exceptions
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ome_session import Session, SessionManager
from ome_session._cluster import Cluster

REPO = Path(__file__).resolve().parents[1]

T = TypeVar("T")

# -- the throwaway server ----------------------------------------------------------------------------

# Durability is pointless for data thrown away after the run; these make initdb and tests fast.
FAST_OPTIONS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


class ThrowawayCluster:
    """A private PostgreSQL cluster (unix socket only) in a directory that is removed with it.

    Removal runs on ``remove()`` and, as a fallback, at interpreter exit. Forked children inherit
    both paths, so removal only ever happens in the process that made the cluster: a child
    exiting must never stop its parent's server.
    """

    def __init__(self, datadir: Path, **server_options: str) -> None:
        # Cluster hands the (empty) directory to the server account when we run as root.
        self.cluster = Cluster(datadir, server_options=server_options)
        self._owner = os.getpid()
        self._removed = False

    def start(self, timeout: float = 30.0) -> Cluster:
        atexit.register(self.remove)
        self.cluster.start(timeout=timeout)
        return self.cluster

    def remove(self) -> None:
        """Stop the server and delete its directory, once, and only in the process that made it."""
        if self._removed or os.getpid() != self._owner:
            return
        self._removed = True
        try:
            self.cluster.destroy()
        finally:
            shutil.rmtree(self.cluster.datadir, ignore_errors=True)
            atexit.unregister(self.remove)


@contextmanager
def throwaway_cluster(**server_options: str) -> Iterator[Cluster]:
    """A fresh, fast, non-durable cluster in a new temporary directory, removed afterwards."""
    server = ThrowawayCluster(Path(tempfile.mkdtemp(prefix="ome-session-pg-")),
                              **{**FAST_OPTIONS, **server_options})
    try:
        yield server.start()
    finally:
        server.remove()


# -- SQL on a connection of its own -------------------------------------------------------------------


def query(dsn: str, statement: str | sql.Composable, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a new autocommit connection (never a session's) and return its rows
    (``[]`` for a statement that returns none)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def backend_pid(of: Session | psycopg.Connection[Any], *, ask: bool = False) -> int:
    """The PostgreSQL server process behind a session's (or a connection's) connection.

    By default the pid the server announced at connect time: nothing is sent, so it works on an
    idle session and opens no transaction. ``ask=True`` runs ``SELECT pg_backend_pid()`` on that
    connection instead: behind pgbouncer only the server knows, and the answer proves the
    connection works.
    """
    if isinstance(of, Session):
        # The connection object itself: obtain_dbh() refuses on an idle session.
        conn = of.factory.obtain_dbh() if ask else of.factory._connection.raw
    else:
        conn = of
    if not ask:
        return int(conn.info.backend_pid)
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


class ServerLog:
    """What the server logged about one database since a mark: every statement, with its bound
    parameters, tagged with the server process that ran it.

    Made before the database's first connection (the setting applies to new connections). The log
    file is the cluster's, shared with every other database: only text after the mark is read.
    """

    _STATEMENT = re.compile(r"\[(\d+)\] LOG:  (?:statement|execute [^:]*): (.*)")

    def __init__(self, cluster: Cluster, dsn: str) -> None:
        name = conninfo_to_dict(dsn)["dbname"]
        query(cluster.dsn(), sql.SQL("ALTER DATABASE {} SET log_statement = 'all'").format(sql.Identifier(name)))
        self._path = cluster.log_file
        self.mark()

    def mark(self) -> None:
        self._offset = self._path.stat().st_size

    def text(self) -> str:
        with self._path.open("rb") as handle:
            handle.seek(self._offset)
            return handle.read().decode("utf-8", "replace")

    def statements(self, backend: int | None = None) -> list[str]:
        """The statements that server process (or any) ran since the mark."""
        return [m[2] for m in self._STATEMENT.finditer(self.text()) if backend in (None, int(m[1]))]


# -- people, passwords and logging in -----------------------------------------------------------------


def password(name: str) -> str:
    """Every user the fixtures make has the password ``<name>-password``."""
    return f"{name}-password"


@cache
def password_hash(plain: str) -> str:
    """An argon2id hash made by the argon2 library directly, never by the code under test."""
    return argon2.PasswordHasher().hash(plain)


@dataclass
class People:
    """Users of a small lab in a fresh database, for login tests (see the ``people`` fixture)."""

    dsn: str
    ids: dict[str, int]
    groups: dict[str, int]

    @staticmethod
    def password(name: str) -> str:
        return password(name)


def login(where: People | SessionManager | str, name: str = "alice") -> Session:
    """Log ``name`` in with their password through a manager (or a new one for a DSN)."""
    if isinstance(where, People):
        where = where.dsn
    manager = SessionManager(where) if isinstance(where, str) else where
    return manager.create_session(name, password(name))


# -- oracles for secrets --------------------------------------------------------------------------------


def key_digest(key: str) -> bytes:
    """What the database must hold instead of ``key``: its SHA-256, computed here with hashlib."""
    return hashlib.sha256(key.encode("ascii")).digest()


def forms(secret: str | bytes) -> dict[str, str]:
    """The ways a secret shows up in text: as itself (a string), and as the hex and base64 of its
    bytes (a ``bytea`` column prints as hex; base64 is the other common encoding)."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else secret
    shown = {"hex": raw.hex(), "base64": base64.b64encode(raw).decode("ascii")}
    return {"text": secret, **shown} if isinstance(secret, str) else shown


def find_secrets(places: Mapping[str, str], secrets: Mapping[str, str | bytes]) -> list[str]:
    """Every ``place: secret as form`` where a form of a named secret appears in a place's text.

    Case is ignored (hex may be printed in either case), so nothing is missed for its spelling.
    """
    found = []
    for place, text in places.items():
        haystack = text.lower()
        for name, secret in secrets.items():
            found += [f"{place}: {name} as {form}" for form, needle in forms(secret).items()
                      if needle.lower() in haystack]
    return found


_COLUMNS = """
SELECT c.table_name, c.column_name, c.data_type
FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name)
WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
ORDER BY c.table_name, c.ordinal_position
"""


def database_text(dsn: str) -> dict[str, str]:
    """Every value of every column of every table, as text (``bytea`` as hex), keyed
    ``table.column``, read on a connection of its own: what a dump of the database would show."""
    columns: dict[str, list[tuple[str, str]]] = {}
    for table, column, kind in query(dsn, _COLUMNS):
        columns.setdefault(table, []).append((column, kind))
    found: dict[str, str] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table, cols in columns.items():
            shown = [sql.SQL("encode({}, 'hex')" if kind == "bytea" else "{}::text").format(sql.Identifier(name))
                     for name, kind in cols]
            rows = conn.execute(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(shown),
                                                                     sql.Identifier(table))).fetchall()
            for index, (name, _kind) in enumerate(cols):
                found[f"{table}.{name}"] = "\n".join(str(row[index]) for row in rows if row[index] is not None)
    return found


def files_text(root: Path) -> dict[str, str]:
    """The bytes of every file below ``root`` (names included), keyed by path, for scanning."""
    found = {}
    for path in sorted(root.rglob("*")) if root.exists() else []:
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        found[str(path)] = path.name + "\n" + content.decode("latin-1")
    return found


# argon2id settings no stored hash may be weaker than: the OWASP minimum (19 MiB, 2 passes).
MIN_MEMORY_KIB = 19 * 1024
MIN_TIME_COST = 2


def stored_password_problems(stored: str | None, plain: str) -> list[str]:
    """Why ``stored`` is not a proper argon2id hash of ``plain``, checked with the argon2 library
    itself: it verifies, it is argon2id, its parameters are not weak, and it does not hold the
    password. An empty list means it is fine."""
    if not stored:
        return [f"no hash stored: {stored!r}"]
    problems = []
    if plain in stored:
        problems.append("the password is in the stored hash")
    try:
        params = argon2.extract_parameters(stored)
    except argon2.exceptions.InvalidHashError as exc:
        return [*problems, f"not an argon2 hash ({exc})"]
    try:
        argon2.PasswordHasher().verify(stored, plain)
    except argon2.exceptions.VerificationError as exc:
        problems.append(f"does not verify the password ({exc})")
    if params.type is not argon2.Type.ID:
        problems.append(f"argon2 type {params.type.name}, not ID")
    if params.memory_cost < MIN_MEMORY_KIB or params.time_cost < MIN_TIME_COST or params.parallelism < 1:
        problems.append(f"weak parameters: {params}")
    if params.salt_len < 16 or params.hash_len < 16:
        problems.append(f"short salt or hash: {params}")
    return problems


# -- time and ports -----------------------------------------------------------------------------------


def wait_for(what: str, condition: Callable[[], T], timeout: float = 60.0) -> T:
    """Poll ``condition`` until it returns something true, and return that.

    The timeout is a deadline for a condition that should come true, far beyond any healthy
    wait: reaching it fails the test, naming ``what`` was awaited. Never a measure of speed.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout:g} s")
        time.sleep(0.02)


def process_start_time(pid: int) -> str:
    """When ``pid`` started (field 22 of /proc/PID/stat, clock ticks since boot), read here
    independently of the code under test; after the command name, which may hold spaces or ')'."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (another process may take it before it
    is used: a caller that binds it later retries with another on "address in use")."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class HttpClient:
    """Plain HTTP/1.1 to a test server on loopback, one connection per request (as a browser
    that does not keep connections would), and the demo app's login form."""

    port: int
    timeout: float = 120.0

    def request(self, method: str, path: str, *, cookie: str | None = None,
                headers: Mapping[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        sent = dict(headers or {})
        if cookie:
            sent["Cookie"] = cookie
        if body is not None:
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def login(self, name: str) -> str:
        """Log in through the form; returns the cookie to send back."""
        form = urlencode({"username": name, "password": People.password(name)}).encode()
        status, headers, body = self.request("POST", "/login", body=form)
        assert status == 200, body
        return headers["Set-Cookie"].split(";", 1)[0]


# -- optional parts: skipped, unless the run requires them -------------------------------------------

# The parts some tests need beyond the package itself, each installed by a script of its own.
OPTIONAL_PARTS = {
    "omero": "scripts/install-omero-extra .venv/bin/python",
    "ldap": "scripts/install-test-ldap .venv/bin/python",
    "pgbouncer": "scripts/install-test-pgbouncer",
}
REQUIRE_VARIABLE = "OME_SESSION_TESTS_REQUIRE"


def required_parts() -> set[str]:
    """The optional parts this run promised to test (``OME_SESSION_TESTS_REQUIRE=omero,ldap,...``,
    or ``all``): a test that cannot have one of them fails instead of skipping."""
    names = {name.strip() for name in os.environ.get(REQUIRE_VARIABLE, "").split(",") if name.strip()}
    if names == {"all"}:
        return set(OPTIONAL_PARTS)
    if unknown := names - set(OPTIONAL_PARTS):
        raise ValueError(f"{REQUIRE_VARIABLE} names {', '.join(sorted(unknown))}: "
                         f"use 'all' or some of {', '.join(OPTIONAL_PARTS)}")
    return names


def missing(part: str, reason: str) -> NoReturn:
    """This test cannot have ``part`` for ``reason``: skip it, or fail when the run requires it."""
    import pytest

    reason = f"{reason} (to install it: {OPTIONAL_PARTS[part]})"
    if part in required_parts():
        pytest.fail(f"{reason}; {REQUIRE_VARIABLE} requires {part!r}, so this is a failure, not a skip",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def import_part(part: str, module: str) -> ModuleType:
    """Import ``module``, which comes with ``part``; if it cannot be imported, see ``missing``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing(part, f"{module} cannot be imported ({exc})")


# -- other accounts ------------------------------------------------------------------------------------

@contextlib.contextmanager
def throwaway_account() -> Iterator[pwd.struct_passwd]:
    """A new system account with a group of its own and no home, removed (with anything it still
    runs) when the block ends."""
    name = f"omes-test-{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True, text=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        account = pwd.getpwnam(name)
        for pid in _processes_of(account.pw_uid):  # a test's child that outlived it: ours to end
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        subprocess.run(["userdel", name], check=True, capture_output=True, text=True)
        with contextlib.suppress(subprocess.CalledProcessError):  # gone with the user where USERGROUPS_ENAB
            subprocess.run(["groupdel", name], check=True, capture_output=True, text=True)


def _processes_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                found.append(int(entry.name))
    return found


def run_as(account: pwd.struct_passwd, args: list[str], env: dict[str, str],
           cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a program to completion as ``account`` (its own group only), capturing its output."""
    return subprocess.run(args, user=account.pw_uid, group=account.pw_gid, extra_groups=[], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600, check=False)


def interpreter_for(account: pwd.struct_passwd, env: dict[str, str]) -> str:
    """An interpreter of this version that the account may run, able to import what the tests need."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}",
                  shutil.which(f"python{version}") or ""]
    tried = []
    for candidate in dict.fromkeys(c for c in candidates if c):
        try:
            done = run_as(account, [candidate, "-c", "import sys, ome_session, pytest, psycopg; "
                                                  "print('%d.%d' % sys.version_info[:2])"], env, Path("/"))
        except OSError as exc:  # it may not even execute it
            tried.append(f"{candidate}: {exc.strerror}")
            continue
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
        tried.append(f"{candidate}: {(done.stderr.strip().splitlines() or [done.stdout.strip()])[-1]}")
    import pytest

    pytest.fail(f"no Python {version} that an unprivileged account can run with this checkout ({REPO}) and "
                f"its packages; the checkout and its virtualenv must be readable by other users. Tried:\n"
                + "\n".join(tried))


# -- the command ---------------------------------------------------------------------------------------


def command_env(**extra: str) -> dict[str, str]:
    """This process's environment (the test's isolated settings, key store and data directory)
    with ``extra`` added and this checkout first on the import path."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def ome_session(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``ome-session ARGS`` to completion as a real program, with no terminal on stdin."""
    return subprocess.run([sys.executable, "-m", "ome_session", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=command_env(**env), timeout=120, check=False)


def current_key() -> str:
    """The key of the command's current session (``ome-session sessions key``)."""
    done = ome_session("sessions", "key")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# The command with Ctrl-C's signal handled as on a terminal, whatever the tests were started with:
# a background job of a shell ignores SIGINT, and a child inherits that.
INTERRUPTIBLE_COMMAND = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                         "runpy.run_module('ome_session', run_name='__main__', alter_sys=True)")

Answer = str | tuple[str, str]


def on_terminal(args: list[str], answers: list[Answer], timeout: float = 120.0,
                **env: str) -> tuple[int, str, int]:
    """Run ``ome-session ARGS`` on a pseudo-terminal, answering its prompts in turn.

    Each answer is ``(prompt, reply)``: the reply is typed once the prompt's text has appeared
    after the last one answered; a bare string answers the next prompt containing "Password".
    Returns the exit code, everything the terminal showed, and how many prompts were answered.
    A run still going after ``timeout`` seconds (waiting for an answer nobody gives) is killed,
    and the test fails showing what the terminal showed.
    """
    pid, fd = pty.fork()
    if pid == 0:  # the child: nothing of pytest's may run here
        try:
            os.execve(sys.executable, [sys.executable, "-m", "ome_session", *args], command_env(**env))
        finally:
            os._exit(127)
    pending = [("Password", a) if isinstance(a, str) else a for a in answers]
    shown, seen, answered = b"", 0, 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"still running after {timeout:g} s; the terminal showed:\n"
                                     + shown.decode(errors="replace"))
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child has closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            while answered < len(pending) and (at := shown.find(pending[answered][0].encode(), seen)) >= 0:
                os.write(fd, pending[answered][1].encode() + b"\n")
                seen = at + len(pending[answered][0])
                answered += 1
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace"), answered


# -- a worker process that resumes sessions -----------------------------------------------------------

_WORKER = r"""
import json, select, sys, threading
from ome_session import Session, SessionManager
from ome_session.errors import SessionError

manager = SessionManager(sys.argv[1], **json.loads(sys.argv[2]))
seen = [None]  # the last cache a session of this process had (in thread scope, the process's)


def cache():
    if Session.has_instance():
        seen[0] = getattr(Session.instance().backend, "resume_cache", None)
    return seen[0]


def resume(key):
    found = cache()
    warm = found is not None and key in found
    try:
        session = manager.create_session(key=key)
    except SessionError as exc:
        return {"error": type(exc).__name__, "warm": warm}
    try:
        principal = session.factory.principal
        projects = sorted(p.name for p in session.factory.find_objects("Project"))
        return {"user": session.user_name, "admin": principal.admin, "super": principal.is_super,
                "leads": sorted(principal.leads), "projects": projects, "warm": warm,
                "pid": session.factory._connection.raw.info.backend_pid}
    finally:
        Session.idle()


def resume_in_thread(key):
    # as resume(), in a new thread that ends afterwards (in thread scope: a session of its own)
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(resume(key)))
    thread.start()
    thread.join()
    return answer


def pending():
    found = cache()
    source = found.listening if found is not None else None
    if source is None:
        return False
    poller = select.poll()
    poller.register(source.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


for line in sys.stdin:
    command, *args = json.loads(line)
    answer = {"resume": resume, "resume_in_thread": resume_in_thread, "pending": pending,
              "cached": lambda: len(cache() or ())}[command](*args)
    print(json.dumps(answer), flush=True)
"""


class Worker:
    """Another process, as a web worker is: it resumes keys (and reads what the user may see) when
    asked, and is idle in between, so the database's news wait on its socket."""

    def __init__(self, dsn: str, *, scope: str = "process", **options: Any) -> None:
        import json

        self._json = json
        self.process = subprocess.Popen([sys.executable, "-c", _WORKER, dsn, json.dumps(options)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=command_env(OME_SESSION_SCOPE=scope))

    def ask(self, *command: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(self._json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the worker died (exit code {self.process.wait(timeout=30)})"
        return self._json.loads(line)

    def resume(self, key: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.ask("resume", key)
        return answer

    def resume_in_thread(self, key: str) -> dict[str, Any]:
        """Resume ``key`` in a new thread of the worker, which ends afterwards."""
        answer: dict[str, Any] = self.ask("resume_in_thread", key)
        return answer

    def warm(self, key: str) -> dict[str, Any]:
        """Resume ``key`` until it comes from memory; what the warm resume saw."""
        self.resume(key)
        answer = self.resume(key)
        assert answer.get("warm"), answer
        return answer

    def wait_for_news(self) -> None:
        """Until a message from the database waits on the worker's listening socket."""
        wait_for("the change notification to reach the worker", lambda: self.ask("pending"))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()


def wait_for_news(key: str) -> None:
    """After a change to ``key``'s session made on another connection (plain SQL), until this
    process has heard of it: the database's message has arrived and ``key`` is no longer held in
    memory (its next resume asks the database). Nothing held: nothing to wait for."""
    session = Session.instance() if Session.has_instance() else None
    cache = getattr(session.backend, "resume_cache", None) if session is not None else None
    if cache is not None:
        wait_for(f"the change to {key[:4]}... to be heard of", lambda: cache.get(key) is None)
