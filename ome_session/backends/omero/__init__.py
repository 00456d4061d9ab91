"""The OMERO backend (the ``[omero]`` extra): sessions of an OMERO.server, through omero-py.

The session key is the OMERO session UUID; the server checks passwords, keeps the sessions and
enforces permissions (so ``Login.acl`` is None). Each ``omero.client`` is one Ice communicator
(threads, a connection) attached to one session; the backend decides when clients are made,
re-used and released:

- every client we make calls ``detachOnDestroy``: blitz would otherwise end a session when the
  last client holding it closes, and ``idle()`` or a process exit must never log a user out;
- ``idle()`` keeps the worker's client attached, so the next resume of the same key costs one
  call instead of a new communicator and a full join (``reuse_client=False`` detaches instead);
  a different key joins with a new client and the previous one is detached (at most one idle
  client per process);
- ``logout`` kills the session on the server (every reference), then closes our client;
- a forked child never closes, detaches or calls through the parent's clients: they are parked
  (``_parking``); the child logs in again with ``SessionManager(...).reattach()``.

No Ice exception leaves a public call: ``_errors`` maps each to ours. The modules: ``_config``
(what a backend is made from), ``_ice`` (the omero-py imports), ``_errors`` (calls to the server
and their errors), ``_handle`` (the backend's part of a Login: the client), ``_client`` (what a
client tells of its session), ``_groups`` (groups and the BlitzGateway), ``_parking`` (fork
safety), ``_keepalive`` (the ping thread), ``_backend`` (the verbs). Only ``_config`` can be
imported without the extra: it is what the registry needs (the default port).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import DEFAULT_PORT

if TYPE_CHECKING:
    from ._backend import OmeroBackend


def __getattr__(name: str) -> Any:
    # The backend itself needs omero-py and Ice: import them on first use only, so that the
    # package's configuration can be read (the default port, by the registry) without the extra.
    if name in ("OmeroBackend", "BACKEND"):
        from ._backend import OmeroBackend

        return OmeroBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BACKEND", "DEFAULT_PORT", "OmeroBackend"]
