"""Django's database session backend, configured in-process with nothing but what it needs.

A Django site that slides session expiry (``SESSION_SAVE_EVERY_REQUEST``) does this per request:
the middleware builds ``SessionStore(key)``, the first access to ``request.session`` loads the
row, and the response saves it. That is what ``resume`` does, through the public API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._server import BenchServer

DATABASE = "bench_django"


def setup(server: BenchServer, users: int) -> list[str]:
    """Configure Django against its own database, migrate the session table, make sessions."""
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]
    from django.core.management import call_command  # type: ignore[import-untyped]

    server.create_database(DATABASE)
    params = server.params(DATABASE)
    settings.configure(
        DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql", "NAME": DATABASE, "HOST": params["host"],
            "PORT": params["port"], "USER": params["user"], "CONN_MAX_AGE": None,
        }},
        INSTALLED_APPS=["django.contrib.sessions"],
        SECRET_KEY="bench-only-" + "x" * 40,
        USE_TZ=True,
        SESSION_ENGINE="django.contrib.sessions.backends.db",
        SESSION_SAVE_EVERY_REQUEST=True,
    )
    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from django.contrib.sessions.backends.db import SessionStore  # type: ignore[import-untyped]

    keys = []
    for user in range(users):
        store = SessionStore()
        store["user_id"] = user
        store.create()
        keys.append(store.session_key)
    return keys


def resume(key: str) -> Any:
    """Load the session for ``key`` and save it back (sliding its expiry): one request's work."""
    from django.contrib.sessions.backends.db import SessionStore

    store = SessionStore(key)
    user = store.get("user_id")  # the first access loads the row, as request.session does
    if user is None:
        raise RuntimeError("the Django session did not load")
    store.save()
    return user


def execute() -> Callable[[str], object]:
    """Run a statement on Django's own connection (autocommit, Django's default)."""
    from django.db import connection  # type: ignore[import-untyped]

    def run(statement: str) -> object:
        with connection.cursor() as cursor:
            cursor.execute(statement)
        return None

    return run


def version() -> str:
    import django

    return str(django.get_version())
