"""Administration through the session: users, passwords, groups, members and group owners.

Every call acts with the rights of the session's user (``Session.instance()``), checked by the
permission table (``ome_session._permissions``, the README's "Permissions"): a refusal raises
``PermissionDenied`` and changes nothing. Arguments that cannot be right raise ``TypeError`` or
``ValueError`` before any SQL. Each changing call is one unit of work: it commits what it did
before it returns, or changes nothing; it is refused (``SessionError``) while the session's
transaction holds uncommitted writes, which it would otherwise commit along. In a bootstrap
session (trusted code, such as the installer) the calls join the open transaction instead.

Passwords are never written through the Factory (``password_hash`` is a private column): they are
hashed with argon2id here. Whose password may be set:

- one's own, with the old password (admins and the super user too);
- another user's by an admin (who, if he gives ``old_password``, must give his own correctly),
  but the super user's only by the super user;
- never by a guest, nor in a group leader's sudo session as a member;
- anyone's by trusted code (a bootstrap session, such as the installer's).

A group has one owner (its leader, ``groups.leader_id``): ``set_group_owner`` refuses to replace
another owner unless asked to (``replace=True``), so two calls meant to add two owners never
leave one of them silently without his rights.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from . import _passwords, _permissions
from ._admin_input import (
    MAX_PASSWORD,
    check_email,
    check_group_name,
    check_name,
    check_names,
    check_password,
    check_user_name,
    unit_of_work,
)
from .errors import AuthenticationError, PermissionDenied
from .factory import Factory
from .model import Experimenter, ExperimenterGroupMap, Group
from .session import Session

__all__ = ["MAX_PASSWORD", "GroupInfo", "UserInfo", "activate_user", "add_group", "add_members", "add_user",
           "deactivate_user", "list_groups", "list_users", "remove_group_owner", "remove_members",
           "set_group_owner", "set_password", "user_info"]

UserRef = Experimenter | str
GroupRef = Group | str | int

_STORED_HASH = "SELECT password_hash FROM experimenters WHERE id = %s FOR UPDATE"
_SET_HASH = sql.SQL("UPDATE experimenters SET password_hash = %s WHERE id = %s AND {}")
# A deactivated user's sessions end with him, and so do the sessions he opened as others (sudo):
# closed for good, so that activating him again revives none of them.
_CLOSE_SESSIONS = ("UPDATE ome_sessions SET closed_at = now() "
                   "WHERE (experimenter_id = %(id)s OR sudo_by = %(id)s) AND closed_at IS NULL")
_LOCK_GROUP = "SELECT leader_id FROM groups WHERE id = %s FOR UPDATE"
_SUPER_USER = "SELECT %s = " + _permissions.SUPER_USER_SQL


@dataclass(frozen=True)
class UserInfo:
    """A user as ``list_users`` and ``user_info`` show him (never his password hash)."""

    id: int
    name: str
    first_name: str
    last_name: str
    email: str | None
    active: bool
    admin: bool
    guest: bool
    default_group: str | None
    groups: tuple[str, ...]  # member of (the default group included), by name
    owner_of: tuple[str, ...]


@dataclass(frozen=True)
class GroupInfo:
    """A group as ``list_groups`` shows it: its owner and the members the session may see."""

    id: int
    name: str
    owner: str | None
    members: tuple[str, ...]


# -- users ----------------------------------------------------------------------------------------


def add_user(name: str, first_name: str, last_name: str, *, password: str | None = None,
             groups: Iterable[Group | str | int] | str = (), admin: bool = False, guest: bool = False,
             email: str | None = None, institution: str | None = None) -> Experimenter:
    """Create an active user (admins only) and return him.

    ``password=None`` leaves him without one: he cannot log in with a password until one is set
    (an LDAP install checks such users against the directory). The first of ``groups`` (names,
    ids or Groups) is the default group; the user is a member of each. ``ValueError`` if the
    name is taken or a group unknown.
    """
    check_user_name(name)
    check_name(first_name, "first name", empty=True)
    check_name(last_name, "last name", empty=True)
    wanted = check_names(groups, "group", Group, ids=True)
    if password is not None:
        check_password(password)
    check_email(email)
    if institution is not None:
        check_name(institution, "institution")
    for flag, value in (("admin", admin), ("guest", guest)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} is a bool, not {type(value).__name__}")
    if admin and guest:
        raise ValueError("a guest cannot be an admin: guests are read-only")
    _permissions.may_write(_principal(), "create", Experimenter, {"ome_name": name})
    hashed = _passwords.hash_password(password) if password is not None else None
    with unit_of_work("add_user()") as factory:
        existing = factory.find_object(Experimenter, ome_name=name)
        if existing is not None:
            raise ValueError(f"user {name!r} exists (id {existing.id})")
        found = [_group(factory, group) for group in wanted]
        user = factory.new_object(Experimenter, ome_name=name, first_name=first_name, last_name=last_name,
                                  email=email, institution=institution, is_admin=admin, is_guest=guest,
                                  group=found[0] if found else None)
        if hashed is not None:
            _write_hash(factory, int(user.id), hashed)
        for group in dict.fromkeys(found):
            factory.new_object(ExperimenterGroupMap, experimenter=user, group=group)
    return user  # type: ignore[return-value]


def list_users() -> list[UserInfo]:
    """Every user, by name, with the memberships the session may read (all, for admins)."""
    factory = Session.instance().factory
    return _user_infos(factory, factory.find_objects(Experimenter, __order="ome_name"))  # type: ignore[arg-type]


def user_info(user: UserRef | None = None) -> UserInfo:
    """One user (by default the session's own), as ``list_users`` shows him."""
    session = Session.instance()
    factory = session.factory
    if user is None:
        user = session.user_name or ""
    return _user_infos(factory, [_user(factory, user)])[0]


def set_password(user: UserRef, new_password: str, *, old_password: str | None = None) -> None:
    """Set the password of ``user`` (an Experimenter or a user name), by the rules above.

    ``old_password`` is the session user's own current password: needed to change one's own,
    and checked when given for someone else's. ``PermissionDenied`` when the rules refuse,
    ``AuthenticationError`` for a wrong ``old_password``, ``TypeError``/``ValueError`` for a
    password that cannot be one; nothing is written then.
    """
    check_password(new_password, "new_password")
    if old_password is not None:
        check_password(old_password, "old_password")
    _check_user_ref(user)
    principal = _principal()
    with unit_of_work("set_password()") as factory:
        target = int(_user(factory, user).id)
        condition: _permissions.Fragment | None = None
        if principal.trusted:
            pass
        elif principal.is_guest or principal.confined_to is not None:
            raise _refused(principal, "guests and sessions opened by a group leader as a member change no password")
        elif target == principal.user_id:
            if old_password is None:
                raise _refused(principal, "changing one's own password needs the old one (old_password=...)")
            _verify(factory, target, old_password, "the old password is wrong")
        elif not principal.admin:
            raise _refused(principal, "only admins set the passwords of other users")
        else:
            if old_password is not None:
                _verify(factory, int(principal.user_id or 0), old_password, "your own password is wrong")
            if not principal.is_super:
                condition = (sql.SQL("%s IS DISTINCT FROM " + _permissions.SUPER_USER_SQL), [target])
        if not _write_hash(factory, target, _passwords.hash_password(new_password), condition):
            raise _refused(principal, "only the super user sets the super user's password")


def deactivate_user(user: UserRef) -> bool:
    """Deactivate ``user`` (admins; never the super user): he can no longer log in, and every
    session of his, and every session he opened as someone else, ends in the same commit.

    Returns False if he was inactive already (his sessions are ended all the same).
    """
    return _set_active(user, False)


def activate_user(user: UserRef) -> bool:
    """Let a deactivated user log in again (admins); his old sessions stay ended. Returns False
    if he was active already."""
    return _set_active(user, True)


def _set_active(user: UserRef, active: bool) -> bool:
    _check_user_ref(user)
    verb = "activate_user()" if active else "deactivate_user()"
    with unit_of_work(verb) as factory:
        found: Any = _user(factory, user)
        principal = factory.principal
        _permissions.may_write(principal, "update", Experimenter, {"active": active}, (found.id,))
        if not active and not principal.trusted and _is_super_user(factory, found.id):  # the gate refuses too
            raise PermissionDenied(f"{principal.name} ({principal.role}) may not deactivate {found.ome_name}: the "
                                   "super user is never deactivated (make someone else the super user first)")
        changed = found.active != active
        if changed:
            found.active = active
            found.store()
        if not found.active or changed:  # an inactive user's open rows predate his deactivation
            with factory._connection.errors():
                factory.obtain_dbh().execute(_CLOSE_SESSIONS, {"id": found.id})
    return bool(changed)


# -- groups -----------------------------------------------------------------------------------------


def add_group(name: str) -> Group:
    """Create a group (admins only); ``ValueError`` if the name is taken."""
    check_group_name(name)
    _permissions.may_write(_principal(), "create", Group, {"name": name})
    with unit_of_work("add_group()") as factory:
        existing = factory.find_object(Group, name=name)
        if existing is not None:
            raise ValueError(f"group {name!r} exists (id {existing.id})")
        group = factory.new_object(Group, name=name)
    return group  # type: ignore[return-value]


def list_groups() -> list[GroupInfo]:
    """Every group, by name, with its owner and the members the session may see."""
    factory = Session.instance().factory
    groups: list[Any] = factory.find_objects(Group, __order="name")
    users = {u.id: u for u in factory.find_objects(Experimenter)}
    members: dict[int, set[str]] = {}
    for link in factory.find_objects(ExperimenterGroupMap):
        members.setdefault(link.group_id, set()).add(users[link.experimenter_id].ome_name)  # type: ignore[attr-defined]
    for user in users.values():  # a default group is a membership too, and every user's is public
        if user.group_id is not None:  # type: ignore[attr-defined]
            members.setdefault(user.group_id, set()).add(user.ome_name)  # type: ignore[attr-defined]
    return [GroupInfo(int(g.id), g.name, users[g.leader_id].ome_name if g.leader_id in users else None,  # type: ignore[attr-defined]
                      tuple(sorted(members.get(g.id, ())))) for g in groups]


def add_members(group: GroupRef, users: Iterable[UserRef] | UserRef) -> list[str]:
    """Make ``users`` members of ``group`` (admins; the group's owner for non-admin users).

    All or none: one refusal and nobody is added. Returns the names added (members already are
    left as they are).
    """
    _check_group_ref(group)
    wanted = check_names(users, "user", Experimenter)
    with unit_of_work("add_members()") as factory:
        found = _group(factory, group)
        people = [_user(factory, user) for user in wanted]
        added = []
        for user in dict.fromkeys(people):
            _permissions.may_write(factory.principal, "create", ExperimenterGroupMap,
                                   {"experimenter_id": user.id, "group_id": found.id})
            if _membership(factory, user, found) is None and user.group_id != found.id:  # type: ignore[attr-defined]
                factory.new_object(ExperimenterGroupMap, experimenter=user, group=found)
                added.append(str(user.ome_name))  # type: ignore[attr-defined]
    return added


def remove_members(group: GroupRef, users: Iterable[UserRef] | UserRef) -> list[str]:
    """End the membership of ``users`` in ``group`` (admins; the owner for non-admin members).

    ``ValueError`` for a user whose default group it is, or who owns it (end that first). All or
    none. Returns the names removed (non-members are left as they are).
    """
    _check_group_ref(group)
    wanted = check_names(users, "user", Experimenter)
    with unit_of_work("remove_members()") as factory:
        found: Any = _group(factory, group)
        people: list[Any] = [_user(factory, user) for user in wanted]
        removed = []
        for user in dict.fromkeys(people):
            _permissions.may_write(factory.principal, "delete", ExperimenterGroupMap, {}, (user.id, found.id))
            if user.group_id == found.id:
                raise ValueError(f"{found.name} is {user.ome_name}'s default group: give them another default "
                                 "group first")
            if found.leader_id == user.id:
                raise ValueError(f"{user.ome_name} owns {found.name}: end that ownership first")
            link = _membership(factory, user, found)
            if link is not None:
                link.delete()
                removed.append(str(user.ome_name))
    return removed


def set_group_owner(group: GroupRef, user: UserRef, *, replace: bool = False) -> bool:
    """Make ``user`` the owner (leader) of ``group``, and a member of it (admins only).

    A group has one owner: another owner is replaced only with ``replace=True``, else
    ``ValueError`` names him. Returns False if ``user`` owned it already.
    """
    _check_group_ref(group)
    _check_user_ref(user)
    if not isinstance(replace, bool):
        raise TypeError(f"replace is a bool, not {type(replace).__name__}")
    with unit_of_work("set_group_owner()") as factory:
        found: Any = _group(factory, group)
        owner: Any = _user(factory, user)
        _permissions.may_write(factory.principal, "update", Group, {"leader_id": owner.id}, (found.id,))
        current = _locked_owner(factory, found.id)
        if current == owner.id:
            return False
        if not owner.active or owner.is_guest:
            raise ValueError(f"{owner.ome_name} cannot own a group: {'a guest' if owner.is_guest else 'inactive'}")
        if current is not None and not replace:
            previous: Any = factory.load_object(Experimenter, current)
            raise ValueError(f"{found.name} is owned by {previous.ome_name if previous else current}: a group has "
                             "one owner here; end that ownership first, or replace the owner (replace=True, "
                             "or the command's --replace)")
        if _membership(factory, owner, found) is None and owner.group_id != found.id:
            factory.new_object(ExperimenterGroupMap, experimenter=owner, group=found)
        found.leader = owner
        found.store()
    return True


def remove_group_owner(group: GroupRef, user: UserRef) -> bool:
    """``user`` no longer owns ``group`` (admins only); he stays a member. Returns False if he
    did not own it."""
    _check_group_ref(group)
    _check_user_ref(user)
    with unit_of_work("remove_group_owner()") as factory:
        found: Any = _group(factory, group)
        owner: Any = _user(factory, user)
        _permissions.may_write(factory.principal, "update", Group, {"leader_id": None}, (found.id,))
        if _locked_owner(factory, found.id) != owner.id:
            return False
        found.leader = None
        found.store()
    return True


# -- helpers --------------------------------------------------------------------------------------------


def _principal() -> _permissions.Principal:
    return Session.instance().factory.principal


def _check_user_ref(user: Any) -> None:
    if isinstance(user, str):
        check_name(user, "user")
    elif not isinstance(user, Experimenter):
        raise TypeError(f"a user is an Experimenter or a user name, not {type(user).__name__}")


def _check_group_ref(group: Any) -> None:
    if isinstance(group, str):
        check_name(group, "group")
    elif isinstance(group, bool) or not isinstance(group, (Group, int)):
        raise TypeError(f"a group is a Group, a group name or an id, not {type(group).__name__}")


def _user(factory: Factory, user: UserRef) -> Experimenter:
    """The user's row as stored now (an object given is read again: it may be stale)."""
    found = factory.find_object(Experimenter, **({"id": user.id} if isinstance(user, Experimenter) else
                                                 {"ome_name": user}))
    if found is None:
        raise ValueError(f"there is no user {user!r}")
    return found  # type: ignore[return-value]


def _group(factory: Factory, group: GroupRef) -> Group:
    """The group's row as stored now, by object, id, or name (a name is never all digits)."""
    if isinstance(group, Group):
        group = int(group.id)
    if isinstance(group, int) or group.isdigit():
        found = factory.find_object(Group, id=int(group)) if 0 < int(group) < 2**63 else None
    else:
        found = factory.find_object(Group, name=group)
    if found is None:
        raise ValueError(f"there is no group {group!r}")
    return found  # type: ignore[return-value]


def _membership(factory: Factory, user: Any, group: Any) -> Any:
    return factory.find_object(ExperimenterGroupMap, experimenter_id=user.id, group_id=group.id)


def _is_super_user(factory: Factory, user_id: int) -> bool:
    with factory._connection.errors():
        row = factory.obtain_dbh().execute(_SUPER_USER, (user_id,)).fetchone()
    return bool(row and row[0])


def _locked_owner(factory: Factory, group_id: int) -> int | None:
    """The group's owner, its row locked until the unit of work ends: two admins changing owners
    at once are served one after the other, each seeing what the other did."""
    with factory._connection.errors():
        row = factory.obtain_dbh().execute(_LOCK_GROUP, (group_id,)).fetchone()
    return row[0] if row else None


def _user_infos(factory: Factory, users: list[Any]) -> list[UserInfo]:
    groups = {g.id: g for g in factory.find_objects(Group)}
    ids = [u.id for u in users]
    member: dict[int, set[str]] = {}
    for link in factory.find_objects(ExperimenterGroupMap, experimenter_id=("in", ids)):
        member.setdefault(link.experimenter_id, set()).add(groups[link.group_id].name)  # type: ignore[attr-defined]
    infos = []
    for u in users:
        names = member.get(u.id, set())
        default = groups.get(u.group_id)
        if default is not None:
            names.add(default.name)  # type: ignore[attr-defined]
        owns = sorted(g.name for g in groups.values() if g.leader_id == u.id)  # type: ignore[attr-defined]
        infos.append(UserInfo(int(u.id), u.ome_name, u.first_name, u.last_name, u.email, u.active, u.is_admin,
                              u.is_guest, default.name if default is not None else None,  # type: ignore[attr-defined]
                              tuple(sorted(names)), tuple(owns)))
    return infos


def _write_hash(factory: Factory, user_id: int, hashed: str, condition: _permissions.Fragment | None = None) -> bool:
    text, params = condition or (sql.SQL("TRUE"), [])
    with factory._connection.errors():
        done = factory.obtain_dbh().execute(_SET_HASH.format(text), [hashed, user_id, *params])
    return bool(done.rowcount)


def _verify(factory: Factory, user_id: int, password: str, wrong: str) -> None:
    with factory._connection.errors():
        row = factory.obtain_dbh().execute(_STORED_HASH, (user_id,)).fetchone()
    ok, _ = _passwords.verify_password(row[0] if row else None, password)
    if not ok:
        raise AuthenticationError(wrong)


def _refused(principal: _permissions.Principal, why: str) -> PermissionDenied:
    return PermissionDenied(f"{principal.name} ({principal.role}) may not set that password: {why}")
