"""The ownership rules hold for an ordinary user, not only for root.

Private files must belong to the user running the code: the checks compare an owner with the
calling user. Run as root, a check that compared with root instead would pass every test, so as
root (as CI runs) this case makes a throwaway unprivileged account, runs the modules that test
ownership (temporary files and the key store) as that account in a pytest of their own, and
deletes the account afterwards, whatever happens. Run as an ordinary user, those modules already
run as one, and this case has nothing to add.

The account runs this checkout with its virtualenv's packages, on an interpreter of the same
version it may execute (the virtualenv's own may live under root's home): the checkout and the
virtualenv must be readable by other users, which the case checks first and names if not.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import site
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="not root: the ownership tests already run as this unprivileged user")

MODULES = ["tests/test_tempfiles.py", "tests/test_keystore.py"]
# The tests that give a directory to another user: they must run, and pass, as the account.
OWNERSHIP_TESTS = {"test_a_root_owned_by_someone_else_is_refused", "test_store_directory_of_another_uid_is_refused"}


@contextlib.contextmanager
def throwaway_account() -> Iterator[pwd.struct_passwd]:
    """A new system account with a group of its own and no home, removed (with anything it still
    runs) when the block ends."""
    name = f"omes-test-{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True, text=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        account = pwd.getpwnam(name)
        for pid in _processes_of(account.pw_uid):  # a test's child that outlived it: ours to end
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        subprocess.run(["userdel", name], check=True, capture_output=True, text=True)
        with contextlib.suppress(subprocess.CalledProcessError):  # gone with the user where USERGROUPS_ENAB
            subprocess.run(["groupdel", name], check=True, capture_output=True, text=True)


def _processes_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                found.append(int(entry.name))
    return found


def _as(account: pwd.struct_passwd, args: list[str], env: dict[str, str],
        cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, user=account.pw_uid, group=account.pw_gid, extra_groups=[], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600, check=False)


def _interpreter(account: pwd.struct_passwd, env: dict[str, str]) -> str:
    """An interpreter of this version that the account may run, able to import what the tests need."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}",
                  shutil.which(f"python{version}") or ""]
    tried = []
    for candidate in dict.fromkeys(c for c in candidates if c):
        try:
            done = _as(account, [candidate, "-c", "import sys, ome_session, pytest, psycopg; "
                                                  "print('%d.%d' % sys.version_info[:2])"], env, Path("/"))
        except OSError as exc:  # it may not even execute it
            tried.append(f"{candidate}: {exc.strerror}")
            continue
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
        tried.append(f"{candidate}: {(done.stderr.strip().splitlines() or [done.stdout.strip()])[-1]}")
    pytest.fail(f"no Python {version} that an unprivileged account can run with this checkout ({REPO}) and "
                f"its packages; the checkout and its virtualenv must be readable by other users. Tried:\n"
                + "\n".join(tried))


def test_the_ownership_tests_pass_for_an_unprivileged_user() -> None:
    packages = site.getsitepackages()
    with throwaway_account() as account:
        work = Path(tempfile.mkdtemp(prefix="ome-session-unprivileged-"))
        try:
            os.chown(work, account.pw_uid, account.pw_gid)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "TMPDIR": str(work),
                   "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPO), *packages])}
            python = _interpreter(account, env)
            report = work / "report.xml"
            done = _as(account, [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                                 "--basetemp", str(work / "pytest"), "--junitxml", str(report), *MODULES],
                       env, REPO)
            cases = {case.get("name", "").split("[")[0]: [child.tag for child in case]
                     for case in ElementTree.parse(report).getroot().iter("testcase")} if report.exists() else {}
        finally:
            shutil.rmtree(work, ignore_errors=True)

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert {name: cases.get(name) for name in OWNERSHIP_TESTS} == {name: [] for name in OWNERSHIP_TESTS}, \
        done.stdout[-2000:]  # run as the account, and passed: neither skipped nor failed
    with pytest.raises(KeyError):
        pwd.getpwnam(account.pw_name)  # and the account is gone
