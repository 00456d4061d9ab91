"""The key store, on real files in a temporary directory, with real forked processes."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest

from ome_session.errors import ConfigurationError
from ome_session.keystore import KeyStore, OmeroSessionStore, StoredSession
from tests.helpers import import_part

KEY_A = "0123456789abcdef" * 2
KEY_B = "fedcba9876543210" * 2
UUID_A = "22fccb8b-d04c-49ec-9d52-116a163728ca"
UUID_B = "1f800a16-1dc2-407a-8a85-fb44005306be"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def every_name(root: Path) -> list[str]:
    return [name for _, dirs, files in os.walk(root) for name in dirs + files]


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "sessions")


@pytest.fixture
def alice() -> StoredSession:
    return StoredSession("db.example.org", "alice", KEY_A, port=5432, group="lab", timeout=600)


# -- the verbs ----------------------------------------------------------------------------------


def test_added_entry_is_read_back_equal(store: KeyStore, alice: StoredSession) -> None:
    path = store.add(alice)
    assert path == store.file_for(alice) == store.directory / "db.example.org" / "alice" / KEY_A
    assert store.get("db.example.org", "alice", KEY_A) == alice
    assert KeyStore(store.directory).list() == [alice]


def test_entry_file_is_key_value_lines_with_ome_prefixes(store: KeyStore) -> None:
    s = StoredSession("db", "bob", KEY_B, sudo="root", extra={"ome.agent": "cli"})
    lines = store.add(s).read_text().splitlines()
    assert set(lines) == {
        "ome.server=db", "ome.user=bob", f"ome.key={KEY_B}", "ome.sudo=root",
        "ome.backend=local", "ome.agent=cli",
    }


def test_get_of_an_absent_entry_is_none(store: KeyStore) -> None:
    assert store.get("db", "alice", KEY_A) is None
    assert store.list() == []
    assert not store.directory.exists()  # reading never creates the store


def test_list_returns_every_entry_sorted(store: KeyStore) -> None:
    entries = [
        StoredSession("b-server", "alice", KEY_A),
        StoredSession("a-server", "zoe", KEY_B),
        StoredSession("a-server", "zoe", KEY_A),
        StoredSession("omero.example.org", "carol", UUID_A, backend="omero"),
    ]
    for s in entries:
        store.add(s)
    assert store.list() == sorted(entries, key=lambda s: (s.server, s.user, s.key))


def test_adding_again_replaces_the_entry(store: KeyStore, alice: StoredSession) -> None:
    store.add(alice)
    store.add(dataclasses.replace(alice, group="other"))
    assert store.list() == [dataclasses.replace(alice, group="other")]


def test_remove_deletes_the_file_and_tolerates_an_absent_entry(
    store: KeyStore, alice: StoredSession
) -> None:
    store.add(alice)
    store.remove(alice)
    store.remove(alice)
    assert not store.file_for(alice).exists()
    assert store.list() == []


def test_clear_removes_matching_entries_and_counts_them(store: KeyStore) -> None:
    for server, user, key in [("s1", "u1", KEY_A), ("s1", "u2", KEY_A), ("s2", "u1", KEY_B)]:
        store.add(StoredSession(server, user, key))
    assert store.clear(server="s1", user="u2") == 1
    assert store.clear(user="u1") == 2
    assert store.clear() == 0
    assert store.list() == []


# -- the current pointer ------------------------------------------------------------------------


def test_add_makes_the_entry_current_unless_told_not_to(store: KeyStore, alice: StoredSession) -> None:
    bob = StoredSession("db.example.org", "bob", KEY_B)
    store.add(alice)
    store.add(bob, make_current=False)
    assert store.current() == alice
    store.set_current(bob)
    assert KeyStore(store.directory).current() == bob


def test_removing_the_current_entry_clears_the_pointer(store: KeyStore, alice: StoredSession) -> None:
    bob = StoredSession("db.example.org", "bob", KEY_B)
    store.add(bob)
    store.add(alice)
    store.remove(bob)
    assert store.current() == alice  # another entry's removal leaves the pointer alone
    store.remove(alice)
    assert store.current() is None
    assert not (store.directory / ".current").exists()


def test_set_current_refuses_an_entry_that_is_not_stored(store: KeyStore, alice: StoredSession) -> None:
    with pytest.raises(ValueError, match="add"):
        store.set_current(alice)


def test_garbage_current_pointer_means_no_current_session(
    store: KeyStore, alice: StoredSession, caplog: pytest.LogCaptureFixture
) -> None:
    store.add(alice)
    (store.directory / ".current").write_bytes(b"ome.server=../../etc\nome.user=x\nome.key=y\n")
    with caplog.at_level(logging.WARNING, logger="ome_session.keystore"):
        assert store.current() is None
    assert "current pointer" in caplog.text


# -- modes and atomic writes --------------------------------------------------------------------


def test_files_are_0600_and_directories_0700_whatever_the_umask(
    store: KeyStore, alice: StoredSession
) -> None:
    old = os.umask(0)
    try:
        path = store.add(alice)
    finally:
        os.umask(old)
    for d in (store.directory, path.parent, path.parent.parent):
        assert mode(d) == 0o700, d
    for f in (path, store.directory / ".current", store.directory / ".lock"):
        assert mode(f) == 0o600, f


def test_writes_leave_no_temporary_files(store: KeyStore, alice: StoredSession) -> None:
    for group in ("a", "b", "c"):
        store.add(dataclasses.replace(alice, group=group))
    store.remove(alice)
    assert [n for n in every_name(store.directory) if n.startswith(".tmp")] == []


def test_crash_between_write_and_rename_keeps_the_old_version(
    store: KeyStore, alice: StoredSession
) -> None:
    store.add(alice)
    pid = os.fork()
    if pid == 0:  # the child dies at the worst moment: new content written, not yet renamed
        try:
            os.replace = lambda *args, **kwargs: os._exit(17)  # type: ignore[assignment]
            store.add(dataclasses.replace(alice, group="new"))
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 17
    assert store.get("db.example.org", "alice", KEY_A) == alice
    assert store.list() == [alice]
    leftovers = [p for p in store.file_for(alice).parent.iterdir() if p.name.startswith(".tmp")]
    assert len(leftovers) == 1 and "ome.group=new" in leftovers[0].read_text()
    store.add(dataclasses.replace(alice, group="newer"))  # the dead child's lock was released
    assert store.list() == [dataclasses.replace(alice, group="newer")]


def _add_one(directory: str, i: int, barrier: Any) -> None:
    barrier.wait()  # all sixteen start together, racing to create the store itself
    KeyStore(directory).add(StoredSession("db", f"user{i % 4}", f"{i:032x}"))


def test_sixteen_concurrent_processes_leave_sixteen_entries(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(16)
    procs = [ctx.Process(target=_add_one, args=(str(directory), i, barrier)) for i in range(16)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * 16
    store = KeyStore(directory)
    entries = store.list()
    assert sorted(s.key for s in entries) == [f"{i:032x}" for i in range(16)]
    assert all(s == StoredSession("db", s.user, s.key) for s in entries)
    assert store.current() in entries
    assert [n for n in every_name(directory) if n.startswith(".tmp")] == []


# -- refusing what others could have planted ----------------------------------------------------


def test_symlinked_store_directory_is_refused(tmp_path: Path, alice: StoredSession) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    store = KeyStore(tmp_path / "link")
    with pytest.raises(ConfigurationError, match="symlink"):
        store.add(alice)
    with pytest.raises(ConfigurationError, match="symlink"):
        store.list()
    assert list(real.iterdir()) == []


def test_store_directory_writable_by_others_is_refused(store: KeyStore, alice: StoredSession) -> None:
    store.directory.mkdir(mode=0o700)
    store.directory.chmod(0o770)
    with pytest.raises(ConfigurationError, match="chmod go-w"):
        store.add(alice)
    with pytest.raises(ConfigurationError, match="chmod go-w"):
        store.get("db.example.org", "alice", KEY_A)


def test_store_directory_of_another_uid_is_refused(foreign_dir: Path, alice: StoredSession) -> None:
    owner, before = foreign_dir.stat().st_uid, sorted(os.listdir(foreign_dir))
    store = KeyStore(foreign_dir)
    for call in (lambda: store.add(alice), store.list, lambda: store.get("db.example.org", "alice", KEY_A)):
        with pytest.raises(ConfigurationError, match=f"belongs to uid {owner}, not to uid {os.geteuid()}"):
            call()
    assert sorted(os.listdir(foreign_dir)) == before


def test_symlinked_entry_is_skipped_by_list_and_refused_by_name(
    store: KeyStore, alice: StoredSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.add(alice)
    bait = tmp_path / "bait"
    bait.write_text(f"ome.server=db.example.org\nome.user=alice\nome.key={KEY_B}\n")
    planted = store.file_for(alice).with_name(KEY_B)
    planted.symlink_to(bait)
    with caplog.at_level(logging.WARNING, logger="ome_session.keystore"):
        assert store.list() == [alice]
    assert "skipping" in caplog.text
    victim = StoredSession("db.example.org", "alice", KEY_B)
    for refused in (lambda: store.get("db.example.org", "alice", KEY_B),
                    lambda: store.add(victim), lambda: store.remove(victim)):
        with pytest.raises(ConfigurationError, match="symlink"):
            refused()
    assert planted.is_symlink() and KEY_B in bait.read_text()


def test_symlinked_user_directory_is_skipped_and_refused(
    store: KeyStore, alice: StoredSession, tmp_path: Path
) -> None:
    store.add(alice)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (store.directory / "db.example.org" / "mallory").symlink_to(elsewhere)
    assert store.list() == [alice]
    with pytest.raises(ConfigurationError, match="symlink"):
        store.add(StoredSession("db.example.org", "mallory", KEY_B))
    assert list(elsewhere.iterdir()) == []


GARBAGE = {
    "binary": b"\x00\x01\x02\xff" * 10,
    "huge": b"ome.server=db\nome.user=alice\nome.key=" + KEY_B.encode() + b"\n" + b"x=y\n" * 20000,
    "missing key": b"ome.server=db\nome.user=alice\n",
    "bad utf-8": b"ome.server=db\xff\nome.user=alice\nome.key=" + KEY_B.encode() + b"\n",
    "another key than its name": f"ome.server=db\nome.user=alice\nome.key={KEY_A}\n".encode(),
    "bad port": f"ome.server=db\nome.user=alice\nome.key={KEY_B}\nome.port=http\n".encode(),
    "a password": f"ome.server=db\nome.user=alice\nome.key={KEY_B}\nome.password=x\n".encode(),
    "no lines": b"just some text",
}


@pytest.mark.parametrize("content", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_entry_is_skipped_with_a_warning_and_kept(
    store: KeyStore, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    good = StoredSession("db", "alice", KEY_A)
    store.add(good)
    garbage = store.file_for(good).with_name(KEY_B)
    garbage.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="ome_session.keystore"):
        assert store.list() == [good]
        assert store.get("db", "alice", KEY_B) is None
        assert store.clear() == 1
    assert "skipping" in caplog.text
    assert KEY_B not in caplog.text  # logs name the entry by a key prefix only
    assert garbage.read_bytes() == content


def test_fifo_or_stray_file_does_not_hang_or_break_list(store: KeyStore, alice: StoredSession) -> None:
    store.add(alice)
    os.mkfifo(store.file_for(alice).with_name(KEY_B), 0o600)
    (store.directory / "stray.txt").write_text("not a server directory")
    assert store.list() == [alice]


# -- bad names never reach the filesystem -------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "user", "key"),
    [
        ("a/b", "alice", KEY_A), ("..", "alice", KEY_A), (".", "alice", KEY_A),
        ("", "alice", KEY_A), ("db\x00", "alice", KEY_A), ("db", "al\nice", KEY_A),
        ("db", "../etc", KEY_A), ("db", ".current", KEY_A), ("db", "x" * 256, KEY_A),
        ("db", "alice", "../../etc/passwd"), ("db", "alice", KEY_A.upper()),
        ("db", "alice", KEY_A[:-1]), ("db", "alice", ""),
    ],
)
def test_invalid_path_components_are_rejected(
    store: KeyStore, server: str, user: str, key: str
) -> None:
    with pytest.raises(ValueError):
        store.get(server, user, key)
    with pytest.raises(ValueError):
        store.add(StoredSession(server, user, key))
    assert not store.directory.exists()


def test_extra_fields_that_look_like_passwords_are_rejected() -> None:
    for name in ("password", "omero.pass", "PASSWD"):
        with pytest.raises(ValueError, match="password"):
            StoredSession("db", "alice", KEY_A, extra={name: "secret"})
    assert not any("pass" in f.name for f in dataclasses.fields(StoredSession))


def test_key_format_follows_the_backend() -> None:
    with pytest.raises(ValueError):
        StoredSession("db", "alice", UUID_A)  # local keys are 32 hex characters
    with pytest.raises(ValueError):
        StoredSession("omero", "alice", KEY_A, backend="omero")
    with pytest.raises(ValueError):
        StoredSession("db", "alice", KEY_A, backend="ldap")


def test_stored_session_is_immutable_hashable_and_picklable(alice: StoredSession) -> None:
    s = dataclasses.replace(alice, extra={"ome.agent": "cli"})
    with pytest.raises(TypeError):
        s.extra["ome.agent"] = "other"  # type: ignore[index]
    assert len({s, dataclasses.replace(s)}) == 1
    assert pickle.loads(pickle.dumps(s)) == s


def test_repr_does_not_show_the_key(alice: StoredSession) -> None:
    assert KEY_A not in repr(alice) and "alice" in repr(alice)


# -- where the stores live ----------------------------------------------------------------------


def test_default_directories_follow_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OME_SESSIONDIR", "OMERO_SESSIONDIR", "OMERO_USERDIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert KeyStore().directory.parts[-2:] == ("ome-session", "sessions")
    assert OmeroSessionStore().directory == tmp_path / "home" / "omero" / "sessions"
    monkeypatch.setenv("OMERO_USERDIR", str(tmp_path / "userdir"))
    assert OmeroSessionStore().directory == tmp_path / "userdir" / "sessions"
    monkeypatch.setenv("OMERO_SESSIONDIR", str(tmp_path / "omero-sessions"))
    monkeypatch.setenv("OME_SESSIONDIR", str(tmp_path / "ome-sessions"))
    assert OmeroSessionStore().directory == tmp_path / "omero-sessions"
    assert KeyStore().directory == tmp_path / "ome-sessions"


# -- the omero CLI's format ---------------------------------------------------------------------


def test_omero_format_round_trip_and_layout(tmp_path: Path) -> None:
    store = OmeroSessionStore(tmp_path / "omero")
    s = StoredSession("wss://omero.example.org/omero-ws", "carol", UUID_A, port=443,
                      group="lab", sudo="root", timeout=600, backend="omero")
    path = store.add(s)
    assert path == tmp_path / "omero" / "wss%3A%2F%2Fomero.example.org%2Fomero-ws" / "carol" / UUID_A
    assert set(path.read_text().splitlines()) == {
        "omero.host=wss://omero.example.org/omero-ws", "omero.user=carol", f"omero.sess={UUID_A}",
        "omero.port=443", "omero.group=lab", "omero.sudo=root", "omero.timeout=600",
    }
    root = tmp_path / "omero"
    assert (root / "._LASTHOST_").read_text() == s.server
    assert (root / "._LASTPORT_").read_text() == "443"
    assert (path.parent.parent / "._LASTUSER_").read_text() == "carol"
    assert (path.parent / "._LASTSESS_").read_text() == UUID_A
    assert OmeroSessionStore(root).list() == [s]
    assert OmeroSessionStore(root).current() == s
    store.remove(s)
    assert store.current() is None and store.list() == []
    assert (root / "._LASTHOST_").exists()  # like the CLI, only the session pointer goes


def test_omero_store_holds_only_omero_sessions(tmp_path: Path, alice: StoredSession) -> None:
    with pytest.raises(ValueError):
        OmeroSessionStore(tmp_path / "omero").add(alice)


def test_omero_store_reads_files_as_the_cli_writes_them(tmp_path: Path) -> None:
    # The CLI's own habits: 0755 directories, 0644 files, extra properties, no newline in pointers.
    root = tmp_path / "omero"
    (root / "localhost" / "root").mkdir(parents=True)
    (root / "localhost" / "root").chmod(0o755)
    root.chmod(0o700)
    (root / "localhost" / "root" / UUID_B).write_text(
        f"omero.port=4064\nomero.host=localhost\nomero.user=root\nomero.sess={UUID_B}\n"
        "omero.group=\nomero.debug=1\n"
    )
    (root / "._LASTHOST_").write_text("localhost")
    (root / "._LASTPORT_").write_text("4064")
    (root / "localhost" / "._LASTUSER_").write_text("root")
    (root / "localhost" / "root" / "._LASTSESS_").write_text(UUID_B)
    expected = StoredSession("localhost", "root", UUID_B, port=4064, backend="omero",
                             extra={"omero.debug": "1"})
    store = OmeroSessionStore(root)
    assert store.list() == [expected]
    assert store.current() == expected


def test_omero_py_sessions_store_and_ours_read_each_other(tmp_path: Path) -> None:
    sessions = import_part("omero", "omero.util.sessions")
    root = tmp_path / "omero"
    theirs = sessions.SessionsStore(dir=str(root))
    theirs.add("localhost", "root", UUID_B, {"omero.port": "4064", "omero.group": "system"})
    theirs.set_current("localhost", "root", UUID_B, {"omero.port": "4064"})
    ours = OmeroSessionStore(root)
    expected = StoredSession("localhost", "root", UUID_B, port=4064, group="system", backend="omero")
    assert ours.current() == expected and ours.list() == [expected]

    s = StoredSession("wss://h.example.org/ws", "carol", UUID_A, port=443, sudo="root",
                      backend="omero")
    ours.add(s)
    props = theirs.get(s.server, "carol", UUID_A)
    assert (props["omero.host"], props["omero.sess"], props["omero.sudo"]) == (s.server, UUID_A, "root")
    assert theirs.get_current()[:3] == (s.server, "carol", UUID_A)
    assert theirs.available(s.server, "carol") == [UUID_A]
    assert set(theirs.contents()) == {"localhost", s.server}  # what `omero sessions list` walks
