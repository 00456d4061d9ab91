"""The installer: schema, configuration, first admin and settings file, idempotently.

Running it again upgrades only what is behind, duplicates nothing and keeps every row: the
configuration is write-once, an existing admin keeps their password, and a database with a newer
schema than this package is refused before anything changes.

With a service account (``service_user``: the web server's ``www-data``, a worker's account), the
settings file is left readable by that account and nobody else (see ``_service_account``), and
the configured ``tmp_dir`` holds a private directory for it.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import __version__, _migrations, _prompt, _service_account, _tempfiles, admin
from ._settings import EMBEDDED_DBNAME, Settings, resolve_dsn, settings_path, write_settings
from .configuration import Configuration
from .errors import ConfigurationError
from .model import Experimenter, Group, UserState
from .session import Session

Report = Callable[[str], None]
ADMIN_GROUP = "system"
ADMIN_PASSWORD_ENV = "OME_SESSION_ADMIN_PASSWORD"


@dataclass
class InstallResult:
    settings: Settings
    settings_file: Path
    migrations_applied: list[int]
    configuration_written: bool
    admin_created: bool
    admin_id: int


def install(dsn: str | None = None, *, admin: str | None = None, admin_password: str | None = None,
            tmp_dir: str | None = None, allow_guest: bool = False, service_user: str | None = None,
            report: Report = print) -> InstallResult:
    """Install or upgrade ome-session's database; prints each step through ``report``.

    ``service_user`` names the account a service runs as, which must read the settings (see the
    module docstring); a re-run without it keeps what the settings file says.
    """
    account = _service_account.service_account(service_user) if service_user is not None else None
    if account is not None:
        _service_account.check_reachable(_service_account.service_settings_path().parent, account)
    settings = _database(dsn, report, for_service=account is not None)
    report(f"database: {settings.source}")
    session = Session.bootstrap_instance(settings.dsn)
    try:
        factory = session.factory
        applied = _migrations.migrate(factory._connection.raw, report)
        if not applied:
            report(f"schema: up to date (version {_migrations.latest_version()})")
        values: dict[str, object] = {
            "allow_guest_access": allow_guest,
            "session_idle_timeout": 1800,
            "session_max_lifetime": 86400,
            "installed_version": __version__,
        }
        if tmp_dir:
            values["tmp_dir"] = tmp_dir
        wrote = Configuration.install(factory, values)
        report("configuration: written" if wrote else "configuration: exists, kept as it is")
        configured = factory.configuration.super_user_id
        if admin is None and configured is not None:  # a re-run without --admin keeps the install's admin
            admin_id, created = configured, False
            report(f"admin: the super user (id {configured}) exists, kept")
        else:
            admin_id, created = _first_admin(session, admin or "admin", admin_password, report)
        if factory.configuration.super_user_id is None:
            Configuration.update(factory, {"super_user": admin_id})
            report(f"super user: {admin or 'admin'} (id {admin_id})")
        else:
            report(f"super user: kept (id {factory.configuration.super_user_id})")
        shared = factory.configuration.stored("tmp_dir")
        session.commit_transaction()
        session.finish_bootstrap()
    except BaseException:
        Session.delete_instance(force=True)
        raise
    if shared:
        _prepare_tmp(Path(shared), account, report)
    path = _write_settings(settings, report, account)
    report("done")
    return InstallResult(settings, path, applied, wrote, created, admin_id)


def _database(dsn: str | None, report: Report, *, for_service: bool = False) -> Settings:
    """The database to install into: the one configured, else a new embedded cluster."""
    try:
        settings = resolve_dsn(dsn)
    except ConfigurationError:
        settings = None
    if for_service and (settings is None or settings.embedded_datadir):
        raise ConfigurationError("a service account needs a PostgreSQL server it can reach (--dsn or "
                                 "OME_SESSION_DSN): the embedded cluster serves only the account that installed it")
    if settings is not None:
        return settings
    from . import _cluster

    cluster = _cluster.Cluster(_cluster.default_datadir())
    if not cluster.initialized():
        report(f"embedded cluster: creating {cluster.datadir}")
        cluster.init()
    if not cluster.status().running:
        report("embedded cluster: starting (unix socket only)")
        cluster.start()
    cluster.ensure_database(EMBEDDED_DBNAME)
    return Settings(dsn=cluster.dsn(EMBEDDED_DBNAME), source=f"embedded cluster in {cluster.datadir}",
                    embedded_datadir=str(cluster.datadir))


def _first_admin(session: Session, name: str, password: str | None, report: Report) -> tuple[int, bool]:
    """The first admin, made through the administration API like any user (in the installer's
    one transaction: a bootstrap session's calls join it)."""
    factory = session.factory
    existing = factory.find_object(Experimenter, ome_name=name)
    if existing is not None:
        if not existing.is_admin:  # type: ignore[attr-defined]
            raise ConfigurationError(f"user {name!r} exists but is not an admin; choose another --admin name")
        report(f"admin: {name} exists, password kept")
        return int(existing.id), False
    password = password or _admin_password(name)
    group: Group | None = factory.find_object(Group, name=ADMIN_GROUP)  # type: ignore[assignment]
    if group is None:
        group = admin.add_group(ADMIN_GROUP)
    user = admin.add_user(name, "OME", "Administrator", password=password, groups=[group], admin=True)
    factory.maybe_new_object(UserState, experimenter=user)
    if group.leader_id is None:  # type: ignore[attr-defined]
        admin.set_group_owner(group, user)
    report(f"admin: created {name} (id {user.id}) in group {ADMIN_GROUP}")
    return int(user.id), True


def _admin_password(name: str) -> str:
    """$OME_SESSION_ADMIN_PASSWORD, else typed twice on the terminal."""
    password = _prompt.given(None, ADMIN_PASSWORD_ENV)
    if password is not None:
        return password
    _prompt.need_terminal(f"a password is needed for the new admin {name!r}", f"set {ADMIN_PASSWORD_ENV}")
    return _prompt.ask_new_password(f"Password for the new admin {name}: ", check=_long_enough,
                                    what="admin password")


def _long_enough(password: str) -> None:
    if len(password) < 8:
        raise ValueError("the password needs at least 8 characters")


def _prepare_tmp(shared: Path, account: pwd.struct_passwd | None, report: Report) -> None:
    """The configured tmp_dir, shared like /tmp; with a service account, its private root in it."""
    _tempfiles.make_shared_dir(shared)
    if account is not None:
        own = shared / str(account.pw_uid)
        if not own.exists():
            own.mkdir(mode=0o700)
            os.chown(own, account.pw_uid, account.pw_gid)
    report(f"temporary files: under {shared}, in a private directory per account")


def _write_settings(settings: Settings, report: Report, account: pwd.struct_passwd | None) -> Path:
    if account is not None:
        settings.service_user = account.pw_name
        path = write_settings(settings, _service_account.service_settings_path(), account=account)
        if account.pw_uid == os.geteuid():
            report(f"settings: wrote {path} (mode 0600: the service account {account.pw_name} installed it)")
        else:
            report(f"settings: wrote {path} (mode 0640, group {_service_account.group_name(account.pw_gid)}: "
                   f"readable by {account.pw_name} and nobody else)")
        return path
    if settings.source.startswith("settings file "):
        path = Path(settings.source.removeprefix("settings file "))
        report(f"settings: {path} kept")
        return path
    path = write_settings(settings, settings_path())
    report(f"settings: wrote {path} (mode 0600)")
    return path
