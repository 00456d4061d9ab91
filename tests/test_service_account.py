"""Deploying under a service account: ``ome-session install --service-user ACCOUNT``.

Run as root (as CI runs), the installer is given a throwaway account to serve; the account then
logs in with the settings it was left and uses its own temporary files in the configured
``tmp_dir``, also after root used that directory first, while another throwaway account can read
neither the settings file nor anything in it. The server is one every account can reach (the
tests' own accepts root only). Run as an ordinary user there is nobody to deploy for, and those
cases skip; the rules for reading a settings file are checked either way.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import site
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from ome_session import SessionManager
from ome_session._cluster import Cluster
from ome_session.errors import ConfigurationError
from tests.helpers import (
    FAST_OPTIONS,
    REPO,
    ThrowawayCluster,
    interpreter_for,
    ome_session,
    run_as,
    throwaway_account,
)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="not root: no service account to install for")

# Run by the service account: log in with the settings file alone, make and finish a temporary file.
SERVICE = """
import json, os, sys
from ome_session import SessionManager
session = SessionManager().create_session("webapp", "webapp-password")
path = session.get_temporary_filename("upload", "dat")
path.write_text("data")
session.finish_temporary_file(path)
print(json.dumps({"user": session.user_name, "path": str(path), "uid": os.getuid()}))
"""

# Run by the bystander: read the settings file, then try to use it.
BYSTANDER = """
import sys
from ome_session import SessionManager
from ome_session.errors import ConfigurationError
try:
    open(sys.argv[1]).read()
    print("read the settings file")
except PermissionError:
    print("cannot read the settings file")
try:
    SessionManager().create_session("webapp", "webapp-password")
    print("logged in")
except ConfigurationError as exc:
    print("no database:", exc)
"""


def _searchable_dir(prefix: str) -> Path:
    """A new directory every account may enter (pytest's own are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def open_cluster() -> Iterator[Cluster]:
    """A server whose socket any local account reaches (trust authentication: a test server)."""
    base = _searchable_dir("ome-session-svc-pg-")
    server = ThrowawayCluster(base / "cluster", **{**FAST_OPTIONS, "unix_socket_permissions": "0777"})
    try:
        cluster = server.start()
        for directory in (cluster.datadir, cluster.socket_dir):
            directory.chmod(0o755)
        yield cluster
    finally:
        server.remove()
        shutil.rmtree(base, ignore_errors=True)


def _database(cluster: Cluster, name: str) -> str:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return cluster.dsn(name)


def _env_for(account: pwd.struct_passwd, home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(home),
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), *site.getsitepackages()]), **extra}


@as_root
def test_the_service_account_reads_its_settings_and_keeps_its_own_temporary_files(open_cluster: Cluster) -> None:
    dsn = _database(open_cluster, "service")
    work = _searchable_dir("ome-session-svc-")
    settings, shared = work / "etc" / "settings.json", work / "tmp"
    try:
        with throwaway_account() as service, throwaway_account() as bystander:
            installed = ome_session("install", "--dsn", dsn, "--admin", "root", "--tmp-dir", str(shared),
                                    "--service-user", service.pw_name, OME_SESSION_CONFIG=str(settings),
                                    OME_SESSION_ADMIN_PASSWORD="root-password")
            assert installed.returncode == 0, installed.stderr
            group = service.pw_name  # useradd --user-group: a group of its own name
            assert (f"settings: wrote {settings} (mode 0640, group {group}: readable by {service.pw_name} and "
                    "nobody else)\n") in installed.stdout
            info = settings.stat()
            assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 0, service.pw_gid)
            assert json.loads(settings.read_text())["service_user"] == service.pw_name
            assert (stat.S_IMODE(settings.parent.stat().st_mode), settings.parent.stat().st_gid) == (
                0o750, service.pw_gid)
            assert stat.S_IMODE(shared.stat().st_mode) == 0o1777

            # root comes first to the temporary directory, and adds the service's user
            root_env = {"OME_SESSION_CONFIG": str(settings), "OME_SESSIONDIR": str(work / "root-keys")}
            assert ome_session("login", "root@localhost", OME_SESSION_PASSWORD="root-password",
                               **root_env).returncode == 0
            added = ome_session("user", "add", "webapp", "Web", "App", "--group-name", "system",
                                OME_SESSION_NEW_PASSWORD="webapp-password", **root_env)
            assert added.returncode == 0, added.stderr
            root_session = SessionManager(dsn).create_session("root", "root-password")
            mine = root_session.get_temporary_filename("root", "dat")
            assert mine.parent.parent == shared / "0"

            home = work / "service-home"
            home.mkdir(mode=0o700)
            os.chown(home, service.pw_uid, service.pw_gid)
            env = _env_for(service, home, OME_SESSION_CONFIG=str(settings))
            done = run_as(service, [interpreter_for(service, env), "-c", SERVICE], env, work)
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout)
            assert report["user"] == "webapp"
            assert Path(report["path"]).parent.parent == shared / str(service.pw_uid)
            assert stat.S_IMODE((shared / str(service.pw_uid)).stat().st_mode) == 0o700
            cannot_write = run_as(service, ["/bin/sh", "-c", f"echo x >> {settings}"], env, work)
            assert cannot_write.returncode != 0 and json.loads(settings.read_text())["dsn"] == dsn

            other_home = work / "bystander-home"
            other_home.mkdir(mode=0o700)
            os.chown(other_home, bystander.pw_uid, bystander.pw_gid)
            env = _env_for(bystander, other_home, OME_SESSION_CONFIG=str(settings))
            seen = run_as(bystander, [interpreter_for(bystander, env), "-c", BYSTANDER, str(settings)], env, work)
            assert seen.returncode == 0, seen.stderr
            lines = seen.stdout.splitlines()
            assert lines[0] == "cannot read the settings file"
            assert lines[1] == f"no database: cannot read settings file {settings}: Permission denied"
            root_session.finish_temporary_file(mine)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_an_unknown_service_account_or_the_embedded_cluster_is_refused_before_anything(db_dsn: str) -> None:
    work = _searchable_dir("ome-session-svc-")
    try:
        env = {"OME_SESSION_CONFIG": str(work / "settings.json"), "OME_SESSION_ADMIN_PASSWORD": "root-password",
               "OME_SESSION_DATA_DIR": str(work / "data")}
        unknown = ome_session("install", "--dsn", db_dsn, "--service-user", "no-such-account-here", **env)
        assert (unknown.returncode, unknown.stdout) == (2, "")
        assert unknown.stderr == ("ome-session: error: there is no account 'no-such-account-here' on this machine "
                                  "(`getent passwd no-such-account-here`)\n")
        with psycopg.connect(db_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM experimenters").fetchone() == (0,)
        embedded = ome_session("install", "--service-user", "nobody", **env)
        assert (embedded.returncode, embedded.stdout) == (4, "")
        assert "the embedded cluster serves only the account that installed it" in embedded.stderr
        assert not (work / "data").exists() and not (work / "settings.json").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- reading a settings file -----------------------------------------------------------------------------


def _settings_file(path: Path, mode: int, **fields: object) -> Path:
    path.write_text(json.dumps({"dsn": "host=/nowhere dbname=x password=secret", **fields}))
    path.chmod(mode)
    return path


def _resolve(path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    from ome_session._settings import resolve_dsn

    monkeypatch.setenv("OME_SESSION_CONFIG", str(path))
    return resolve_dsn().dsn


def test_a_password_readable_by_the_group_is_accepted_only_for_its_service_account(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    me = pwd.getpwuid(os.getuid())
    path = tmp_path / "settings.json"
    os.chown(_settings_file(path, 0o640), -1, me.pw_gid)
    with pytest.raises(ConfigurationError, match="readable by others.*--service-user"):
        _resolve(path, monkeypatch)
    _settings_file(path, 0o640, service_user="nobody" if me.pw_name != "nobody" else "root")
    with pytest.raises(ConfigurationError, match="readable by others"):
        _resolve(path, monkeypatch)
    _settings_file(path, 0o640, service_user=me.pw_name)  # the group is this account's own
    assert _resolve(path, monkeypatch) == "host=/nowhere dbname=x password=secret"
    _settings_file(path, 0o644, service_user=me.pw_name)
    with pytest.raises(ConfigurationError, match="readable by others"):
        _resolve(path, monkeypatch)


def test_a_settings_file_others_can_change_or_own_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _settings_file(tmp_path / "settings.json", 0o620)
    with pytest.raises(ConfigurationError, match=r"writable by others \(mode 0620\)"):
        _resolve(path, monkeypatch)
    if os.geteuid() == 0:
        _settings_file(path, 0o600)
        os.chown(path, 65534, 65534)
        with pytest.raises(ConfigurationError, match="belongs to uid 65534, neither root nor you"):
            _resolve(path, monkeypatch)
