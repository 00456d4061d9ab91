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

import os
import pwd
import shutil
import site
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from tests.helpers import REPO, interpreter_for, run_as, throwaway_account

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="not root: the ownership tests already run as this unprivileged user")

MODULES = ["tests/test_tempfiles.py", "tests/test_keystore.py"]
# The tests that give a directory to another user: they must run, and pass, as the account.
OWNERSHIP_TESTS = {"test_a_root_owned_by_someone_else_is_refused", "test_store_directory_of_another_uid_is_refused"}


def test_the_ownership_tests_pass_for_an_unprivileged_user() -> None:
    packages = site.getsitepackages()
    with throwaway_account() as account:
        work = Path(tempfile.mkdtemp(prefix="ome-session-unprivileged-"))
        try:
            os.chown(work, account.pw_uid, account.pw_gid)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "TMPDIR": str(work),
                   "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                   "PYTHONPATH": os.pathsep.join([str(REPO), *packages])}
            python = interpreter_for(account, env)
            report = work / "report.xml"
            done = run_as(account, [python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
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
