"""Who may read, write and become what: the permission table as data, and the one gate.

Every write of the Factory asks ``may_write`` first. The answer is a refusal (``PermissionDenied``,
raised before anything is sent), a plain yes, or a condition on the stored row that the Factory puts
in the statement itself (``UPDATE ... WHERE id = %s AND <condition>``): a stale or forged object in
memory then cannot stand in for the row, and the check costs no extra round trip. Reads go through
``visible``, which the criteria compiler applies to the class read and to every hop of a path.

The rights are those of the session's user as of the login or resume that began the unit of work
(the same snapshot the read ACL is computed from). Trusted code (bootstrap sessions, a Factory made
directly from the database credentials) bypasses the table: it could do anything with SQL anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from . import model
from ._conditions import (
    ROW,
    SUPER_ID,
    SUPER_USER_SQL,
    Decision,
    Fragment,
    all_of,
    any_of,
    fmt,
    ids,
    join,
    led_groups,
    member_of,
    not_admin,
    param,
    readable_groups,
    sudo_condition,
)
from ._principal import TRUSTED, Acl, Principal
from .dbobject import DBObject, Reference
from .errors import PermissionDenied

__all__ = ["ROW", "SUPER_USER_SQL", "TRUSTED", "Acl", "Fragment", "Principal", "kind_of", "may_configure",
           "may_lock", "may_read", "may_write", "readable_group_ids", "readable_ways", "refusal",
           "sudo_condition", "visible"]

# -- kinds of class ---------------------------------------------------------------------------------

OWNED = "owned"  # owner + group references: core Project, Dataset, Image, and user classes
LINK = "link"  # declares __link__: ProjectDatasetMap, DatasetImageMap
EXPERIMENTER = "Experimenter"
GROUP = "Group"
MEMBERSHIP = "membership"  # ExperimenterGroupMap
USER_STATE = "UserState"
REFERENCE = "reference"  # any other class: shared reference data
FOREIGN = "foreign"  # a class other than the core one mapping a security table: trusted code only

_SECURITY_TABLES: dict[str, tuple[type[DBObject], str] | None] = {
    "experimenters": (model.Experimenter, EXPERIMENTER),
    "groups": (model.Group, GROUP),
    "experimenter_group_map": (model.ExperimenterGroupMap, MEMBERSHIP),
    "user_states": (model.UserState, USER_STATE),
    "configuration": None,
    "ome_sessions": None,
    "schema_version": None,
}


def kind_of(cls: type[DBObject]) -> str:
    """Which rows of the table below apply to ``cls``; decided by its table, so a second class
    declared over a security table cannot borrow a laxer rule."""
    table = cls.__table__
    if table in _SECURITY_TABLES:
        core = _SECURITY_TABLES[table]
        return core[1] if core is not None and cls is core[0] else FOREIGN
    if cls.__link__ is not None:
        return LINK
    return OWNED if cls.__owned__ else REFERENCE


# -- the table ----------------------------------------------------------------------------------

# Relations that grant a right. Each names who may act on a given row; the gate below turns it into
# a check before any SQL, or into a condition on the stored row inside the statement.
ADMIN = "admin"  # an active admin (the super user is one)
SUPER = "super user"  # the configured super user, who must be an active admin
USER = "user"  # any logged-in user who is not a guest
SELF = "self"  # the row is the user's own (experimenter row, user state)
SELF_IN_GROUP = "self, to a group he is a member of"
OWN_GROUPS = "as owner, in one of his groups"  # creating an owned row
LEADER_FOR_MEMBER = "leader of the group, for a non-admin member"
OWNER = "owner"
LEADER_OF_MEMBER = "leader of the row's group, when the owner (user) is not an admin"
BOTH_ENDS = "may update the objects at both ends"
ADMIN_NOT_SELF = "admin, not on himself"

_PROFILE = ("first_name", "last_name", "email", "institution")

# (subject, operation) -> the relations that allow it. Where the table is silent, refuse.
TABLE: dict[tuple[str, str], tuple[str, ...]] = {
    (OWNED, "create"): (ADMIN, OWN_GROUPS, LEADER_FOR_MEMBER),
    (OWNED, "update"): (ADMIN, OWNER, LEADER_OF_MEMBER),
    (OWNED, "delete"): (ADMIN, OWNER, LEADER_OF_MEMBER),
    (OWNED, "lock"): (ADMIN, USER),
    (LINK, "create"): (ADMIN, BOTH_ENDS),
    (LINK, "update"): (ADMIN, BOTH_ENDS),
    (LINK, "delete"): (ADMIN, BOTH_ENDS),
    (LINK, "lock"): (ADMIN, USER),
    (EXPERIMENTER, "create"): (ADMIN,),
    (EXPERIMENTER, "delete"): (ADMIN_NOT_SELF,),
    (EXPERIMENTER, "lock"): (ADMIN,),
    **{(f"{EXPERIMENTER}.{column}", "update"): (ADMIN, SELF) for column in _PROFILE},
    (f"{EXPERIMENTER}.group", "update"): (ADMIN, SELF_IN_GROUP),
    **{(f"{EXPERIMENTER}.{column}", "update"): (ADMIN,)
       for column in ("ome_name", "data_dir", "is_admin", "is_guest", "active")},
    (GROUP, "create"): (ADMIN,),
    (GROUP, "update"): (ADMIN,),
    (GROUP, "delete"): (ADMIN,),
    (GROUP, "lock"): (ADMIN,),
    (MEMBERSHIP, "create"): (ADMIN, LEADER_FOR_MEMBER),
    (MEMBERSHIP, "delete"): (ADMIN, LEADER_OF_MEMBER),
    (MEMBERSHIP, "lock"): (ADMIN,),
    (USER_STATE, "create"): (ADMIN, SELF),
    (USER_STATE, "update"): (ADMIN, SELF),
    (USER_STATE, "delete"): (ADMIN, SELF),
    (USER_STATE, "lock"): (ADMIN,),
    (REFERENCE, "create"): (ADMIN,),
    (REFERENCE, "update"): (ADMIN,),
    (REFERENCE, "delete"): (ADMIN,),
    (REFERENCE, "lock"): (ADMIN,),
    ("configuration", "update"): (ADMIN,),
    ("configuration.super_user", "update"): (SUPER,),
}

# On top of the table, for everyone but trusted code:
# - guests write nothing (not even their own user state);
# - nobody but the super user changes the super user's row, and nobody demotes, deactivates,
#   makes a guest of or deletes the super user while configured (not even himself);
# - changing the owner or group of an owned row must also pass the create rule for the new pair;
# - the project and dataset of a user state must be readable by the user;
# - a membership of a user's default group is not removed (change the default group first);
# - a group leader's sudo session as a member is confined to the groups the leader leads.

# Whom one may act as with sudo_session(), by the target's role. Both the session's user and the
# original actor of a chain of sudo sessions must be allowed (see ``sudo_condition``).
SUDO: dict[str, tuple[str, ...]] = {
    "the super user": (SUPER,),
    "an admin": (SUPER, ADMIN),
    "a non-admin member of a group the actor leads": (SUPER, ADMIN, LEADER_FOR_MEMBER),
    "anyone else": (SUPER, ADMIN),
}


# -- reads ------------------------------------------------------------------------------------------


def visible(cls: type[DBObject], alias: str, acl: Acl | None) -> Fragment | None:
    """The condition for a row of ``cls`` (as ``alias``) to be readable; None when all are."""
    if acl is None:
        return None
    kind = kind_of(cls)
    me = param(acl.user)
    if kind == OWNED:
        owner, group = (cls.__references__[name].column or "" for name in ("owner", "group"))
        in_groups = _in_readable_groups(sql.Identifier(alias, group), acl)
        if acl.confined_by is not None:
            return in_groups
        return fmt("({} = {} OR {})", sql.Identifier(alias, owner), me, in_groups)
    if kind == MEMBERSHIP:
        return fmt("({} = {} OR {})", sql.Identifier(alias, "experimenter_id"), me,
                    _in_readable_groups(sql.Identifier(alias, "group_id"), acl))
    if kind == USER_STATE:
        return fmt("{} = {}", sql.Identifier(alias, "experimenter_id"), me)
    if kind == LINK:
        ends = [_end_visible(cls.__references__[end], sql.Identifier(alias, cls.__references__[end].column or ""),
                             f"{alias}_{end}", acl) for end in cls.__link__ or ()]
        found = [end for end in ends if end is not None]
        return join(found, " AND ") if found else None
    if kind == FOREIGN:
        return sql.SQL("FALSE"), []
    return None


def _in_readable_groups(group: sql.Composable, acl: Acl) -> Fragment:
    """``group`` is one whose rows the session may read (joined by the server, never shipped).

    ``= ANY(ARRAY(...))``, not ``IN (...)``: the array is computed once (an InitPlan) and the
    comparison can drive an index scan, ORed with the owner's in a BitmapOr, so the plan reads the
    visible rows only; ``IN`` under an OR becomes a filter tested on every row of the table.
    """
    return fmt("{} = ANY(ARRAY{})", group, readable_group_ids(acl))


def readable_group_ids(acl: Acl) -> Fragment:
    """SQL: a subquery of the ids of the groups whose rows the session reads: memberships, default
    group and groups led; for a leader's session as a member, only those that leader leads."""
    found = readable_groups(param(acl.user))
    if acl.confined_by is None:
        return found
    return fmt("(SELECT r.id FROM {} AS r(id) WHERE r.id = ANY(ARRAY{}))", found, led_groups(param(acl.confined_by)))


def readable_ways(cls: type[DBObject], alias: str, acl: Acl | None) -> tuple[Fragment | None, str, Fragment] | None:
    """The two ways a row of an owned class is readable, each an index range in id order: owned by
    the user (None in a leader's session as a member, where only the group counts), and filed in
    one of ``readable_group_ids`` (the group column, the subquery). None for other kinds of class,
    or when everything is readable."""
    if acl is None or kind_of(cls) != OWNED:
        return None
    owner, group = (cls.__references__[name].column or "" for name in ("owner", "group"))
    mine = fmt("{} = {}", sql.Identifier(alias, owner), param(acl.user)) if acl.confined_by is None else None
    return mine, group, readable_group_ids(acl)


def _end_visible(ref: Reference, value: sql.Composable | Fragment, alias: str, acl: Acl | None) -> Fragment | None:
    target = ref.target_class()
    inner = visible(target, alias, acl)
    if inner is None:
        return None
    return fmt("EXISTS (SELECT 1 FROM {} AS {} WHERE {} = {} AND {})", sql.Identifier(target.__table__),
                sql.Identifier(alias), sql.Identifier(alias, target.__primary_key__[0]), value, inner)


def may_read(principal: Principal, cls: type[DBObject]) -> None:
    if kind_of(cls) == FOREIGN and not principal.trusted:
        raise refusal(principal, "read", cls, detail=f"{cls.__name__} maps the security table "
                      f"{cls.__table__!r}; only trusted code may use such a class")


# -- writes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Write:
    principal: Principal
    op: str  # create, update, delete
    cls: type[DBObject]
    values: Mapping[str, Any]  # column -> new value: every given column (create), the changed ones (update)
    key: tuple[Any, ...]  # the row's primary key (update, delete)

    def new(self, column: str) -> Fragment:
        """The column's value once written: the new value, else the stored one (or NULL on create)."""
        if column in self.values or self.op == "create":
            return param(self.values.get(column))
        return sql.Identifier(ROW, column), []

    def known(self, column: str) -> tuple[bool, Any]:
        if column in self.values or self.op == "create":
            return True, self.values.get(column)
        return False, None

    def stored(self, column: str) -> Fragment:
        return sql.Identifier(ROW, column), []


def may_write(principal: Principal, op: str, cls: type[DBObject], values: Mapping[str, Any] | None = None,
              key: tuple[Any, ...] = ()) -> Fragment | None:
    """Whether ``principal`` may ``op`` (create, update, delete) this row of ``cls``.

    Raises PermissionDenied when that is decided before any SQL; returns None when it is allowed,
    or a condition on the row (aliased ``ROW``) that the statement must include: no row written
    means refused. ``values`` are keyed by column name.
    """
    if principal.trusted:
        return None
    w = _Write(principal, op, cls, dict(values or {}), key)
    kind = kind_of(cls)
    if principal.is_guest:
        raise refusal(principal, op, cls, detail="guests are read-only")
    if kind == EXPERIMENTER and op == "update":
        decisions = []
        for column in w.values:
            name = cls.__columns__[column].name
            decision = _cell(w, f"{EXPERIMENTER}.{name}")
            if decision is False:
                raise refusal(principal, op, cls, name)
            decisions.append(decision)
        decision = all_of(decisions)
    else:
        decision = _cell(w, kind)
    decision = all_of([decision, *_overlays(w, kind)])
    if decision is False:
        raise refusal(principal, op, cls)
    return None if decision is True else decision


def _cell(w: _Write, subject: str) -> Decision:
    return any_of(_relation(w, relation) for relation in TABLE.get((subject, w.op), ()))


def _relation(w: _Write, relation: str) -> Decision:
    """What one relation of the table means for this write."""
    p = w.principal
    role = _role(p, relation)
    if role is not None:
        return role
    kind = kind_of(w.cls)
    if relation == ADMIN_NOT_SELF:
        return p.admin and w.key[:1] != (p.user_id,)
    if relation == SELF:
        if kind == USER_STATE:
            return (w.values.get("experimenter_id") if w.op == "create" else w.key[0]) == p.user_id
        return p.confined_to is None and w.key[:1] == (p.user_id,)
    if relation == SELF_IN_GROUP:
        if p.confined_to is not None or w.key[:1] != (p.user_id,):
            return False
        return fmt("EXISTS (SELECT 1 FROM experimenter_group_map m WHERE m.experimenter_id = {} AND m.group_id = {})",
                    param(p.user_id), w.new("group_id"))
    if relation == OWN_GROUPS:
        return _own_groups(w)
    if relation == LEADER_FOR_MEMBER:
        if kind == MEMBERSHIP:
            return all_of([w.values.get("group_id") in p.leads, not_admin(param(w.values.get("experimenter_id")))])
        return _leader_for_member(w)
    if relation == OWNER:
        return _owner(p, w.cls, ROW)
    if relation == LEADER_OF_MEMBER:
        if kind == MEMBERSHIP:
            return all_of([w.key[1] in p.leads, not_admin(param(w.key[0]))])
        return _leader_of_member(p, w.cls, ROW)
    if relation == BOTH_ENDS:
        return _both_ends(w)
    raise AssertionError(f"unknown relation {relation!r}")


def _role(p: Principal, relation: str) -> bool | None:
    """The relations that depend on the user alone (None for the others)."""
    if relation == ADMIN:
        return p.admin
    if relation == SUPER:
        return p.admin and p.is_super
    if relation == USER:
        return not p.is_guest
    return None


def _columns(cls: type[DBObject]) -> tuple[str, str]:
    return cls.__references__["owner"].column or "", cls.__references__["group"].column or ""


def _own_groups(w: _Write) -> Decision:
    """The (new) owner is the user and the (new) group one of his."""
    p = w.principal
    owner, group = _columns(w.cls)
    decisions: list[Decision] = []
    for column, test, template in ((owner, lambda v: v == p.user_id, "{} = {}"),
                                   (group, lambda v: v in p.writable_groups, "{} = ANY({})")):
        known, value = w.known(column)
        if known:
            decisions.append(bool(test(value)))
        else:
            right = param(p.user_id) if column == owner else ids(p.writable_groups)
            decisions.append(fmt(template, w.stored(column), right))
    return all_of(decisions)


def _leader_for_member(w: _Write) -> Decision:
    """The (new) group is one the user leads, and the (new) owner a non-admin member of it."""
    p = w.principal
    if not p.leads:
        return False
    owner, group = _columns(w.cls)
    known, value = w.known(group)
    in_led = (value in p.leads) if known else fmt("{} = ANY({})", w.stored(group), ids(p.leads))
    return all_of([in_led, member_of(w.new(owner), w.new(group)), not_admin(w.new(owner))])


def _owner(p: Principal, cls: type[DBObject], alias: str) -> Decision:
    owner, group = _columns(cls)
    mine = fmt("{} = {}", sql.Identifier(alias, owner), param(p.user_id))
    if p.confined_to is None:
        return mine
    return all_of([mine, fmt("{} = ANY({})", sql.Identifier(alias, group), ids(p.confined_to))])


def _leader_of_member(p: Principal, cls: type[DBObject], alias: str) -> Decision:
    if not p.leads:
        return False
    owner, group = _columns(cls)
    return all_of([fmt("{} = ANY({})", sql.Identifier(alias, group), ids(p.leads)),
                 not_admin((sql.Identifier(alias, owner), []))])


def _both_ends(w: _Write) -> Decision:
    """Strict: the user may update the objects at both ends, before the write and after it."""
    decisions: list[Decision] = []
    for end in w.cls.__link__ or ():
        ref = w.cls.__references__[end]
        column = ref.column or ""
        values = [w.new(column)] if w.op == "create" else [w.stored(column)]
        if w.op == "update" and column in w.values:
            values.append(w.new(column))
        decisions += [_may_update_target(w.principal, ref, value, f"{ROW}_{end}") for value in values]
    return all_of(decisions)


def _may_update_target(p: Principal, ref: Reference, value: Fragment, alias: str) -> Decision:
    target = ref.target_class()
    if kind_of(target) != OWNED:
        return False  # only admins change links to anything else
    may = any_of([_owner(p, target, alias), _leader_of_member(p, target, alias)])
    if may is False:
        return False
    return fmt("EXISTS (SELECT 1 FROM {} AS {} WHERE {} = {} AND {})", sql.Identifier(target.__table__),
                sql.Identifier(alias), sql.Identifier(alias, target.__primary_key__[0]), value,
                may if isinstance(may, tuple) else (sql.SQL("TRUE"), []))


def _overlays(w: _Write, kind: str) -> list[Decision]:
    """The rules that hold on top of the table (see the comment under it)."""
    p = w.principal
    found: list[Decision] = []
    if kind == EXPERIMENTER and w.op in ("update", "delete"):
        row = param(w.key[0])
        demotes = w.op == "delete" or w.values.get("is_admin") is False or w.values.get("active") is False \
            or w.values.get("is_guest") is True
        if demotes or not p.is_super:
            found.append(fmt("{} IS DISTINCT FROM {}", row, SUPER_ID))
    if kind == OWNED and w.op == "update" and set(_columns(w.cls)) & set(w.values):
        found.append(any_of([p.admin, _own_groups(w), _leader_for_member(w)]))
    if kind == USER_STATE and w.op in ("create", "update"):
        for name in ("project", "dataset"):
            ref = w.cls.__references__[name]
            value = w.values.get(ref.column or "")
            if value is not None:
                readable = _end_visible(ref, param(value), f"{ROW}_{name}", p.acl())
                found.append(True if readable is None else readable)
    if kind == MEMBERSHIP and w.op == "delete":
        found.append(fmt("NOT EXISTS (SELECT 1 FROM experimenters x WHERE x.id = {} AND x.group_id = {})",
                          param(w.key[0]), param(w.key[1])))
    return found


def may_lock(principal: Principal, cls: type[DBObject]) -> None:
    """LOCK TABLE: on shared tables (users, groups, the tables a login writes) admins only, since a
    lock held there keeps every login waiting."""
    if principal.trusted:
        return
    if principal.is_guest:
        raise refusal(principal, "lock", cls, detail="guests are read-only")
    w = _Write(principal, "lock", cls, {}, ())
    if _cell(w, kind_of(cls)) is not True:
        raise refusal(principal, "lock", cls, detail="only admins lock shared tables, where a lock keeps "
                      "every user (and every login) waiting")


def may_configure(principal: Principal, names: Iterable[str]) -> None:
    """Configuration.update() and install(): admins; ``super_user`` the super user only."""
    if principal.trusted:
        return
    for name in names:
        relations = TABLE.get((f"configuration.{name}", "update")) or TABLE[("configuration", "update")]
        if not any(_role(principal, relation) for relation in relations):
            who = "the super user" if relations == (SUPER,) else "admins and the super user"
            raise PermissionDenied(f"{principal.name} ({principal.role}) may not change the configuration "
                                   f"value {name!r}: only {who} may")


def refusal(principal: Principal, op: str, cls: type[DBObject], column: str | None = None, *,
            detail: str | None = None) -> PermissionDenied:
    """The one message for a refusal: who, in which role, may not do what to which class (column)."""
    what = f"{cls.__name__}.{column}" if column else cls.__name__
    text = f"{principal.name} ({principal.role}) may not {op} {what}"
    return PermissionDenied(f"{text}: {detail}" if detail else text)


