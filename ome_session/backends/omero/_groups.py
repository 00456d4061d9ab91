"""OMERO's groups and the BlitzGateway of a session: what only this backend offers."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from ...errors import PermissionDenied
from .. import GroupInfo, Login
from ._errors import Remote, ending
from ._handle import OmeroHandle
from ._ice import omero, unwrap

ALL_GROUPS = -1  # every group of the user, for one client's calls (OMERO's omero.group = -1)


def gateway(login: Login[OmeroHandle], client: Any) -> Any:
    """A BlitzGateway on the login's client, made once per unit of work (no remote call)."""
    handle = login.handle
    if handle.gateway is None:
        from omero.gateway import BlitzGateway

        handle.gateway = BlitzGateway(client_obj=client)
    return handle.gateway


def set_group(login: Login[OmeroHandle], client: Any, sf: Any, remote: Remote, group: str | int) -> int:
    """Switch to one of the user's groups (a name or id) for the whole session, or to every
    group (-1) for this client's calls until the next ``idle()``; returns the group id."""
    handle = login.handle
    context = client.getImplicitContext()
    if str(group) == str(ALL_GROUPS):
        context.put("omero.group", str(ALL_GROUPS))
        gid = ALL_GROUPS
    else:
        missing = ValueError(f"there is no OMERO group {group!r}")
        if isinstance(group, int) or group.isdigit():
            gid = int(group)
        else:
            with remote("look up the group", invalid=missing):
                gid = unwrap(remote.bounded(sf.getAdminService()).lookupGroup(group).getId())
        refused = PermissionDenied(f"{login.user_name} is not a member of group {group!r}")
        with remote("switch group", refused=refused, invalid=missing):
            for service in client.getStatefulServices():  # OMERO refuses while any is open
                service.close()
            remote.bounded(sf).setSecurityContext(omero.model.ExperimenterGroupI(gid, False))
        with suppress(Exception):
            context.remove("omero.group")
        handle.session_group_id = gid
        login.group_name = None if isinstance(group, int) or group.isdigit() else group
    login.group_id = gid
    if handle.gateway is not None:
        handle.gateway._ctx = None  # its cached event context names the old group
        handle.gateway.SERVICE_OPTS.setOmeroGroup(gid)
    return gid


def end_all_groups(login: Login[OmeroHandle], client: Any) -> None:
    """At ``idle()``: the all-groups context is per unit of work, like the gateway."""
    if login.group_id == ALL_GROUPS:
        with suppress(Exception):
            client.getImplicitContext().remove("omero.group")
        login.group_id = login.handle.session_group_id


def groups(login: Login[OmeroHandle], remote: Remote) -> list[GroupInfo]:
    """The user's groups as the server has them now (two calls): ``current`` is the session's
    group, ``leads`` the groups the user owns."""
    with ending(login.handle), remote("list the user's groups"):
        admin = login.handle.admin
        context = admin.getEventContext()
        contained = admin.containedGroups(login.experimenter_id)
    current = login.handle.session_group_id
    leads = set(context.leaderOfGroups or ())
    return [GroupInfo(gid, unwrap(g.getName()), gid == current, gid in leads)
            for g in contained for gid in (unwrap(g.getId()),)]
