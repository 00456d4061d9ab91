"""Exit codes: one table, printed by ``--help`` and used to give each error its code."""

from __future__ import annotations

from dataclasses import dataclass

from .._prompt import MissingInput
from ..errors import ConfigurationError, DatabaseUnavailable, PermissionDenied, SessionError


@dataclass(frozen=True)
class ExitCode:
    code: int
    meaning: str
    errors: tuple[type[BaseException], ...] = ()  # what leaves with this code


EXIT_CODES = (
    ExitCode(0, "success"),
    ExitCode(1, "not logged in, or the login or session key was rejected", (SessionError,)),
    ExitCode(2, "usage error, or input missing (no password and no terminal to ask for one)",
             (ValueError, MissingInput)),
    ExitCode(3, "database unavailable (and `db status` when the embedded cluster is not running)",
             (DatabaseUnavailable,)),
    ExitCode(4, "configuration or file error (no database configured, unsafe key store, newer schema, ...)",
             # OSError: a file or directory we need (key store, temporary files) is unusable
             (ConfigurationError, OSError)),
    ExitCode(5, "permission denied", (PermissionDenied,)),
    ExitCode(130, "interrupted", (KeyboardInterrupt,)),
)

EPILOG = "exit codes:\n" + "".join(f"  {c.code:<5}{c.meaning}\n" for c in EXIT_CODES)

_BY_ERROR = {kind: c.code for c in EXIT_CODES for kind in c.errors}


def exit_code(exc: BaseException) -> int | None:
    """The code of the most specific class of ``exc`` in the table; None for anything else (a bug:
    show its traceback)."""
    return next((_BY_ERROR[kind] for kind in type(exc).__mro__ if kind in _BY_ERROR), None)
