"""Secrets stay secret: keys and passwords are never stored, sent or logged in clear, private
files stay private, symlinks are refused, sudo follows the rules, and a dead key stays dead.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ome_session
from ome_session import Configuration, Session, SessionManager, _keys, _tempfiles
from ome_session.errors import ConfigurationError, PermissionDenied, SessionError, SessionKeyError
from ome_session.keystore import KeyStore, StoredSession
from tests.helpers import (
    People,
    ServerLog,
    database_text,
    files_text,
    find_secrets,
    key_digest,
    password,
    query,
)

from . import _setup
from ._figures import Figures

pytestmark = pytest.mark.reliability

PACKAGE = Path(ome_session.__file__).parent


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# -- keys are stored, sent and compared only as digests ------------------------------------------


def test_keys_are_never_stored_or_sent_in_plain_text(people: People, server_log: ServerLog,
                                                      tmp_path: Path, figures: Figures) -> None:
    manager, store = SessionManager(people.dsn), tmp_path / "store"
    made = [manager.create_session("lena", "lena-password").session_key]
    made.append(manager.sudo_session("alice").session_key)
    made.append(manager.su_session().session_key)
    Session.idle()
    resumed = manager.create_session(key=made[0])
    resumed.keep_alive()
    made.append(manager.tty_login(user="bob", store=KeyStore(store), prompt=lambda _label: "bob-password").session_key)
    manager.logout()
    keys = {f"key {n}": key for n, key in enumerate(made) if isinstance(key, str)}
    digests = {f"digest of {name}": key_digest(key) for name, key in keys.items()}

    stored, logged, stored_files = database_text(people.dsn), server_log.text(), files_text(store)
    elsewhere = {column: text for column, text in stored.items() if column != "ome_sessions.key_digest"}
    leaks = (find_secrets({**stored, "server log": logged}, keys)
             + find_secrets({**elsewhere, **stored_files}, digests))
    found = [query(people.dsn, "SELECT count(*) FROM ome_sessions WHERE key_digest = %s", digest)[0][0]
             for digest in digests.values()]
    # The resume was one statement that handed the digest to SQL, where it is compared.
    resumes = [line for line in logged.splitlines() if "\\x" + digests["digest of key 0"].hex() in line]
    figures(rows_checked=sum(found), errors=len(leaks), keys=len(keys), columns_scanned=len(stored),
            log_bytes=len(logged))
    assert len(keys) == len(made) == 4
    assert leaks == []
    assert found == [1] * len(keys)
    assert len(resumes) >= 2  # at least: opened, resumed (as bound parameters)
    assert any(keys["key 3"] in text for text in stored_files.values())  # the key store does hold its key


# Names that hold a session key or its digest in the modules that authenticate.
_SECRET_NAME = re.compile(r"(^|_)(key|keys|digest|key_digest|session_key)($|_)")
_AUTH_MODULES = ["backends", "manager.py", "session.py", "_session_user.py", "_lifecycle.py", "_keys.py", "wsgi.py"]
# Where keys live in our database: looked up by digest in SQL, never compared here at all.
_SQL_ONLY = {"backends/local/_backend.py", "backends/local/_sql.py", "_keys.py"}
_KNOWN: dict[str, str] = {}  # modules with a known, reported violation (xfail until fixed)


def _key_comparisons(source: str, *, constant_time_allowed: bool = False) -> list[str]:
    """Every ``==``, ``!=`` or ``in`` (and ``compare_digest`` unless allowed) on a key or digest."""
    found = []
    for node in ast.walk(ast.parse(source)):
        operands: list[ast.expr] = []
        if isinstance(node, ast.Compare) and any(
                isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            operands = [node.left, *node.comparators]
        elif (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("compare_digest")
              and not constant_time_allowed):
            operands = list(node.args)
        names = [n.id if isinstance(n, ast.Name) else n.attr for operand in operands for n in ast.walk(operand)
                 if isinstance(n, (ast.Name, ast.Attribute))]
        if any(_SECRET_NAME.search(name) for name in names):
            found.append(f"line {getattr(node, 'lineno', '?')}: {ast.unparse(node)}")
    return found


def _auth_modules() -> list[str]:
    files = {p for name in _AUTH_MODULES
             for p in ([PACKAGE / name] if name.endswith(".py") else (PACKAGE / name).rglob("*.py"))}
    return sorted(str(p.relative_to(PACKAGE)) for p in files if p.exists())


def test_the_check_for_key_comparisons_in_python_finds_one() -> None:
    planted = "def resume(key, row):\n    return row.key_digest == key_digest(key)\n"
    timing_safe = "def resume(key, row):\n    return hmac.compare_digest(row.key, key)\n"
    assert _key_comparisons(planted) != [] and _key_comparisons(planted, constant_time_allowed=True) != []
    assert _key_comparisons(timing_safe) != [] and _key_comparisons(timing_safe, constant_time_allowed=True) == []
    assert _key_comparisons("def f(key):\n    return key is None\n") == []


@pytest.mark.parametrize("module", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=_KNOWN[name])) if name in _KNOWN else name
    for name in _auth_modules()])
def test_no_session_key_is_compared_in_python_and_ours_only_in_sql(module: str, figures: Figures) -> None:
    """A key of ours is looked up by its digest in SQL; any other is at most compared in constant time."""
    source = (PACKAGE / module).read_text(encoding="utf-8")
    found = _key_comparisons(source, constant_time_allowed=module not in _SQL_ONLY)
    figures(errors=len(found), comparisons=found)
    assert found == []


# -- private files ----------------------------------------------------------------------------------


def _exposed(root: Path) -> list[str]:
    """Every file or directory below ``root`` (and root) that group or others may read or enter."""
    paths = [root, *root.rglob("*")]
    return [f"{p} {stat.S_IMODE(p.lstat().st_mode):04o}" for p in paths
            if not p.is_symlink() and p.lstat().st_mode & 0o077]


def test_key_store_and_temporary_files_are_never_readable_by_others(people: People, tmp_path: Path,
                                                                     figures: Figures) -> None:
    store_dir, manager = tmp_path / "store", SessionManager(people.dsn)
    with _umask(0):  # the most careless umask: every mode below is the code's own doing
        session = manager.tty_login(user="alice", store=KeyStore(store_dir), prompt=lambda _: "alice-password")
        store = KeyStore(store_dir)
        store.add(StoredSession("other", "bob", _keys.new_key(), port=4064))
        made = [session.get_temporary_filename("secret", "dat"), session.get_scratch_dir("secret", "dir")]
        with session.temporary_file("ctx", "dat") as inside:
            inside.write_text("x")
            exposed_while_open = _exposed(inside.parent)
        with session.scratch_dir("ctx", "dir") as scratch:
            exposed_scratch = _exposed(scratch)
    temp_root = made[0].parent.parent
    exposed = _exposed(store_dir) + _exposed(temp_root) + exposed_while_open + exposed_scratch
    figures(paths_checked=len([*store_dir.rglob("*"), *temp_root.rglob("*")]), errors=len(exposed))
    assert exposed == []


def test_a_symlinked_key_store_is_refused_and_nothing_is_written_through_it(tmp_path: Path) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir(mode=0o700)
    link.symlink_to(real)
    entry = StoredSession("srv", "alice", _keys.new_key())

    for call in (lambda: KeyStore(link).add(entry), lambda: KeyStore(link).list(), KeyStore(link).current):
        with pytest.raises(ConfigurationError):
            call()
    assert list(real.iterdir()) == []

    # A symlink deeper down (a server directory pointing elsewhere) is refused the same way.
    store, elsewhere = KeyStore(tmp_path / "store"), tmp_path / "elsewhere"
    store.add(StoredSession("first", "alice", _keys.new_key()))
    elsewhere.mkdir(mode=0o700)
    (store.directory / "srv").symlink_to(elsewhere)
    with pytest.raises(ConfigurationError):
        store.add(entry)
    assert list(elsewhere.iterdir()) == []


def test_a_symlinked_key_store_entry_is_neither_followed_nor_overwritten(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "store")
    entry = StoredSession("srv", "alice", _keys.new_key())
    path = store.add(entry)
    target = tmp_path / "victim.txt"
    target.write_text("not a key store file")
    path.unlink()
    path.symlink_to(target)

    with pytest.raises(ConfigurationError):
        store.get("srv", "alice", entry.key)
    assert store.list() == []  # skipped (and logged), not followed
    with pytest.raises(ConfigurationError):
        store.add(entry)
    assert target.read_text() == "not a key store file"


def test_a_symlinked_temporary_root_or_process_directory_is_refused(people: People, tmp_path: Path) -> None:
    real, link = tmp_path / "real-tmp", tmp_path / "link-tmp"
    real.mkdir(mode=0o700)
    link.symlink_to(real)
    query(people.dsn, "UPDATE configuration SET value = to_jsonb(%s::text) WHERE name = 'tmp_dir'", str(link))

    session = SessionManager(people.dsn).create_session("alice", "alice-password")  # logs in all the same
    with pytest.raises(ConfigurationError):
        session.get_temporary_filename("x", "dat")
    with pytest.raises(ConfigurationError):
        _tempfiles.reap(link)
    assert list(real.iterdir()) == []

    # A link put where this process's own directory goes is refused too.
    query(people.dsn, "UPDATE configuration SET value = to_jsonb(%s::text) WHERE name = 'tmp_dir'", str(real))
    Session.delete_instance(force=True)
    Configuration.flush()
    session = SessionManager(people.dsn).create_session("alice", "alice-password")
    probe = session.get_temporary_filename("x", "dat")
    session.finish_temporary_file(probe)
    probe.parent.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    probe.parent.symlink_to(elsewhere)
    with pytest.raises(ConfigurationError):
        session.get_temporary_filename("x", "dat")
    assert list(elsewhere.iterdir()) == []


# -- sudo -------------------------------------------------------------------------------------------


def test_sudo_is_allowed_only_to_the_super_user_admins_and_leaders_of_the_targets_group(
        people: People, figures: Figures) -> None:
    admin = _setup.add_users(people.dsn, ["adam"])["adam"]  # an admin who is not the super user
    query(people.dsn, "UPDATE experimenters SET is_admin = true WHERE id = %s", admin)
    query(people.dsn, "INSERT INTO configuration VALUES ('allow_guest_access', 'true')")
    ids = {**people.ids, "adam": admin}
    everyone = sorted(ids)
    expected: dict[str, set[str]] = {actor: set() for actor in everyone}
    # The super user: anyone; an admin: anyone but the super user; a leader: the non-admin members of
    # the groups he leads (himself included); nobody else, not even as himself.
    expected.update(root=set(everyone), adam=set(everyone) - {"root"}, lena={"lena", "alice", "bob"})
    manager = SessionManager(people.dsn)
    seen: dict[str, set[str]] = {}
    tried = rows = 0
    for actor in everyone:
        key = manager.create_session(actor, password(actor)).session_key
        seen[actor] = set()
        for target in everyone:
            tried += 1
            try:
                session = manager.sudo_session(target)
            except PermissionDenied:
                assert Session.instance().user_name == actor  # a refusal changes nothing
                continue
            seen[actor].add(target)
            assert (session.user_name, session.sudo_by) == (target, ids[actor])
            assert query(people.dsn, "SELECT sudo_by FROM ome_sessions WHERE key_digest = %s",
                         key_digest(session.session_key or "")) == [(ids[actor],)]
            rows += 1
            manager.create_session(key=key)
    figures(examples=tried, rows_checked=rows, errors=sum(len(seen[a] ^ expected[a]) for a in everyone))
    assert seen == expected


def test_a_sudo_session_has_only_the_rights_of_its_user(people: People) -> None:
    manager = SessionManager(people.dsn)
    manager.create_session("lena", "lena-password")
    manager.sudo_session("alice")

    with pytest.raises(PermissionDenied):
        manager.sudo_session("bob")  # alice may not, even when lena made her session
    assert Session.instance().user_name == "alice"


def test_sudo_to_an_inactive_user_is_refused_even_to_the_super_user(people: People) -> None:
    query(people.dsn, "UPDATE experimenters SET active = false WHERE ome_name = 'bob'")
    manager = SessionManager(people.dsn)
    manager.create_session("root", "root-password")

    with pytest.raises(PermissionDenied):
        manager.sudo_session("bob")


# -- dead keys stay dead ----------------------------------------------------------------------------


def _set_config(dsn: str, name: str, value: str) -> None:
    query(dsn, "INSERT INTO configuration VALUES (%s, %s::jsonb) "
                      "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", name, value)


def _kill_by_logout(dsn: str, manager: SessionManager, key: str) -> None:
    Session.idle()
    manager.logout()


def _kill_by_logout_with_an_open_transaction(dsn: str, manager: SessionManager, key: str) -> None:
    Session.instance().factory.count_objects("Project")  # any read opens a transaction
    manager.logout()


def _kill_by_idle_timeout(dsn: str, manager: SessionManager, key: str) -> None:
    query(dsn, "UPDATE ome_sessions SET last_access = now() - interval '2 hours' WHERE key_digest = %s",
                 key_digest(key))


def _kill_by_lifetime(dsn: str, manager: SessionManager, key: str) -> None:
    query(dsn, "UPDATE ome_sessions SET expires_at = now() - interval '1 second' WHERE key_digest = %s",
                 key_digest(key))


def _kill_by_deactivation(dsn: str, manager: SessionManager, key: str) -> None:
    query(dsn, "UPDATE experimenters SET active = false WHERE ome_name = 'guest'")


def _kill_by_withdrawing_guest_access(dsn: str, manager: SessionManager, key: str) -> None:
    _set_config(dsn, "allow_guest_access", "false")


KILLS = {
    "logout": _kill_by_logout,
    "logout_with_open_transaction": _kill_by_logout_with_an_open_transaction,
    "idle_timeout": _kill_by_idle_timeout,
    "max_lifetime": _kill_by_lifetime,
    "user_deactivated": _kill_by_deactivation,
    "guest_access_withdrawn": _kill_by_withdrawing_guest_access,
}


@pytest.mark.parametrize("how", list(KILLS))
def test_a_revoked_or_expired_key_never_revives(people: People, how: str, figures: Figures) -> None:
    _set_config(people.dsn, "allow_guest_access", "true")
    manager = SessionManager(people.dsn)
    session = manager.create_session("guest", "guest-password")
    key = session.session_key
    assert key is not None

    KILLS[how](people.dsn, manager, key)
    Session.delete_instance(force=True)  # a fresh process view: no cached configuration
    Configuration.flush()
    with pytest.raises(SessionKeyError):
        manager.create_session(key=key)
    # Everything that made it die is undone, and more: no timeouts at all.
    query(people.dsn, "UPDATE experimenters SET active = true")
    for name, value in (("allow_guest_access", "true"), ("session_idle_timeout", "0"),
                        ("session_max_lifetime", "0")):
        _set_config(people.dsn, name, value)
    Session.delete_instance(force=True)
    Configuration.flush()
    revived = []
    for _attempt in range(2):
        with contextlib.suppress(SessionKeyError):
            revived.append(manager.create_session(key=key))
    closed = query(people.dsn, "SELECT closed_at IS NOT NULL FROM ome_sessions WHERE key_digest = %s",
                          key_digest(key))
    figures(errors=len(revived), how=how)
    assert revived == []
    assert closed == [(True,)]


def test_a_dead_session_cannot_be_kept_alive(people: People) -> None:
    manager = SessionManager(people.dsn)
    session = manager.create_session("alice", "alice-password")
    _kill_by_idle_timeout(people.dsn, manager, session.session_key or "")

    with pytest.raises(SessionKeyError):
        session.keep_alive()
    _set_config(people.dsn, "session_idle_timeout", "0")
    Configuration.flush()
    with pytest.raises(SessionKeyError):
        session.keep_alive()


def test_withdrawn_guest_access_takes_effect_in_a_running_process_after_flush(people: People) -> None:
    _set_config(people.dsn, "allow_guest_access", "true")
    manager = SessionManager(people.dsn)
    key = manager.create_session("guest", "guest-password").session_key
    Session.idle()  # a worker between requests

    _set_config(people.dsn, "allow_guest_access", "false")  # an admin elsewhere
    Configuration.flush()

    with pytest.raises(SessionKeyError):
        manager.create_session(key=key)


# -- passwords are never logged ---------------------------------------------------------------------


def _messages(error: BaseException | None) -> str:
    """What an error shows anyone who prints or logs it: messages and reprs of the whole chain."""
    shown: list[str] = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        shown += [str(error), repr(error), *map(repr, error.args)]
        error = error.__cause__ or error.__context__
    return "\n".join(shown)


def test_a_password_is_never_logged_printed_or_sent(
        people: People, server_log: ServerLog, *, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str], tmp_path: Path, figures: Figures) -> None:
    for name in (None, "ome_session", "psycopg"):
        caplog.set_level(logging.DEBUG, logger=name)
    wrong = "Wr0ng-but-secret-passphrase"
    in_the_name_field = "Typed-in-the-name-field-secret"  # looked up as a name, so the server sees it
    manager = SessionManager(people.dsn)
    errors: list[BaseException] = []

    def attempt(call: Callable[[], object]) -> None:
        try:
            call()
        except SessionError as exc:
            errors.append(exc)

    attempt(lambda: manager.create_session("alice", "alice-password"))
    attempt(lambda: manager.create_session("alice", wrong))
    attempt(lambda: manager.create_session(in_the_name_field, "carol"))
    attempt(lambda: manager.create_session("lena", "lena-password"))
    attempt(lambda: manager.sudo_session("bob"))
    attempt(lambda: manager.sudo_session("carol"))  # refused: lena does not lead lab_b
    answers = iter([wrong, "bob-password"])
    attempt(lambda: manager.tty_login(user="bob", store=KeyStore(tmp_path / "store"),
                                      prompt=lambda _label: next(answers)))
    answers_all_wrong = iter([wrong] * 3)
    attempt(lambda: manager.tty_login(user="carol", store=KeyStore(tmp_path / "store"),
                                      prompt=lambda _label: next(answers_all_wrong)))
    Session.delete_instance(force=True)
    env = {**os.environ, "OME_SESSION_PASSWORD": "root-password"}
    cli = subprocess.run([sys.executable, "-m", "ome_session", "--verbose", "--dsn", people.dsn, "login", "-u",
                          "root"], check=False, capture_output=True, text=True, env=env, timeout=120)

    captured = capsys.readouterr()
    places = {
        "log": "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records),
        "stdout": captured.out, "stderr": captured.err, "cli": cli.stdout + cli.stderr,
        "errors": "\n".join(_messages(e) for e in errors),
        **database_text(people.dsn), **files_text(tmp_path / "store"),
    }
    passwords = {"the wrong password": wrong, **{f"{name}'s password": People.password(name) for name in people.ids}}
    # Typed as a user name, it is looked up as one: the server sees it, nobody else.
    leaks = (find_secrets({**places, "server log": server_log.text()}, passwords)
             + find_secrets(places, {"a password typed as a name": in_the_name_field}))
    figures(errors=len(leaks), places_scanned=len(places) + 1, log_records=len(caplog.records),
            failed_attempts=len(errors))
    assert cli.returncode == 0, cli.stderr
    assert any(r.name.startswith("ome_session") for r in caplog.records)  # the capture did capture
    assert len(errors) == 4  # wrong password, password as name, refused sudo, three wrong prompts
    assert leaks == []
