"""Fork safety: a forked child parks the parent's omero clients instead of closing them.

omero.client's ``__del__`` and ``closeSession`` would tell the router to destroy the session and
tear the communicator down, over the socket the parent still uses (and its threads do not exist
in the child). Module state on purpose, like the session singleton: every client opened in this
process, so the fork protocol can park them all; and the parked parts, kept for ever.
"""

from __future__ import annotations

import weakref
from contextlib import suppress
from typing import Any

from ... import _fork

OPEN: weakref.WeakSet[Any] = weakref.WeakSet()
_PARKED: list[dict[str, Any]] = []


def park(client: Any) -> None:
    """Make a parent's client inert in a forked child, sending nothing on its connection.

    With its communicator, adapter and session set to None, every closing path stops at once;
    the originals are kept referenced for ever so that none is deallocated here.
    """
    OPEN.discard(client)
    parts = {}
    for part in ("ic", "oa", "sf", "cb", "resources", "previous"):
        name = f"_BaseClient__{part}"
        parts[part] = getattr(client, name, None)
        with suppress(AttributeError):
            setattr(client, name, None)
    _PARKED.append(parts)


def park_gateway(gateway: Any) -> None:
    """A gateway the user still holds fails at once in the child (Ice.ConnectionLostException)
    instead of sending on the parent's connection, or waiting for an answer no thread reads."""
    from omero.gateway import NoProxies

    gateway._connected = False
    gateway._proxies = NoProxies()


@_fork.at_fork_in_child
def _park_all_in_child() -> None:
    """Every client of the parent, also one no backend holds any more (a user's gateway may)."""
    for client in list(OPEN):
        park(client)
