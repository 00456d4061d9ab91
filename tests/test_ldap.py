"""LDAP logins: escaped bind DNs, TLS by default, and no fallback, against a real slapd on loopback.

The directory tests start their own slapd (Debian's ``slapd`` package; ``scripts/install-test-ldap``
installs it) with a private configuration, a throwaway certificate authority and a handful of
entries, and skip with the reason when slapd, openssl or ldap3 is missing (or fail, when the run
requires LDAP: see ``helpers.missing``). The DN escaping and configuration checks need none of
these and always run.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from ome_session import Session, SessionManager, _ldap
from ome_session.errors import AuthenticationError, ConfigurationError
from tests.helpers import People, free_port, import_part, missing, query, wait_for

BASE = "dc=example,dc=org"
TEMPLATE = "uid={username},ou=people," + BASE
LEE = "#lee+o=dd,x\\y"  # a real user whose name is full of DN syntax
# Directory passwords differ from the local ones (``<name>-password``) on purpose.
DIRECTORY_PASSWORDS = {"alice": "alice-directory-password", "bob": "bob-directory-password",
                       "root": "root-directory-password", LEE: "lee-directory-password"}
ADMINS_ALICE_PASSWORD = "admins-alice-password"  # uid=alice,ou=admins,ou=people: injection target
_SLAPD = shutil.which("slapd") or ("/usr/sbin/slapd" if os.path.exists("/usr/sbin/slapd") else None)
_SLAPADD = shutil.which("slapadd") or ("/usr/sbin/slapadd" if os.path.exists("/usr/sbin/slapadd") else None)


# -- escaping and configuration (no directory needed) ------------------------------------------------


@pytest.mark.parametrize(("name", "escaped"), [
    ("alice", "alice"),
    ("alice,ou=admins", "alice\\,ou\\=admins"),
    ("*)(uid=*", "*)(uid\\=*"),
    ("alice+cn=Alice", "alice\\+cn\\=Alice"),
    ("a\\,b", "a\\\\\\,b"),
    ('q"<>;', 'q\\"\\<\\>\\;'),
    ("#x", "\\#x"),
    (" x ", "\\ x\\ "),
    (" ", "\\ "),
    ("a\x00b\nc", "a\\00b\\0ac"),
    ("Zoë", "Zoë"),
])
def test_user_names_are_escaped_as_one_rdn_value(name: str, escaped: str) -> None:
    assert _ldap.escape_rdn_value(name) == escaped
    assert _ldap.user_dn(TEMPLATE, name) == f"uid={escaped},ou=people,{BASE}"


def test_a_template_is_filled_by_replacement_not_formatting() -> None:
    assert _ldap.user_dn("cn={username},o={0.__class__}", "bob") == "cn=bob,o={0.__class__}"


@pytest.mark.parametrize(("config", "complaint"), [
    ({"uri": "ldaps://ldap.example.org", "user_dn": "uid=fixed,ou=people," + BASE}, "{username}"),
    ({"uri": "ldaps://ldap.example.org", "user_dn": "uid={username},cn={username}"}, "{username}"),
    ({"uri": "ldap://ldap.example.org", "user_dn": TEMPLATE, "start_tls": False}, "clear text"),
    ({"uri": "ldaps://ldap.example.org", "user_dn": TEMPLATE, "start_tls": True}, "already TLS"),
    ({"uri": "http://ldap.example.org", "user_dn": TEMPLATE}, "ldaps://HOST"),
    ({"uri": "ldaps://ldap.example.org/dc=x?uid", "user_dn": TEMPLATE}, "ldaps://HOST"),
    ({"user_dn": TEMPLATE}, "'uri' is required"),
    ({"uri": "ldaps://ldap.example.org", "user_dn": TEMPLATE, "timeout": 0}, "timeout"),
    ({"uri": "ldaps://ldap.example.org", "user_dn": TEMPLATE, "ca_file": "/nonexistent/ca.pem"}, "ca_file"),
    ({"uri": "ldaps://ldap.example.org", "user_dn": TEMPLATE, "requre_tls": False}, "requre_tls"),
])
def test_invalid_ldap_configuration_is_a_configuration_error(config: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(complaint)):
        _ldap.parse_settings(config)


def test_plain_ldap_starts_tls_by_default_and_may_opt_out() -> None:
    assert _ldap.parse_settings({"uri": "ldap://ldap.example.org", "user_dn": TEMPLATE}).start_tls
    plain = _ldap.parse_settings({"uri": "ldap://ldap.example.org:3389", "user_dn": TEMPLATE,
                                  "start_tls": False, "require_tls": False})
    assert (plain.host, plain.port, plain.encrypted) == ("ldap.example.org", 3389, False)


def _use_ldap(people: People, config: dict[str, Any], *ldap_users: str) -> None:
    """Configure LDAP and take the local passwords away from ``ldap_users``."""
    query(people.dsn, "INSERT INTO configuration VALUES ('ldap', %s)", Jsonb(config))
    for name in ldap_users:
        query(people.dsn, "UPDATE experimenters SET password_hash = NULL WHERE ome_name = %s", name)


def test_plain_ldap_uri_is_refused_before_any_password_is_sent(people: People) -> None:
    _use_ldap(people, {"uri": "ldap://127.0.0.1:9", "user_dn": TEMPLATE, "start_tls": False}, "alice")
    with pytest.raises(ConfigurationError, match="clear text"):
        SessionManager(people.dsn).create_session("alice", "anything")
    assert not Session.has_instance()


def test_ldap_configured_without_ldap3_says_how_to_install_it(people: People,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _use_ldap(people, {"uri": "ldaps://127.0.0.1:9", "user_dn": TEMPLATE}, "alice")
    monkeypatch.setitem(sys.modules, "ldap3", None)  # what the import system does for a missing package
    with pytest.raises(ConfigurationError, match=r"pip install 'ome-session\[ldap\]'"):
        SessionManager(people.dsn).create_session("alice", "anything")


# -- a real directory --------------------------------------------------------------------------------


@dataclass
class Directory:
    """A running slapd: StartTLS on ``port``, ldaps on ``tls_port``, certificate for localhost only."""

    port: int
    tls_port: int
    ca_file: str

    def config(self, **overrides: Any) -> dict[str, Any]:
        config = {"uri": f"ldap://localhost:{self.port}", "user_dn": TEMPLATE, "ca_file": self.ca_file}
        config.update(overrides)
        return {key: value for key, value in config.items() if value is not None}


def _ssha(password: str) -> str:
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def _ldif(entries: list[tuple[str, dict[str, list[str]]]]) -> str:
    """LDIF with every DN and value base64-encoded, so the text is exactly what we mean."""
    def line(name: str, value: str) -> str:
        return f"{name}:: {base64.b64encode(value.encode()).decode()}"
    blocks = []
    for dn, attributes in entries:
        lines = [line("dn", dn)] + [line(name, value) for name, values in attributes.items() for value in values]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _person(uid: str, password: str) -> dict[str, list[str]]:
    return {"objectClass": ["inetOrgPerson"], "uid": [uid], "cn": [uid], "sn": ["Tester"],
            "userPassword": [_ssha(password)]}


def _entries() -> list[tuple[str, dict[str, list[str]]]]:
    entries = [
        (BASE, {"objectClass": ["dcObject", "organization"], "dc": ["example"], "o": ["Example"]}),
        (f"ou=people,{BASE}", {"objectClass": ["organizationalUnit"], "ou": ["people"]}),
        (f"ou=admins,ou=people,{BASE}", {"objectClass": ["organizationalUnit"], "ou": ["admins"]}),
        (f"uid=alice,ou=admins,ou=people,{BASE}", _person("alice", ADMINS_ALICE_PASSWORD)),
        # LEE's DN written with hex escapes, unlike the code's backslash escapes: slapd's parser,
        # not our own escaper, decides that both name the same entry.
        (f"uid=\\23lee\\2Bo\\3Ddd\\2Cx\\5Cy,ou=people,{BASE}", _person(LEE, DIRECTORY_PASSWORDS[LEE])),
    ]
    entries += [(f"uid={name},ou=people,{BASE}", _person(name, password))
                for name, password in DIRECTORY_PASSWORDS.items() if name != LEE]
    return entries


def _make_certificates(where: Path) -> None:
    """A throwaway CA and a server certificate for the name ``localhost`` (deliberately no IP)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (where / "server.ext").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext")


_SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args
TLSCACertificateFile {dir}/ca.pem
TLSCertificateFile {dir}/server.pem
TLSCertificateKeyFile {dir}/server.key
database mdb
maxsize 16777216
suffix "{base}"
directory {dir}/db
access to attrs=userPassword by anonymous auth by * none
access to * by * read
"""


def _listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    """Whether slapd came to accept connections on ``port`` (False: it exited first)."""

    def state() -> str | None:
        if proc.poll() is not None:
            return "exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return None
        return "listening"

    return wait_for(f"slapd to listen on port {port}", state, timeout=30) == "listening"


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Directory]:
    if _SLAPD is None or _SLAPADD is None:
        missing("ldap", "slapd is not installed")
    if not os.path.exists("/etc/ldap/schema/core.schema") or not os.path.isdir("/usr/lib/ldap"):
        missing("ldap", "the test directory expects Debian's slapd layout (/etc/ldap/schema, /usr/lib/ldap)")
    if shutil.which("openssl") is None:
        missing("ldap", "openssl is not installed")
    import_part("ldap", "ldap3")
    where = tmp_path_factory.mktemp("slapd")
    (where / "db").mkdir()
    _make_certificates(where)
    (where / "slapd.conf").write_text(_SLAPD_CONF.format(dir=where, base=BASE))
    (where / "entries.ldif").write_text(_ldif(_entries()))
    subprocess.run([_SLAPADD, "-q", "-f", str(where / "slapd.conf"), "-l", str(where / "entries.ldif")],
                   check=True, capture_output=True)
    for _attempt in range(5):  # a port picked free can be taken before slapd binds it: pick again
        port, tls_port = free_port(), free_port()
        log_file = open(where / "slapd.log", "wb")  # noqa: SIM115  (closed below)
        proc = subprocess.Popen(
            [_SLAPD, "-d", "0", "-f", str(where / "slapd.conf"),
             "-h", f"ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{tls_port}/"],
            stdout=log_file, stderr=subprocess.STDOUT)
        try:
            if _listening(proc, port) and _listening(proc, tls_port):
                yield Directory(port, tls_port, str(where / "ca.pem"))
                return
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log_file.close()
    raise RuntimeError(f"slapd would not start: {(where / 'slapd.log').read_text()[-2000:]}")


@pytest.fixture
def ldap_people(people: People, directory: Directory) -> People:
    """``people`` with LDAP over StartTLS: alice, bob and LEE have no local password, root keeps his.

    Also users whose names try to steer the bind DN, with no local password either.
    """
    with psycopg.connect(people.dsn) as conn:
        for name in (LEE, "alice,ou=admins", "*)(uid=*", "alice+cn=alice", "alice\\,ou=admins"):
            conn.execute("INSERT INTO experimenters (ome_name, group_id) VALUES (%s, %s)",
                         (name, people.groups["lab_a"]))
    _use_ldap(people, directory.config(), "alice", "bob")
    return people


def test_directory_password_logs_in_an_ldap_user(ldap_people: People) -> None:
    session = SessionManager(ldap_people.dsn).create_session("alice", DIRECTORY_PASSWORDS["alice"])
    assert Session.instance() is session
    assert (session.user.ome_name, session.experimenter_id) == ("alice", ldap_people.ids["alice"])
    alice = ldap_people.ids["alice"]
    assert query(ldap_people.dsn, "SELECT count(*) FROM ome_sessions WHERE experimenter_id = %s", alice) == [(1,)]
    # Nothing of the directory password is kept: the next login asks the directory again.
    assert query(ldap_people.dsn, "SELECT password_hash FROM experimenters WHERE id = %s", alice) == [(None,)]


def test_ldap_session_key_resumes_without_the_directory(ldap_people: People, directory: Directory) -> None:
    key = SessionManager(ldap_people.dsn).create_session("bob", DIRECTORY_PASSWORDS["bob"]).session_key
    Session.delete_instance(force=True)
    query(ldap_people.dsn, "UPDATE configuration SET value = %s WHERE name = 'ldap'",
         Jsonb(directory.config(uri="ldaps://localhost:9")))
    assert SessionManager(ldap_people.dsn).create_session(key=key).user.ome_name == "bob"


def test_wrong_directory_password_fails_like_any_failed_login(ldap_people: People) -> None:
    manager = SessionManager(ldap_people.dsn)
    with pytest.raises(AuthenticationError) as wrong:
        manager.create_session("alice", "not-her-password")
    with pytest.raises(AuthenticationError) as old_local:
        manager.create_session("alice", People.password("alice"))  # her hash is gone: no fallback
    with pytest.raises(AuthenticationError) as unknown:
        manager.create_session("nobody", "not-her-password")
    assert str(wrong.value) == str(old_local.value) == str(unknown.value)
    assert not Session.has_instance()


def test_a_user_with_a_local_password_ignores_the_directory(ldap_people: People) -> None:
    manager = SessionManager(ldap_people.dsn)
    with pytest.raises(AuthenticationError):
        manager.create_session("root", DIRECTORY_PASSWORDS["root"])
    assert manager.create_session("root", People.password("root")).user.ome_name == "root"


def test_a_name_full_of_dn_syntax_binds_to_its_own_entry(ldap_people: People) -> None:
    session = SessionManager(ldap_people.dsn).create_session(LEE, DIRECTORY_PASSWORDS[LEE])
    assert session.user.ome_name == LEE


@pytest.mark.parametrize("name", ["alice,ou=admins", "*)(uid=*", "alice+cn=alice", "alice\\,ou=admins"])
def test_dn_injection_in_the_user_name_is_escaped_and_refused(ldap_people: People, directory: Directory,
                                                               name: str) -> None:
    import ldap3

    # The test has teeth: pasted into the template unescaped, the first name binds as another entry.
    pasted = ldap3.Connection(ldap3.Server("127.0.0.1", port=directory.port), user=TEMPLATE.replace(
        "{username}", "alice,ou=admins"), password=ADMINS_ALICE_PASSWORD)
    assert pasted.bind()
    pasted.unbind()
    manager = SessionManager(ldap_people.dsn)
    for password in (ADMINS_ALICE_PASSWORD, DIRECTORY_PASSWORDS["alice"]):
        with pytest.raises(AuthenticationError):
            manager.create_session(name, password)
    assert not Session.has_instance()


def test_starttls_needs_a_trusted_certificate_and_never_falls_back_to_plain(
        ldap_people: People, directory: Directory, caplog: pytest.LogCaptureFixture) -> None:
    query(ldap_people.dsn, "UPDATE configuration SET value = %s WHERE name = 'ldap'",
         Jsonb(directory.config(ca_file=None)))  # the system CAs do not know our throwaway CA
    with caplog.at_level(logging.WARNING, logger="ome_session._ldap"), pytest.raises(AuthenticationError):
        SessionManager(ldap_people.dsn).create_session("alice", DIRECTORY_PASSWORDS["alice"])
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert DIRECTORY_PASSWORDS["alice"] not in caplog.text


def test_a_certificate_for_another_host_name_is_refused(ldap_people: People, directory: Directory) -> None:
    query(ldap_people.dsn, "UPDATE configuration SET value = %s WHERE name = 'ldap'",
         Jsonb(directory.config(uri=f"ldap://127.0.0.1:{directory.port}")))  # certificate names localhost
    with pytest.raises(AuthenticationError):
        SessionManager(ldap_people.dsn).create_session("alice", DIRECTORY_PASSWORDS["alice"])


def test_ldaps_uri_with_the_ca_file_logs_in(ldap_people: People, directory: Directory) -> None:
    query(ldap_people.dsn, "UPDATE configuration SET value = %s WHERE name = 'ldap'",
         Jsonb(directory.config(uri=f"ldaps://localhost:{directory.tls_port}")))
    session = SessionManager(ldap_people.dsn).create_session("alice", DIRECTORY_PASSWORDS["alice"])
    assert session.user.ome_name == "alice"


def test_require_tls_false_allows_a_plain_bind_on_a_trusted_network(ldap_people: People,
                                                                     directory: Directory) -> None:
    query(ldap_people.dsn, "UPDATE configuration SET value = %s WHERE name = 'ldap'",
         Jsonb(directory.config(start_tls=False, require_tls=False, ca_file=None)))
    session = SessionManager(ldap_people.dsn).create_session("alice", DIRECTORY_PASSWORDS["alice"])
    assert session.user.ome_name == "alice"


def test_an_empty_password_never_binds(ldap_people: People, directory: Directory) -> None:
    assert not _ldap.bind(directory.config(), "alice", "")


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port held by us and not listening: connecting to it is refused at once."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def test_unreachable_directory_refuses_the_login_and_logs_why(
        ldap_people: People, directory: Directory, closed_port: int, caplog: pytest.LogCaptureFixture) -> None:
    query(ldap_people.dsn, "UPDATE configuration SET value = %s WHERE name = 'ldap'",
         Jsonb(directory.config(uri=f"ldap://localhost:{closed_port}")))
    manager = SessionManager(ldap_people.dsn)
    with caplog.at_level(logging.WARNING, logger="ome_session._ldap"), pytest.raises(AuthenticationError) as err:
        manager.create_session("alice", DIRECTORY_PASSWORDS["alice"])
    assert str(err.value) == "login failed: unknown user or wrong password"
    assert f"localhost:{closed_port}" in caplog.text and "alice" in caplog.text
    assert DIRECTORY_PASSWORDS["alice"] not in caplog.text
    assert manager.create_session("root", People.password("root")).user.ome_name == "root"


def test_a_directory_that_never_answers_times_out_into_a_failed_login(
        ldap_people: People, directory: Directory, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        query(ldap_people.dsn, "UPDATE configuration SET value = %s WHERE name = 'ldap'",
             Jsonb(directory.config(uri=f"ldap://localhost:{silent.getsockname()[1]}", timeout=1)))
        with caplog.at_level(logging.WARNING, logger="ome_session._ldap"), pytest.raises(AuthenticationError):
            SessionManager(ldap_people.dsn).create_session("alice", DIRECTORY_PASSWORDS["alice"])
    assert "alice" in caplog.text


@pytest.mark.parametrize("name", ["nobody", "bob"], ids=["unknown", "inactive"])
def test_unknown_and_inactive_users_never_reach_the_directory(
        ldap_people: People, directory: Directory, closed_port: int, caplog: pytest.LogCaptureFixture,
        name: str) -> None:
    query(ldap_people.dsn, "UPDATE experimenters SET active = false WHERE ome_name = 'bob'")
    query(ldap_people.dsn, "UPDATE configuration SET value = %s WHERE name = 'ldap'",
         Jsonb(directory.config(uri=f"ldap://localhost:{closed_port}")))  # any contact would log
    with caplog.at_level(logging.DEBUG, logger="ome_session._ldap"), pytest.raises(AuthenticationError):
        SessionManager(ldap_people.dsn).create_session(name, DIRECTORY_PASSWORDS["bob"])
    assert [r for r in caplog.records if r.name.startswith("ome_session._ldap")] == []
