"""LDAP simple bind: the password check for users who have no local password hash.

The original built the bind DN by pasting the user name into a string, so a name such as
``alice,ou=admins`` chose a different directory entry, and a refused bind quietly fell back to the
local password. Here the name is escaped as one RDN value before it goes into the DN, the password
only travels over TLS unless the configuration explicitly says otherwise, and a failed or
impossible bind is simply a failed login: there is nothing to fall back to.

``ldap3`` is imported only when a bind is attempted, so installations without LDAP never need it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError

log = logging.getLogger(__name__)

PLACEHOLDER = "{username}"
_INSTALL_HINT = "pip install 'ome-session[ldap]'"
_KEYS = frozenset({"uri", "user_dn", "start_tls", "require_tls", "ca_file", "timeout"})
_DEFAULT_TIMEOUT = 5.0
_INVALID_CREDENTIALS = 49  # RFC 4511 resultCode: wrong password or no such entry

# RFC 4514 section 2.4: characters with a meaning inside a DN, escaped with a backslash wherever
# they occur ("=" need not be, but escaping it is allowed and keeps a value from looking like a
# type-and-value pair to sloppy parsers).
_SPECIAL = frozenset('"+,;<>\\=')


@dataclass(frozen=True)
class LdapSettings:
    """The ``ldap`` configuration, checked: what a bind needs and nothing else."""

    host: str
    port: int | None
    use_ssl: bool  # ldaps://: TLS from the first byte
    start_tls: bool  # ldap://: upgrade with StartTLS before the password is sent
    user_dn: str
    ca_file: str | None
    timeout: float

    @property
    def encrypted(self) -> bool:
        return self.use_ssl or self.start_tls


def escape_rdn_value(value: str) -> str:
    """``value`` escaped to stand as one attribute value in a DN (RFC 4514), never as syntax.

    Special characters get a backslash; control characters (NUL included) and DEL are written as
    hex pairs so no byte with a meaning to a parser or a log line passes through raw.
    """
    if not value:
        raise ValueError("an empty user name cannot be put in a DN")
    out: list[str] = []
    for char in value:
        if char in _SPECIAL:
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):02x}")
        else:
            out.append(char)
    if value[0] in " #":  # a leading space or '#' (hex-encoded value) must be escaped
        out[0] = "\\" + out[0]
    if len(value) > 1 and value[-1] == " ":  # a trailing space, too
        out[-1] = "\\ "
    return "".join(out)


def user_dn(template: str, username: str) -> str:
    """The bind DN of ``username``: the template with ``{username}`` replaced by the escaped name.

    Plain replacement, not ``str.format``: a template is data and must not reach attributes.
    """
    return template.replace(PLACEHOLDER, escape_rdn_value(username))


def parse_settings(raw: Mapping[str, Any]) -> LdapSettings:
    """Check the ``ldap`` configuration; ConfigurationError saying what to fix."""
    unknown = set(raw) - _KEYS
    if unknown:
        raise ConfigurationError(
            f"ldap configuration: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_KEYS))}"
        )
    uri = raw.get("uri")
    if not isinstance(uri, str):
        raise ConfigurationError("ldap configuration: 'uri' is required, e.g. 'ldaps://ldap.example.org'")
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"ldap configuration: bad port in uri {uri!r}") from exc
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(
            f"ldap configuration: uri {uri!r} must be ldaps://HOST[:PORT] or ldap://HOST[:PORT]"
        )
    use_ssl = parts.scheme == "ldaps"

    template = raw.get("user_dn")
    if not isinstance(template, str) or template.count(PLACEHOLDER) != 1:
        raise ConfigurationError(
            "ldap configuration: 'user_dn' must contain {username} exactly once, "
            "e.g. 'uid={username},ou=people,dc=example,dc=org'"
        )

    start_tls = _bool(raw, "start_tls", not use_ssl)
    if use_ssl and start_tls:
        raise ConfigurationError("ldap configuration: start_tls is for ldap:// URIs; ldaps:// is already TLS")
    require_tls = _bool(raw, "require_tls", True)
    if require_tls and not (use_ssl or start_tls):
        raise ConfigurationError(
            "ldap configuration: passwords would cross the network in clear text; use an ldaps:// uri "
            "or start_tls, or set require_tls to false for a network you trust"
        )

    ca_file = raw.get("ca_file")
    if ca_file is not None and (not isinstance(ca_file, str) or not os.path.isfile(ca_file)):
        raise ConfigurationError(f"ldap configuration: ca_file {ca_file!r} is not a readable file")

    timeout = raw.get("timeout", _DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigurationError("ldap configuration: 'timeout' must be a positive number of seconds")

    return LdapSettings(
        host=parts.hostname, port=port, use_ssl=use_ssl, start_tls=start_tls,
        user_dn=template, ca_file=ca_file, timeout=float(timeout),
    )


def _bool(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigurationError(f"ldap configuration: {key!r} must be true or false")
    return value


def _ldap3() -> Any:
    """The ldap3 package, or a ConfigurationError saying how to install it."""
    try:
        import ldap3
    except ImportError as exc:
        raise ConfigurationError(f"the ldap configuration needs the ldap3 package: {_INSTALL_HINT}") from exc
    return ldap3


def bind(raw: Mapping[str, Any], username: str, password: str) -> bool:
    """Whether the directory accepts ``password`` for ``username`` (one simple bind, then unbind).

    False for a refused bind and also for an unreachable or misbehaving server (logged as a
    warning, without the password): the caller turns either into the one login-failed error.
    ConfigurationError when the configuration is invalid or ldap3 is missing.
    """
    settings = parse_settings(raw)
    dn = user_dn(settings.user_dn, username)
    ldap3 = _ldap3()
    if not password:
        # An empty password makes a simple bind "unauthenticated" (RFC 4513 5.1.2), which many
        # servers answer with success: it must never count as a login.
        return False
    from ldap3.core.exceptions import LDAPException

    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=settings.ca_file)
    server = ldap3.Server(
        settings.host, port=settings.port, use_ssl=settings.use_ssl, tls=tls,
        get_info=ldap3.NONE, connect_timeout=settings.timeout,
    )
    conn = ldap3.Connection(
        server, user=dn, password=password, authentication=ldap3.SIMPLE, read_only=True,
        # ldap3 packs the receive timeout into a C struct: whole seconds only.
        receive_timeout=math.ceil(settings.timeout), raise_exceptions=False, auto_bind=ldap3.AUTO_BIND_NONE,
    )
    where = f"{'ldaps' if settings.use_ssl else 'ldap'}://{settings.host}:{server.port}"
    try:
        conn.open()
        if settings.start_tls and not conn.start_tls():  # TLS first: the password comes after
            log.warning("LDAP login of %r refused: StartTLS with %s did not succeed", username, where)
            return False
        if conn.bind():
            return True
        result = conn.result or {}
        if result.get("result") != _INVALID_CREDENTIALS:
            log.warning("LDAP login of %r refused by %s: %s %s", username, where,
                        result.get("description"), result.get("message") or "")
        return False
    except (LDAPException, OSError) as exc:  # unreachable, timeout, TLS handshake or certificate
        log.warning("LDAP login of %r failed: %s unusable: %s", username, where, _describe(exc))
        return False
    finally:
        with contextlib.suppress(LDAPException, OSError):
            conn.unbind()


def _describe(exc: BaseException) -> str:
    """A one-line reason for the log; ldap3 messages can hold whole certificates."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"
