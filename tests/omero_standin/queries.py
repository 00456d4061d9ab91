"""The few HQL shapes BlitzGateway sends for experimenters and groups, answered from the model.

The stand-in does not pretend to speak HQL: a query outside these shapes is refused with
``UnsupportedQuery`` (the servant turns it into ApiUsageException), so a test that strays
beyond what is modelled fails loudly instead of getting a plausible wrong answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from omero.rtypes import unwrap

from .model import Directory
from .objects import experimenter_object, group_object

_EXPERIMENTER = re.compile(
    r"select obj from Experimenter as obj"
    r"(?P<fetch> left outer join fetch obj\.groupExperimenterMap as groupExperimenterMap"
    r" left outer join fetch groupExperimenterMap\.parent g)?"
    r"(?P<join> join obj\.groupExperimenterMap groupExperimenterMap)?"
    r"(?: where (?P<where>.+))?"
)
_GROUP = re.compile(
    r"select obj from ExperimenterGroup as obj"
    r"(?P<fetch> left outer join fetch obj\.groupExperimenterMap as map"
    r" left outer join fetch map\.child e)?"
    r"(?P<join> join obj\.groupExperimenterMap as map)?"
    r"(?: where (?P<where>.+))?"
)


class UnsupportedQuery(Exception):
    """A query shape the stand-in does not model."""


def run_query(directory: Directory, query: str, params: Mapping[str, Any]) -> list[Any]:
    """Answer ``query`` with bound ``params`` (already unwrapped) as omero.model objects."""
    query = " ".join(query.split())
    if match := _EXPERIMENTER.fullmatch(query):
        users = list(directory.users.values())
        users = _filter(directory, users, match["where"], params, _USER_CLAUSES)
        fetch = match["fetch"] is not None
        return [experimenter_object(u, directory, with_groups=fetch) for u in users]
    if match := _GROUP.fullmatch(query):
        groups = list(directory.groups.values())
        groups = _filter(directory, groups, match["where"], params, _GROUP_CLAUSES)
        fetch = match["fetch"] is not None
        return [group_object(g, directory if fetch else None) for g in groups]
    raise UnsupportedQuery(query)


def bound_parameters(params: Any) -> dict[str, Any]:
    """omero.sys.Parameters' named values as plain Python (None when no parameters)."""
    if params is None or params.map is None:
        return {}
    return {name: unwrap(value) for name, value in params.map.items()}


# Each supported where-clause: the parameter it binds and the test a row must pass.
_Clause = Callable[[Any, Any, Directory], bool]

_USER_CLAUSES: dict[str, tuple[str, _Clause]] = {
    "obj.id in (:ids)": ("ids", lambda u, v, d: u.id in v),
    "obj.id=:id": ("id", lambda u, v, d: u.id == v),
    "obj.omeName=:omeName": ("omeName", lambda u, v, d: u.name == v),
    "groupExperimenterMap.parent.id = :group": ("group", lambda u, v, d: v in u.group_ids),
}
_GROUP_CLAUSES: dict[str, tuple[str, _Clause]] = {
    "obj.id in (:ids)": ("ids", lambda g, v, d: g.id in v),
    "obj.id=:id": ("id", lambda g, v, d: g.id == v),
    "obj.name=:name": ("name", lambda g, v, d: g.name == v),
    "map.child.id = :experimenter": (
        "experimenter",
        lambda g, v, d: v in d.users and g.id in d.users[v].group_ids,
    ),
}


def _filter(
    directory: Directory,
    rows: list[Any],
    where: str | None,
    params: Mapping[str, Any],
    clauses: Mapping[str, tuple[str, _Clause]],
) -> list[Any]:
    for clause in where.split(" and ") if where else []:
        if clause not in clauses:
            raise UnsupportedQuery(clause)
        name, test = clauses[clause]
        if name not in params:
            raise UnsupportedQuery(f"{clause}: parameter :{name} not bound")
        rows = [row for row in rows if test(row, params[name], directory)]
    return sorted(rows, key=lambda row: row.id)
