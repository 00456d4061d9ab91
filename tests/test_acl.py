"""The read ACL is joined by the server: what a session may read follows the membership and
leadership tables as they are when each statement runs, and no statement carries a list of ids.
Oracles: literal expected names, and the statements the server logged."""

from __future__ import annotations

import re

from ome_session import SessionManager
from tests.helpers import People, ServerLog, login, query


def _projects(people: People) -> None:
    """alice's in lab_a, carol's in lab_b, and one of bob's in lab_b (bob is in both labs)."""
    query(people.dsn, "INSERT INTO experimenter_group_map VALUES (%s, %s)", people.ids["bob"], people.groups["lab_b"])
    for name, owner, group in (("alice's", "alice", "lab_a"), ("carol's", "carol", "lab_b"),
                               ("bob's in lab_b", "bob", "lab_b")):
        query(people.dsn, "INSERT INTO projects (name, owner_id, group_id) VALUES (%s, %s, %s)",
              name, people.ids[owner], people.groups[group])


def test_a_removed_membership_narrows_the_reads_of_an_open_unit_of_work(people: People) -> None:
    _projects(people)
    factory = login(people, "bob").factory
    assert sorted(p.name for p in factory.find_objects("Project")) == ["alice's", "bob's in lab_b", "carol's"]
    query(people.dsn, "DELETE FROM experimenter_group_map WHERE experimenter_id = %s AND group_id = %s",
          people.ids["bob"], people.groups["lab_b"])
    assert sorted(p.name for p in factory.find_objects("Project")) == ["alice's", "bob's in lab_b"]  # his own
    assert factory.count_objects("Project") == 2


def test_a_leaders_session_as_a_member_reads_only_in_the_groups_he_leads(people: People) -> None:
    _projects(people)
    manager = SessionManager(people.dsn)
    login(manager, "lena")
    factory = manager.sudo_session("bob").factory
    assert [p.name for p in factory.find_objects("Project")] == ["alice's"]  # not bob's own in lab_b
    assert factory.count_objects("ProjectDatasetMap") == 0


def test_no_read_carries_the_users_groups(people: People, server_log: ServerLog) -> None:
    _projects(people)
    session = login(people, "bob")
    server_log.mark()
    assert session.factory.count_objects("Project") == 3
    logged = server_log.text()
    parameters = re.findall(r"parameters: (.*)", logged)
    assert parameters and all(set(re.findall(r"= '([^']*)'", line)) == {str(people.ids["bob"])}
                              for line in parameters), logged  # bob's id, and nothing else
    assert "{" not in logged and not re.search(r"ANY\(\$", logged), logged  # no array of ids anywhere
