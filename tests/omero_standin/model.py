"""The stand-in server's state: users, groups and OMERO sessions, with no Ice in sight.

Kept apart from the servants so the session rules (reference counts, idle and live expiry,
who may do what) live in one place and read like the server behaviour they copy.
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# OMERO's built-in rows: root (0) and guest (1); groups system (0), user (1), guest (2).
SYSTEM_GROUP_ID = 0
USER_GROUP_ID = 1
GUEST_GROUP_ID = 2
ROOT_USER_ID = 0
GUEST_USER_ID = 1

DEFAULT_TIME_TO_IDLE_MS = 600_000  # omero.sessions.timeout
DEFAULT_TIME_TO_LIVE_MS = 0  # omero.sessions.maximum: 0 means no upper bound


class SessionGone(Exception):
    """The session was closed, killed or reaped earlier (OMERO: RemovedSessionException)."""


class SessionExpired(SessionGone):
    """The session timed out and is reaped by this very lookup (OMERO: SessionTimeoutException)."""


@dataclass(frozen=True)
class Group:
    id: int
    name: str
    permissions: str = "rw----"


@dataclass(frozen=True)
class User:
    """An experimenter. ``password`` None copies OMERO's empty hash: any password is accepted."""

    id: int
    name: str
    password: str | None
    first_name: str = ""
    last_name: str = ""
    email: str = ""
    group_ids: tuple[int, ...] = ()  # the first non-"user" group is the default group
    leader_of: tuple[int, ...] = ()

    @property
    def is_admin(self) -> bool:
        # OMERO: an administrator is any member of the "system" group.
        return SYSTEM_GROUP_ID in self.group_ids

    @property
    def is_guest(self) -> bool:
        return self.id == GUEST_USER_ID

    @property
    def default_group_id(self) -> int:
        for gid in self.group_ids:
            if gid != USER_GROUP_ID:
                return gid
        return self.group_ids[0]


@dataclass
class Session:
    """One OMERO session; several clients may hold it (``refcount``)."""

    id: int
    uuid: str
    user: User
    group_id: int
    time_to_idle_ms: int
    time_to_live_ms: int
    started_ms: int
    last_access_ms: int
    agent: str = ""
    ip: str = ""
    sudoer: User | None = None
    refcount: int = 1

    def expired(self, now_ms: int) -> bool:
        # The one expiry rule: idle longer than timeToIdle, or older than timeToLive (0 = never).
        idle = self.time_to_idle_ms > 0 and now_ms - self.last_access_ms > self.time_to_idle_ms
        old = self.time_to_live_ms > 0 and now_ms - self.started_ms > self.time_to_live_ms
        return idle or old

    def describe(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "id": self.id,
            "user": self.user.name,
            "group_id": self.group_id,
            "refcount": self.refcount,
            "time_to_idle_ms": self.time_to_idle_ms,
            "time_to_live_ms": self.time_to_live_ms,
            "started_ms": self.started_ms,
            "last_access_ms": self.last_access_ms,
            "agent": self.agent,
            "sudoer": self.sudoer.name if self.sudoer else None,
        }


class Clock:
    """Wall-clock milliseconds plus an offset tests can push forward, so expiry needs no sleeping."""

    def __init__(self) -> None:
        self._offset_ms = 0
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            return int(time.time() * 1000) + self._offset_ms

    def advance(self, ms: int) -> int:
        if ms < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset_ms += ms
        return self.now_ms()


class Directory:
    """Users and groups, answering the lookups OMERO's IAdmin and login make."""

    def __init__(self, groups: Iterable[Group], users: Iterable[User]) -> None:
        self.groups = {g.id: g for g in groups}
        self.users = {u.id: u for u in users}
        self._groups_by_name = {g.name: g for g in self.groups.values()}
        self._users_by_name = {u.name: u for u in self.users.values()}

    def user_named(self, name: str) -> User | None:
        return self._users_by_name.get(name)

    def group_named(self, name: str) -> Group | None:
        return self._groups_by_name.get(name)

    def authenticate(self, name: str, password: str) -> User | None:
        user = self._users_by_name.get(name)
        if user is None:
            return None
        if user.password is None:
            return user
        return user if user.password == password else None

    def members_of(self, group_id: int) -> list[User]:
        return [u for u in self.users.values() if group_id in u.group_ids]


@dataclass
class SessionTable:
    """Every live session, with OMERO's reference counting and lazy expiry.

    ``on_removed`` hooks run (under the table lock) whenever a session leaves the table, so the
    servant layer can drop that session's service factories like blitz's reapSession does.
    """

    clock: Clock
    default_time_to_idle_ms: int = DEFAULT_TIME_TO_IDLE_MS
    default_time_to_live_ms: int = DEFAULT_TIME_TO_LIVE_MS
    on_removed: list[Callable[[Session], None]] = field(default_factory=list)
    _sessions: dict[str, Session] = field(default_factory=dict)
    _next_id: int = 1
    lock: threading.RLock = field(default_factory=threading.RLock)

    def create(
        self,
        user: User,
        group_id: int,
        *,
        agent: str = "",
        ip: str = "",
        sudoer: User | None = None,
        time_to_idle_ms: int | None = None,
        time_to_live_ms: int | None = None,
    ) -> Session:
        with self.lock:
            now = self.clock.now_ms()
            session = Session(
                id=self._next_id,
                uuid=str(uuidlib.uuid4()),
                user=user,
                group_id=group_id,
                time_to_idle_ms=(self.default_time_to_idle_ms if time_to_idle_ms is None else time_to_idle_ms),
                time_to_live_ms=(self.default_time_to_live_ms if time_to_live_ms is None else time_to_live_ms),
                started_ms=now,
                last_access_ms=now,
                agent=agent,
                ip=ip,
                sudoer=sudoer,
            )
            self._next_id += 1
            self._sessions[session.uuid] = session
            return session

    def lookup(self, uuid: str, *, touch: bool) -> Session:
        """The live session, reaping it first if it has expired; ``touch`` slides the idle clock."""
        with self.lock:
            session = self._sessions.get(uuid)
            if session is None:
                raise SessionGone(uuid)
            now = self.clock.now_ms()
            if session.expired(now):
                self._remove(session)
                raise SessionExpired(uuid)
            if touch:
                session.last_access_ms = now
            return session

    def join(self, uuid: str) -> Session:
        """Another holder: OMERO's login with the session UUID as both name and password."""
        with self.lock:
            session = self.lookup(uuid, touch=True)
            session.refcount += 1
            return session

    def detach(self, uuid: str) -> int:
        """Drop one reference without closing (the session idles out at refcount 0)."""
        with self.lock:
            session = self.lookup(uuid, touch=False)
            session.refcount -= 1
            return session.refcount

    def close(self, uuid: str) -> int:
        """ISession.closeSession: -1 if unknown, -2 once removed, else the references left."""
        with self.lock:
            try:
                session = self.lookup(uuid, touch=False)
            except SessionGone:
                return -1
            session.refcount -= 1
            if session.refcount < 1:
                self._remove(session)
                return -2
            return session.refcount

    def sweep(self) -> None:
        """Reap every expired session, as the server's periodic sweep would."""
        with self.lock:
            now = self.clock.now_ms()
            for session in [s for s in self._sessions.values() if s.expired(now)]:
                self._remove(session)

    def live(self) -> list[Session]:
        with self.lock:
            self.sweep()
            return list(self._sessions.values())

    def _remove(self, session: Session) -> None:
        del self._sessions[session.uuid]
        for hook in self.on_removed:
            hook(session)


def build_directory(spec: Mapping[str, Any]) -> Directory:
    """Users and groups from the JSON config, plus OMERO's built-in root and guest rows.

    Spec keys: ``root_password`` (default "omero"), ``groups`` [{name, permissions?}],
    ``users`` [{name, password, first_name?, last_name?, email?, groups: [names],
    leader_of?: [names], admin?: bool}]. ``password`` null means any password (like guest).
    """
    groups = [
        Group(SYSTEM_GROUP_ID, "system", "rw----"),
        Group(USER_GROUP_ID, "user", "rwr---"),
        Group(GUEST_GROUP_ID, "guest", "rw----"),
    ]
    by_name = {g.name: g for g in groups}
    for entry in spec.get("groups", []):
        group = Group(len(groups) + 1, entry["name"], entry.get("permissions", "rw----"))
        if group.name in by_name:
            raise ValueError(f"duplicate group {group.name!r}")
        groups.append(group)
        by_name[group.name] = group

    def ids(names: Iterable[str]) -> tuple[int, ...]:
        try:
            return tuple(by_name[n].id for n in names)
        except KeyError as exc:
            raise ValueError(f"unknown group {exc.args[0]!r}") from None

    users = [
        User(
            ROOT_USER_ID,
            "root",
            spec.get("root_password", "omero"),
            "root",
            "root",
            "",
            (SYSTEM_GROUP_ID, USER_GROUP_ID),
            (SYSTEM_GROUP_ID,),
        ),
        User(GUEST_USER_ID, "guest", None, "Guest", "Account", "", (GUEST_GROUP_ID,)),
    ]
    for entry in spec.get("users", []):
        own = ids(entry.get("groups", [])) + ids(entry.get("leader_of", []))
        extra = (SYSTEM_GROUP_ID,) if entry.get("admin") else ()
        # Active OMERO accounts are always members of "user"; admins also of "system".
        member = tuple(dict.fromkeys(own + extra + (USER_GROUP_ID,)))
        users.append(
            User(
                id=len(users) + 1,
                name=entry["name"],
                password=entry.get("password"),
                first_name=entry.get("first_name", ""),
                last_name=entry.get("last_name", ""),
                email=entry.get("email", ""),
                group_ids=member,
                leader_of=ids(entry.get("leader_of", [])),
            )
        )
    names = [u.name for u in users]
    if len(set(names)) != len(names):
        raise ValueError("duplicate user names")
    return Directory(groups, users)
