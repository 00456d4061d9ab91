"""Bootstrap sessions, configuration, migrations, finding the database, connection failures."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import psycopg
import pytest

from ome_session import Configuration, Session, SessionManager, _migrations
from ome_session._settings import Settings, resolve_dsn, settings_path, write_settings
from ome_session.errors import (
    BootstrapError,
    ConfigurationError,
    DatabaseUnavailable,
    SessionError,
)
from tests.helpers import People


def test_bootstrap_session_has_a_factory_and_no_user(db_dsn: str) -> None:
    session = Session.bootstrap_instance(db_dsn)
    assert Session.instance() is session and session.is_bootstrap()
    assert session.user is None and session.session_key is None
    assert session.factory.count_objects("Experimenter") == 0
    session.commit_transaction()
    session.finish_bootstrap()
    assert not Session.has_instance()


def test_bootstrap_fails_while_a_session_exists(people: People) -> None:
    SessionManager(people.dsn).create_session("alice", "alice-password")
    with pytest.raises(BootstrapError):
        Session.bootstrap_instance(people.dsn)
    assert Session.instance().user_name == "alice"


def test_finish_bootstrap_refuses_uncommitted_changes(db_dsn: str) -> None:
    session = Session.bootstrap_instance(db_dsn)
    session.factory.new_object("Group", name="installers")
    with pytest.raises(BootstrapError, match="uncommitted"):
        session.finish_bootstrap()
    assert Session.instance() is session
    session.commit_transaction()
    session.finish_bootstrap()
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SELECT name FROM groups").fetchall() == [("installers",)]


def test_finish_bootstrap_after_reads_only_is_fine(db_dsn: str) -> None:
    session = Session.bootstrap_instance(db_dsn)
    session.factory.find_objects("Group")
    session.finish_bootstrap()
    assert not Session.has_instance()


def test_finish_bootstrap_on_a_login_session_fails(people: People) -> None:
    session = SessionManager(people.dsn).create_session("alice", "alice-password")
    with pytest.raises(BootstrapError):
        session.finish_bootstrap()


def test_configuration_is_readable_in_bootstrap_once_written(db_dsn: str) -> None:
    session = Session.bootstrap_instance(db_dsn)
    assert Configuration.install(session.factory, {"allow_guest_access": True, "session_idle_timeout": 60})
    session.commit_transaction()
    assert session.configuration.allow_guest_access is True
    assert session.configuration.session_idle_timeout == 60
    assert session.configuration.session_max_lifetime == 86400  # the declared default


def test_configuration_install_writes_once(db_dsn: str) -> None:
    session = Session.bootstrap_instance(db_dsn)
    assert Configuration.install(session.factory, {"session_idle_timeout": 60}) is True
    session.commit_transaction()
    assert Configuration.install(session.factory, {"session_idle_timeout": 5}) is False
    session.commit_transaction()
    assert session.configuration.session_idle_timeout == 60
    Configuration.update(session.factory, {"session_idle_timeout": 5})
    session.commit_transaction()
    assert session.configuration.session_idle_timeout == 5


def test_unknown_or_mistyped_configuration_raises(db_dsn: str) -> None:
    session = Session.bootstrap_instance(db_dsn)
    config = session.configuration
    with pytest.raises(ConfigurationError, match="known"):
        config.get("sesion_idle_timeout")
    with pytest.raises(ConfigurationError):
        _ = config.no_such_variable
    with pytest.raises(ConfigurationError):
        Configuration.update(session.factory, {"session_idle_timeout": "soon"})
    with pytest.raises(ConfigurationError):
        Configuration.update(session.factory, {"allow_guest_access": 1})
    with pytest.raises(ConfigurationError):
        Configuration.update(session.factory, {"session_max_lifetime": -1})
    with pytest.raises(ConfigurationError):
        Configuration.install(session.factory, {"evil": "__import__('os')"})
    assert session.factory.obtain_dbh().execute("SELECT count(*) FROM configuration").fetchone() == (0,)


def test_preload_serves_reads_until_flushed(db_dsn: str) -> None:
    session = Session.bootstrap_instance(db_dsn)
    Configuration.install(session.factory, {"session_idle_timeout": 60})
    session.commit_transaction()
    Configuration.preload(session.factory)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("UPDATE configuration SET value = '99' WHERE name = 'session_idle_timeout'")
    assert Configuration(session.factory).session_idle_timeout == 60
    Configuration.flush()
    assert Configuration(session.factory).session_idle_timeout == 99


def test_migrations_are_idempotent_and_a_newer_schema_is_refused(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        assert _migrations.migrate(conn) == []
        assert _migrations.current_version(conn) == _migrations.latest_version()
        conn.execute("INSERT INTO schema_version (version, name) VALUES (9999, 'from the future')")
        conn.commit()
        with pytest.raises(ConfigurationError, match="newer"):
            _migrations.migrate(conn)


def test_session_manager_finds_the_database_in_the_settings_file(people: People) -> None:
    write_settings(Settings(dsn=people.dsn, source="test"))
    assert stat.S_IMODE(settings_path().stat().st_mode) == 0o600
    assert SessionManager().create_session("alice", "alice-password").user_name == "alice"


def test_the_environment_overrides_the_settings_file(people: People, monkeypatch: pytest.MonkeyPatch) -> None:
    write_settings(Settings(dsn="host=/nonexistent dbname=nothing", source="test"))
    monkeypatch.setenv("OME_SESSION_DSN", people.dsn)
    assert resolve_dsn().source == "OME_SESSION_DSN"
    assert SessionManager().create_session("bob", "bob-password").user_name == "bob"


def test_a_settings_file_naming_an_unknown_backend_is_refused_naming_the_known_ones() -> None:
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"backend": "ldap", "dsn": "dbname=ome"}))
    with pytest.raises(ConfigurationError, match="local, omero"):
        SessionManager().create_session("alice", "x")


def test_nothing_configured_says_how_to_install() -> None:
    with pytest.raises(ConfigurationError, match="ome-session install"):
        SessionManager().create_session("alice", "x")


def test_a_settings_file_with_a_password_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dsn": "host=db.example dbname=ome password=hunter2"}))
    os.chmod(path, 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600") as failure:
        resolve_dsn()
    assert "hunter2" not in str(failure.value)


def test_unreachable_database_raises_database_unavailable_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable, match=str(tmp_path)) as failure:
        SessionManager(f"host={tmp_path} dbname=ome password=secret-pw connect_timeout=2").create_session("a", "b")
    assert "secret-pw" not in str(failure.value)
    assert not Session.has_instance()


def test_wrong_database_name_raises_database_unavailable(pg_cluster) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DatabaseUnavailable, match="no_such_db"):
        Session.bootstrap_instance(pg_cluster.dsn("no_such_db"))
    assert not Session.has_instance()


def test_errors_are_all_session_errors() -> None:
    from ome_session import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), SessionError)
