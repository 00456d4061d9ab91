"""The process's one Session: who is logged in, their Factory, transaction and temporary files.

There is at most one Session per process, reached anywhere as ``Session.instance()`` (in thread
scope, one per thread: ``Session.set_scope``). Only a
``SessionManager`` (logins) and ``Session.bootstrap_instance()`` (installers) create one; the
manager authenticates, the session binds the result. What a session may do is one state
(``_lifecycle``), changed only by the transitions below (bind, idle, close, forget, the reset after
a fork) and checked by one guard, ``_check``, that every entry point calls, the Factory's too. A
forked child never inherits the session: the fork protocol (``_fork``) makes it forget it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from . import _fork, _scope
from ._lifecycle import ACTIVE, BOOTSTRAP, CLOSED, IDLE, INHERITED, LIVE, WORK, Inheritance, State, refusal
from ._scope import Holder, ProcessHolder
from ._session_files import SessionFiles
from ._session_props import SessionProperties
from ._session_user import SessionUser
from ._tempfiles import TempFiles
from ._work import UnitOfWork, this_task, this_thread
from ._work import _local as _threads
from .errors import BootstrapError, NoSessionError, SessionError

if TYPE_CHECKING:
    from .backends import AuthBackend, Login
    from .configuration import Configuration
    from .factory import Factory

log = logging.getLogger(__name__)

_NOT_PUBLIC = (
    "Session() cannot be called directly: log in with SessionManager().create_session(...) "
    "(or, in an installer, start one with Session.bootstrap_instance())"
)


_current: Holder = ProcessHolder()  # where Session.instance() finds the session (see ``_scope``)
_scope_lock = threading.Lock()
_INHERITED: list[object] = []  # a parent's thread-scope holder, in a forked child: never touched


class _Binding:
    """``with Session._binding() as current:``: the process's own session (None if there is none),
    with logins serialised. A class, not a generator context manager: it runs on every login and
    resume. The fork protocol is asked first, so a fork the at-fork hook did not see is found before
    anything of the parent's is used, its lock included (the protocol replaces the holder and its
    lock); the lock released is the one acquired, even if a fork inside the block replaced it."""

    __slots__ = ("_held",)
    _held: threading.RLock

    def __enter__(self) -> Session | None:
        if Session._scope is None:
            Session.scope()  # chosen by the settings, once, before the first session
        _fork.owned()
        current = _current
        self._held = current.lock
        self._held.acquire()
        session = current.session
        if session is not None:
            try:
                # Whose the unit of work is, before anything is sent on its connection: only its
                # own thread (or task) may replace it, or any thread once it is idle.
                session._work.check_owner("log in", state_open=False, take_over=True)
            except BaseException:
                self._held.release()
                raise
        return session

    def __exit__(self, *exc: object) -> None:
        self._held.release()


class Session(SessionUser, SessionProperties, SessionFiles):
    """The logged-in session of this process. See the module docstring for how one is made."""

    _inherited: ClassVar[Inheritance | None] = None  # the parent's session, in a forked child
    _binding: ClassVar[type[_Binding]] = _Binding
    _scope: ClassVar[str | None] = None  # None until chosen (then the settings choose, at the first login)

    _state: State
    _backend: AuthBackend[Any]
    _login: Login[Any] | None
    _work: UnitOfWork
    _tempfiles: TempFiles | None
    _lock: threading.RLock  # the lock of the holder it is the session of (``_scope`` holders)

    def __new__(cls, *args: Any, **kwargs: Any) -> Session:
        raise SessionError(_NOT_PUBLIC)

    @classmethod
    def _make(cls, backend: AuthBackend[Any]) -> Session:
        self = object.__new__(cls)
        self._state, self._backend, self._login = IDLE, backend, None
        self._work, self._tempfiles = UnitOfWork(), None
        self._lock = _current.lock
        _fork.register(self)
        _scope.sessions.add(self)
        return self

    # -- the scope -------------------------------------------------------------------------------

    @classmethod
    def set_scope(cls, scope: str) -> None:
        """Choose at start-up between one session per process (``"process"``, the default) and
        one per thread (``"thread"``: each thread logs in on its own, on a connection borrowed
        from a bounded pool). Refused once a session exists: set it before the first login.
        ``OME_SESSION_SCOPE`` or the settings file's ``"scope"`` choose it too, at the first login.
        """
        with _scope_lock:
            if scope != cls._scope:
                _scope.check_change(scope)
                _use(scope)

    @classmethod
    def scope(cls) -> str:
        """``"process"`` or ``"thread"``: as set, else as the environment or settings file say."""
        scope = cls._scope
        if scope is None:
            from ._settings import configured_scope

            chosen = configured_scope() or "process"
            with _scope_lock:
                if cls._scope is None:
                    _use(chosen)
                scope = cls._scope
        assert scope is not None
        return scope

    # -- the singleton ---------------------------------------------------------------------------

    @staticmethod
    def instance() -> Session:
        """This process's session (in thread scope, this thread's); ``NoSessionError`` (naming the
        caller) when there is none."""
        session = _current.session
        if session is not None:
            return session
        import inspect  # only on this error path: keep `import ome_session` light

        caller = inspect.stack(context=0)[1]
        raise NoSessionError(
            f"no session in this process (asked by {caller.function} at {caller.filename}:"
            f"{caller.lineno}): log in with SessionManager().create_session(...) first"
        )

    @classmethod
    def has_instance(cls) -> bool:
        _fork.owned()  # a fork the hook missed: the parent's session is forgotten first
        return _current.session is not None

    @classmethod
    def bootstrap_instance(cls, dsn: str | None = None) -> Session:
        """A session with a Factory and no user, for installers; fails if a session exists."""
        from ._settings import resolve_dsn
        from .backends import registered

        with cls._binding() as current:
            if current is not None:
                raise BootstrapError("a session already exists in this process: finish or delete it first")
            settings = resolve_dsn(dsn)
            session = cls._make(registered("local").make(dsn=settings.dsn, **settings.connection_options()))
            session._begin(session._backend, None)
            _current.set(session)
            return session

    @classmethod
    def idle(cls) -> None:
        """End the unit of work: run deferred tasks, roll back, clear caches, finish temp files.

        The connection stays open for the next login; until then the Factory raises
        ``SessionIdleError``. A failing deferred task is logged and idle still completes. Only
        the thread (or task) whose unit of work it is may end it: another gets ``SessionError``.
        """
        session = _current.session
        if session is not None:
            session._end()

    @classmethod
    def delete_instance(cls, force: bool = False) -> None:
        """Roll back, close the connection, clean temporary files and drop the session."""
        _fork.owned()
        current = _current
        with current.lock:
            session = _take(current, "delete the session")
            if session is None:
                return
            if not force:
                warnings.warn("deleting the process's session (pass force=True to silence this)", stacklevel=2)
            session._work.run_deferred()
            session._close()

    @classmethod
    def forget_instance(cls) -> None:
        """Drop the session without closing what it holds (a forked child's parent owns that)."""
        current = _current
        with current.lock:
            session = _take(current, "forget the session")
            if session is not None:
                session._forget()

    # -- the guard -------------------------------------------------------------------------------

    def _check(self, allowed: frozenset[State] = WORK) -> None:
        """The one guard: raise unless the state allows this kind of use (``_lifecycle``), and
        the unit of work, if one is open, is the calling thread's (and task's; ``_work``).

        The owner is read before the state: a unit of work is given its owner before the state
        says it is open, and loses it after the state says it ended, so a thread that reads no
        owner and an open state is looking at another thread's login in progress.
        """
        work = self._work
        owner = work.owner
        state = self._state
        if state is not ACTIVE and state not in allowed:
            raise refusal(state)
        try:
            mine = owner is _threads.owner and work.task is None
        except AttributeError:  # this thread never began a unit of work
            mine = False
        if not mine and (owner is not None or state is ACTIVE or state is BOOTSTRAP):
            work.check_owner(state_open=state is ACTIVE or state is BOOTSTRAP)

    def _check_may_end_transaction(self, what: str) -> None:
        self._check()
        self._work.check_outside_blocks(what)

    # -- transitions -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _entered(self, allowed: frozenset[State] = LIVE) -> Iterator[None]:
        """For a use of the connection that an idle session allows (reading the configuration,
        logging out, closing): checked as ``_check`` does, and serialised with logins, so it
        never runs on the connection while another thread logs in on it."""
        with self._lock:
            self._check(allowed)
            yield

    @classmethod
    def _bind(cls, current: Session | None, backend: AuthBackend[Any], login: Login[Any]) -> Session:
        """``login``, which the manager authenticated on ``backend``, becomes the process's session.

        The current session's unit of work ends first (its open transaction is rolled back, never
        inherited by the next user), and what it held is closed unless ``backend`` re-uses it. A
        login session stays the same object with its user replaced; a bootstrap one hands its
        connection on and is closed.
        """
        if current is not None:
            if current._backend.busy():
                log.warning("a transaction was left open by %s; rolled back before the next login", current)
            current._end()
            if current._backend is not backend:
                current._backend.close()
        if current is not None and current._login is not None:
            session = current
        else:
            if current is not None:
                current._hand_on()
            session = cls._make(backend)
        session._begin(backend, login)
        _current.set(session)
        session._reap_once()
        return session

    def _begin(self, backend: AuthBackend[Any], login: Login[Any] | None) -> None:
        """A unit of work begins, ``login``'s or a bootstrap's (None): the one place it does.

        It belongs to the calling thread (and task): its owner is set before the state says it
        is open (see ``_check``)."""
        self._backend = backend
        factory = backend.factory
        if factory is not None:
            factory._attach(self)
        if login is not None:
            backend.begin(login)
        self._login = login
        self._work = UnitOfWork(this_thread(), this_task())
        self._state = ACTIVE if login is not None else BOOTSTRAP

    def _end(self) -> None:
        """The unit of work ends (``idle()``): ACTIVE or BOOTSTRAP become IDLE.

        Only its own thread (or task) may end it, or any thread once that one ended. An idle
        session's deferred tasks run and its leftover files go, but nothing is sent: its
        connection may be carrying another thread's login by now.
        """
        state = self._state
        if state is CLOSED or state is INHERITED:
            return
        work = self._work
        if state is not IDLE:
            work.check_owner("end the unit of work (idle())", state_open=False, take_over=True)
        if work.deferred and not _fork.owned():
            return  # a fork the hook missed: those tasks are the parent's
        work.run_deferred()
        if state is IDLE:
            self._finish_leftovers()
            return
        try:
            self._backend.idle()
        finally:
            self._state = IDLE
            work.end()
            self._finish_leftovers()

    def _close(self) -> None:
        """Roll back, close the connection (or client) and clean temporary files: CLOSED for good."""
        if self._state is CLOSED or self._state is INHERITED or not _fork.owned():
            return
        self._state = CLOSED
        try:
            if self._tempfiles is not None:
                self._tempfiles.close()
        finally:
            self._backend.close()

    def _forget(self) -> None:
        """CLOSED without closing anything: whoever else holds the connection keeps it."""
        if self._state is not CLOSED:
            self._state = CLOSED
            if self._tempfiles is not None:
                self._tempfiles.forget()
            self._backend.forget()

    def _hand_on(self) -> None:
        """A bootstrap session made way for a login, which goes on with its connection."""
        self._state = CLOSED
        if self._tempfiles is not None:
            self._tempfiles.close()

    def _log_out(self) -> None:
        """Revoke the key for good (the backend rolls an open transaction back first), then close."""
        _fork.owned()
        with self._entered():
            if self._login is not None:
                self._backend.logout(self._login)
            if _current.session is self:
                _current.set(None)
            self._work.run_deferred()
            self._close()

    def _reset_after_fork_in_child(self) -> None:
        if self._state is not CLOSED:
            self._state = INHERITED
        self._work = UnitOfWork()  # the parent's threads do not exist here: it is nobody's

    def _inheritance(self) -> Inheritance | None:
        if self._login is None:
            return None
        return Inheritance(self._login.key, self._backend.name, self._backend.options)

    # -- bootstrap -------------------------------------------------------------------------------

    def finish_bootstrap(self) -> None:
        """End a bootstrap session; refuses while uncommitted changes exist (nothing is lost silently)."""
        if self._login is not None:
            raise BootstrapError("finish_bootstrap() is for bootstrap sessions only")
        with self._entered():
            if self.factory._has_uncommitted_changes():
                raise BootstrapError(
                    "the bootstrap session has uncommitted changes: commit_transaction() or "
                    "rollback_transaction() before finish_bootstrap()"
                )
            if _current.session is self:
                _current.set(None)
            self._close()

    # -- what the session holds ------------------------------------------------------------------

    @property
    def factory(self) -> Factory:
        factory = self._backend.factory
        if factory is None:
            raise SessionError(f"this {self._backend.name} session has no local Factory")
        return factory

    @property
    def configuration(self) -> Configuration:
        self._check(LIVE)
        return self.factory.configuration

    @property
    def backend(self) -> AuthBackend[Any]:
        return self._backend

    @property
    def gateway(self) -> Any:
        """An omero-py ``BlitzGateway`` on this OMERO session's client, for the current unit of work.

        Do not ``close()`` it: log out through the manager, and let ``idle()`` end the unit of
        work. ``SessionError`` for a session of another backend.
        """
        login = self._require_login()
        self._check()
        return self._backend.gateway(login)

    def is_bootstrap(self) -> bool:
        return self._login is None

    def is_idle(self) -> bool:
        """Whether the session refuses work until the next login (idle, closed or inherited)."""
        return self._state is not ACTIVE and self._state is not BOOTSTRAP

    @property
    def closed(self) -> bool:
        """Closed for good (``delete_instance``, ``logout``, ...): it never reconnects."""
        return self._state is CLOSED

    def keep_alive(self) -> None:
        """Slide the idle expiry of this session's key; ``SessionKeyError`` once it is dead."""
        login = self._require_login()
        self._check()
        self._backend.touch(login)

    # -- transactions ----------------------------------------------------------------------------

    def commit_transaction(self) -> None:
        self.factory.commit_transaction()

    def rollback_transaction(self) -> None:
        self.factory.rollback_transaction()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """Commit on success, roll back on an exception; nested use makes a savepoint.

        Inside a block the block decides: ``commit_transaction()`` and ``rollback_transaction()``
        raise ``SessionError`` there.
        """
        factory = self.factory
        self._check()
        with self._work.transaction(factory):
            yield self

    def defer(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` after the current unit of work, before ``idle()`` cleans up."""
        self._check(LIVE)
        self._work.defer(fn)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """``with manager.create_session(...) as session:`` ends the unit of work on the way out,
        on an exception too (an open transaction is rolled back), as ``Session.idle()`` does."""
        self._end()

    def __repr__(self) -> str:
        who = "bootstrap" if self._login is None else self._login.user_name
        return f"<Session {who} {self._state.value}>"


def inherited() -> Inheritance | None:
    """The session this process inherited from the one it was forked from, if any."""
    return Session._inherited


def _take(current: Holder, action: str) -> Session | None:
    """Unset the holder's session (its lock held) once the caller may end its unit of work."""
    session = current.session
    if session is not None:
        session._work.check_owner(action, state_open=False, take_over=True)
        current.set(None)
    return session


@_fork.at_fork_in_child
def _forget_in_child() -> None:
    """The fork protocol's reset of the singleton: the child has no session, only what it takes to
    log in again. A fresh holder and lock: a thread of the parent may have held the old one."""
    global _current, _scope_lock  # noqa: PLW0603  (replaced whole: a parent's thread may hold their locks)
    _scope_lock = threading.Lock()
    old = _current
    session, _current = old.session, _scope.holder(Session._scope)
    if isinstance(old, _scope.ThreadHolder):
        _INHERITED.append(old)  # the other threads' sessions went with the parent's threads
    if session is not None:
        Session._inherited = session._inheritance()


def _use(scope: str) -> None:
    """Switch the holder (under ``_scope_lock``, with no session alive)."""
    global _current  # noqa: PLW0603  (one holder per scope)
    Session._scope = scope
    _current = _scope.holder(scope)


def _close_at_exit() -> None:
    """Interpreter exit: the owning process rolls back and closes; a child touches nothing."""
    _fork.owned()  # a fork the hook missed: the parent's session is let go of first
    session = _current.session
    _current.set(None)
    if session is not None:
        try:
            session._work.check_owner("close the session at exit", state_open=False, take_over=True)
        except SessionError:
            return  # a daemon thread is inside its unit of work: closing under it could crash it
        session._close()


atexit.register(_close_at_exit)
