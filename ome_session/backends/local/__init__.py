"""The local backend: users, passwords and session keys in ome-session's own PostgreSQL database.

Every statement runs on the session's own connection, in autocommit mode when no transaction is
open, so a login or a resume commits by itself: resuming by key is one round trip, one statement
that checks the key, touches it, and returns the user and what he may do. ``_sql`` holds the
statements and the rules of a session row; ``_backend`` the verbs.
"""

from __future__ import annotations

from ._backend import LocalBackend, LocalHandle

BACKEND = LocalBackend

__all__ = ["BACKEND", "LocalBackend", "LocalHandle"]
