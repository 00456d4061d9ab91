"""The states of a Session, what each one allows, and the error that says why not.

=========  =======================================  ==========================================
State      What it is                               Entered by
=========  =======================================  ==========================================
BOOTSTRAP  an installer's session: a Factory, no    ``Session.bootstrap_instance()``
           user, trusted code
ACTIVE     a user's unit of work is open            a login, resume, su or sudo (the manager
                                                    authenticates, the session binds)
IDLE       between units of work: the connection   ``Session.idle()``
           stays, nothing else may be used
CLOSED     closed for good, never reconnects        ``delete_instance``, ``logout``,
                                                    ``finish_bootstrap``, ``forget_instance``,
                                                    a bootstrap handing its connection on
INHERITED  made by the parent process; the child    a fork (the fork protocol, ``_fork``)
           may not use what it holds
=========  =======================================  ==========================================

What each state allows is one of three sets below, by kind of use; ``Session._check`` is the one
guard every entry point calls with its kind (psycopg's ``_check_connection_ok`` is the model).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .errors import SessionClosedError, SessionError, SessionIdleError


class State(enum.Enum):
    BOOTSTRAP = "bootstrap"
    ACTIVE = "active"
    IDLE = "idle"
    CLOSED = "closed"
    INHERITED = "inherited"


BOOTSTRAP, ACTIVE, IDLE, CLOSED, INHERITED = State

# What a session may do in each state, by kind of use.
WORK = frozenset({BOOTSTRAP, ACTIVE})  # the Factory, the transaction, the backend's verbs
LIVE = frozenset({BOOTSTRAP, ACTIVE, IDLE})  # the configuration, deferring a task, logging out
FILES = frozenset({BOOTSTRAP, ACTIVE, IDLE, INHERITED})  # temporary files (a child has its own)


def refusal(state: State) -> SessionError:
    """Why a session in ``state`` refuses, and what to do instead."""
    if state is IDLE:
        return SessionIdleError("the session is idle: log in again with SessionManager().create_session(...)")
    if state is CLOSED:
        return SessionClosedError("the session is closed and never reconnects: log in again with "
                                  "SessionManager().create_session(...) for a new one")
    if state is INHERITED:
        return SessionIdleError("this session belongs to the process this one was forked from: log in "
                                "again in this process with SessionManager().reattach()")
    return SessionError(f"a {state.value} session may not do that")


def refusal_in_block(what: str) -> SessionError:
    """``commit_transaction()`` or ``rollback_transaction()`` inside a ``transaction()`` block."""
    return SessionError(
        f"{what} inside a `with session.transaction():` block would end the transaction under the "
        "block (and break its savepoints): leave the block to commit, or raise an exception in it to "
        "roll back"
    )


@dataclass(frozen=True)
class Inheritance:
    """What a forked child keeps of its parent's session: enough to log in again (``reattach``)."""

    key: str
    backend: str  # the registry's name
    options: dict[str, Any]  # what makes that backend again (its database or server)
