"""The SQL the permission gate is made of: conditions with their bound parameters, combined.

A ``Decision`` is True or False when it is known before any SQL, or a ``Fragment`` (SQL text and
its parameters, in order) when it depends on stored rows and goes into the statement itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from psycopg import sql

Fragment = tuple[sql.Composable, list[Any]]
Decision = bool | Fragment  # True / False: decided now; a fragment: decided by the statement
ROW = "t"  # the alias the Factory gives the row being written


def any_of(decisions: Iterable[Decision]) -> Decision:
    """OR: one True decides; False ones drop out."""
    return _combine(decisions, True, " OR ")


def all_of(decisions: Iterable[Decision]) -> Decision:
    """AND: one False decides; True ones drop out."""
    return _combine(decisions, False, " AND ")


def _combine(decisions: Iterable[Decision], deciding: bool, glue: str) -> Decision:
    fragments: list[Fragment] = []
    for decision in decisions:
        if decision is deciding:
            return deciding
        if isinstance(decision, tuple):
            fragments.append(decision)
    return join(fragments, glue) if fragments else not deciding


def join(fragments: list[Fragment], glue: str) -> Fragment:
    text = sql.SQL("({})").format(sql.SQL(glue).join(f[0] for f in fragments))
    return text, [p for f in fragments for p in f[1]]


def fmt(template: str, *args: Fragment | sql.Composable) -> Fragment:
    """``template`` with ``{}`` filled by fragments (their parameters kept in order) or identifiers."""
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for arg in args:
        if isinstance(arg, tuple):
            parts.append(arg[0])
            params += arg[1]
        else:
            parts.append(arg)
    return sql.SQL(template).format(*parts), params


def param(value: Any) -> Fragment:
    return sql.Placeholder(), [value]


def ids(values: Iterable[int]) -> Fragment:
    return sql.SQL("{}::int8[]").format(sql.Placeholder()), [sorted(values)]


def active_admin(alias: str) -> str:
    """SQL: the experimenter row ``alias`` is an admin in effect (as ``Principal.admin`` says of a
    session's user): active, flagged admin, and not a guest."""
    return f"{alias}.active AND {alias}.is_admin AND NOT {alias}.is_guest"


# The super user: the experimenter the ``super_user`` value names, if that value is usable (the
# column the migrations compute with ome_session_config_valid) and he is an active admin. Anything
# else names nobody, so a bad value can never lock logins out or hand out rights.
SUPER_USER_SQL = f"""(SELECT e.id FROM configuration c JOIN experimenters e
    ON e.id = CASE WHEN c.usable THEN (c.value #>> '{{}}')::bigint END
    WHERE c.name = 'super_user' AND {active_admin("e")})"""
SUPER_ID: Fragment = (sql.SQL(SUPER_USER_SQL), [])


def readable_groups(user: Fragment) -> Fragment:
    """SQL: the ids of the groups whose rows ``user`` may read, as the tables hold them now: his
    memberships, his default group, and the groups he leads. Index lookups only (the primary key
    of memberships, of experimenters, the leader index of groups), whatever the statistics."""
    return fmt("(SELECT m.group_id FROM experimenter_group_map m WHERE m.experimenter_id = {}"
               " UNION ALL SELECT x.group_id FROM experimenters x WHERE x.id = {}"
               " UNION ALL SELECT g.id FROM groups g WHERE g.leader_id = {})", user, user, user)


def led_groups(leader: Fragment) -> Fragment:
    """SQL: the ids of the groups ``leader`` leads now."""
    return fmt("(SELECT g.id FROM groups g WHERE g.leader_id = {})", leader)


def not_admin(user: Fragment) -> Fragment:
    return fmt("NOT EXISTS (SELECT 1 FROM experimenters x WHERE x.id = {} AND x.is_admin)", user)


def member_of(user: Fragment, group: Fragment) -> Fragment:
    """``user`` belongs to ``group`` (by membership or as his default group)."""
    return fmt("EXISTS (SELECT 1 FROM experimenters x WHERE x.id = {} AND (x.group_id = {} OR EXISTS ("
                "SELECT 1 FROM experimenter_group_map m WHERE m.experimenter_id = x.id AND m.group_id = {})))",
                user, group, group)



def sudo_condition(actor: Fragment, target: str) -> Fragment:
    """SQL: the experimenter ``actor`` may act as the row ``target`` of experimenters (the rules are
    ``_permissions.SUDO``).

    Evaluated on the stored rows, so a demoted admin or a leader who no longer leads loses the
    right at once.
    """
    t = sql.Identifier(target, "id")
    return fmt(
        "EXISTS (SELECT 1 FROM experimenters a WHERE a.id = {} AND a.active AND NOT a.is_guest AND ("
        "a.id = {}"  # the super user: anyone
        " OR (a.is_admin AND {} IS DISTINCT FROM {})"  # an admin: anyone but the super user
        " OR (NOT {} AND {} IS DISTINCT FROM {} AND EXISTS (SELECT 1 FROM groups g WHERE g.leader_id = a.id"
        " AND (g.id = {} OR EXISTS (SELECT 1 FROM experimenter_group_map m"
        " WHERE m.group_id = g.id AND m.experimenter_id = {}))))))",
        actor, SUPER_ID, t, SUPER_ID, sql.Identifier(target, "is_admin"), t, SUPER_ID,
        sql.Identifier(target, "group_id"), t)
