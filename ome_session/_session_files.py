"""A Session's temporary files: where they go, reaping the dead's, and cleaning up at idle.

A part of ``Session`` (it inherits this class). The files themselves are ``_tempfiles``'s; here is
only what ties them to the session: the root comes from the configuration, the directories of dead
processes are reaped at the first login of a process, and ``idle()`` finishes what was left.
Temporary files are the one thing an inherited session still offers in a forked child: the
child's own, in a directory of its own, never the parent's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ._lifecycle import FILES
from ._tempfiles import TempFiles
from ._tempfiles import reap as _reap_temp
from .errors import SessionError

if TYPE_CHECKING:
    from ._lifecycle import State
    from .backends import AuthBackend

log = logging.getLogger(__name__)


class SessionFiles:
    _reaped_roots: ClassVar[set[Path]] = set()
    _backend: AuthBackend[Any]
    _tempfiles: TempFiles | None

    if TYPE_CHECKING:
        def _check(self, allowed: frozenset[State] = ...) -> None: ...

    def get_temporary_filename(self, prog_name: str = "ome", extension: str = "tmp") -> Path:
        """A new, empty file (0600) of this process, removed by ``finish_temporary_file`` or idle."""
        return self._temp().new_file(prog_name, extension)

    def get_scratch_dir(self, prog_name: str = "ome", extension: str = "dir") -> Path:
        """A new directory (0700) of this process, removed with its contents when finished."""
        return self._temp().new_dir(prog_name, extension)

    def finish_temporary_file(self, path: str | os.PathLike[str]) -> None:
        """Remove a file or scratch dir this process created; anything else raises ValueError."""
        self._temp().finish(path)

    def temporary_file(self, prog_name: str = "ome", extension: str = "tmp") -> contextlib.AbstractContextManager[Path]:
        return self._temp().file(prog_name, extension)

    def scratch_dir(self, prog_name: str = "ome", extension: str = "dir") -> contextlib.AbstractContextManager[Path]:
        return self._temp().scratch_dir(prog_name, extension)

    def _temp(self) -> TempFiles:
        self._check(FILES)
        if self._tempfiles is None:
            factory = self._backend.factory
            configured = factory.configuration.get("tmp_dir") if factory is not None else None
            self._tempfiles = TempFiles(Path(configured) if configured else None)
        return self._tempfiles

    def _reap_once(self) -> None:
        """At the first login of a process: remove the temporary directories of dead processes."""
        held = self._tempfiles
        if held is not None and held.root in SessionFiles._reaped_roots:
            return  # every later login of this session: a set lookup
        root = self._temp().root
        if root in SessionFiles._reaped_roots:
            return
        SessionFiles._reaped_roots.add(root)
        try:
            removed = _reap_temp(root)
        except (OSError, SessionError) as exc:
            log.warning("could not reap temporary directories under %s: %s", root, exc)
            return
        if removed:
            log.info("removed %d temporary directories of dead processes under %s", len(removed), root)

    def _finish_leftovers(self) -> None:
        if self._tempfiles is None:
            return
        left = self._tempfiles.finish_all()
        if left:
            warnings.warn(f"idle() removed {len(left)} temporary file(s) left unfinished: "
                          f"{', '.join(str(p) for p in left[:5])}", stacklevel=4)
