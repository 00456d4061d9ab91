"""Authentication backends: where logins are checked and session keys live.

A backend is a short class with a handful of verbs (``login``, ``resume``, ``logout``, ``sudo``,
``su``, ``touch``); adding a backend means adding a module here. ``local`` is the OME model in our
own PostgreSQL database; ``omero`` (the ``[omero]`` extra) uses an OMERO.server through omero-py.
"""

from __future__ import annotations

import datetime
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from .._principal import Acl, Principal


@dataclass
class Login:
    """What a backend knows of one logged-in session."""

    key: str
    experimenter_id: int
    user_name: str
    group_id: int | None = None
    started: datetime.datetime | None = None
    last_access: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None
    host: str | None = None
    sudo_by: int | None = None
    is_admin: bool = False
    is_guest: bool = False
    is_super: bool = False
    acl: Acl | None = None
    # Who acts, for the permission gate of a local Factory (None for backends without one).
    principal: Principal | None = None
    project_id: int | None = None
    dataset_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class AuthBackend(ABC):
    """The verbs every backend implements. Failures raise ome_session.errors types only."""

    name: str = ""

    @abstractmethod
    def validate_key(self, key: object) -> str:
        """Return the key if it has this backend's format; raise SessionKeyError before any I/O."""

    @abstractmethod
    def login(self, username: str, password: str, *, host: str | None, agent: str | None) -> Login:
        """A new session for these credentials; AuthenticationError (one message for all causes)."""

    @abstractmethod
    def resume(self, key: str) -> Login:
        """The live session of ``key``, touched; SessionKeyError if unknown, expired or revoked."""

    @abstractmethod
    def touch(self, login: Login) -> Login:
        """Keep the session alive (slide its idle expiry); SessionKeyError once it is dead."""

    @abstractmethod
    def logout(self, login: Login) -> None:
        """Revoke the session for good."""

    @abstractmethod
    def sudo(self, actor: Login, username: str, *, host: str | None, agent: str | None) -> Login:
        """A session as ``username`` on behalf of ``actor``; PermissionDenied unless allowed."""

    @abstractmethod
    def su(self, *, host: str | None, agent: str | None) -> Login:
        """A session as the configured super user (trusted local processes only)."""

    def serves(self, name: str, options: dict[str, Any]) -> bool:
        """Whether this backend instance is the one a manager with these options would make."""
        return False

    def adopt(self, login: Login) -> None:  # noqa: B027  (optional hook)
        """``login`` becomes the process's session: release the previous one (detach, not kill)."""

    def idle(self) -> None:  # noqa: B027  (optional hook)
        """Between units of work: release what is per-request (nothing, for most backends)."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """The owning process is done with the backend."""

    def forget(self) -> None:  # noqa: B027  (optional hook)
        """In a forked child: drop what belongs to the parent without touching it."""
