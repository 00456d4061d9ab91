"""The account a service runs as (``www-data`` under Apache, ``nginx``, a Celery user): what the
installer must leave for it, and how to tell that it can reach it.

The settings file then belongs to the installer (root) and to the account's group, 0640: the
account reads it and cannot change it, nobody else can read it (it may hold the database
password). A copy owned by the account would be simpler, but the account could then rewrite the
file root's own commands read (``/etc/ome-session/settings.json``) and send them to a database, or
an embedded cluster directory, of its choosing.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

from .errors import ConfigurationError

SYSTEM_SETTINGS = Path("/etc/ome-session/settings.json")


def service_account(name: str) -> pwd.struct_passwd:
    """The account named ``name``; ``ValueError`` if there is none."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"a service account is named by its user name, not {name!r}")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"there is no account {name!r} on this machine (`getent passwd {name}`)") from None


def service_settings_path() -> Path:
    """Where an install for a service account writes its settings: $OME_SESSION_CONFIG, else the
    system-wide file, which every account reads when it has no settings of its own."""
    configured = os.environ.get("OME_SESSION_CONFIG")
    return Path(configured) if configured else SYSTEM_SETTINGS


def check_reachable(directory: Path, account: pwd.struct_passwd) -> None:
    """``ConfigurationError`` naming the first existing directory on the way to ``directory`` (it
    included) that the account cannot enter; missing ones are made so that it can."""
    if account.pw_uid == 0:
        return
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for step in [*reversed(directory.parents), directory]:
        try:
            info = step.stat()
        except FileNotFoundError:
            return
        bit = (stat.S_IXUSR if info.st_uid == account.pw_uid else
               stat.S_IXGRP if info.st_gid in groups else stat.S_IXOTH)
        if not info.st_mode & bit:
            raise ConfigurationError(f"the service account {account.pw_name!r} cannot enter {step}: put the "
                                     "settings elsewhere (OME_SESSION_CONFIG), or let it search that directory")


def prepare_directory(directory: Path, account: pwd.struct_passwd) -> None:
    """The settings' directory, made if missing: parents anyone may search, and itself 0750 with
    the account's group, so that the account reaches the file and others cannot even list it."""
    check_reachable(directory, account)
    if directory.exists():
        return
    for step in reversed(directory.parents):
        if not step.exists():
            step.mkdir(exist_ok=True)
            step.chmod(0o755)
    directory.mkdir(exist_ok=True)
    os.chown(directory, -1, account.pw_gid)
    directory.chmod(0o750)


def readable_by_group_of(service: str | None, gid: int) -> bool:
    """Whether group ``gid`` is the primary group of the named service account."""
    if service is None:
        return False
    try:
        return pwd.getpwnam(service).pw_gid == gid
    except KeyError:
        return False


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
