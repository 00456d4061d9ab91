"""Turning the stand-in's model rows into the omero.model / omero.sys objects the client reads."""

from __future__ import annotations

from typing import Any

import omero
import omero.all  # registers every generated class
from omero.rtypes import rbool, rlong, rstring, rtime

from .model import Directory, Group, Session, User

# Every privilege OMERO knows, read from the generated enumeration constants.
ALL_ADMIN_PRIVILEGES: tuple[str, ...] = tuple(
    sorted(getattr(omero.model.enums, name) for name in dir(omero.model.enums) if name.startswith("AdminPrivilege"))
)


def privileges_of(user: User) -> list[str]:
    """Full administrators hold every privilege; the stand-in has no restricted admins."""
    return list(ALL_ADMIN_PRIVILEGES) if user.is_admin else []


def group_object(group: Group, directory: Directory | None = None) -> Any:
    """An ExperimenterGroupI; with ``directory``, its member maps are loaded too."""
    obj = omero.model.ExperimenterGroupI(group.id, True)
    obj.setName(rstring(group.name))
    obj.getDetails().setPermissions(omero.model.PermissionsI(group.permissions))
    if directory is not None:
        for user in directory.members_of(group.id):
            member = _experimenter_row(user)
            member.unloadGroupExperimenterMap()  # "fetch map.child" stops at the member
            obj.addGroupExperimenterMapToBoth(_link(obj, member, group.id, user), False)
    else:
        obj.unloadGroupExperimenterMap()
    return obj


def experimenter_object(user: User, directory: Directory, *, with_groups: bool) -> Any:
    """An ExperimenterI; with ``with_groups``, its group maps (default group first) are loaded."""
    obj = _experimenter_row(user)
    if with_groups:
        for gid in _default_first(user):
            group = group_object(directory.groups[gid])  # its own members are not fetched
            obj.addGroupExperimenterMapToBoth(_link(group, obj, gid, user), False)
    else:
        obj.unloadGroupExperimenterMap()
    return obj


def session_object(session: Session, directory: Directory) -> Any:
    """The omero.model.SessionI that ISession hands out (times in milliseconds)."""
    obj = omero.model.SessionI(session.id, True)
    obj.setUuid(rstring(session.uuid))
    obj.setTimeToIdle(rlong(session.time_to_idle_ms))
    obj.setTimeToLive(rlong(session.time_to_live_ms))
    obj.setStarted(rtime(session.started_ms))
    obj.setUserAgent(rstring(session.agent))
    obj.setDefaultEventType(rstring("User"))
    obj.setOwner(omero.model.ExperimenterI(session.user.id, False))
    if session.sudoer is not None:
        obj.setSudoer(omero.model.ExperimenterI(session.sudoer.id, False))
    obj.getDetails().setGroup(omero.model.ExperimenterGroupI(session.group_id, False))
    return obj


def event_context(session: Session, directory: Directory, group_id: int) -> Any:
    """omero.sys.EventContext as seen in ``group_id`` (-1: the all-groups context)."""
    user = session.user
    group = directory.groups.get(group_id)
    return omero.sys.EventContext(
        shareId=-1,
        sessionId=session.id,
        sessionUuid=session.uuid,
        userId=user.id,
        userName=user.name,
        sudoerId=rlong(session.sudoer.id) if session.sudoer else None,
        sudoerName=rstring(session.sudoer.name) if session.sudoer else None,
        groupId=group_id,
        groupName=group.name if group else "",
        isAdmin=user.is_admin,
        adminPrivileges=privileges_of(user),
        eventId=-1,
        eventType="User",
        memberOfGroups=list(_default_first(user)),
        leaderOfGroups=list(user.leader_of),
        groupPermissions=omero.model.PermissionsI(group.permissions) if group else None,
    )


def security_roles() -> Any:
    return omero.sys.Roles(
        rootId=0,
        rootName="root",
        systemGroupId=0,
        systemGroupName="system",
        userGroupId=1,
        userGroupName="user",
        guestId=1,
        guestName="guest",
        guestGroupId=2,
        guestGroupName="guest",
    )


def admin_privilege_objects() -> list[Any]:
    result = []
    for index, name in enumerate(ALL_ADMIN_PRIVILEGES, start=1):
        obj = omero.model.AdminPrivilegeI(index, True)
        obj.setValue(rstring(name))
        result.append(obj)
    return result


def _experimenter_row(user: User) -> Any:
    obj = omero.model.ExperimenterI(user.id, True)
    obj.setOmeName(rstring(user.name))
    obj.setFirstName(rstring(user.first_name))
    obj.setLastName(rstring(user.last_name))
    obj.setEmail(rstring(user.email))
    obj.setLdap(rbool(False))
    return obj


def _link(group: Any, experimenter: Any, group_id: int, user: User) -> Any:
    link = omero.model.GroupExperimenterMapI()
    link.link(group, experimenter)
    link.setOwner(rbool(group_id in user.leader_of))
    return link


def _default_first(user: User) -> tuple[int, ...]:
    # OMERO lists memberOfGroups with the default group first.
    default = user.default_group_id
    return (default, *(g for g in user.group_ids if g != default))
