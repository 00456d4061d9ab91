"""Asking a person for what a call needs: passwords (without echo) and user names.

One rule for the library, the installer and the command: what is needed and not given (as an
argument, an option or an environment variable) is asked on the terminal; with no terminal to
ask, or when nothing is typed, ``MissingInput`` says how to give it (the command exits 2).
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from .errors import AuthenticationError, ConfigurationError

ATTEMPTS = 3

T = TypeVar("T")
Prompt = Callable[[str], str]


class MissingInput(AuthenticationError, ConfigurationError):
    """Input is needed and there is no terminal to ask for it, or nothing was typed.

    An ``AuthenticationError`` for a login and a ``ConfigurationError`` for an install, as such
    calls raised before this rule was made one; ``ome-session`` exits 2 for it.
    """


def given(value: str | None, env: str) -> str | None:
    """``value`` (an argument or option), else the environment variable ``env``; empty is none."""
    return value if value is not None else os.environ.get(env) or None


def on_terminal() -> bool:
    """Whether a person can be asked: standard input is a terminal."""
    return sys.stdin.isatty()


def need_terminal(missing: str, *ways: str) -> None:
    """Raise ``MissingInput`` (``missing``: the ways to give it) unless a terminal can be asked."""
    if not on_terminal():
        raise MissingInput(f"{missing}: {', '.join((*ways, 'or run in a terminal'))}")


def ask_user(*ways: str, ask: Prompt = input) -> str:
    """A user name typed on the terminal; ``ways`` say how else to give one."""
    need_terminal("no user given", *ways)
    try:
        name = ask("Username: ").strip()
    except EOFError:
        name = ""
    if not name:
        raise MissingInput("login abandoned: no user name was given")
    return name


def ask_with_default(label: str, default: str, *, ask: Prompt = input) -> str:
    """``label: [default]`` typed on the terminal, as ``omero login`` asks; Enter takes the default."""
    try:
        typed = ask(f"{label}: [{default}] ").strip()
    except EOFError:
        raise MissingInput(f"abandoned: no {label.lower()} was given") from None
    return typed or default


def ask_once(label: str, *, prompt: Prompt = getpass.getpass) -> str:
    """A password typed once, without echo (one that confirms who acts, not a login)."""
    try:
        password = prompt(label)
    except EOFError:
        password = ""
    if not password:
        raise MissingInput("abandoned: no password was given")
    return password


def ask_password(authenticate: Callable[[str], T], *, prompt: Prompt = getpass.getpass,
                 attempts: int = ATTEMPTS, label: str = "Password: ") -> T:
    """``authenticate`` with a typed password, up to ``attempts`` times; the last
    ``AuthenticationError`` is raised when all fail.

    Only a rejected login is retried: an unreachable database or a refusal (``PermissionDenied``)
    ends the loop at once.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    for attempt in range(1, attempts + 1):
        try:
            password = prompt(label)
        except EOFError:
            raise MissingInput("login abandoned: no password was given") from None
        try:
            return authenticate(password)
        except AuthenticationError as exc:
            if attempt == attempts:
                raise AuthenticationError(f"{exc} ({attempts} attempts)") from None
            print(f"{exc}; try again", file=sys.stderr)
    raise AssertionError("unreachable")


def ask_new_password(label: str, *, check: Callable[[str], None], what: str = "password",
                     prompt: Prompt = getpass.getpass, attempts: int = ATTEMPTS) -> str:
    """A new password, typed twice; ``check`` raises ``ValueError`` to refuse one (too short)."""
    try:
        for _ in range(attempts):
            first = prompt(label)
            try:
                check(first)
            except ValueError as exc:
                print(exc, file=sys.stderr)
                continue
            if prompt("Again: ") == first:
                return first
            print("the two passwords differ", file=sys.stderr)
    except EOFError:
        pass
    raise MissingInput(f"no {what} given")
