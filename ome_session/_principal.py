"""Who acts through a Factory: the session's user and his rights, or trusted code.

Built once per login or resume (by the backend) from the rows that decide, and read by the
permission gate (``_permissions``) and the criteria compiler (the read ACL).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Acl:
    """What the session may read of owned classes: the rows ``user`` owns, and the rows in the
    groups he belongs to or leads; for a session a group leader opened as a member, only rows in
    the groups ``confined_by`` (that leader) leads, owned or not.

    The server joins the membership and leadership tables as they are when a statement runs
    (``_conditions.readable_groups``): no request carries the ids, and a removed membership counts
    at once. ``users`` and ``groups`` say what the login saw, for people to read; reads do not use
    them.
    """

    user: int
    confined_by: int | None = None
    users: frozenset[int] = frozenset()
    groups: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Principal:
    """Who acts through a Factory, as the login or resume that began the unit of work saw him."""

    user_id: int | None  # None: trusted code
    name: str
    is_super: bool = False
    is_admin: bool = False
    is_guest: bool = False
    groups: frozenset[int] = frozenset()  # member of: memberships and the default group
    led: frozenset[int] = frozenset()  # groups he leads
    confined_to: frozenset[int] | None = None  # a leader acting as a member: only these groups
    confined_by: int | None = None  # that leader

    @property
    def trusted(self) -> bool:
        return self.user_id is None

    @property
    def admin(self) -> bool:
        """Admin rights in effect: never for a guest, nor in a confined sudo session."""
        return (self.is_admin or self.is_super) and not self.is_guest and self.confined_to is None

    @property
    def role(self) -> str:
        if self.trusted:
            return "trusted code"
        if self.is_guest:
            return "guest"
        if self.admin:
            return "super user" if self.is_super else "admin"
        if self.confined_to is not None:
            return "member, acted as by a group leader"
        return "group leader" if self.led else "user"

    def _confine(self, groups: frozenset[int]) -> frozenset[int]:
        return groups if self.confined_to is None else groups & self.confined_to

    @property
    def writable_groups(self) -> frozenset[int]:
        """Groups he may create his own objects in."""
        return self._confine(self.groups | self.led)

    def may_use_group(self, group_id: int | None) -> bool:
        """Whether a session of his may work in ``group_id`` (its new objects go there): a group he
        is a member or leader of, and for a leader acting as a member, one of that leader's."""
        return group_id is not None and group_id in self.writable_groups

    @property
    def leads(self) -> frozenset[int]:
        return self._confine(self.led)

    def acl(self) -> Acl | None:
        """The read ACL; None (everything) for trusted code, admins and the super user."""
        if self.trusted or self.admin:
            return None
        assert self.user_id is not None
        users = frozenset() if self.confined_to is not None else frozenset({self.user_id})
        confined_by = self.confined_by if self.confined_to is not None else None
        return Acl(self.user_id, confined_by, users, self.writable_groups)

    def default_group(self, group_id: int | None) -> int | None:
        """The group new objects go to: the default group, unless a confined session may not."""
        if self.confined_to is None or group_id in self.confined_to:
            return group_id
        allowed = self.writable_groups
        return next(iter(allowed)) if len(allowed) == 1 else None


TRUSTED = Principal(user_id=None, name="trusted code")
