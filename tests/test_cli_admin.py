"""``ome-session user`` and ``ome-session group``, run as a real program against a real server.

Every run is a subprocess with the test's own settings, key store and database (``lab``); what it
changed is read back with SQL on a connection of its own, and stored password hashes are checked
with argon2 itself. A refusal must exit 5 and bad input 2, each with one line on stderr, and
neither may change anything.
"""

from __future__ import annotations

import subprocess
from typing import Any

import argon2
import pytest

from tests.helpers import People, database_text, find_secrets, ome_session, on_terminal, query


def login(user: str) -> None:
    done = ome_session("login", f"{user}@localhost", OME_SESSION_PASSWORD=f"{user}-password")
    assert done.returncode == 0, done.stderr


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return ome_session(*args, **env)


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The error of a run that had to fail with ``code``: one line on stderr, nothing on stdout."""
    assert (done.returncode, done.stdout) == (code, ""), done.stderr
    assert done.stderr.startswith("ome-session: error: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def verifies(dsn: str, name: str, password: str) -> bool:
    [(stored,)] = query(dsn, "SELECT password_hash FROM experimenters WHERE ome_name = %s", name)
    try:
        return bool(stored) and argon2.PasswordHasher().verify(stored, password)
    except argon2.exceptions.VerifyMismatchError:
        return False


def user_row(dsn: str, name: str) -> tuple[Any, ...] | None:
    rows = query(dsn, "SELECT e.first_name, e.last_name, e.email, e.institution, g.name, e.is_admin, e.is_guest, "
                      "e.active FROM experimenters e LEFT JOIN groups g ON g.id = e.group_id WHERE e.ome_name = %s",
                 name)
    return rows[0] if rows else None


def memberships(dsn: str, name: str) -> list[str]:
    return [g for (g,) in query(dsn, "SELECT g.name FROM experimenter_group_map m JOIN groups g ON g.id = m.group_id "
                                     "JOIN experimenters e ON e.id = m.experimenter_id WHERE e.ome_name = %s "
                                     "ORDER BY 1", name)]


def owner(dsn: str, group: str) -> str | None:
    [(name,)] = query(dsn, "SELECT l.ome_name FROM groups g LEFT JOIN experimenters l ON l.id = g.leader_id "
                           "WHERE g.name = %s", group)
    return str(name) if name is not None else None


# -- user add ---------------------------------------------------------------------------------------


def test_user_add_with_p_makes_a_user_who_logs_in(lab: People) -> None:
    login("root")
    done = run("user", "add", "dora", "Dora", "Explorer", "-P", "dora's secret", "--group-name", "lab_b", "lab_a",
               "-e", "dora@example.org", "-i", "OME")
    assert done.returncode == 0, done.stderr
    [(dora_id,)] = query(lab.dsn, "SELECT id FROM experimenters WHERE ome_name = 'dora'")
    assert done.stdout == f"Added user dora (id={dora_id}) with password\n"
    assert user_row(lab.dsn, "dora") == ("Dora", "Explorer", "dora@example.org", "OME", "lab_b", False, False, True)
    assert memberships(lab.dsn, "dora") == ["lab_a", "lab_b"]
    assert verifies(lab.dsn, "dora", "dora's secret")
    assert run("login", "dora@localhost", "-w", "dora's secret").returncode == 0


def test_user_add_takes_the_password_from_the_environment_and_shows_it_nowhere(lab: People) -> None:
    login("root")
    done = run("user", "add", "dora", "D", "E", "--group-id", str(lab.groups["lab_a"]), "-a",
               OME_SESSION_NEW_PASSWORD="a quiet secret")
    assert done.returncode == 0, done.stderr
    assert user_row(lab.dsn, "dora") == ("D", "E", None, None, "lab_a", True, False, True)
    assert verifies(lab.dsn, "dora", "a quiet secret")
    places = {**database_text(lab.dsn), "output": done.stdout + done.stderr}
    assert find_secrets(places, {"the new password": "a quiet secret"}) == []


def test_user_add_asks_for_the_password_twice_on_a_terminal_without_echo(lab: People) -> None:
    login("root")
    code, shown, answered = on_terminal(["user", "add", "dora", "D", "E", "--group-name", "lab_a", "--guest"],
                                        [("Password for the new user dora: ", "typed secret"),
                                         ("Again: ", "typed secret")])
    assert (code, answered) == (0, 2), shown
    assert "typed secret" not in shown
    assert user_row(lab.dsn, "dora") == ("D", "E", None, None, "lab_a", False, True, True)
    assert verifies(lab.dsn, "dora", "typed secret")


def test_user_add_without_a_password_makes_one_who_cannot_log_in(lab: People) -> None:
    login("root")
    done = run("user", "add", "dora", "D", "E", "--group-name", "lab_a", "--no-password")
    assert done.returncode == 0 and done.stdout.endswith("without password\n"), done.stderr
    assert query(lab.dsn, "SELECT password_hash FROM experimenters WHERE ome_name = 'dora'") == [(None,)]


@pytest.mark.parametrize(("args", "says"), [
    (["dora", "D", "E", "--group-name", "lab_a"], "no password for the new user dora"),
    (["dora", "D", "E", "-P", "x"], "name at least one group"),
    (["dora", "D", "E", "-P", "x", "--group-name", "nowhere"], "there is no group 'nowhere'"),
    (["a/b", "D", "E", "-P", "x", "--group-name", "lab_a"], "cannot contain '/'"),
    (["dora", "D", "E", "-P", "x", "--group-name", "lab_a", "-e", "at nowhere"], "not an address"),
    (["alice", "D", "E", "-P", "x", "--group-name", "lab_a"], "user 'alice' exists"),
    (["dora", "D", "E", "-P", "x", "--no-password", "--group-name", "lab_a"], "not allowed with argument"),
])
def test_user_add_with_bad_input_exits_2_in_one_line_and_adds_nobody(lab: People, args: list[str], says: str) -> None:
    login("root")
    done = run("user", "add", *args)
    if "not allowed with" in says:  # argparse's own usage error
        assert done.returncode == 2 and says in done.stderr
    else:
        assert says in one_line_error(done, 2)
    assert query(lab.dsn, "SELECT count(*) FROM experimenters") == [(6,)]


def test_user_add_ignore_existing_succeeds_without_a_change(lab: People) -> None:
    login("root")
    done = run("user", "add", "alice", "Other", "Name", "-P", "x", "--group-name", "lab_b", "--ignore-existing")
    assert (done.returncode, done.stdout) == (0, f"User exists: alice (id={lab.ids['alice']})\n")
    assert user_row(lab.dsn, "alice") == ("Alice", "Tester", None, None, "lab_a", False, False, True)


@pytest.mark.parametrize("actor", ["alice", "lena"])
def test_user_add_by_a_non_admin_exits_5_and_adds_nobody(lab: People, actor: str) -> None:
    login(actor)
    done = run("user", "add", "mallory", "M", "M", "-P", "mine now", "--group-name", "lab_a", "-a")
    assert "may not create Experimenter" in one_line_error(done, 5)
    assert user_row(lab.dsn, "mallory") is None


def test_user_commands_need_a_login(lab: People) -> None:
    assert "not logged in" in one_line_error(run("user", "list"), 1)


# -- user list, info ----------------------------------------------------------------------------------


def test_user_list_and_info_show_users_groups_and_ownerships(lab: People) -> None:
    login("root")
    listed = run("user", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["id", "|", "login", "|", "first", "name", "|", "last", "name", "|", "email", "|",
                                "active", "|", "role", "|", "default", "group", "|", "member", "of", "|", "owner", "of"]
    assert lines[-1] == "(6 rows)"
    lena = next(line for line in lines if " lena " in line)
    assert [cell.strip() for cell in lena.split("|")] == [
        str(lab.ids["lena"]), "lena", "Lena", "Tester", "", "yes", "user", "lab_a", "lab_a", "lab_a"]
    info = run("user", "info")
    assert [cell.strip() for cell in info.stdout.splitlines()[2].split("|")][:7] == [
        str(lab.ids["root"]), "root", "Root", "Tester", "", "yes", "admin"]
    assert " guest " in run("user", "info", "guest").stdout
    assert "there is no user 'nobody'" in one_line_error(run("user", "info", "nobody"), 2)


# -- user password ----------------------------------------------------------------------------------


def test_user_password_changes_ones_own_with_the_old_one(lab: People) -> None:
    login("alice")
    done = run("user", "password", OME_SESSION_PASSWORD="alice-password", OME_SESSION_NEW_PASSWORD="alice's new one")
    assert (done.returncode, done.stdout) == (0, "Password changed for alice\n"), done.stderr
    assert verifies(lab.dsn, "alice", "alice's new one")
    wrong = run("user", "password", OME_SESSION_PASSWORD="not the old one", OME_SESSION_NEW_PASSWORD="another")
    assert "the old password is wrong" in one_line_error(wrong, 1)
    assert verifies(lab.dsn, "alice", "alice's new one")


def test_user_password_on_a_terminal_asks_without_echo(lab: People) -> None:
    login("alice")
    code, shown, answered = on_terminal(["user", "password"], [
        ("Password for your user (alice): ", "alice-password"),
        ("Password to be set for alice: ", "typed anew"), ("Again: ", "typed anew")])
    assert (code, answered) == (0, 3), shown
    assert "alice-password" not in shown and "typed anew" not in shown
    assert verifies(lab.dsn, "alice", "typed anew")


def test_user_password_of_another_user_is_for_admins_confirming_their_own(lab: People) -> None:
    login("alice")
    denied = run("user", "password", "bob", OME_SESSION_PASSWORD="alice-password", OME_SESSION_NEW_PASSWORD="x")
    assert "only admins set the passwords of other users" in one_line_error(denied, 5)
    login("root")
    unconfirmed = run("user", "password", "bob", OME_SESSION_PASSWORD="wrong", OME_SESSION_NEW_PASSWORD="x")
    assert "your own password is wrong" in one_line_error(unconfirmed, 1)
    assert verifies(lab.dsn, "bob", "bob-password")
    done = run("user", "password", "bob", OME_SESSION_PASSWORD="root-password", OME_SESSION_NEW_PASSWORD="from root")
    assert done.returncode == 0, done.stderr
    assert verifies(lab.dsn, "bob", "from root")


def test_user_password_without_a_terminal_or_variables_exits_2(lab: People) -> None:
    login("alice")
    assert "OME_SESSION_PASSWORD" in one_line_error(run("user", "password"), 2)
    assert verifies(lab.dsn, "alice", "alice-password")


# -- user deactivate, activate ----------------------------------------------------------------------


def open_sessions(dsn: str, name: str) -> int:
    [(count,)] = query(dsn, "SELECT count(*) FROM ome_sessions s JOIN experimenters e ON e.id = s.experimenter_id "
                            "WHERE e.ome_name = %s AND s.closed_at IS NULL", name)
    return int(count)


def test_user_deactivate_ends_the_users_sessions_and_activate_lets_them_in_again(lab: People) -> None:
    login("bob")
    login("root")
    assert open_sessions(lab.dsn, "bob") == 1
    done = run("user", "deactivate", "bob")
    assert (done.returncode, done.stdout) == (0, "Deactivated bob; their sessions have ended\n"), done.stderr
    assert open_sessions(lab.dsn, "bob") == 0
    assert query(lab.dsn, "SELECT active FROM experimenters WHERE ome_name = 'bob'") == [(False,)]
    assert run("user", "deactivate", "bob").stdout == "bob is inactive already\n"
    assert run("login", "bob@localhost", "-w", "bob-password").returncode == 1
    assert run("user", "activate", "bob").stdout == "Activated bob\n"
    assert run("login", "bob@localhost", "-w", "bob-password").returncode == 0


@pytest.mark.parametrize(("actor", "target", "says"), [("alice", "bob", "may not update Experimenter.active"),
                                                       ("root", "root", "the super user is never deactivated")])
def test_user_deactivate_is_refused_to_non_admins_and_for_the_super_user(lab: People, actor: str, target: str,
                                                                         says: str) -> None:
    login(actor)
    assert says in one_line_error(run("user", "deactivate", target), 5)
    assert query(lab.dsn, "SELECT active FROM experimenters WHERE ome_name = %s", target) == [(True,)]
    assert open_sessions(lab.dsn, actor) == 1


# -- group ------------------------------------------------------------------------------------------


def test_group_add_and_list(lab: People) -> None:
    login("root")
    done = run("group", "add", "lab_c")
    [(lab_c,)] = query(lab.dsn, "SELECT id FROM groups WHERE name = 'lab_c'")
    assert (done.returncode, done.stdout) == (0, f"Added group lab_c (id={lab_c})\n"), done.stderr
    assert "group 'lab_c' exists" in one_line_error(run("group", "add", "lab_c"), 2)
    assert run("group", "add", "lab_c", "--ignore-existing").stdout == f"Group exists: lab_c (id={lab_c})\n"
    assert "all digits" in one_line_error(run("group", "add", "2024"), 2)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")]
            for line in run("group", "list").stdout.splitlines()[2:-1]}
    assert rows["lab_a"] == [str(lab.groups["lab_a"]), "lab_a", "lena", "alice, bob, lena"]
    assert rows["lab_c"] == [str(lab_c), "lab_c", "", ""]


def test_group_add_by_a_non_admin_exits_5(lab: People) -> None:
    login("lena")
    assert "may not create Group" in one_line_error(run("group", "add", "lab_c"), 5)
    assert query(lab.dsn, "SELECT count(*) FROM groups WHERE name = 'lab_c'") == [(0,)]


def test_group_adduser_and_removeuser_by_the_groups_owner(lab: People) -> None:
    login("lena")
    done = run("group", "adduser", "--name", "lab_a", "carol", "alice")
    assert done.stdout == "Added carol to group lab_a\nalice is already in group lab_a\n", done.stderr
    assert memberships(lab.dsn, "carol") == ["lab_a", "lab_b"]
    done = run("group", "removeuser", "--id", str(lab.groups["lab_a"]), "carol", "carol")
    assert done.stdout == "Removed carol from group lab_a\n", done.stderr
    assert run("group", "removeuser", "--name", "lab_a", "carol").stdout == "carol is not in group lab_a\n"
    assert memberships(lab.dsn, "carol") == ["lab_b"]


def test_group_membership_changes_are_refused_with_5_and_checked_with_2(lab: People) -> None:
    login("lena")
    assert "may not create ExperimenterGroupMap" in one_line_error(
        run("group", "adduser", "--name", "lab_a", "carol", "root"), 5)  # root is an admin: all or nothing
    assert memberships(lab.dsn, "carol") == ["lab_b"]
    login("alice")
    assert one_line_error(run("group", "removeuser", "--name", "lab_a", "bob"), 5)
    login("root")
    assert "default group" in one_line_error(run("group", "removeuser", "--name", "lab_a", "alice"), 2)
    assert "there is no group 'lab_z'" in one_line_error(run("group", "adduser", "--name", "lab_z", "bob"), 2)
    both = run("group", "adduser", "--name", "lab_a", "--id", "2", "bob")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    assert memberships(lab.dsn, "bob") == ["lab_a"]


def test_group_owneradd_and_ownerremove(lab: People) -> None:
    login("root")
    done = run("group", "owneradd", "--name", "lab_b", "carol")
    assert (done.returncode, done.stdout) == (0, "carol now owns group lab_b\n"), done.stderr
    assert owner(lab.dsn, "lab_b") == "carol"
    assert run("group", "owneradd", "--name", "lab_b", "carol").stdout == "carol owns group lab_b already\n"
    assert "lab_a is owned by lena" in one_line_error(run("group", "owneradd", "--name", "lab_a", "alice"), 2)
    assert owner(lab.dsn, "lab_a") == "lena"
    replaced = run("group", "owneradd", "--id", str(lab.groups["lab_a"]), "alice", "--replace")
    assert replaced.stdout == "alice now owns group lab_a\n", replaced.stderr
    assert owner(lab.dsn, "lab_a") == "alice"
    assert run("group", "ownerremove", "--name", "lab_a", "lena").stdout == "lena does not own group lab_a\n"
    assert run("group", "ownerremove", "--name", "lab_a", "alice").stdout == "alice no longer owns group lab_a\n"
    assert owner(lab.dsn, "lab_a") is None and memberships(lab.dsn, "alice") == ["lab_a"]


def test_group_owner_changes_are_for_admins(lab: People) -> None:
    login("lena")
    assert "may not update Group" in one_line_error(run("group", "owneradd", "--name", "lab_a", "bob",
                                                        "--replace"), 5)
    assert one_line_error(run("group", "ownerremove", "--name", "lab_a", "lena"), 5)
    assert owner(lab.dsn, "lab_a") == "lena"
