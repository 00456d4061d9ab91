"""What a Session says of its user: the login's facts, groups, and rows (user, state, project).

A part of ``Session`` (it inherits this class). The facts of the login (key, name, host, times,
ACL) need no database and stay readable in every state, even after the session closed; the
groups come from the backend and the rows through the Factory, and the guard decides both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import SessionError

if TYPE_CHECKING:
    import datetime

    from ._lifecycle import State
    from ._principal import Acl
    from .backends import AuthBackend, GroupInfo, Login
    from .factory import Factory
    from .model import Dataset, Experimenter, Project, UserState


class SessionUser:
    _login: Login[Any] | None
    _backend: AuthBackend[Any]

    if TYPE_CHECKING:
        @property
        def factory(self) -> Factory: ...

        def _check(self, allowed: frozenset[State] = ...) -> None: ...

    @property
    def login(self) -> Login[Any] | None:
        """What the backend reported at the last login or resume (None for a bootstrap session)."""
        return self._login

    def _require_login(self) -> Login[Any]:
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
    def user_name(self) -> str | None:
        return self._login.user_name if self._login else None

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

    def is_guest_session(self) -> bool:
        return bool(self._login and self._login.is_guest)

    def is_su_session(self) -> bool:
        """Whether the session's user is the super user (never raises)."""
        return bool(self._login and self._login.is_super)

    # -- the user's groups -----------------------------------------------------------------------

    def groups(self) -> list[GroupInfo]:
        """The user's groups as the backend has them now (``current``: the session's group)."""
        login = self._require_login()
        self._check()
        return self._backend.groups(login)

    def set_group(self, group: str | int) -> GroupInfo | None:
        """Switch this session's group (a name or id of a group the user is a member or leader of):
        its new objects go there. The user's default group and his other sessions stay as they are.

        For OMERO also ``-1``: every group the user can read, until the next ``idle()``. For the
        local backend the switch is committed at once. Returns the group when the backend knows
        it without asking again.
        """
        login = self._require_login()
        self._check()
        return self._backend.set_group(login, group)

    # -- the user's rows -------------------------------------------------------------------------

    @property
    def user(self) -> Experimenter | None:
        if self._login is None:
            return None
        return self.factory.load_object("Experimenter", self._login.experimenter_id)  # type: ignore[return-value]

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
        login = self._require_login()
        state = self.user_state
        if state is None:
            state = self.factory.new_object("UserState", experimenter=login.experimenter_id)  # type: ignore[assignment]
            assert state is not None
        setattr(state, name, value)
        state.store()
