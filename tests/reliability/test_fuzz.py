"""Arbitrary input never gets past the typed errors: keys, names, passwords, criteria, temporary
names, configuration values and key-store files.

Every call ends in success or in one of the typed errors the case allows; anything else (a
``DatabaseError``, a psycopg or OS exception) fails the case with hypothesis's smallest example.
Criteria in particular are refused before any SQL: with a ``TypeError``, ``ValueError`` or
``PermissionDenied``, and with no transaction opened. Afterwards the tables, the schema version
and the key store are exactly as before. Examples are derandomised, so CI runs the same ones.

The figures are counted while the case runs (``Tally``): examples run, outcomes by name, and
errors, the examples that broke the case's rule (each one fails the case).
"""

from __future__ import annotations

import datetime
import functools
import math
import os
import shutil
import stat
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ome_session import Configuration, Session, SessionManager, _keys, _tty
from ome_session.configuration import VARIABLES
from ome_session.errors import AuthenticationError, ConfigurationError, PermissionDenied, SessionKeyError
from ome_session.factory import Factory
from ome_session.keystore import KeyStore, OmeroSessionStore, StoredSession
from tests.helpers import People

from . import _setup
from ._figures import Figures, env_int

pytestmark = pytest.mark.reliability

EXAMPLES = env_int("OME_SESSION_RELIABILITY_EXAMPLES", 300)
# Each login attempt costs one argon2id verification (a few hundred ms), so fewer of those.
LOGIN_EXAMPLES = env_int("OME_SESSION_RELIABILITY_LOGIN_EXAMPLES", 20)
# How bad criteria must be refused: by the compiler or the permission check, before any SQL.
REFUSED_BEFORE_SQL = (TypeError, ValueError, PermissionDenied)


def fuzz(examples: int = EXAMPLES) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


class Tally:
    """What a fuzz case did, counted as it happens."""

    def __init__(self) -> None:
        self.examples = 0  # examples hypothesis ran (shrinking included)
        self.errors = 0  # examples that broke the case's rule: each fails the case
        self.calls = 0  # calls made through outcome(): several per example in some cases
        self.outcomes: Counter[str] = Counter()

    def example(self, test: Callable[..., None]) -> Callable[..., None]:
        """Count each run of ``test`` (put it under ``@given``), and each one that raised."""

        @functools.wraps(test)
        def counted(*args: Any, **kwargs: Any) -> None:
            self.examples += 1
            try:
                test(*args, **kwargs)
            except BaseException:
                self.errors += 1
                raise

        return counted

    def outcome(self, call: Callable[[], object], allowed: tuple[type[BaseException], ...]) -> object:
        """Run ``call``; an allowed error is counted by name and returned, anything else propagates."""
        self.calls += 1
        try:
            result = call()
        except allowed as exc:
            self.outcomes[type(exc).__name__] += 1
            return exc
        self.outcomes["ok"] += 1
        return result

    @contextmanager
    def reported(self, figures: Figures, *, calls: str | None = None) -> Iterator[None]:
        """Record the counts when the block ends, also when it fails; ``calls`` names the count of
        calls, for a case that makes several per example."""
        try:
            yield
        finally:
            more = {calls: self.calls} if calls else {}
            figures(examples=self.examples, errors=self.errors, outcomes=dict(self.outcomes), **more)


# -- strategies ------------------------------------------------------------------------------------

NASTY = [
    "", " ", "\x00", "a\x00b", "\n", "..", "../..", "/", "/etc/passwd", "alice", "ALICE", " alice", "alice\n",
    "ａｌｉｃｅ", "root", "' OR '1'='1", "alice'; DROP TABLE experimenters; --", "%", "_", "\\", "x" * 5000,
    "\ud800", "a\udcffb", "é", "\u202e", "$argon2id$v=19$m=65536,t=3,p=4$", "0" * 32, "f" * 32,
]
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(exclude_categories=()), max_size=12),  # lone surrogates and control characters too
    st.sampled_from(NASTY),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
                    st.floats(), TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(TEXT, inner, max_size=4)), max_leaves=8)
VALUES = st.one_of(JSON, st.binary(max_size=16), st.datetimes(), st.dates(),
                   st.datetimes(timezones=st.just(datetime.timezone.utc)))
KEYS = st.one_of(
    TEXT, st.binary(max_size=40), st.integers(), st.none(), st.lists(TEXT, max_size=2), st.floats(),
    st.from_regex(r"[0-9a-f]{32}", fullmatch=True),  # well formed, unknown
    st.from_regex(r"[0-9a-fA-F \n]{30,34}", fullmatch=True),
    st.uuids().map(str),
)


# -- keys, names and passwords --------------------------------------------------------------------


def test_any_key_is_refused_and_the_session_stays_as_it_was(people: People, figures: Figures) -> None:
    manager = SessionManager(people.dsn)
    session = manager.create_session("alice", "alice-password")
    key = session.session_key
    assert key is not None
    near = [key.upper(), f" {key}", f"{key}\n", key[:-1], key + "0", key[:-1] + ("0" if key[-1] != "0" else "1")]
    before = _setup.snapshot(people.dsn)
    tally = Tally()

    @fuzz()
    @given(candidate=st.one_of(KEYS, st.sampled_from(near)))
    @tally.example
    def attempt(candidate: object) -> None:
        error = tally.outcome(lambda: manager.create_session(key=candidate), (SessionKeyError, TypeError))
        assert isinstance(error, (SessionKeyError, TypeError)), repr(error)
        assert Session.instance() is session and session.session_key == key and not session.is_idle()

    with tally.reported(figures):
        attempt()
    assert _setup.snapshot(people.dsn) == before


def test_any_user_name_and_password_fail_with_authentication_error(people: People, figures: Figures) -> None:
    manager = SessionManager(people.dsn)
    session = manager.create_session("bob", "bob-password")
    before = _setup.snapshot(people.dsn)
    tally = Tally()
    users = st.one_of(TEXT, st.sampled_from(sorted(people.ids)), st.none(), st.integers(), st.binary(max_size=8))
    passwords = st.one_of(TEXT, st.sampled_from([People.password(n) + "x" for n in people.ids]),
                          st.sampled_from([People.password(n).upper() for n in people.ids]), st.binary(max_size=8))

    @fuzz(LOGIN_EXAMPLES)
    @given(username=users, password=passwords)
    @example(username="al\ud800ice", password="x")
    @example(username="alice", password="alice-password\udc00")
    @example(username="alice", password="alice-password\x00")
    @example(username="alice\x00", password="alice-password")
    @example(username="x" * 5000, password="alice-password")
    @tally.example
    def attempt(username: Any, password: Any) -> None:
        if isinstance(username, str) and password == People.password(username):
            return
        error = tally.outcome(lambda: manager.create_session(username, password), (AuthenticationError, TypeError))
        assert isinstance(error, (AuthenticationError, TypeError)), repr(error)
        assert Session.instance() is session and session.user_name == "bob"

    with tally.reported(figures):
        attempt()
    assert _setup.snapshot(people.dsn) == before


def test_sudo_to_any_name_is_refused_unless_the_leader_may(people: People, figures: Figures) -> None:
    manager = SessionManager(people.dsn)
    lena = manager.create_session("lena", "lena-password")
    key = lena.session_key
    allowed = {"lena", "alice", "bob"}  # the members of lab_a, which lena leads
    tally = Tally()

    @fuzz()
    @given(target=st.one_of(TEXT, st.sampled_from(sorted(people.ids)), st.none(), st.integers()))
    @example(target="bo\ud800b")
    @example(target="alice\x00")
    @tally.example
    def attempt(target: Any) -> None:
        result = tally.outcome(lambda: manager.sudo_session(target), (PermissionDenied, TypeError))
        if isinstance(result, Session):
            assert target in allowed and result.user_name == target and result.sudo_by == people.ids["lena"]
            manager.create_session(key=key)
        else:
            assert isinstance(result, (PermissionDenied, TypeError)), repr(result)
            assert target not in allowed
        assert Session.instance().user_name == "lena"

    with tally.reported(figures):
        attempt()


# -- criteria ---------------------------------------------------------------------------------------

CLASSES = ["Project", "Dataset", "Image", "Experimenter", "Group", "UserState", "ExperimenterGroupMap",
           "DatasetImageMap", "OME::Project", "Nope", "", "projects", "Project; DROP TABLE projects"]
OPERATORS = ["=", "!=", "<>", "<", "<=", ">", ">=", "like", "ilike", "in", "not in", "is", "is not",
             "LIKE", " Not   In ", "==", "~", "; SELECT 1", "is not null", "<=>", ""]
CRITERIA_KEYS = st.one_of(
    st.sampled_from(["name", "description", "id", "owner", "owner_id", "group", "owner.ome_name", "group.name",
                     "dataset_links.dataset.name", "owner.group.name", "locked", "created", "ome_name",
                     "__order", "__distinct", "__limit", "__offset", "__nope", "owner.nope", "name.owner"]),
    TEXT,
)
VERBS = ["find_objects", "find_object", "count_objects", "object_exists", "iter_objects"]
CRITERIA_VALUES = st.one_of(
    VALUES,
    st.tuples(st.one_of(st.sampled_from(OPERATORS), TEXT, st.none(), st.integers()), VALUES),
    st.tuples(st.sampled_from(["in", "not in"]), st.lists(VALUES, max_size=4)),
    st.lists(VALUES, max_size=4), st.tuples(st.sampled_from(OPERATORS)), st.tuples(),
    st.lists(st.sampled_from(["name", "!name", "owner.ome_name", "!id", "nope", "!"]), max_size=3),
)
ANY_CRITERIA = st.tuples(st.sampled_from(CLASSES), st.dictionaries(CRITERIA_KEYS, CRITERIA_VALUES, max_size=4))
# Criteria of the right shape on real text columns of Project (and through its paths), so that the
# operator or the value alone decides: most random criteria are refused for a name long before.
PROJECT_CRITERIA = st.tuples(st.just("Project"), st.dictionaries(
    st.sampled_from(["name", "description", "owner.ome_name", "dataset_links.dataset.name"]),
    st.one_of(TEXT, st.tuples(st.one_of(st.sampled_from(OPERATORS), TEXT), TEXT), st.lists(TEXT, max_size=3)),
    min_size=1, max_size=3))


def _read(factory: Factory, verb: str, cls: str, criteria: dict[str, Any]) -> object:
    result = getattr(factory, verb)(cls, **criteria)
    return list(result) if verb == "iter_objects" else result


def _refused_before_sql(factory: Factory, call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` in a fresh transaction; return its refusal, which must be one of
    ``REFUSED_BEFORE_SQL`` and leave no transaction open (nothing was sent), or None on success.
    Anything else propagates."""
    assert factory.obtain_dbh().info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    try:
        call()
    except REFUSED_BEFORE_SQL as exc:
        status = factory.obtain_dbh().info.transaction_status
        assert status == psycopg.pq.TransactionStatus.IDLE, f"{exc!r} came after SQL ({status.name})"
        return exc
    finally:
        factory.rollback_transaction()
    return None


def test_any_criteria_end_in_a_result_or_a_typed_error(people: People, figures: Figures) -> None:
    session = SessionManager(people.dsn).create_session("alice", "alice-password")
    with session.transaction():
        session.factory.new_object("Project", name="alpha", description="first")
    factory = session.factory
    before = _setup.snapshot(people.dsn)
    tally = Tally()

    @fuzz()
    @given(query=st.one_of(ANY_CRITERIA, PROJECT_CRITERIA),
           verb=st.sampled_from(VERBS))
    @example(query=("Project", {"name": ("==", "alpha")}), verb="find_objects")
    @example(query=("Project", {"owner.ome_name": ("; SELECT 1", "alice")}), verb="count_objects")
    @example(query=("Project", {"description": ("~", "f.*")}), verb="iter_objects")
    @tally.example
    def attempt(query: tuple[str, dict[str, Any]], verb: str) -> None:
        cls, criteria = query
        refusal = _refused_before_sql(factory, lambda: _read(factory, verb, cls, criteria))
        tally.outcomes["ok" if refusal is None else type(refusal).__name__] += 1

    with tally.reported(figures):
        attempt()
    assert _setup.snapshot(people.dsn) == before


@pytest.mark.parametrize("criteria", [{"name": "a\ud800"}, {"name": ("ilike", "\udcff%")},
                                      {"description": ["x", "\ud800"]}, {"owner.ome_name": "\udc80"}])
def test_a_lone_surrogate_in_criteria_is_refused_before_any_sql(people: People, criteria: dict[str, Any]) -> None:
    factory = SessionManager(people.dsn).create_session("alice", "alice-password").factory
    for verb in VERBS:
        refusal = _refused_before_sql(factory, lambda verb=verb: _read(factory, verb, "Project", criteria))
        assert isinstance(refusal, ValueError), (verb, refusal)


@pytest.mark.parametrize("criteria", [{"__limit": 2**63}, {"__offset": 2**80}])
def test_limit_and_offset_beyond_64_bits_are_refused_before_any_sql(people: People, criteria: dict[str, Any]) -> None:
    factory = SessionManager(people.dsn).create_session("alice", "alice-password").factory
    for verb in ("find_objects", "find_object", "iter_objects"):
        refusal = _refused_before_sql(factory, lambda verb=verb: _read(factory, verb, "Project", criteria))
        assert isinstance(refusal, ValueError), (verb, refusal)


# -- temporary files --------------------------------------------------------------------------------

NAME_PARTS = st.one_of(TEXT, st.from_regex(r"[A-Za-z0-9_.-]{1,16}", fullmatch=True), st.none(), st.integers(),
                       st.binary(max_size=8))


def test_any_temporary_name_is_refused_or_stays_in_the_process_directory(people: People, tmp_path: Path,
                                                                         figures: Figures) -> None:
    session = SessionManager(people.dsn).create_session("alice", "alice-password")
    first = session.get_temporary_filename("probe", "tmp")
    process_dir = first.parent
    session.finish_temporary_file(first)
    outside = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if process_dir not in (p, *p.parents)}
    tally = Tally()

    @fuzz()
    @given(prog=NAME_PARTS, ext=NAME_PARTS, kind=st.sampled_from(["file", "dir", "file_cm", "dir_cm"]))
    @tally.example
    def attempt(prog: Any, ext: Any, kind: str) -> None:
        def make() -> Path:
            if kind == "file":
                return session.get_temporary_filename(prog, ext)
            if kind == "dir":
                return session.get_scratch_dir(prog, ext)
            manager = session.temporary_file(prog, ext) if kind == "file_cm" else session.scratch_dir(prog, ext)
            with manager as made:
                assert made.exists()
            assert not made.exists()
            return made

        made = tally.outcome(make, (ValueError, TypeError))
        if isinstance(made, BaseException):
            assert isinstance(made, (ValueError, TypeError)), repr(made)
            return
        assert isinstance(made, Path)
        assert made.parent == process_dir
        assert made.name.startswith(f"{prog}-") and made.name.endswith(f".{ext}")
        if kind in ("file", "dir"):
            assert stat.S_IMODE(made.lstat().st_mode) == (0o600 if kind == "file" else 0o700)
            session.finish_temporary_file(made)
            assert not made.exists()

    with tally.reported(figures):
        attempt()
    left = sorted(p.name for p in process_dir.iterdir())
    changed = {p for p, mtime in outside.items() if not p.exists() or p.stat().st_mtime_ns != mtime}
    new_outside = {p for p in tmp_path.rglob("*") if process_dir not in (p, *p.parents)} - set(outside)
    figures(errors=len(left) + len(new_outside), left_behind=len(left), made_outside=len(new_outside))
    assert left == []
    assert changed <= {process_dir.parent, process_dir}  # directories whose listing changed, nothing else
    assert new_outside <= {process_dir.parent / ".reap.lock"}


def test_finishing_any_path_this_process_did_not_create_is_refused_and_deletes_nothing(
        people: People, tmp_path: Path, figures: Figures) -> None:
    session = SessionManager(people.dsn).create_session("alice", "alice-password")
    mine = session.get_temporary_filename("mine", "dat")
    process_dir, root = mine.parent, mine.parent.parent
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    foreign = process_dir / "not-registered.dat"
    foreign.write_text("made behind the session's back")
    link = process_dir / "link-to-precious"
    link.symlink_to(precious)
    every = sorted(p for p in tmp_path.rglob("*"))
    targets = [precious, precious / "data.txt", foreign, link, process_dir, root, root / ".reap.lock", tmp_path,
               process_dir / ".." / process_dir.name / "not-registered.dat", Path("/"), Path("."), Path("..")]
    tally = Tally()

    @fuzz()
    @given(path=st.one_of(st.sampled_from(targets), st.sampled_from(targets).map(str), TEXT,
                          TEXT.map(lambda t: str(process_dir / t)), st.none(), st.integers(), st.binary(max_size=8)))
    @tally.example
    def attempt(path: Any) -> None:
        error = tally.outcome(lambda: session.finish_temporary_file(path), (ValueError, TypeError))
        assert isinstance(error, (ValueError, TypeError)), repr(error)

    with tally.reported(figures):
        attempt()
    gone = [p for p in every if not os.path.lexists(p)]
    figures(errors=len(gone), deleted=len(gone), paths_checked=len(every))
    assert gone == []
    assert (precious / "data.txt").read_text() == "keep me" and mine.exists()


# -- configuration ----------------------------------------------------------------------------------


def _valid_value(name: str) -> st.SearchStrategy[Any]:
    kind = VARIABLES[name].kind
    if kind is bool:
        return st.booleans()
    if kind is int:
        return st.integers(min_value=0, max_value=2**31)
    if kind is dict:
        return st.dictionaries(st.text(max_size=8), SCALARS, max_size=3)
    return st.text(max_size=20)


CONFIG_VALUES = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(sorted(VARIABLES)), TEXT), JSON, max_size=3),
    st.sampled_from(sorted(VARIABLES)).flatmap(lambda name: st.tuples(st.just(name), _valid_value(name)))
    .map(lambda pair: dict([pair])),
)


def _same_json(read: Any, written: Any) -> bool:
    """Equal as JSON: a number is a number (jsonb keeps 1e17 as 100000000000000000, not a float)."""
    if isinstance(written, float) and not isinstance(read, bool) and isinstance(read, (int, float)):
        return math.isclose(read, written, rel_tol=1e-15)
    if isinstance(written, dict) and isinstance(read, dict):
        return read.keys() == written.keys() and all(_same_json(read[k], v) for k, v in written.items())
    if isinstance(written, list) and isinstance(read, list):
        return len(read) == len(written) and all(map(_same_json, read, written))
    return type(read) is type(written) and bool(read == written)


def test_any_configuration_update_ends_in_a_typed_error_or_reads_back(people: People, figures: Figures) -> None:
    session = SessionManager(people.dsn).create_session("root", "root-password")
    factory = session.factory
    before = _setup.snapshot(people.dsn)
    tally = Tally()

    @fuzz()
    @given(values=CONFIG_VALUES)
    @example(values={"db_instance": "a\x00b"})
    @example(values={"lsid_authority": "\ud800"})
    @example(values={"ldap": {"uri": "ldaps://x", "n": float("nan"), "\udcff": 1}})
    @tally.example
    def attempt(values: dict[str, Any]) -> None:
        try:
            error = tally.outcome(lambda: Configuration.update(factory, values),
                                  (ConfigurationError, ValueError, TypeError))
            if error is None:
                for name, value in values.items():
                    if value is not None:  # the value as stored (get("tmp_dir") is this account's root in it)
                        assert _same_json(factory.configuration.stored(name), value)
        finally:
            session.rollback_transaction()

    with tally.reported(figures):
        attempt()
    assert _setup.snapshot(people.dsn) == before


def test_a_rolled_back_configuration_change_is_not_used(people: People) -> None:
    session = SessionManager(people.dsn).create_session("root", "root-password")
    Configuration.update(session.factory, {"allow_guest_access": True, "session_idle_timeout": 5})
    assert session.configuration.allow_guest_access  # seen inside the transaction, as it should be
    session.rollback_transaction()

    assert session.configuration.allow_guest_access is False
    assert session.configuration.session_idle_timeout == 1800


@pytest.mark.parametrize("name", ["session_idle_timeout", "session_max_lifetime"])
def test_no_timeout_value_can_lock_everybody_out(people: People, name: str) -> None:
    manager = SessionManager(people.dsn)
    session = manager.create_session("root", "root-password")
    key = session.session_key
    try:
        Configuration.update(session.factory, {name: 10**12})
    except ConfigurationError:
        return  # refused: fine
    session.commit_transaction()
    Session.delete_instance(force=True)
    Configuration.flush()

    assert manager.create_session(key=key).user_name == "root"
    assert manager.create_session("alice", "alice-password").user_name == "alice"


# -- the key store ----------------------------------------------------------------------------------

LINES = st.lists(st.tuples(st.sampled_from(["ome.server", "ome.user", "ome.key", "ome.port", "ome.timeout",
                                            "ome.backend", "ome.group", "ome.sudo", "ome.password", "omero.host",
                                            "omero.user", "omero.sess", "omero.port", "x", "", "=="]), TEXT),
                 max_size=8).map(lambda pairs: "\n".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass"))
GARBAGE = st.one_of(st.binary(max_size=200), LINES, st.just(b"\x00" * 10), st.just(b"x" * (70 * 1024)))
PLACES = ["entry", "current", "misnamed_entry", "server_as_file", "user_as_file", "dot_entry", "current_as_dir",
          "entry_as_dir", "last_session", "last_host"]


def _good(kind: type[KeyStore]) -> tuple[StoredSession, StoredSession, str]:
    """A stored entry that must survive, another the calls add and remove, and a third key."""
    if kind is OmeroSessionStore:
        keys = [str(uuid.UUID(int=n + 1)) for n in range(3)]
        return (StoredSession("srv.example", "alice", keys[0], backend="omero"),
                StoredSession("srv.example", "alice", keys[1], backend="omero"), keys[2])
    keys = [_keys.new_key() for _ in range(3)]
    return StoredSession("srv", "alice", keys[0]), StoredSession("srv", "alice", keys[1]), keys[2]


@pytest.mark.parametrize("kind", [KeyStore, OmeroSessionStore])
def test_garbage_in_the_key_store_ends_in_a_typed_error_and_keeps_good_entries(
        tmp_path: Path, figures: Figures, kind: type[KeyStore]) -> None:
    store = kind(tmp_path / "store")
    good, other, third = _good(kind)
    store.add(good)
    good_file = store.file_for(good)
    good_bytes = good_file.read_bytes()
    user_dir = good_file.parent
    tally = Tally()

    def place(where: str) -> Path:
        return {
            "entry": user_dir / third, "current": store.directory / ".current",
            "misnamed_entry": user_dir / "not-a-key", "server_as_file": store.directory / "srv2",
            "user_as_file": user_dir.parent / "bob", "dot_entry": user_dir / ".hidden",
            "current_as_dir": store.directory / ".current", "entry_as_dir": user_dir / third,
            "last_session": user_dir / "._LASTSESS_", "last_host": store.directory / "._LASTHOST_",
        }[where]

    @fuzz()
    @given(content=GARBAGE, where=st.sampled_from(PLACES))
    @tally.example
    def attempt(content: bytes, where: str) -> None:
        path = place(where)
        saved = path.read_bytes() if path.is_file() else None
        if where.endswith("_as_dir"):
            if path.is_file():
                path.unlink()
            path.mkdir(mode=0o700)
            (path / "inner").write_bytes(content)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(content)
        try:
            for call in (store.list, lambda: store.get(good.server, good.user, good.key),
                         lambda: store.get(good.server, good.user, third), store.current,
                         lambda: store.add(other), lambda: store.remove(other), lambda: store.set_current(good),
                         lambda: store.clear(server="elsewhere"),
                         lambda: _tty.candidates(store, server=good.server, user=good.user, database="db")):
                tally.outcome(call, (ConfigurationError, ValueError, TypeError))
            assert store.get(good.server, good.user, good.key) == good
            assert good_file.read_bytes() == good_bytes
        finally:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            if saved is not None:
                path.write_bytes(saved)

    with tally.reported(figures, calls="store_calls"):
        attempt()
    assert store.get(good.server, good.user, good.key) == good
