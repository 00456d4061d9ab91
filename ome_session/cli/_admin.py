"""``user`` and ``group``: administration as ``omero user`` and ``omero group`` do it.

Each command acts in the current session (``ome-session login`` first) through
``ome_session.admin``, so the permission table decides (a refusal exits 5). Passwords are never
echoed: a new password comes from ``-P`` (``user add``), else $OME_SESSION_NEW_PASSWORD, else a
prompt that asks twice; your own, which ``user password`` asks for first as ``omero user
password`` does, from $OME_SESSION_PASSWORD (as for a login), else a prompt.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import _prompt, admin
from .._admin_input import check_password
from ..model import Experimenter, Group
from . import _output
from ._context import PASSWORD_ENV, Context

NEW_PASSWORD_ENV = "OME_SESSION_NEW_PASSWORD"


def _new_password(given: str | None, label: str, *ways: str) -> str:
    """-P, else $OME_SESSION_NEW_PASSWORD, else typed twice on the terminal."""
    password = _prompt.given(given, NEW_PASSWORD_ENV)
    if password is not None:
        return check_password(password)
    _prompt.need_terminal(f"no password {label}", *ways, f"set {NEW_PASSWORD_ENV}")
    return _prompt.ask_new_password(f"Password {label}: ", check=_acceptable)


def _acceptable(password: str) -> None:
    check_password(password)


def _own_password(name: str) -> str:
    """Your own password, which confirms a change of passwords: $OME_SESSION_PASSWORD, else asked."""
    password = _prompt.given(None, PASSWORD_ENV)
    if password is not None:
        return password
    _prompt.need_terminal(f"no password for your user ({name})", f"set {PASSWORD_ENV}")
    return _prompt.ask_once(f"Password for your user ({name}): ")


# -- user -------------------------------------------------------------------------------------------


def user_add(ctx: Context) -> int:
    a = ctx.args
    session, _ = ctx.current()
    if not a.groups:
        raise ValueError("name at least one group for the new user with --group-name GROUP (or --group-id ID); "
                         "the first is the default group")
    existing = session.factory.find_object(Experimenter, ome_name=a.username) if a.ignore_existing else None
    if existing is not None:
        print(f"User exists: {a.username} (id={existing.id})")
        return 0
    password = None if a.no_password else _new_password(a.userpassword, f"for the new user {a.username}",
                                                        "give -P PASSWORD", "--no-password")
    user = admin.add_user(a.username, a.firstname, a.lastname, password=password, groups=a.groups, admin=a.admin,
                          guest=a.guest, email=a.email, institution=a.institution)
    print(f"Added user {user.ome_name} (id={user.id}) {'with' if password else 'without'} password")  # type: ignore[attr-defined]
    return 0


def _users_table(users: list[admin.UserInfo]) -> str:
    rows = [[str(u.id), u.name, u.first_name, u.last_name, u.email or "", "yes" if u.active else "no",
             "admin" if u.admin else "guest" if u.guest else "user", u.default_group or "", ", ".join(u.groups),
             ", ".join(u.owner_of)] for u in users]
    return _output.table(["id", "login", "first name", "last name", "email", "active", "role", "default group",
                          "member of", "owner of"], rows)


def user_list(ctx: Context) -> int:
    ctx.current()
    print(_users_table(admin.list_users()))
    return 0


def user_info(ctx: Context) -> int:
    ctx.current()
    print(_users_table([admin.user_info(ctx.args.username)]))
    return 0


def user_password(ctx: Context) -> int:
    session, _ = ctx.current()
    own = session.user_name or ""
    target = ctx.args.username or own
    confirmation = _own_password(own)
    admin.set_password(target, _new_password(None, f"to be set for {target}"), old_password=confirmation)
    print(f"Password changed for {target}")
    return 0


def user_deactivate(ctx: Context) -> int:
    ctx.current()
    name = ctx.args.username
    changed = admin.deactivate_user(name)
    print(f"Deactivated {name}; their sessions have ended" if changed else f"{name} is inactive already")
    return 0


def user_activate(ctx: Context) -> int:
    ctx.current()
    name = ctx.args.username
    print(f"Activated {name}" if admin.activate_user(name) else f"{name} is active already")
    return 0


# -- group ------------------------------------------------------------------------------------------


def group_add(ctx: Context) -> int:
    session, _ = ctx.current()
    name = ctx.args.name
    existing = session.factory.find_object(Group, name=name) if ctx.args.ignore_existing else None
    if existing is not None:
        print(f"Group exists: {name} (id={existing.id})")
        return 0
    group = admin.add_group(name)
    print(f"Added group {name} (id={group.id})")
    return 0


def group_list(ctx: Context) -> int:
    ctx.current()
    rows = [[str(g.id), g.name, g.owner or "", ", ".join(g.members)] for g in admin.list_groups()]
    print(_output.table(["id", "name", "owner", "members"], rows))
    return 0


def _group(ctx: Context) -> tuple[str | int, str]:
    """Resume the current session; the group as given (--name or --id), and its name for messages."""
    a = ctx.args
    session, _ = ctx.current()
    if a.name is not None:
        return str(a.name), str(a.name)
    found = session.factory.find_object(Group, id=a.id)
    return int(a.id), str(found.name) if found is not None else f"id {a.id}"  # type: ignore[attr-defined]


def group_adduser(ctx: Context) -> int:
    return _change_members(ctx, admin.add_members, "Added {user} to group {group}",
                           "{user} is already in group {group}")


def group_removeuser(ctx: Context) -> int:
    return _change_members(ctx, admin.remove_members, "Removed {user} from group {group}",
                           "{user} is not in group {group}")


def _change_members(ctx: Context, change: Callable[[str | int, list[str]], list[str]], done: str,
                    unchanged: str) -> int:
    (group, name), users = _group(ctx), ctx.args.users
    changed = set(change(group, users))
    for user in dict.fromkeys(users):
        print((done if user in changed else unchanged).format(user=user, group=name))
    return 0


def group_owneradd(ctx: Context) -> int:
    (group, name), user = _group(ctx), ctx.args.user
    changed = admin.set_group_owner(group, user, replace=ctx.args.replace)
    print(f"{user} now owns group {name}" if changed else f"{user} owns group {name} already")
    return 0


def group_ownerremove(ctx: Context) -> int:
    (group, name), user = _group(ctx), ctx.args.user
    changed = admin.remove_group_owner(group, user)
    print(f"{user} no longer owns group {name}" if changed else f"{user} does not own group {name}")
    return 0
