"""Authentication backends: where logins are checked and session keys live.

A backend is a short class with a handful of verbs (``login``, ``resume``, ``touch``, ``logout``,
``sudo``, ``su``), the few steps of a unit of work the Session drives (``begin``, ``idle``,
``close``, ``forget``), and the optional features only some backends have (a local ``factory``,
OMERO's ``gateway``, ``groups`` and ``set_group``), declared here and refusing by default, so
nobody has to probe for them. ``REGISTRY`` names every backend; adding one means adding a module
here and a line there. ``local`` is the OME model in our own PostgreSQL database; ``omero`` (the
``[omero]`` extra) uses an OMERO.server through omero-py.

Nothing here imports the manager, the session or the key store: they build on this.
"""

from __future__ import annotations

import datetime
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from .. import _keys
from .._principal import Acl, Principal
from ..errors import ConfigurationError, SessionError
from .omero._config import DEFAULT_PORT as OMERO_PORT

if TYPE_CHECKING:
    from ..factory import Factory

H = TypeVar("H")


@dataclass
class Login(Generic[H]):
    """What a backend knows of one logged-in session.

    ``handle`` is the backend's own (the local session row, an OMERO client): only the backend
    that made the login reads it.
    """

    key: str
    experimenter_id: int
    user_name: str
    handle: H
    group_id: int | None = None
    group_name: str | None = None  # when the backend knows it without asking
    started: datetime.datetime | None = None
    last_access: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None  # the absolute end of the session (None: none)
    closed_at: datetime.datetime | None = None  # when it was logged out, as this process saw it
    host: str | None = None
    agent: str | None = None  # the program that logged in
    message: str | None = None  # a message for whoever looks at the session (OMERO's Session.message)
    sudo_by: int | None = None
    sudoer_name: str | None = None  # when the backend knows it without asking
    idle_timeout: int | None = None  # seconds, when the server says (OMERO's per-session timeout)
    is_admin: bool = False
    is_guest: bool = False
    is_super: bool = False
    acl: Acl | None = None
    # Who acts, for the permission gate of a local Factory (None for backends without one).
    principal: Principal | None = None


@dataclass(frozen=True)
class GroupInfo:
    """One of the user's groups, as the backend has it now."""

    id: int
    name: str
    current: bool  # the session's group: new objects go there
    leads: bool


BAD_LOGIN = "login failed: unknown user or wrong password"  # one message, whatever the cause
_MAX_FIELD = 4096  # longer user names or passwords are refused before hashing, SQL or a call


def plausible(value: object) -> bool:
    """A user name or password that can be checked at all: PostgreSQL text cannot hold NUL, and a
    lone surrogate cannot be encoded for it, for argon2 or for Ice (it would escape as
    UnicodeEncodeError)."""
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_FIELD or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_MAX_SECONDS = 2**31 - 1  # as the configuration's timeouts: beyond, timestamp arithmetic overflows


def idle_seconds(value: object) -> int:
    """A session's own idle timeout as given: whole seconds, at least one (a session cannot opt
    out of idling); TypeError or ValueError saying what was expected, before anything is sent."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"an idle timeout is a whole number of seconds, not {type(value).__name__}")
    if not 0 < value <= _MAX_SECONDS:
        raise ValueError(f"an idle timeout is from 1 to {_MAX_SECONDS} seconds, not {value}")
    return value


def session_message(value: object) -> str | None:
    """A session's message as given: text PostgreSQL and Ice can carry, or None (no message)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"a session's message is text or None, not {type(value).__name__}")
    if not plausible(value or " "):  # at most 4096 characters, no NUL, no lone surrogate
        raise ValueError(f"a session's message is text of at most {_MAX_FIELD} characters, without NUL "
                         "characters or lone surrogates")
    return value


class AuthBackend(ABC, Generic[H]):
    """The verbs every backend implements. Failures raise ome_session.errors types only."""

    name: ClassVar[str] = ""

    # -- the verbs -------------------------------------------------------------------------------

    @abstractmethod
    def validate_key(self, key: object) -> str:
        """Return the key if it has this backend's format; raise SessionKeyError before any I/O."""

    @abstractmethod
    def login(self, username: str, password: str, *, host: str | None, agent: str | None) -> Login[H]:
        """A new session for these credentials; AuthenticationError (one message for all causes)."""

    @abstractmethod
    def resume(self, key: str) -> Login[H]:
        """The live session of ``key``, touched; SessionKeyError if unknown, expired or revoked."""

    @abstractmethod
    def touch(self, login: Login[H]) -> Login[H]:
        """Keep the session alive (slide its idle expiry); SessionKeyError once it is dead."""

    @abstractmethod
    def logout(self, login: Login[H]) -> None:
        """Revoke the session for good (an open transaction is rolled back first, not committed)."""

    @abstractmethod
    def sudo(self, actor: Login[H], username: str, *, host: str | None, agent: str | None) -> Login[H]:
        """A session as ``username`` on behalf of ``actor``; PermissionDenied unless allowed."""

    @abstractmethod
    def su(self, *, host: str | None, agent: str | None) -> Login[H]:
        """A session as the configured super user (trusted local processes only)."""

    # -- where it is -----------------------------------------------------------------------------

    @property
    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The keyword arguments that make this backend again (how a forked child gets back)."""

    @abstractmethod
    def serves(self, options: dict[str, Any]) -> bool:
        """Whether a manager asking for a backend with these options can use this one."""

    def busy(self) -> bool:
        """Whether a login now would disturb the current unit of work (then a fresh backend checks
        the credentials, and the current one is kept only if they are accepted)."""
        return False

    # -- the unit of work, driven by the Session -------------------------------------------------

    def begin(self, login: Login[H]) -> None:
        """``login`` becomes the process's session and its unit of work starts."""

    def idle(self) -> None:
        """The unit of work ended: release what is per unit of work (transaction, caches)."""

    def close(self) -> None:
        """The owning process is done with the backend: close what it holds."""

    def forget(self) -> None:
        """Let go of what the backend holds without closing it (someone else still uses it)."""

    # -- optional features -----------------------------------------------------------------------

    @property
    def factory(self) -> Factory | None:
        """The local database's Factory, for a backend that has one."""
        return None

    def gateway(self, login: Login[H]) -> Any:
        """An omero-py BlitzGateway on the session (the OMERO backend's)."""
        raise SessionError("only an OMERO session has a gateway: log in with SessionManager(backend='omero', ...)")

    def groups(self, login: Login[H]) -> list[GroupInfo]:
        """The user's groups as the backend has them now."""
        raise SessionError(f"the {self.name} backend has no groups")

    def set_group(self, login: Login[H], group: str | int) -> GroupInfo | None:
        """Switch the session's group (a name or an id); the group, as the backend now knows it."""
        raise SessionError(f"the {self.name} backend cannot switch groups")

    def set_idle_timeout(self, login: Login[H], seconds: int) -> int:
        """Give this session its own idle timeout (``idle_seconds``); the timeout now in effect.
        PermissionDenied above what the server allows."""
        raise SessionError(f"the {self.name} backend has no per-session idle timeout")

    def set_message(self, login: Login[H], message: str | None) -> None:
        """Leave ``message`` (``session_message``) on this session; None removes it."""
        raise SessionError(f"the {self.name} backend keeps no message on a session")


# -- the registry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registered:
    """What is known of a backend without importing it (the OMERO one needs the extra)."""

    name: str
    module: str  # the module, relative to this package, whose ``BACKEND`` is the class
    validate_key: Callable[[object], str]  # the key format, checked before any I/O
    is_key: Callable[[object], bool]  # exactly the form the backend issues
    remote: bool  # the sessions live on another server: no local database, no Factory
    key_form: str  # the key format, in words, for messages
    default_port: int | None = None

    def backend_class(self) -> type[AuthBackend[Any]]:
        cls: type[AuthBackend[Any]] = importlib.import_module(self.module, __name__).BACKEND
        return cls

    def make(self, **options: Any) -> AuthBackend[Any]:
        return self.backend_class()(**options)


REGISTRY: dict[str, Registered] = {
    "local": Registered("local", ".local", _keys.validate_key, _keys.is_key, remote=False,
                        key_form="32 lowercase hexadecimal characters"),
    "omero": Registered("omero", ".omero", _keys.validate_omero_key, _keys.is_omero_key, remote=True,
                        key_form="a lowercase UUID", default_port=OMERO_PORT),
}
NAMES = tuple(REGISTRY)


def registered(name: object) -> Registered:
    """The registry's entry for ``name``; ConfigurationError naming the backends there are."""
    found = REGISTRY.get(name) if isinstance(name, str) else None
    if found is None:
        raise ConfigurationError(f"unknown session backend {name!r}; use one of: {', '.join(NAMES)}")
    return found


__all__ = ["BAD_LOGIN", "NAMES", "REGISTRY", "AuthBackend", "GroupInfo", "Login", "Registered", "idle_seconds",
           "plausible", "registered", "session_message"]
