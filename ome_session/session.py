"""The process's one Session: who is logged in, their Factory, transaction and temporary files.

There is at most one Session per process, reached anywhere as ``Session.instance()``. Only a
``SessionManager`` (logins) and ``Session.bootstrap_instance()`` (installers) create one; replacing
it is serialised by one lock. A forked child never inherits it (see ``_fork``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from psycopg import sql

from ._principal import Acl
from ._tempfiles import TempFiles
from ._tempfiles import reap as _reap_temp
from .errors import BootstrapError, NoSessionError, SessionError, SessionIdleError

if TYPE_CHECKING:
    import datetime

    from .backends import AuthBackend, Login
    from .configuration import Configuration
    from .factory import Factory
    from .model import Dataset, Experimenter, Project, UserState

log = logging.getLogger(__name__)

_NOT_PUBLIC = (
    "Session() cannot be called directly: log in with SessionManager().create_session(...) "
    "(or, in an installer, start one with Session.bootstrap_instance())"
)


# The singleton and this process's pid, where Session.instance() reads them with the fewest
# lookups: it is called everywhere, often in loops. Written only through Session._instance and
# Session._process_pid (the at-fork hook keeps the pid current, so no getpid() call is needed).
_current: list[Any] = [None, os.getpid()]


class _SessionType(type):
    """Session's metaclass: ``Session._instance`` and ``_process_pid`` live in ``_current``."""

    @property
    def _instance(cls) -> Session | None:
        session: Session | None = _current[0]
        return session

    @_instance.setter
    def _instance(cls, session: Session | None) -> None:
        _current[0] = session

    @property
    def _process_pid(cls) -> int:
        pid: int = _current[1]
        return pid

    @_process_pid.setter
    def _process_pid(cls, pid: int) -> None:
        _current[1] = pid


class Session(metaclass=_SessionType):
    """The logged-in session of this process. See the module docstring for how one is made."""

    _lock: ClassVar[threading.RLock] = threading.RLock()
    _inherited_key: ClassVar[str | None] = None  # the parent's key, for reattach() in a child
    _inherited_dsn: ClassVar[str | None] = None  # and the database that key lives in
    _inherited_options: ClassVar[dict[str, Any]] = {}  # and how it was reached (timeouts, prepare)
    _inherited_backend: ClassVar[tuple[str, dict[str, Any]] | None] = None  # or the remote backend's options
    _reaped_roots: ClassVar[set[Path]] = set()

    _factory: Factory | None
    _backend: AuthBackend | None
    _login: Login | None
    _bootstrap: bool
    _pid: int
    _tempfiles: TempFiles | None
    _deferred: list[Callable[[], object]]
    _tx_depth: int
    _idle: bool

    def __new__(cls, *args: Any, **kwargs: Any) -> Session:
        raise SessionError(_NOT_PUBLIC)

    @classmethod
    def _make(cls, *, factory: Factory | None, backend: AuthBackend | None, login: Login | None,
              bootstrap: bool = False) -> Session:
        self = object.__new__(cls)
        self._factory = factory
        self._backend = backend
        self._login = login
        self._bootstrap = bootstrap
        self._pid = os.getpid()
        self._tempfiles = None
        self._deferred = []
        self._tx_depth = 0
        self._idle = False
        return self

    # -- the singleton ---------------------------------------------------------------------------

    @staticmethod
    def instance() -> Session:
        """This process's session; ``NoSessionError`` (naming the caller) when there is none."""
        session = _current[0]
        # The hot path: the pid the at-fork hook keeps up to date, instead of a getpid() system
        # call on every access. Forks the hook cannot see are caught by _own_instance() below and,
        # in any case, by the connection's own pid check before a byte reaches the database.
        if session is not None and session._pid == _current[1]:
            return session  # type: ignore[no-any-return]
        session = Session._own_instance()
        if session is None:
            import inspect  # only on this error path: keep `import ome_session` light

            caller = inspect.stack(context=0)[1]
            raise NoSessionError(
                f"no session in this process (asked by {caller.function} at {caller.filename}:"
                f"{caller.lineno}): log in with SessionManager().create_session(...) first"
            )
        return session

    @classmethod
    def has_instance(cls) -> bool:
        return cls._own_instance() is not None

    @classmethod
    def _own_instance(cls) -> Session | None:
        """The singleton if this process made it; one inherited through a fork is forgotten.

        The at-fork hook normally did that already; this catches forks it cannot see (``fork()``
        called from C, as uWSGI does by default).
        """
        session = cls._instance
        if session is not None and session._pid != os.getpid():
            from ._fork import after_fork_in_child  # _fork imports this module

            after_fork_in_child()
            return None
        return session

    @classmethod
    def bootstrap_instance(cls, dsn: str | None = None) -> Session:
        """A session with a Factory and no user, for installers; fails if a session exists."""
        from ._settings import resolve_dsn
        from .factory import Factory

        with cls._lock:
            if cls._instance is not None:
                raise BootstrapError("a session already exists in this process: finish or delete it first")
            settings = resolve_dsn(dsn)
            cls._instance = cls._make(factory=Factory(settings.dsn, **settings.connection_options()),
                                      backend=None, login=None, bootstrap=True)
            return cls._instance

    @classmethod
    def _install(cls, session: Session) -> None:
        cls._instance = session

    @classmethod
    def idle(cls) -> None:
        """End the unit of work: run deferred tasks, roll back, clear caches, finish temp files.

        The connection stays open for the next login; until then the Factory raises
        ``SessionIdleError``. A failing deferred task is logged and idle still completes.
        """
        session = cls._instance
        if session is None or session._pid != os.getpid():
            return
        session._run_deferred()
        try:
            if session._factory is not None:
                session._factory._idle_now()
        finally:
            session._tx_depth = 0
            session._idle = True
            session._finish_leftovers()
            if session._backend is not None:
                session._backend.idle()

    @classmethod
    def delete_instance(cls, force: bool = False) -> None:
        """Roll back, close the connection, clean temporary files and drop the session."""
        with cls._lock:
            session, cls._instance = cls._instance, None
        if session is None:
            return
        if not force:
            warnings.warn("deleting the process's session (pass force=True to silence this)", stacklevel=2)
        session._run_deferred()
        session._close()

    @classmethod
    def forget_instance(cls) -> None:
        """Drop the session without closing what it holds (for a forked child: the parent owns it)."""
        with cls._lock:
            session, cls._instance = cls._instance, None
        if session is not None:
            session._forget()

    def _close(self) -> None:
        try:
            if self._pid != os.getpid():
                self._forget()
                return
            if self._tempfiles is not None:
                self._tempfiles.close()
            if self._backend is not None:
                self._backend.close()
        finally:
            if self._factory is not None:
                self._factory.close()

    def _forget(self) -> None:
        if self._tempfiles is not None:
            self._tempfiles.forget()
        if self._backend is not None:
            self._backend.forget()
        if self._factory is not None:
            self._factory.forget()

    # -- bootstrap -------------------------------------------------------------------------------

    def finish_bootstrap(self) -> None:
        """End a bootstrap session; refuses while uncommitted changes exist (nothing is lost silently)."""
        if not self._bootstrap:
            raise BootstrapError("finish_bootstrap() is for bootstrap sessions only")
        factory = self.factory
        if factory.in_transaction:
            with factory._connection.errors():
                row = factory._connection.raw.execute(
                    "SELECT pg_current_xact_id_if_assigned() IS NOT NULL").fetchone()
            if row and row[0]:
                raise BootstrapError(
                    "the bootstrap session has uncommitted changes: commit_transaction() or "
                    "rollback_transaction() before finish_bootstrap()"
                )
        with Session._lock:
            if Session._instance is self:
                Session._instance = None
        self._close()

    # -- what the session holds ------------------------------------------------------------------

    @property
    def factory(self) -> Factory:
        if self._factory is None:
            raise SessionError(f"this {self._backend.name if self._backend else ''} session has no local Factory")
        return self._factory

    @property
    def configuration(self) -> Configuration:
        return self.factory.configuration

    @property
    def backend(self) -> AuthBackend | None:
        return self._backend

    def _require_login(self) -> Login:
        if self._login is None:
            raise SessionError("a bootstrap session has no user: log in through SessionManager")
        return self._login

    @property
    def session_key(self) -> str | None:
        return self._login.key if self._login else None

    @property
    def experimenter_id(self) -> int | None:
        return self._login.experimenter_id if self._login else None

    @property
    def user(self) -> Experimenter | None:
        if self._login is None:
            return None
        return self.factory.load_object("Experimenter", self._login.experimenter_id)  # type: ignore[return-value]

    @property
    def user_name(self) -> str | None:
        return self._login.user_name if self._login else None

    @property
    def user_state(self) -> UserState | None:
        if self._login is None:
            return None
        return self.factory.load_object("UserState", self._login.experimenter_id)  # type: ignore[return-value]

    @property
    def project(self) -> Project | None:
        state = self.user_state
        return state.project if state is not None else None

    @project.setter
    def project(self, value: Project | None) -> None:
        self._set_state("project", value)

    @property
    def dataset(self) -> Dataset | None:
        state = self.user_state
        return state.dataset if state is not None else None

    @dataset.setter
    def dataset(self, value: Dataset | None) -> None:
        self._set_state("dataset", value)

    def _set_state(self, name: str, value: Any) -> None:
        """Kept in ``user_states`` with the current unit of work: commit to persist it."""
        state = self.user_state
        if state is None:
            state = self.factory.new_object("UserState", experimenter=self._require_login().experimenter_id)  # type: ignore[assignment]
            assert state is not None
        setattr(state, name, value)
        state.store()
        login = self._require_login()
        login.project_id = state.values().get("project_id")
        login.dataset_id = state.values().get("dataset_id")

    @property
    def host(self) -> str | None:
        return self._login.host if self._login else None

    @property
    def started(self) -> datetime.datetime | None:
        return self._login.started if self._login else None

    @property
    def last_access(self) -> datetime.datetime | None:
        return self._login.last_access if self._login else None

    @property
    def acl(self) -> Acl | None:
        return self._login.acl if self._login else None

    @property
    def sudo_by(self) -> int | None:
        return self._login.sudo_by if self._login else None

    @property
    def gateway(self) -> Any:
        """An omero-py ``BlitzGateway`` on this OMERO session's client, for the current unit of work.

        Do not ``close()`` it: log out through the manager, and let ``idle()`` end the unit of
        work. ``SessionError`` for a session of another backend.
        """
        login = self._require_login()
        self._check_active()
        gateway = getattr(self._backend, "gateway", None)
        if gateway is None:
            raise SessionError("only an OMERO session has a gateway: log in with SessionManager(backend='omero', ...)")
        return gateway(login)

    def set_group(self, group: str | int) -> None:
        """Switch the session's group (a name or id of one of the user's groups).

        For OMERO also ``-1``: every group the user can read, until the next ``idle()``. For the
        local backend this makes the group the user's primary group (``_maintenance.switch_group``).
        """
        login = self._require_login()
        self._check_active()
        switch = getattr(self._backend, "set_group", None)
        if switch is not None:
            switch(login, group)
            return
        from . import _maintenance

        _maintenance.switch_group(self, str(group))

    def is_guest_session(self) -> bool:
        return bool(self._login and self._login.is_guest)

    def is_su_session(self) -> bool:
        """Whether the session's user is the super user (never raises, unlike the original)."""
        return bool(self._login and self._login.is_super)

    def is_bootstrap(self) -> bool:
        return self._bootstrap

    def is_idle(self) -> bool:
        return self._idle

    def keep_alive(self) -> None:
        """Slide the idle expiry of this session's key; ``SessionKeyError`` once it is dead."""
        login = self._require_login()
        self._check_active()
        assert self._backend is not None
        self._backend.touch(login)

    def _check_active(self) -> None:
        if self._idle:
            raise SessionIdleError("the session is idle: log in again with SessionManager().create_session(...)")

    # -- transactions ----------------------------------------------------------------------------

    def commit_transaction(self) -> None:
        self.factory.commit_transaction()

    def rollback_transaction(self) -> None:
        self.factory.rollback_transaction()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """Commit on success, roll back on an exception; nested use makes a savepoint."""
        factory = self.factory
        dbh = factory.obtain_dbh()
        depth = self._tx_depth
        self._tx_depth += 1
        savepoint = sql.Identifier(f"ome_session_{depth}")
        try:
            if depth:
                with factory._connection.errors():
                    dbh.execute(sql.SQL("SAVEPOINT {}").format(savepoint))
            yield self
        except BaseException:
            self._tx_depth = depth
            if depth:
                factory._cache.clear()
                if factory._connection.usable:
                    with factory._connection.errors():
                        dbh.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(savepoint))
            elif factory._connection.usable:
                factory.rollback_transaction()
            raise
        self._tx_depth = depth
        if depth:
            with factory._connection.errors():
                dbh.execute(sql.SQL("RELEASE SAVEPOINT {}").format(savepoint))
        else:
            factory.commit_transaction()

    def defer(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` after the current unit of work, before ``idle()`` cleans up."""
        if not callable(fn):
            raise TypeError(f"defer() takes a callable, not {type(fn).__name__}")
        self._deferred.append(fn)

    def _run_deferred(self) -> None:
        tasks, self._deferred = self._deferred, []
        for task in tasks:
            try:
                task()
            except Exception:
                log.exception("a deferred task failed (%r); going on", task)

    # -- temporary files -------------------------------------------------------------------------

    def _temp(self) -> TempFiles:
        if self._tempfiles is None:
            root = None
            if self._factory is not None:
                configured = self._factory.configuration.get("tmp_dir")
                root = Path(configured) if configured else None
            self._tempfiles = TempFiles(root)
        return self._tempfiles

    def _reap_once(self) -> None:
        """At the first login of a process: remove the temporary directories of dead processes."""
        root = self._temp().root
        if root in Session._reaped_roots:
            return
        Session._reaped_roots.add(root)
        try:
            removed = _reap_temp(root)
        except (OSError, SessionError) as exc:
            log.warning("could not reap temporary directories under %s: %s", root, exc)
            return
        if removed:
            log.info("removed %d temporary directories of dead processes under %s", len(removed), root)

    def get_temporary_filename(self, prog_name: str = "ome", extension: str = "tmp") -> Path:
        """A new, empty file (0600) of this process, removed by ``finish_temporary_file`` or idle."""
        return self._temp().new_file(prog_name, extension)

    def get_scratch_dir(self, prog_name: str = "ome", extension: str = "dir") -> Path:
        """A new directory (0700) of this process, removed with its contents when finished."""
        return self._temp().new_dir(prog_name, extension)

    def finish_temporary_file(self, path: str | os.PathLike[str]) -> None:
        """Remove a file or scratch dir this process created; anything else raises ValueError."""
        self._temp().finish(path)

    def temporary_file(self, prog_name: str = "ome", extension: str = "tmp") -> contextlib.AbstractContextManager[Path]:
        return self._temp().file(prog_name, extension)

    def scratch_dir(self, prog_name: str = "ome", extension: str = "dir") -> contextlib.AbstractContextManager[Path]:
        return self._temp().scratch_dir(prog_name, extension)

    def _finish_leftovers(self) -> None:
        if self._tempfiles is None:
            return
        left = self._tempfiles.finish_all()
        if left:
            warnings.warn(f"idle() removed {len(left)} temporary file(s) left unfinished: "
                          f"{', '.join(str(p) for p in left[:5])}", stacklevel=3)

    def __repr__(self) -> str:
        who = "bootstrap" if self._bootstrap else (self._login.user_name if self._login else "?")
        return f"<Session {who}{' idle' if self._idle else ''}>"


def _close_at_exit() -> None:
    """Interpreter exit: the owning process rolls back and closes; a child touches nothing."""
    session = Session._instance
    if session is None:
        return
    Session._instance = None
    if session._pid == os.getpid():
        session._close()
    else:
        session._forget()


atexit.register(_close_at_exit)
