"""What an omero.client tells of the session it holds, and ending a session on the server."""

from __future__ import annotations

import datetime
from typing import Any

from .. import Login
from ._errors import Remote, ending
from ._groups import ALL_GROUPS
from ._handle import OmeroHandle
from ._ice import omero, unwrap

_GUEST = "guest"  # OMERO's built-in guest account (Roles.guestName)
_MAX_CLOSES = 10_000  # closeSession calls a logout makes at most (one per reference)
# Every admin privilege this omero-py knows: holding all of them is OMERO's "full admin".
_ALL_PRIVILEGES = frozenset(
    getattr(omero.model.enums, n) for n in dir(omero.model.enums) if n.startswith("AdminPrivilege"))


def login_of(client: Any, key: str, remote: Remote, *, host: str | None) -> Login[OmeroHandle]:
    """The Login of a client that has just created or joined ``key`` (three calls)."""
    sf = client.getSession()
    admin = remote.bounded(sf.getAdminService())
    context = admin.getEventContext()
    session = remote.bounded(sf.getSessionService()).getSession(key)
    started = _when(unwrap(session.getStarted()))
    tti, ttl = unwrap(session.getTimeToIdle()), unwrap(session.getTimeToLive())
    return Login(
        key=key, experimenter_id=context.userId, user_name=context.userName,
        handle=OmeroHandle(client, admin, context.groupId), group_id=context.groupId,
        group_name=context.groupName, started=started, last_access=now(), host=host,
        expires_at=started + datetime.timedelta(milliseconds=ttl) if started and ttl else None,
        closed_at=_when(unwrap(session.getClosed())), agent=unwrap(session.getUserAgent()) or None,
        message=unwrap(session.getMessage()),
        sudo_by=unwrap(context.sudoerId), sudoer_name=unwrap(context.sudoerName) or None,
        idle_timeout=tti // 1000 if tti else None, is_admin=bool(context.isAdmin),
        is_guest=context.userName == _GUEST,
        is_super=bool(context.isAdmin) and set(context.adminPrivileges or ()) >= _ALL_PRIVILEGES,
        acl=None,
    )


def refreshed(login: Login[OmeroHandle], remote: Remote) -> Login[OmeroHandle]:
    """The same key again on its attached client: one call, which also slides the idle timer."""
    with ending(login.handle), remote("resume the session"):
        context = login.handle.admin.getEventContext()
    login.experimenter_id, login.user_name = context.userId, context.userName
    login.group_id = context.groupId
    if context.groupId != ALL_GROUPS:  # -1 is this client's context, not the session's group
        login.handle.session_group_id = context.groupId
        login.group_name = context.groupName
    login.is_admin = bool(context.isAdmin)
    login.last_access = now()
    return login


def kill(service: Any, uuid: str) -> int:
    """Close every reference to a session (ISession.closeSession until none is left)."""
    handle = omero.model.SessionI()
    handle.setUuid(omero.rtypes.rstring(uuid))
    for count in range(1, _MAX_CLOSES + 1):
        try:
            if service.closeSession(handle) <= 0:
                return count
        except omero.RemovedSessionException:
            return count
    return _MAX_CLOSES


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _when(ms: int | None) -> datetime.datetime | None:
    if not ms:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
