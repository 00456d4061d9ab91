"""What a Session says of itself, as OMERO's Session does: its limits, agent and message, and
``update()``, which changes the few of them a user may change on his own session.

A part of ``Session`` (it inherits this class), like ``_session_user``. The values are those of the
last login or resume (no round trip), readable in every state; ``update()`` writes through the
backend and keeps them current for this process.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from .backends import idle_seconds, session_message

if TYPE_CHECKING:
    from ._lifecycle import State
    from .backends import AuthBackend, Login

_UNCHANGED: Any = object()


class SessionProperties:
    _login: Login[Any] | None
    _backend: AuthBackend[Any]

    if TYPE_CHECKING:
        def _check(self, allowed: frozenset[State] = ...) -> None: ...

        def _require_login(self) -> Login[Any]: ...

    @property
    def time_to_idle(self) -> datetime.timedelta | None:
        """How long the session may go unused before it ends: its own idle timeout if it was given
        one (``update(time_to_idle=...)``), else the configured one; None: no idle limit."""
        seconds = self._login.idle_timeout if self._login else None
        return datetime.timedelta(seconds=seconds) if seconds else None

    @property
    def expires_at(self) -> datetime.datetime | None:
        """When the session ends however it is used (None: no absolute limit)."""
        return self._login.expires_at if self._login else None

    @property
    def time_to_live(self) -> datetime.timedelta | None:
        """How long the session may live in all, from ``started`` (None: no absolute limit)."""
        login = self._login
        if login is None or login.expires_at is None or login.started is None:
            return None
        return login.expires_at - login.started

    @property
    def closed_at(self) -> datetime.datetime | None:
        """When the session was logged out, as this process saw it (None: it was not, here).
        ``closed`` says whether this Session object may still be used at all."""
        return self._login.closed_at if self._login else None

    @property
    def agent(self) -> str | None:
        """The program that logged in (``SessionManager(agent=...)``; omero-py's ``setAgent``)."""
        return self._login.agent if self._login else None

    @property
    def message(self) -> str | None:
        """The message left on the session (``update(message=...)``), if any."""
        return self._login.message if self._login else None

    def update(self, *, time_to_idle: datetime.timedelta | int = _UNCHANGED,
               message: str | None = _UNCHANGED) -> None:
        """Change this session's own settings; what is not given stays as it is. A user changes his
        own session only: this one. Every value is checked before anything is sent.

        ``time_to_idle``: how long the session may go unused, in whole seconds (an int or a
        ``timedelta``), at least one second and at most what the installation allows
        (``PermissionDenied`` above it). ``message``: text left on the session, None to remove it
        (the local backend; OMERO.blitz offers its clients no call that changes it).
        """
        login = self._require_login()
        self._check()
        seconds = None if time_to_idle is _UNCHANGED else idle_seconds(_whole_seconds(time_to_idle))
        text = _UNCHANGED if message is _UNCHANGED else session_message(message)
        if seconds is not None:
            self._backend.set_idle_timeout(login, seconds)
        if text is not _UNCHANGED:
            self._backend.set_message(login, text)


def _whole_seconds(value: object) -> object:
    """A ``timedelta`` as whole seconds; anything else as it is, for ``idle_seconds`` to judge."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
        if seconds != int(seconds):
            raise ValueError(f"an idle timeout is a whole number of seconds, not {seconds}")
        return int(seconds)
    return value
