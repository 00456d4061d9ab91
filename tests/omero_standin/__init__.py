"""A stand-in OMERO.blitz server for tests, run as a subprocess on loopback.

One process plays the Glacier2 router and the blitz services with the same Ice runtime and
generated classes omero-py uses, so the real ``omero.client`` and ``BlitzGateway`` talk to it
unchanged. This module only starts and stops that process and reads its control channel; it
does not import Ice, so it can be imported where the omero extra is missing.

    with running_standin(users=[StandinUser("alice", "secret", groups=("lab",))]) as server:
        client = omero.client(host=server.url_host, port=server.port, args=server.client_args)
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["StandinInfo", "StandinUser", "running_standin"]

LOOPBACK = "127.0.0.1"
_STARTUP_DEADLINE_S = 120.0  # importing omero-py on a loaded machine is slow; never hangs
_REPLY_DEADLINE_S = 30.0
_STOP_DEADLINE_S = 15.0


@dataclass(frozen=True)
class StandinUser:
    """An OMERO experimenter. ``password`` None accepts any password, like OMERO's guest."""

    name: str
    password: str | None
    groups: tuple[str, ...] = ()  # group names; the first is the default group
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    leader_of: tuple[str, ...] = ()  # group owners are members too
    admin: bool = False  # a member of "system": OMERO's full administrator

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "password": self.password,
            "groups": list(self.groups),
            "first_name": self.first_name,
            "last_name": self.last_name,
            "email": self.email,
            "leader_of": list(self.leader_of),
            "admin": self.admin,
        }


@dataclass
class StandinInfo:
    """Where the running stand-in listens, how a client reaches it, and its control channel."""

    host: str
    port: int
    log_path: Path  # every call, one JSON object per line
    ice_config: Path  # an Ice.Config file for BlitzGateway(extra_config=[...])
    invocation_timeout_ms: int
    _process: subprocess.Popen[str] = field(repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def router(self) -> str:
        """The Glacier2 router proxy over plain TCP (the client's default is ssl)."""
        return f"OMERO.Glacier2/router:tcp -p {self.port} -h {self.host}"

    @property
    def url_host(self) -> str:
        """The ``tcp://`` host form omero.client and BlitzGateway turn into that router."""
        return f"tcp://{self.host}"

    @property
    def client_args(self) -> list[str]:
        """Ice arguments for ``omero.client(args=...)``: the router and a bounded wait per call."""
        return [
            f"--Ice.Default.Router={self.router}",
            f"--Ice.Default.InvocationTimeout={self.invocation_timeout_ms}",
        ]

    def sessions(self) -> list[dict[str, Any]]:
        """The live sessions (expired ones are reaped first), oldest first."""
        return list(self._command({"cmd": "sessions"})["sessions"])

    def calls(self) -> list[dict[str, Any]]:
        """Every call so far: ``identity``, ``operation``, ``ctx``, ``seq``, ``t`` (ms)."""
        return list(self._command({"cmd": "calls"})["calls"])

    def operations(self, since: int = 0) -> list[str]:
        """The operation names called from call number ``since`` on, in order."""
        return [c["operation"] for c in self.calls()[since:]]

    def advance_clock(self, ms: int) -> int:
        """Move the server's session clock forward (expiry without sleeping); returns now."""
        return int(self._command({"cmd": "advance", "ms": ms})["now_ms"])

    def _command(self, request: dict[str, Any]) -> dict[str, Any]:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        with self._lock:
            stdin.write(json.dumps(request) + "\n")
            stdin.flush()
            line = _read_line(self._process, time.monotonic() + _REPLY_DEADLINE_S)
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"stand-in refused {request}: {reply['error']}")
        return reply


@contextmanager
def running_standin(
    users: Iterable[StandinUser] = (),
    *,
    groups: Sequence[str | tuple[str, str]] = (),
    time_to_idle_ms: int = 600_000,
    time_to_live_ms: int = 0,
    root_password: str = "omero",
    config: dict[str, str] | None = None,
    invocation_timeout_ms: int = 20_000,
    call_log: Path | None = None,
) -> Iterator[StandinInfo]:
    """Start the stand-in, wait for its port, and always stop it on exit.

    OMERO's built-in ``root`` (password ``root_password``) and ``guest`` (any password) exist
    besides ``users``. ``groups`` adds groups, as names or (name, permissions); groups named
    by users are created with "rw----". Timeouts are the server defaults for new sessions.
    ``call_log`` keeps the JSON-lines call log after exit (default: a temporary file).
    """
    users = list(users)
    with tempfile.TemporaryDirectory(prefix="omero-standin-") as tmp:
        workdir = Path(tmp)
        spec = {
            "time_to_idle_ms": time_to_idle_ms,
            "time_to_live_ms": time_to_live_ms,
            "root_password": root_password,
            "groups": _group_specs(groups, users),
            "users": [u.spec() for u in users],
            "config": dict(config or {}),
        }
        (workdir / "config.json").write_text(json.dumps(spec))
        ice_config = workdir / "client.cfg"
        ice_config.write_text(f"Ice.Default.InvocationTimeout={invocation_timeout_ms}\n")
        log_path = call_log or workdir / "calls.jsonl"
        with (workdir / "stderr.log").open("w") as stderr:
            process = subprocess.Popen(
                _command(workdir / "config.json", log_path),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=_import_root(),
                env=_environment(),
            )
        try:
            port = int(_read_line(process, time.monotonic() + _STARTUP_DEADLINE_S, workdir))
            yield StandinInfo(LOOPBACK, port, log_path, ice_config, invocation_timeout_ms, process)
        finally:
            _stop(process)


def _group_specs(groups: Sequence[str | tuple[str, str]], users: Sequence[StandinUser]) -> list[dict[str, str]]:
    specs: dict[str, str] = {}
    for entry in groups:
        name, permissions = (entry, "rw----") if isinstance(entry, str) else entry
        specs[name] = permissions
    for user in users:
        for name in (*user.groups, *user.leader_of):
            specs.setdefault(name, "rw----")
    builtin = {"system", "user", "guest"}
    return [{"name": n, "permissions": p} for n, p in specs.items() if n not in builtin]


def _command(config: Path, log_path: Path) -> list[str]:
    return [
        sys.executable, "-m", f"{__name__}.server",
        "--port", "0", "--config", str(config), "--call-log", str(log_path), "--control-stdin",
    ]  # fmt: skip


def _import_root() -> Path:
    # The directory from which this package imports under its current name, whatever
    # sys.path layout the test runner chose.
    return Path(__file__).resolve().parents[len(__name__.split("."))]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    root = str(_import_root())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _read_line(process: subprocess.Popen[str], deadline: float, workdir: Path | None = None) -> str:
    stdout = process.stdout
    assert stdout is not None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the stand-in did not answer in time" + _stderr(workdir))
        ready, _, _ = select.select([stdout], [], [], min(remaining, 1.0))
        if ready:
            line = stdout.readline()
            if not line:
                raise RuntimeError(f"the stand-in exited ({process.poll()})" + _stderr(workdir))
            return line.strip()
        if process.poll() is not None:
            raise RuntimeError(f"the stand-in exited ({process.returncode})" + _stderr(workdir))


def _stderr(workdir: Path | None) -> str:
    if workdir is None:
        return ""
    return ":\n" + (workdir / "stderr.log").read_text()[-4000:]


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(_STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with suppress(OSError):
                stream.close()
