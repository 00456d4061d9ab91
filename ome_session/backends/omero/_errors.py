"""Calls to an OMERO server, and the one place their Ice and omero-py errors become ours."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ...errors import DatabaseUnavailable, PermissionDenied, SessionError, SessionKeyError
from ._config import Config
from ._handle import OmeroHandle
from ._ice import Glacier2, Ice, omero

BAD_KEY = "OMERO session not accepted: it is unknown, expired or was closed; log in again"

# The session is over on the server: expired or killed.
_GONE = (omero.SessionTimeoutException, omero.RemovedSessionException)
# Our client's router session is gone: the OMERO session may be gone too, or live on (a dropped
# connection, a Glacier2 timeout). Only joining it again tells which.
_LOST = (Ice.ObjectNotExistException, Glacier2.SessionNotExistException)
# The server cannot be reached or did not answer in time.
_UNREACHABLE = (Ice.SocketException, Ice.TimeoutException, Ice.DNSException, Ice.SecurityException,
                Ice.ProtocolException)


class Detached(SessionError):
    """A client no longer reaches its session (see ``_LOST``); a new client decides."""


class Remote:
    """Calls to one server: each bounded by the call timeout, each failure translated."""

    def __init__(self, config: Config) -> None:
        self.where = config.where
        self._timeout_ms = config.call_timeout_ms

    def bounded(self, proxy: Any) -> Any:
        """``proxy`` with the backend's call timeout."""
        return proxy.ice_invocationTimeout(self._timeout_ms)

    @contextmanager
    def __call__(self, action: str, *, denied: SessionError | None = None, refused: SessionError | None = None,
                 invalid: Exception | None = None) -> Iterator[None]:
        """Every call to the server runs in here: Ice's exceptions become ours (see ``translate``)."""
        try:
            yield
        except (Ice.Exception, omero.ClientError) as exc:
            raise translate(exc, action, self.where, denied=denied, refused=refused, invalid=invalid) from exc


@contextmanager
def ending(handle: OmeroHandle) -> Iterator[None]:
    """Remember a session found dead (on its ``OmeroHandle``), so every later use of it says so
    (SessionKeyError)."""
    try:
        yield
    except SessionKeyError:
        handle.ended = True
        raise


def translate(exc: BaseException, action: str, where: str, *, denied: SessionError | None,
              refused: SessionError | None, invalid: Exception | None) -> Exception:
    """Our error for an Ice or omero-py one. ``denied``: a refused login or join (Glacier2);
    ``refused``: a SecurityViolation; ``invalid``: an ApiUsageException or ValidationException."""
    if isinstance(exc, (Glacier2.PermissionDeniedException, Glacier2.CannotCreateSessionException)) and denied:
        return denied
    if isinstance(exc, _GONE):
        return SessionKeyError(BAD_KEY)
    if isinstance(exc, _LOST):
        return Detached(f"this process's OMERO client no longer reaches its session (trying to {action}): "
                        "resume it again")
    if isinstance(exc, omero.SecurityViolation):
        return refused or PermissionDenied(f"the OMERO server refused to {action}: {describe(exc)}")
    if isinstance(exc, (omero.ApiUsageException, omero.ValidationException)) and invalid is not None:
        return invalid
    if isinstance(exc, _UNREACHABLE):
        return DatabaseUnavailable(f"OMERO server {where} cannot be reached (trying to {action}): {describe(exc)}")
    return SessionError(f"OMERO could not {action}: {describe(exc)}")


def describe(exc: BaseException) -> str:
    """One line for a message: the exception's name and its reason, without Ice's braces."""
    name = exc.ice_name() if isinstance(exc, Ice.Exception) else type(exc).__name__
    reason = getattr(exc, "reason", None) or getattr(exc, "message", None) or (
        "" if isinstance(exc, Ice.Exception) else str(exc))
    errno = getattr(exc, "error", None)
    if not reason and isinstance(errno, int) and errno > 0:
        reason = os.strerror(errno)
    return f"{name}: {' '.join(str(reason).split())}" if reason else name


def describe_err(err: object) -> str:
    """One line for an ``omero.cmd.ERR`` response: its category, name and parameters."""
    what = " ".join(filter(None, (getattr(err, "category", ""), getattr(err, "name", ""))))
    details = ", ".join(f"{k}: {v}" for k, v in sorted((getattr(err, "parameters", None) or {}).items()))
    return "; ".join(filter(None, (what or "no reason given", " ".join(details.split()))))
