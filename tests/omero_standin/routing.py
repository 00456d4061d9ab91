"""Dispatch plumbing: the call log, the servant registry and the one servant locator.

Every request, the Glacier2 router's included, passes through ``Locator.locate``. That single
place logs the call, applies Glacier2's rule that a connection only reaches the categories of
its own session, and refuses operations the stand-in does not implement: the generated servant
base classes would otherwise accept them as silent no-ops and an asynchronous one never answers.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import Ice

from .model import Clock, Directory, Session, SessionGone, SessionTable

ROUTER_IDENTITY = Ice.Identity("router", "OMERO.Glacier2")

_T = TypeVar("_T", bound=type)


class CallLog:
    """Every dispatched call, in memory and (if given a path) as JSON lines on disk."""

    def __init__(self, clock: Clock, path: Path | None) -> None:
        self._clock = clock
        self._path = path
        self._calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(self, current: Any) -> None:
        entry = {
            "t": self._clock.now_ms(),
            "identity": Ice.identityToString(current.id),
            "operation": current.operation,
            "ctx": dict(current.ctx),
        }
        with self._lock:
            entry["seq"] = len(self._calls)
            self._calls.append(entry)
            if self._path is not None:
                with self._path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(entry) + "\n")

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._calls)


@dataclass
class Factory:
    """One client's handle on one session: blitz's ServiceFactoryI state."""

    identity: Any  # Ice.Identity("<session uuid>", "session-<client uuid>")
    session_uuid: str
    client_id: str
    close_on_destroy: bool = True  # blitz's default, despite the Slice comment saying detach
    callback: Any = None
    services: dict[str, Any] = field(default_factory=dict)  # blank name -> Ice.Identity


@dataclass
class RouterSession:
    """One Glacier2 session: bound to the client's connection, allowed two categories."""

    connection: Any
    factory: Factory

    def allows(self, identity: Any) -> bool:
        return identity.category in (self.factory.identity.category, self.factory.session_uuid)


class Registry:
    """Servants by identity, factories by session, Glacier2 sessions by connection.

    Shares the session table's lock so that reaping a session (a table hook) and dispatch never
    take two locks in opposite orders.
    """

    def __init__(self, table: SessionTable, directory: Directory, config: dict[str, str]) -> None:
        self.table = table
        self.directory = directory
        self.config = config
        self.lock = table.lock
        self.adapter: Any = None
        self._servants: dict[str, Any] = {}
        self._factories: dict[str, Factory] = {}
        self._router_sessions: dict[Any, RouterSession] = {}
        self._client_categories: dict[Any, str] = {}
        table.on_removed.append(self._reap)

    # -- servants -------------------------------------------------------------------------
    def add(self, identity: Any, servant: Any) -> Any:
        with self.lock:
            self._servants[Ice.identityToString(identity)] = servant
        return self.adapter.createProxy(identity)

    def remove(self, identity: Any) -> None:
        with self.lock:
            self._servants.pop(Ice.identityToString(identity), None)

    def find(self, current: Any) -> Any | None:
        key = Ice.identityToString(current.id)
        with self.lock:
            if key == Ice.identityToString(ROUTER_IDENTITY):
                return self._servants.get(key)
            bound = self._router_sessions.get(connection_key(current.con))
            if bound is None or not bound.allows(current.id):
                return None  # Glacier2 would not forward it: ObjectNotExistException
            return self._servants.get(key)

    # -- factories ------------------------------------------------------------------------
    def add_factory(self, factory: Factory, servant: Any) -> Any:
        with self.lock:
            self._factories[Ice.identityToString(factory.identity)] = factory
            return self.add(factory.identity, servant)

    def factory_alive(self, factory: Factory) -> bool:
        with self.lock:
            return Ice.identityToString(factory.identity) in self._factories

    def drop_factory(self, factory: Factory) -> None:
        """Remove a factory and the stateless services it created (blitz's cleanupSelf)."""
        with self.lock:
            self._factories.pop(Ice.identityToString(factory.identity), None)
            self._servants.pop(Ice.identityToString(factory.identity), None)
            for identity in factory.services.values():
                self._servants.pop(Ice.identityToString(identity), None)
            factory.services.clear()

    def destroy_factory(self, factory: Factory) -> None:
        """Glacier2 destroyed the client's session: detach, and close if asked to and last."""
        with self.lock:
            self.drop_factory(factory)
            try:
                remaining = self.table.detach(factory.session_uuid)
            except SessionGone:
                return  # already reaped: nothing left to close
            if factory.close_on_destroy and remaining < 1:
                self.table.close(factory.session_uuid)

    def _reap(self, session: Session) -> None:
        # Table hook: the session is gone, so every client's factory for it goes too.
        for factory in [f for f in self._factories.values() if f.session_uuid == session.uuid]:
            self.drop_factory(factory)

    # -- Glacier2 sessions ----------------------------------------------------------------
    def bind(self, connection: Any, factory: Factory) -> None:
        with self.lock:
            self._router_sessions[connection_key(connection)] = RouterSession(connection, factory)

    def bound(self, connection: Any) -> RouterSession | None:
        with self.lock:
            return self._router_sessions.get(connection_key(connection))

    def unbind(self, connection: Any) -> RouterSession | None:
        with self.lock:
            return self._router_sessions.pop(connection_key(connection), None)

    def client_category(self, connection: Any, make: Callable[[], str]) -> str:
        with self.lock:
            return self._client_categories.setdefault(connection_key(connection), make())

    def forget_connection(self, connection: Any) -> None:
        with self.lock:
            self._client_categories.pop(connection_key(connection), None)


def connection_key(connection: Any) -> Any:
    # IcePy hands out a new wrapper per dispatch; its text (both addresses) names the socket.
    return None if connection is None else connection.toString()


@functools.cache
def implemented_operations(cls: type) -> frozenset[str]:
    """Operations a servant class really implements: those defined in this package."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith(__package__ or "omero_standin"):
            for name, value in vars(klass).items():
                if callable(value) and not name.startswith("_"):
                    names.add(name.removesuffix("_async"))
    return frozenset(names)


class Locator(Ice.ServantLocator):  # type: ignore[misc]
    """Logs, routes and guards every request (see the module docstring)."""

    def __init__(self, registry: Registry, log: CallLog) -> None:
        self._registry = registry
        self._log = log

    def locate(self, current: Any) -> Any:
        self._log.record(current)
        servant = self._registry.find(current)
        if servant is None:
            return None
        op = current.operation
        if not op.startswith("ice_") and op not in implemented_operations(servant.__class__):
            raise Ice.OperationNotExistException(current.id, current.facet, op)
        return servant

    def finished(self, current: Any, servant: Any, cookie: Any) -> None:
        pass

    def deactivate(self, category: str) -> None:
        pass


def amd(cls: _T) -> _T:
    """Serve the class's plain methods as the asynchronous ``op_async`` the Slice asks for.

    A method ``op(self, *args, current)`` returning a value becomes ``op_async(self, cb, ...)``
    answering through the callback, so servants read like ordinary code and can never leave an
    asynchronous call unanswered.
    """
    for name, method in list(vars(cls).items()):
        if callable(method) and not name.startswith("_") and hasattr(cls, name + "_async"):
            setattr(cls, name + "_async", _answering(method))
    return cls


def _answering(method: Callable[..., Any]) -> Callable[..., None]:
    @functools.wraps(method)
    def dispatch(self: Any, cb: Any, *args: Any, **kwargs: Any) -> None:
        try:
            result = method(self, *args, **kwargs)
        except Ice.Exception as exc:
            cb.ice_exception(exc)
        except Exception as exc:  # a stand-in bug: say so on stderr and to the client
            traceback.print_exc(file=sys.stderr)
            cb.ice_exception(Ice.UnknownException(f"{type(exc).__name__}: {exc}"))
        else:
            cb.ice_response(result)

    dispatch.__name__ = method.__name__ + "_async"
    return dispatch
