"""SessionManager: the only way to log in, and so the only maker of login sessions.

A login either succeeds completely or leaves the process exactly as it was: the user is bound to
the singleton only after the backend accepted the credentials (the original bound first).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._principal import Principal
from ._settings import Settings, resolve_dsn
from .backends import AuthBackend, Login
from .errors import ConfigurationError, SessionError
from .factory import Factory
from .session import Session

if TYPE_CHECKING:
    from .keystore import KeyStore

log = logging.getLogger(__name__)
_NO_KEY: Any = object()  # create_session(key=None) is a malformed key, not "no key given"


class SessionManager:
    """Creates, replaces and ends the process's Session.

    ``dsn`` follows the lookup described in the README (argument, ``OME_SESSION_DSN``, settings
    file, embedded cluster). ``prepare_threshold=None`` switches off server-side prepared
    statements, for pgbouncer in transaction mode.
    """

    def __init__(self, dsn: str | None = None, *, backend: str | None = None, agent: str | None = None,
                 host: str | None = None, **options: Any) -> None:
        self._dsn = dsn
        self._backend_name = backend
        self._agent = agent or "ome-session"
        self._host = host
        self._options = options
        self._settings: Settings | None = None

    # -- configuration ---------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            settings = resolve_dsn(self._dsn)
            for name in ("connect_timeout", "prepare_threshold"):
                if name in self._options:
                    setattr(settings, name, self._options[name])
            if self._backend_name:
                settings.backend = self._backend_name
            self._settings = settings
        return self._settings

    def _new_factory(self) -> Factory:
        settings = self.settings
        return Factory(settings.dsn, **settings.connection_options())

    def _backend(self, factory: Factory) -> AuthBackend:
        name = self._backend_name or "local"
        if name != "local":
            raise ConfigurationError(f"unknown session backend {name!r}; use 'local' or 'omero'")
        from .backends.local import LocalBackend

        return LocalBackend(factory._connection, factory.configuration)

    # -- logins ----------------------------------------------------------------------------------

    def create_session(self, username: str | None = None, password: str | None = None, *,
                       key: Any = _NO_KEY, host: str | None = None) -> Session:
        """Log in with a user name and password, or resume with ``key=``; returns the Session.

        Failures raise AuthenticationError or SessionKeyError and change nothing in the process.
        A session already in the process is re-used (its connection) and its user replaced; its
        unit of work ends first (deferred tasks run, an open transaction is rolled back).
        """
        if key is not _NO_KEY:
            if username is not None or password is not None:
                raise TypeError("create_session() takes either username and password, or key=, not both")
            return self._bind(lambda backend: backend.resume(backend.validate_key(key)))
        if username is None or password is None:
            raise TypeError("create_session() needs a username and a password, or key=")
        where = host or self._host or socket.gethostname()
        return self._bind(lambda backend: backend.login(username, password, host=where, agent=self._agent))

    def su_session(self) -> Session:
        """A session as the configured super user, without a password.

        Only for trusted local processes that already hold the install's database credentials
        (which give full power over the data anyway): installers, maintenance jobs.
        """
        where = self._host or socket.gethostname()
        return self._bind(lambda backend: backend.su(host=where, agent=self._agent))

    def sudo_session(self, username: str) -> Session:
        """A session as ``username``, for the super user, admins, and leaders of the user's groups.

        The new session records who opened it (``sudo_by``); the caller's own key stays valid.
        """
        current = _current()
        if current is None or current._login is None or current.is_idle():
            raise SessionError("sudo_session() needs a logged-in, active session to act from")
        actor = current._login
        where = self._host or socket.gethostname()
        return self._bind(lambda backend: backend.sudo(actor, username, host=where, agent=self._agent))

    def logout(self, session: Session | None = None) -> None:
        """Revoke the session's key in the database and drop the process's session.

        Logging out ends the unit of work: an open transaction is rolled back first, so the
        revocation commits by itself and cannot be undone with it.
        """
        session = session or _current()
        if session is None:
            return
        if session._login is not None and session._backend is not None:
            if session._factory is not None:
                session._factory._connection.rollback()
                session._factory._revive()
            session._backend.logout(session._login)
        if Session._instance is session:
            Session.delete_instance(force=True)
        else:
            session._close()

    def reattach(self) -> Session:
        """In a forked child: log in again with the session key inherited from the parent.

        An active session of this process is returned as it is; an idle one (``Session.idle()``
        between a worker's tasks) is resumed with the inherited key, one round trip. A manager
        made without a DSN uses the database the parent's session used; one made without options
        the parent's remote backend (``SessionManager().reattach()`` rejoins its OMERO server).
        """
        current = _current()  # first: it also forgets a session inherited through fork
        key = Session._inherited_key
        if key is None:
            raise SessionError("nothing to reattach: this process did not inherit a logged-in session")
        if current is not None and not current.is_idle():
            return current
        manager = self
        inherited = Session._inherited_backend  # a remote backend's options: its server, ...
        if (inherited is not None and not self._options and self._host is None
                and self._backend_name in (None, inherited[0])):
            manager = SessionManager(backend=inherited[0], agent=self._agent, **inherited[1])
        elif self._dsn is None and Session._inherited_dsn is not None:
            manager = SessionManager(Session._inherited_dsn, backend=self._backend_name, agent=self._agent,
                                     host=self._host, **{**Session._inherited_options, **self._options})
        return manager.create_session(key=key)

    def tty_login(self, *, server: str = "localhost", user: str | None = None, store: KeyStore | None = None,
                  prompt: Callable[[str], str] | None = None, attempts: int = 3) -> Session:
        """Log in from a terminal: a live key from the key store first, else ask for the password
        (``getpass``: no echo) at most ``attempts`` times; the new key is saved to the store (0600).

        ``server`` is the label the key is stored under; ``AuthenticationError`` after the last
        rejected attempt. See ``ome_session._tty``.
        """
        import getpass

        from . import _tty

        return _tty.tty_login(self, server=server, user=user, store=store,
                              prompt=prompt or getpass.getpass, attempts=attempts)

    # -- binding ---------------------------------------------------------------------------------

    def _bind(self, authenticate: Callable[[AuthBackend], Login]) -> Session:
        """Authenticate, then (only on success) bind the result to the process's session."""
        if (self._backend_name or "local") != "local":
            return self._bind_remote(authenticate)
        with Session._lock:
            current = _current()
            reuse = current is not None and current._factory is not None and (
                self._dsn is None or current._factory._connection.dsn == self.settings.dsn)
            factory = current._factory if reuse and current is not None else None
            # An open transaction of the current user must survive a failed login untouched, so
            # authentication then runs on a short-lived connection of its own.
            scratch = factory is None or factory.in_transaction
            auth_factory = self._new_factory() if scratch else factory
            assert auth_factory is not None
            try:
                if auth_factory is factory and not auth_factory._connection.usable:
                    auth_factory._connection.close()
                    auth_factory._connection.open()
                login = authenticate(self._backend(auth_factory))
            except BaseException:
                if scratch:
                    auth_factory.close()
                raise
            if factory is None:
                factory = auth_factory
            elif scratch:
                auth_factory.close()
            return self._install(current, factory, login)

    def _install(self, current: Session | None, factory: Factory, login: Login) -> Session:
        if current is not None:
            if factory.in_transaction:
                log.warning("a transaction was left open by %s; rolled back before the next login", current)
            Session.idle()
            if current._factory is not factory and current._factory is not None:
                current._factory.close()
        factory._revive()
        # Never trusted: a backend that knows no more about its user gets a user with no rights.
        principal = login.principal or Principal(user_id=login.experimenter_id, name=login.user_name,
                                                 is_guest=login.is_guest)
        factory._reset_for_user(principal, login.group_id)
        backend = self._backend(factory)
        if current is not None and not current.is_bootstrap():
            session = current
            session._factory, session._backend, session._login = factory, backend, login
        else:
            if current is not None:  # the bootstrap object must not close the connection it handed on
                current._factory = None
            session = Session._make(factory=factory, backend=backend, login=login)
        session._idle = False
        session._bootstrap = False
        Session._install(session)
        session._reap_once()
        return session


    def _remote_options(self) -> dict[str, Any]:
        """A remote backend's options; ``host=`` names its server (not where the login comes from)."""
        options = dict(self._options)
        if self._host is not None:
            options.setdefault("host", self._host)
        return options

    def _remote_backend(self, current: Session | None) -> AuthBackend:
        """The backend of a remote server; a worker's session keeps one (and its connection)."""
        if current is not None and current._backend is not None and current._backend.serves(
                self._backend_name or "", self._remote_options()):
            return current._backend
        if self._backend_name == "omero":
            from .backends.omero import OmeroBackend

            if "host" not in self._remote_options():
                raise ConfigurationError("the OMERO backend needs its server: SessionManager(backend='omero', "
                                         "host=..., port=...)")
            return OmeroBackend(**self._remote_options())
        raise ConfigurationError(f"unknown session backend {self._backend_name!r}; use 'local' or 'omero'")

    def _bind_remote(self, authenticate: Callable[[AuthBackend], Login]) -> Session:
        """Like ``_bind`` for a backend without a local database: no Factory, no transaction."""
        with Session._lock:
            current = _current()
            backend = self._remote_backend(current)
            login = authenticate(backend)  # on failure the backend keeps what it had
            if current is not None:
                Session.idle()
                if current._factory is not None:
                    current._factory.close()
                    current._factory = None
                if current._backend is not None and current._backend is not backend:
                    current._backend.close()
            backend.adopt(login)
            if current is not None and not current.is_bootstrap():
                session = current
            else:
                session = Session._make(factory=None, backend=backend, login=login)
            session._backend, session._login = backend, login
            session._idle = False
            session._bootstrap = False
            Session._install(session)
            return session


def _current() -> Session | None:
    """The process's own session (never one inherited through fork)."""
    return Session._own_instance()
