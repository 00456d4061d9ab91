"""Temporary files: private, created atomically, deleted only by the process that made them."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ome_session._tempfiles import TempFiles, default_root, reap
from ome_session.errors import ConfigurationError
from tests.helpers import process_start_time

REPO = Path(__file__).resolve().parents[1]

# A process that makes a file and a scratch dir, reports them, then waits until told to exit.
CHILD = """
import json, sys
from pathlib import Path
from ome_session._tempfiles import TempFiles
tf = TempFiles(Path(sys.argv[1]))
scratch = tf.new_dir("child")
(scratch / "data.bin").write_bytes(b"x")
print(json.dumps([str(tf.new_file("child")), str(scratch)]), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "tmproot"


@pytest.fixture
def tf(root: Path) -> Iterator[TempFiles]:
    temp = TempFiles(root)
    yield temp
    temp.close()


@pytest.fixture
def live_child(root: Path) -> Iterator[tuple[subprocess.Popen[str], list[Path]]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "child process failed before reporting its paths"
    yield proc, [Path(p) for p in json.loads(line)]
    proc.kill()
    proc.wait()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def run_in_fork(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run *work* in a forked child that ends with os._exit; return what it reported."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_fd)
            try:
                report = work()
            except BaseException:  # noqa: BLE001 - the parent must see every failure
                report = {"error": traceback.format_exc()}
            with os.fdopen(write_fd, "w") as pipe:
                json.dump(report, pipe)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result: dict[str, Any] = json.loads(data)
    assert "error" not in result, result
    return result


# --- creation ---------------------------------------------------------------------------------


def test_default_root_is_per_user_under_the_system_temp_dir() -> None:
    assert default_root().name == f"ome-session-{os.getuid()}"


def test_constructor_creates_nothing(root: Path) -> None:
    TempFiles(root)
    assert not root.exists()


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o277])
def test_file_exists_and_all_modes_are_private_whatever_the_umask(
    root: Path, umask: int
) -> None:
    old = os.umask(umask)
    try:
        tf = TempFiles(root)
        path = tf.new_file("prog", "txt")
        scratch = tf.new_dir("prog", "d")
    finally:
        os.umask(old)
    assert path.is_file() and path.stat().st_size == 0
    assert re.fullmatch(r"prog-[0-9a-f]+\.txt", path.name)
    assert mode(path) == 0o600
    assert scratch.is_dir() and mode(scratch) == 0o700
    assert (
        path.parent
        == scratch.parent
        == root / f"{os.getpid()}-{path.parent.name.split('-')[1]}"
    )
    assert mode(path.parent) == 0o700
    assert mode(root) == 0o700
    assert tf.registered() == sorted([path, scratch])
    tf.close()


def test_names_are_unique_and_registered_when_threads_create_at_once(
    tf: TempFiles,
) -> None:
    barrier = threading.Barrier(8)
    made: list[Path] = []

    def work() -> None:
        barrier.wait()
        made.extend(tf.new_file() for _ in range(25))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 200
    assert tf.registered() == sorted(made)


@pytest.mark.parametrize(
    "bad",
    [
        "a/b",
        "..",
        ".",
        "x\x00",
        "",
        "../../etc",
        "a..b",
        "a b",
        "a\\b",
        "é",
        "x;rm",
        "a" * 101,
    ],
)
def test_bad_names_raise_naming_the_value_and_create_nothing(
    root: Path, bad: str
) -> None:
    tf = TempFiles(root)
    calls: list[Callable[[], Path]] = [
        lambda: tf.new_file(bad),
        lambda: tf.new_file("ome", bad),
        lambda: tf.new_dir(bad),
        lambda: tf.new_dir("ome", bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            call()
    assert not root.exists()
    assert tf.registered() == []


# --- finishing --------------------------------------------------------------------------------


def test_finish_removes_the_file_and_unregisters_it(tf: TempFiles) -> None:
    path = tf.new_file()
    tf.finish(str(path))
    assert not path.exists()
    assert tf.registered() == []


def test_finish_removes_a_whole_scratch_tree(tf: TempFiles) -> None:
    scratch = tf.new_dir()
    (scratch / "a" / "b").mkdir(parents=True)
    (scratch / "a" / "b" / "f.txt").write_text("x")
    tf.finish(scratch)
    assert not scratch.exists()


def test_links_inside_a_scratch_dir_are_removed_and_their_targets_survive(
    tf: TempFiles, tmp_path: Path
) -> None:
    outside_file = tmp_path / "outside.txt"
    outside_file.write_text("keep me")
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    (outside_dir / "inner.txt").write_text("keep me too")
    scratch = tf.new_dir()
    (scratch / "to_file").symlink_to(outside_file)
    (scratch / "sub").mkdir()
    (scratch / "sub" / "to_dir").symlink_to(outside_dir, target_is_directory=True)
    tf.finish(scratch)
    assert not scratch.exists()
    assert outside_file.read_text() == "keep me"
    assert (outside_dir / "inner.txt").read_text() == "keep me too"


def test_a_scratch_dir_replaced_by_a_link_is_unlinked_and_the_target_survives(
    tf: TempFiles, tmp_path: Path
) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "data").write_text("keep me")
    scratch = tf.new_dir()
    scratch.rmdir()
    scratch.symlink_to(target, target_is_directory=True)
    tf.finish(scratch)
    assert not os.path.lexists(scratch)
    assert (target / "data").read_text() == "keep me"


def test_finishing_an_already_deleted_path_unregisters_it_quietly(
    tf: TempFiles,
) -> None:
    path = tf.new_file()
    path.unlink()
    tf.finish(path)
    assert tf.registered() == []


def test_finish_refuses_a_system_file_and_leaves_it_alone(tf: TempFiles) -> None:
    passwd = Path("/etc/passwd")
    before = (passwd.read_bytes(), os.stat(passwd))

    def child() -> dict[str, Any]:
        # Unprivileged, so that a broken guard fails this test instead of deleting the file.
        if os.getuid() == 0:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        try:
            TempFiles(tf.root).finish("/etc/passwd")
        except ValueError as exc:
            return {"refused": "/etc/passwd" in str(exc)}
        return {"refused": False}

    assert run_in_fork(child) == {"refused": True}
    assert (passwd.read_bytes(), os.stat(passwd)) == before


def test_finish_refuses_an_outside_file_and_leaves_it_alone(
    tf: TempFiles, tmp_path: Path
) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    tf.new_file()
    with pytest.raises(ValueError, match="precious"):
        tf.finish(outside)
    assert outside.read_text() == "keep me"


def test_finish_refuses_a_path_of_another_instance(root: Path, tf: TempFiles) -> None:
    other = TempFiles(root)
    path = other.new_file()
    with pytest.raises(ValueError):
        tf.finish(path)
    assert path.exists()
    other.close()


def test_finish_refuses_a_path_of_another_process(
    tf: TempFiles, live_child: tuple[subprocess.Popen[str], list[Path]]
) -> None:
    _, (child_file, child_dir) = live_child
    for path in (child_file, child_dir):
        with pytest.raises(ValueError):
            tf.finish(path)
        assert path.exists()


def test_finish_refuses_a_path_twice(tf: TempFiles) -> None:
    path = tf.new_file()
    tf.finish(path)
    path.touch()  # whatever appears there later is not ours to delete
    with pytest.raises(ValueError):
        tf.finish(path)
    assert path.exists()


def test_finish_all_removes_every_registered_path_and_reports_them(
    tf: TempFiles,
) -> None:
    made = [tf.new_file(), tf.new_dir(), tf.new_file("x", "log")]
    assert tf.finish_all() == sorted(made)
    assert not any(p.exists() for p in made)
    assert tf.registered() == []


def test_close_removes_the_process_directory(root: Path) -> None:
    tf = TempFiles(root)
    process_dir = tf.new_file().parent
    tf.close()
    assert not process_dir.exists()
    assert root.is_dir()


def test_forget_keeps_the_files_and_stops_owning_them(tf: TempFiles) -> None:
    path = tf.new_file()
    tf.forget()
    assert tf.registered() == []
    assert tf.finish_all() == []
    with pytest.raises(ValueError):
        tf.finish(path)
    assert path.exists()


# --- context managers -------------------------------------------------------------------------


def test_file_context_finishes_on_exit_also_when_the_body_raises(tf: TempFiles) -> None:
    with tf.file("ctx", "txt") as path:
        assert path.exists()
    assert not path.exists()
    with pytest.raises(RuntimeError), tf.file() as path:
        path.write_text("partial")
        raise RuntimeError("boom")
    assert not path.exists()
    assert tf.registered() == []


def test_scratch_dir_context_removes_the_tree_also_when_the_body_raises(
    tf: TempFiles,
) -> None:
    with pytest.raises(RuntimeError), tf.scratch_dir() as scratch:
        (scratch / "sub").mkdir()
        (scratch / "sub" / "f").write_text("x")
        raise RuntimeError("boom")
    assert not scratch.exists()
    assert tf.registered() == []


def test_context_body_may_finish_the_path_itself(tf: TempFiles) -> None:
    with tf.file() as path:
        tf.finish(path)
    assert tf.registered() == []


# --- forked children --------------------------------------------------------------------------


def test_forked_child_never_deletes_the_parents_files(tf: TempFiles) -> None:
    parent_file = tf.new_file()
    parent_dir = tf.new_dir()

    def child() -> dict[str, Any]:
        refused = []
        for path in (parent_file, parent_dir):
            try:
                tf.finish(path)
            except ValueError:
                refused.append(str(path))
        finished = tf.finish_all()
        own = tf.new_file("child")
        report = {
            "refused": refused,
            "finished": [str(p) for p in finished],
            "own": str(own),
        }
        report["registered"] = [str(p) for p in tf.registered()]
        tf.close()
        return report

    report = run_in_fork(child)
    assert report["refused"] == [str(parent_file), str(parent_dir)]
    assert report["finished"] == []
    own = Path(report["own"])
    assert report["registered"] == [str(own)]
    assert own.parent.parent == parent_file.parent.parent  # same root
    assert own.parent.name.split("-")[0] != str(os.getpid())  # its own directory
    assert parent_file.exists() and parent_dir.exists()
    assert parent_file.parent.is_dir()
    assert tf.registered() == sorted([parent_file, parent_dir])


def test_forked_child_keeps_its_own_files_apart_after_forget(tf: TempFiles) -> None:
    parent_file = tf.new_file()

    def child() -> dict[str, Any]:
        tf.forget()
        own = tf.new_file("child")
        tf.finish(own)
        return {"own": str(own), "gone": not own.exists()}

    report = run_in_fork(child)
    assert report["gone"]
    assert Path(report["own"]).parent != parent_file.parent
    assert parent_file.exists()
    assert tf.registered() == [parent_file]


# --- reaping ----------------------------------------------------------------------------------


def test_reap_keeps_live_processes_and_removes_a_killed_ones_directory(
    root: Path, tf: TempFiles, live_child: tuple[subprocess.Popen[str], list[Path]]
) -> None:
    own = tf.new_file()
    proc, (child_file, child_dir) = live_child
    child_process_dir = child_file.parent
    assert child_process_dir.name.startswith(f"{proc.pid}-")

    assert reap(root) == []
    assert child_file.exists() and (child_dir / "data.bin").exists()

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reap(root) == [child_process_dir]
    assert not child_process_dir.exists()
    assert own.exists()


def test_reap_removes_a_directory_whose_pid_lives_with_another_start_time(
    root: Path, tf: TempFiles
) -> None:
    own = tf.new_file()
    start = process_start_time(os.getpid())  # read here: the code under test must have read the same
    assert own.parent.name == f"{os.getpid()}-{start}"
    reused = root / f"{os.getpid()}-{int(start) + 1}"
    reused.mkdir(mode=0o700)
    (reused / "stale.tmp").write_text("x")
    assert reap(root) == [reused]
    assert own.exists()


def test_reap_without_start_time_keeps_a_running_pid_and_removes_a_missing_one(
    root: Path, tf: TempFiles
) -> None:
    tf.new_file()
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    running = root / f"{os.getpid()}-nostart"
    missing = root / f"{pid_max + 1}-nostart"
    for directory in (running, missing):
        directory.mkdir(mode=0o700)
    assert reap(root) == [missing]
    assert running.is_dir()


def test_reap_ignores_entries_that_are_not_process_directories(
    root: Path, tf: TempFiles
) -> None:
    tf.new_file()
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    keep = [root / "notes", root / "0-1", root / f"{pid_max + 1}-x"]
    for directory in keep:
        directory.mkdir(mode=0o700)
    link = root / f"{pid_max + 1}-1"
    link.symlink_to(root / "notes", target_is_directory=True)
    assert reap(root) == []
    assert all(d.is_dir() for d in keep) and link.is_symlink()


def test_reap_of_a_missing_root_does_nothing(root: Path) -> None:
    assert reap(root) == []
    assert not root.exists()


# --- refusing an unsafe root ------------------------------------------------------------------


def test_a_root_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    tf = TempFiles(link)
    with pytest.raises(ConfigurationError, match="symbolic link"):
        tf.new_file()
    with pytest.raises(ConfigurationError, match="symbolic link"):
        reap(link)
    assert list(real.iterdir()) == []


def test_a_world_writable_root_is_refused(root: Path) -> None:
    root.mkdir()
    os.chmod(root, 0o777)
    with pytest.raises(ConfigurationError, match="chmod 0700"):
        TempFiles(root).new_dir()
    with pytest.raises(ConfigurationError, match="world-writable"):
        reap(root)
    assert list(root.iterdir()) == []


def test_a_root_that_is_a_file_is_refused(root: Path) -> None:
    root.write_text("")
    with pytest.raises(ConfigurationError, match="not a directory"):
        TempFiles(root).new_file()


def test_a_root_owned_by_someone_else_is_refused(foreign_dir: Path) -> None:
    owner, before = foreign_dir.stat().st_uid, sorted(os.listdir(foreign_dir))
    with pytest.raises(ConfigurationError, match=f"belongs to uid {owner}, not to uid {os.geteuid()}"):
        TempFiles(foreign_dir).new_file()
    with pytest.raises(ConfigurationError, match=f"belongs to uid {owner}"):
        reap(foreign_dir)
    assert sorted(os.listdir(foreign_dir)) == before
