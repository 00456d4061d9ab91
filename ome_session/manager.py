"""SessionManager: the only way to log in, and so the only maker of login sessions.

A login either succeeds completely or leaves the process exactly as it was: the manager chooses
the backend and authenticates; only an accepted login is handed to the Session, which binds it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._lifecycle import Inheritance
from ._settings import Settings, resolve_dsn
from .backends import REGISTRY, AuthBackend, Login, Registered, registered
from .errors import ConfigurationError, SessionError
from .session import Session, inherited

if TYPE_CHECKING:
    from .keystore import KeyStore

log = logging.getLogger(__name__)
_NO_KEY: Any = object()  # create_session(key=None) is a malformed key, not "no key given"


class SessionManager:
    """Creates, replaces and ends the process's Session.

    ``dsn`` follows the lookup described in the README (argument, ``OME_SESSION_DSN``, settings
    file, embedded cluster), and so does the backend: ``backend=`` if given, else the local one
    for a DSN, else the settings file's. ``prepare_threshold=None`` switches off server-side
    prepared statements, for pgbouncer in transaction mode. ``resume_cache=N`` keeps up to N resumed
    sessions in memory (0: off); ``listen_dsn`` names the database server the process listens to for
    the changes that invalidate them, where the session's connection cannot (behind pgbouncer). A
    manager told nothing (no DSN, no
    backend, no options) logs in where the process's session already is, if there is one.
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
            for name in ("connect_timeout", "prepare_threshold", "pool_size", "pool_timeout"):
                if name in self._options:
                    setattr(settings, name, self._options[name])
            settings.set_cache_options(self._options, "SessionManager()")
            if self._backend_name:
                settings.backend = self._backend_name
            self._settings = settings
        return self._settings

    def _registered(self) -> Registered:
        """The backend logins go to: as given, else the local one for a DSN, else the settings'."""
        if self._backend_name is not None:
            return registered(self._backend_name)
        if self._dsn is not None:
            return registered("local")
        return registered(self.settings.backend)

    def _options_for(self, entry: Registered) -> dict[str, Any]:
        """What makes the backend: the database for the local one, the server for a remote one
        (``host=`` names that server then, not where the login comes from)."""
        if not entry.remote:
            settings = self.settings
            # Thread scope: every thread's session borrows its connection from the process's pool.
            pool = settings.pool_options() if Session.scope() == "thread" else {}
            return {"dsn": settings.dsn, **settings.connection_options(), **pool}
        options = dict(self.settings.backend_options) if self._backend_name is None else {}
        options.update(self._options)
        if self._host is not None:
            options["host"] = self._host
        if "host" not in options:
            raise ConfigurationError(f"the {entry.name} backend needs its server: "
                                     f"SessionManager(backend={entry.name!r}, host=..., port=...)")
        return options

    def _reuses(self, held: AuthBackend[Any]) -> bool:
        """Whether a login through this manager goes on the process's current backend (its
        connection or client): same backend, same database or server."""
        if self._backend_name not in (None, held.name):
            return False
        entry = REGISTRY[held.name]
        if not entry.remote:
            return self._dsn is None or held.serves({"dsn": self._dsn})
        if self._backend_name is None and not self._options and self._host is None:
            return True
        return held.serves(self._options_for(entry))

    # -- logins ----------------------------------------------------------------------------------

    def create_session(self, username: str | None = None, password: str | None = None, *,
                       key: Any = _NO_KEY, host: str | None = None) -> Session:
        """Log in with a user name and password, or resume with a key (``key=``, or the one
        positional argument, as Perl's ``createSession($key)``); returns the Session, which is
        also a context manager that ends its unit of work on the way out (``Session.idle()``).

        Failures raise AuthenticationError or SessionKeyError and change nothing in the process.
        A session already in the process is re-used (its connection) and its user replaced; its
        unit of work ends first (deferred tasks run, an open transaction is rolled back).
        """
        if key is _NO_KEY and username is not None and password is None:
            entry = self._registered()
            if not entry.is_key(username):  # never a login without a password; never echoed
                raise TypeError(f"create_session() with one argument takes a session key of the {entry.name} "
                                f"backend ({entry.key_form}), and that argument is not one; to log in, give "
                                "a username and a password")
            key, username = username, None
        if key is not _NO_KEY:
            if username is not None or password is not None:
                raise TypeError("create_session() takes either username and password, or key=, not both")
            return self._bind(lambda backend: backend.resume(key))  # which checks the key first
        if username is None or password is None:
            raise TypeError("create_session() needs a username and a password, or key=")
        where = host or self._where()
        return self._bind(lambda backend: backend.login(username, password, host=where, agent=self._agent))

    def su_session(self) -> Session:
        """A session as the configured super user, without a password.

        Only for trusted local processes that already hold the install's database credentials
        (which give full power over the data anyway): installers, maintenance jobs.
        """
        where = self._where()
        return self._bind(lambda backend: backend.su(host=where, agent=self._agent))

    def sudo_session(self, username: str) -> Session:
        """A session as ``username``, for the super user, admins, and leaders of the user's groups.

        The new session records who opened it (``sudo_by``); the caller's own key stays valid.
        """
        current = Session.instance() if Session.has_instance() else None
        actor = current.login if current is not None and not current.is_idle() else None
        if actor is None:
            raise SessionError("sudo_session() needs a logged-in, active session to act from")
        where = self._where()
        return self._bind(lambda backend: backend.sudo(actor, username, host=where, agent=self._agent))

    def logout(self, session: Session | None = None) -> None:
        """Revoke the session's key in the database and drop the process's session.

        Logging out ends the unit of work: an open transaction is rolled back first, so the
        revocation commits by itself and cannot be undone with it.
        """
        if session is None:
            if not Session.has_instance():
                return
            session = Session.instance()
        session._log_out()

    def reattach(self) -> Session:
        """In a forked child: log in again with the session key inherited from the parent.

        An active session of this process is returned as it is; an idle one (``Session.idle()``
        between a worker's tasks) is resumed with the inherited key, one round trip. A manager
        made without a DSN uses the database the parent's session used; one made without options
        the parent's remote backend (``SessionManager().reattach()`` rejoins its OMERO server).
        """
        current = Session.instance() if Session.has_instance() else None  # forgets an inherited one
        parent = inherited()
        if parent is None:
            raise SessionError("nothing to reattach: this process did not inherit a logged-in session")
        if current is not None and not current.is_idle():
            return current
        return self._for(parent).create_session(key=parent.key)

    def _for(self, parent: Inheritance) -> SessionManager:
        """This manager, or one that goes where the parent's session went, for what it leaves open."""
        if REGISTRY[parent.backend].remote:
            if not self._options and self._host is None and self._backend_name in (None, parent.backend):
                return SessionManager(backend=parent.backend, agent=self._agent, **parent.options)
        elif self._dsn is None:
            options = {name: value for name, value in parent.options.items() if name != "dsn"}
            return SessionManager(parent.options["dsn"], backend=self._backend_name, agent=self._agent,
                                  host=self._host, **{**options, **self._options})
        return self

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

    def _where(self) -> str:
        """Where a login comes from, as recorded with it."""
        return self._host or socket.gethostname()

    def _bind(self, authenticate: Callable[[AuthBackend[Any]], Login[Any]]) -> Session:
        """Authenticate, then (only on success) hand the login to the session to bind.

        The process's current backend is used if it goes to the same place; while it has a
        transaction open, a fresh one checks the credentials, so that a failed login leaves that
        transaction exactly as it was.
        """
        with Session._binding() as current:
            held = current.backend if current is not None else None
            if held is not None and self._reuses(held):
                backend = held
            else:
                entry = self._registered()
                backend = entry.make(**self._options_for(entry))
            checker = REGISTRY[held.name].make(**held.options) if backend is held and held.busy() else backend
            try:
                login = authenticate(checker)
            except BaseException:
                if checker is not held:
                    checker.close()
                raise
            if checker is not backend:
                checker.close()
            return Session._bind(current, backend, login)
