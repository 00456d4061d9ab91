"""The OMERO backend's part of a Login: what only this backend reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class OmeroHandle:
    """The client attached to the session, and what goes with it."""

    client: Any  # the omero.client holding the session; None once released (detached)
    admin: Any  # its IAdmin, with the backend's call timeout
    session_group_id: int  # the session's group (the client may say -1, all groups, for a while)
    gateway: Any = None  # the BlitzGateway of the current unit of work, made on first use
    ended: bool = False  # the server ended the session (found by a call or the keepalive)
