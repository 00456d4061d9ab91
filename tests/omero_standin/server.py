"""Run the stand-in OMERO.blitz server: ``python -m <package>.server --port 0 --config FILE``.

Prints the bound port on stdout (one line) once it accepts connections, then serves on
loopback until SIGTERM or SIGINT. With ``--control-stdin`` it also answers one JSON command
per stdin line on stdout (``sessions``, ``calls``, ``advance``) and stops when stdin closes,
so a test run that dies cannot leave a server behind.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import Ice
import omero
import omero.all  # registers every generated class
import omero.rtypes

from .model import (
    DEFAULT_TIME_TO_IDLE_MS,
    DEFAULT_TIME_TO_LIVE_MS,
    Clock,
    SessionTable,
    build_directory,
)
from .routing import ROUTER_IDENTITY, CallLog, Locator, Registry
from .servants import RouterI

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    spec: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    # Block the stop signals before Ice starts its threads, so only sigwait below sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)

    clock = Clock()
    table = SessionTable(
        clock,
        default_time_to_idle_ms=int(spec.get("time_to_idle_ms", DEFAULT_TIME_TO_IDLE_MS)),
        default_time_to_live_ms=int(spec.get("time_to_live_ms", DEFAULT_TIME_TO_LIVE_MS)),
    )
    config = {str(k): str(v) for k, v in spec.get("config", {}).items()}
    registry = Registry(table, build_directory(spec), config)
    log = CallLog(clock, args.call_log)

    communicator = Ice.initialize(_init_data())
    try:
        _register_factories(communicator)
        adapter = communicator.createObjectAdapterWithEndpoints("OMERO.StandIn", f"tcp -h {args.host} -p {args.port}")
        registry.adapter = adapter
        adapter.addServantLocator(Locator(registry, log), "")
        registry.add(ROUTER_IDENTITY, RouterI(registry))
        adapter.activate()
        port = adapter.getEndpoints()[0].getInfo().port
        config.setdefault("omero.router.insecure", f"OMERO.Glacier2/router:tcp -p {port} -h @omero.host@")
        out = _Output(sys.stdout)
        out.line(str(port))
        if args.control_stdin:
            threading.Thread(target=_control_loop, args=(sys.stdin, out, table, log, clock), daemon=True).start()
        signal.sigwait(_STOP_SIGNALS)
    finally:
        communicator.destroy()
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="omero_standin.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--config", type=Path, help="JSON: users, groups, timeouts, config")
    parser.add_argument("--call-log", type=Path, help="append every call here as JSON lines")
    parser.add_argument("--control-stdin", action="store_true", help="JSON commands on stdin")
    args = parser.parse_args(argv)
    if args.host not in _LOOPBACK:
        parser.error("the stand-in only listens on loopback")
    return args


def _init_data() -> Any:
    data = Ice.InitializationData()
    data.properties = Ice.createProperties()
    for key, value in {
        # Connections carry the client's callback adapter: never close them as idle.
        "Ice.ACM.Server.Close": "0",
        "Ice.ACM.Server.Heartbeat": "0",
        "Ice.ThreadPool.Server.Size": "2",
        "Ice.ThreadPool.Server.SizeMax": "8",
        "Ice.MessageSizeMax": "250000",
        "Ice.Warn.Connections": "0",
        "Ice.Warn.Dispatch": "0",
    }.items():
        data.properties.setProperty(key, value)
    return data


def _register_factories(communicator: Any) -> None:
    # Requests carry omero.model objects (SessionI, ExperimenterGroupI): as on the client,
    # their concrete classes must be registered before they can be unmarshalled.
    from omero import ObjectFactoryRegistrar

    ObjectFactoryRegistrar.registerObjectFactory(communicator, None)
    for factory in omero.rtypes.ObjectFactories.values():
        factory.register(communicator)


class _Output:
    """Whole lines on stdout, from any thread."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()


def _control_loop(stream: TextIO, out: _Output, table: SessionTable, log: CallLog, clock: Clock) -> None:
    for raw in stream:
        try:
            request = json.loads(raw)
            command = request["cmd"]
            if command == "sessions":
                reply: Any = {"sessions": [s.describe() for s in table.live()]}
            elif command == "calls":
                reply = {"calls": log.entries()}
            elif command == "advance":
                reply = {"now_ms": clock.advance(int(request["ms"]))}
            else:
                reply = {"error": f"unknown command {command!r}"}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.line(json.dumps(reply))
    os.kill(os.getpid(), signal.SIGTERM)  # stdin closed: whoever started us is gone


if __name__ == "__main__":
    sys.exit(main())
