"""4. A temporary file, created and finished through the session, against ``tempfile.mkstemp``.

Both create the file in a directory under the same root and remove it again; the session's
version also checks the name, verifies its private directory and registers the path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ome_session import Session, SessionManager

from ._context import Context
from ._results import Row
from ._stats import Summary, interleaved

SECTION = "4. Temporary files"
RAW = "tempfile.mkstemp + os.close + os.unlink"
OURS = "get_temporary_filename + finish_temporary_file"


def run(ctx: Context) -> None:
    with ctx.session_database(ctx.main_dsn):
        session = SessionManager().create_session(key=ctx.main_keys[0])
        first = session.get_temporary_filename("bench", "tmp")  # makes the process directory
        session.finish_temporary_file(first)
        raw_dir = Path(tempfile.mkdtemp(dir=first.parent.parent, prefix="mkstemp-"))

        def raw(i: int) -> None:
            fd, path = tempfile.mkstemp(suffix=".tmp", prefix="bench-", dir=raw_dir)
            os.close(fd)
            os.unlink(path)

        def ours(i: int) -> None:
            session.finish_temporary_file(session.get_temporary_filename("bench", "tmp"))

        samples = interleaved({RAW: raw, OURS: ours}, rounds=ctx.size(10, 4), batch=ctx.size(500, 100))
        Session.idle()
        os.rmdir(raw_dir)
    note = f"same file system ({first.parent.parent})"
    ctx.results.add(Row(SECTION, RAW, "µs", Summary.of(samples[RAW]), note=note))
    ctx.results.add(Row(SECTION, OURS, "µs", Summary.of(samples[OURS]), baseline=RAW, note=note))
