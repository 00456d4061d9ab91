"""Eight threads mixing every operation on the process's one session, for a fixed number of
operations each: logins, resumes, transaction blocks (nested, rolled back), commits by hand, reads,
server-side cursors, keep-alives, configuration, temporary files, idle, logout, delete and forget.

Run by ``tests/test_threads.py`` as a program of its own, so that a crash or a hang fails that
test rather than the test run: ``python -m tests.thread_stress DSN KEYS_JSON``. A watchdog
(``faulthandler``) prints every thread's stack and exits 1 if the run has not finished in time.
Prints one JSON line: how many operations ran, what they came to, every unexpected exception
(anything but a clear ``SessionError``: a ``DatabaseError`` here would be one thread's statement
landing in another's transaction), and which projects were committed as whom.
"""

from __future__ import annotations

import faulthandler
import json
import random
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable

from ome_session import Session, SessionManager
from ome_session.errors import DatabaseError, DatabaseUnavailable, SessionError

THREADS = 8
PER_THREAD = 200
REFUSED_PAUSE = 0.002  # seconds; only spreads the operations out (see ``Run.thread``)
WATCHDOG_SECONDS = 240  # far beyond a healthy run (a few seconds): reaching it means a hang


class Run:
    def __init__(self, dsn: str, keys: dict[str, str]) -> None:
        self.dsn, self.keys = dsn, keys
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.committed: dict[str, str] = {}

    # -- the operations (each thread has its own random sequence of them) ----------------------------

    def login(self, rng: random.Random, tag: str) -> None:
        name = rng.choice(sorted(self.keys))
        SessionManager(self.dsn).create_session(name, f"{name}-password")

    def resume(self, rng: random.Random, tag: str) -> None:
        SessionManager(self.dsn).create_session(key=self.keys[rng.choice(sorted(self.keys))])

    def login_and_logout(self, rng: random.Random, tag: str) -> None:
        self.login(rng, tag)
        SessionManager(self.dsn).logout()

    def write(self, rng: random.Random, tag: str) -> None:
        session = Session.instance()
        with session.transaction():
            user = session.user_name
            session.factory.new_object("Project", name=tag)
        self.commit(tag, user)

    def nested(self, rng: random.Random, tag: str) -> None:
        session = Session.instance()
        with session.transaction():
            user = session.user_name
            session.factory.new_object("Project", name=tag)
            try:
                with session.transaction():
                    session.factory.new_object("Project", name=tag + " inner")
                    raise LookupError("the inner block rolls back to its savepoint")
            except LookupError:
                pass
        self.commit(tag, user)

    def roll_back(self, rng: random.Random, tag: str) -> None:
        session = Session.instance()
        try:
            with session.transaction():
                session.factory.new_object("Project", name=tag)
                raise LookupError("rolled back")
        except LookupError:
            pass

    def commit_by_hand(self, rng: random.Random, tag: str) -> None:
        session = Session.instance()
        user = session.user_name
        session.factory.new_object("Project", name=tag)
        session.commit_transaction()
        self.commit(tag, user)

    def read(self, rng: random.Random, tag: str) -> None:
        Session.instance().factory.find_objects("Project")

    def iterate(self, rng: random.Random, tag: str) -> None:
        for _ in zip(range(3), Session.instance().factory.iter_objects("Project")):
            pass

    def keep_alive(self, rng: random.Random, tag: str) -> None:
        Session.instance().keep_alive()

    def configuration(self, rng: random.Random, tag: str) -> None:
        Session.instance().configuration.get("session_idle_timeout")

    def temporary_file(self, rng: random.Random, tag: str) -> None:
        with Session.instance().temporary_file("stress") as path:
            path.write_text(tag)

    def idle(self, rng: random.Random, tag: str) -> None:
        Session.idle()

    def delete(self, rng: random.Random, tag: str) -> None:
        Session.delete_instance(force=True)

    def forget(self, rng: random.Random, tag: str) -> None:
        Session.forget_instance()

    # -- running them ------------------------------------------------------------------------------

    def commit(self, tag: str, user: str | None) -> None:
        assert user is not None
        with self.lock:
            self.committed[tag] = user

    def plan(self, rng: random.Random) -> list[Callable[[random.Random, str], None]]:
        """This thread's operations: mostly units of work (a login or resume, a few uses, an end),
        sometimes a use or an end out of turn, and now and then no end at all."""
        uses = [self.write, self.nested, self.roll_back, self.commit_by_hand, self.read, self.iterate,
                self.keep_alive, self.configuration, self.temporary_file]
        ends = [self.idle] * 6 + [self.delete, self.forget, self.login_and_logout]
        planned: list[Callable[[random.Random, str], None]] = []
        while len(planned) < PER_THREAD:
            planned.append(rng.choice([self.login, self.resume, self.resume, self.resume]))
            planned += [rng.choice(uses) for _ in range(rng.randrange(5))]
            if rng.random() < 0.9:
                planned.append(rng.choice(ends))
        return planned[:PER_THREAD]

    def thread(self, index: int, start: threading.Barrier) -> None:
        rng = random.Random(index)
        start.wait()
        for n, operation in enumerate(self.plan(rng)):
            outcome = "done"
            try:
                operation(rng, f"t{index}-{n}-{operation.__name__}")
            except (DatabaseError, DatabaseUnavailable):
                outcome = "unexpected"
            except SessionError as exc:
                outcome = "refused" if "belongs to" in str(exc) else type(exc).__name__
            except Exception:
                outcome = "unexpected"
            with self.lock:
                self.counts[outcome] += 1
                self.counts["committed"] += operation in (self.write, self.nested, self.commit_by_hand) and \
                    outcome == "done"
                if outcome == "unexpected":
                    self.unexpected.append(f"{operation.__name__}: {traceback.format_exc()}")
            if outcome == "refused":
                # A refusal costs no round trip: without a pause, the threads without the session
                # would spend their operations long before the one with it had done a few.
                time.sleep(REFUSED_PAUSE)


def main() -> None:
    dsn, keys = sys.argv[1], json.loads(sys.argv[2])
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    run = Run(dsn, keys)
    start = threading.Barrier(THREADS)
    threads = [threading.Thread(target=run.thread, args=(i, start), name=f"stress-{i}") for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    faulthandler.cancel_dump_traceback_later()
    total = sum(n for outcome, n in run.counts.items() if outcome != "committed")
    print(json.dumps({"operations": total, "per_thread": PER_THREAD, "counts": run.counts,
                      "unexpected": run.unexpected[:20], "committed": run.committed}))


if __name__ == "__main__":
    main()
