"""Putting a run's outputs in place: all of them, or none, whatever happens to the run.

A run writes everything into its own staging folder inside the output folder
(``OUTPUT_DIR/.ahba-app-staging-<id>/``, so on the same file system: moving a file out of it is a
rename, which needs no space and cannot be half done). The run holds a lock in that folder
(``.lock``) for as long as it lives; the kernel drops it when the run dies, even by ``kill -9``.

Publishing, under the output folder's lock (``OUTPUT_DIR/logs/.ahba-app-publish.lock``, so two
runs sharing an output folder publish one after the other):

1. every file that takes space is written into the staging folder first: the tables, and the
   dataset-level files (``dataset_description.json``, ``.bidsignore``, ``CITATION.md``) and the
   completion marker's content. A full disk or any error here leaves the output folder as it was;
2. the list of files to move (``.ahba-app-commit``) is written and synced: from here on the
   run's outputs are decided;
3. the completion marker of the previous run (``OUTPUT_DIR/.ahba-app-complete.json``) is removed,
   ``dataset_description.json`` is moved first, then every output, then the marker, last;
4. the staging folder is removed.

A run that dies during step 3 leaves a committed staging folder: the next run sharing the output
folder finishes moving it (step 3 again, which is idempotent) before anything else. A staging
folder without a commit, whose run is gone, is deleted. So an output folder whose marker is
present holds the complete outputs of the run it names; no marker means a publish was cut short.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

from .. import _locks
from .exits import UsageError
from ..atomic import fsync_folder

__all__ = ["COMMIT", "MARKER", "STAGING_PREFIX", "Staging", "clean_stale", "lock_work_dir",
           "publish_lock"]

LGR = logging.getLogger("ahba_app")

STAGING_PREFIX = ".ahba-app-staging-"
#: the completion marker, written last
MARKER = ".ahba-app-complete.json"
#: inside a staging folder: the files to move, written once the folder is complete
COMMIT = ".ahba-app-commit"
_LOCK = ".lock"
_FIRST = "dataset_description.json"


def lock_work_dir(work_dir: Path) -> _locks.Lock:
    """One run at a time per work folder (Nipype's cache is not safe to share)."""
    path = work_dir / ".ahba-app.lock"
    lock = _locks.try_acquire(path, f"the work folder {work_dir}")
    if lock is None:
        raise UsageError(
            f"The work folder {work_dir} is in use by another ahba-app run: "
            f"{_locks.describe_holder(_locks.holder(path))}. Wait for it to finish, or give "
            "this run its own work folder with -w.")
    return lock


def publish_lock(output_dir: Path) -> _locks.Lock:
    """The output folder's lock (waits while another run publishes there)."""
    logs = Path(output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return _locks.acquire(logs / ".ahba-app-publish.lock",
                          f"the output folder {output_dir}", poll=0.1)


class Staging:
    """This run's staging folder in ``output_dir``, locked for the life of the run."""

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
        self.path.mkdir()
        self._lock = _locks.try_acquire(self.path / _LOCK, f"the staging folder {self.path}")

    def files(self) -> list[str]:
        """Relative paths of the staged outputs (the staging folder's own files left out)."""
        out = []
        for path in sorted(self.path.rglob("*")):
            rel = path.relative_to(self.path)
            if path.is_file() and rel.name not in (_LOCK, COMMIT) and rel.parts[0] != "citations":
                out.append(rel.as_posix())
        return out

    def commit(self, files: list[str], marker: dict) -> None:
        """Write the marker into the staging folder, then the list of files to move (synced):
        from now on, these outputs will be published even if this process dies."""
        write_file(self.path / MARKER, json.dumps(marker, indent=2) + "\n")
        write_file(self.path / COMMIT, json.dumps(files + [MARKER]) + "\n")
        fsync_folder(self.path)

    def discard(self) -> None:
        """Remove the staging folder, unless it is committed (then the next run publishes
        what is left of it: see :func:`clean_stale`)."""
        if self.path.is_dir() and not (self.path / COMMIT).is_file():
            shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def write_file(path: Path, text: str) -> None:
    """Write and sync a small file (inside a staging folder: nobody reads it half written)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def move_committed(staging: Path, output_dir: Path) -> list[Path]:
    """Step 3 and 4 for a committed staging folder (see the module's docstring). Files already
    moved (by a run that died) are skipped."""
    names = json.loads((staging / COMMIT).read_text(encoding="utf-8"))
    (output_dir / MARKER).unlink(missing_ok=True)
    order = sorted(names, key=lambda n: (n != _FIRST, n == MARKER))
    moved = []
    for name in order:
        source, dest = staging / name, output_dir / name
        if source.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, dest)
        moved.append(dest)
    fsync_folder(output_dir)
    shutil.rmtree(staging, ignore_errors=True)
    return moved


def clean_stale(output_dir: Path) -> None:
    """Finish or remove the staging folders of runs that are gone (call under
    :func:`publish_lock`): committed ones are published, the others deleted."""
    for folder in sorted(Path(output_dir).glob(STAGING_PREFIX + "*")):
        if not folder.is_dir():
            continue
        lock = _locks.try_acquire(folder / _LOCK) if folder.exists() else None
        if lock is None:
            continue  # its run is alive
        with lock:
            if (folder / COMMIT).is_file():
                LGR.warning("Finishing the publication of outputs that an interrupted run had "
                            "completed (%s).", folder.name)
                try:
                    move_committed(folder, Path(output_dir))
                    continue
                except (OSError, ValueError) as err:
                    LGR.warning("Could not finish it (%s): removing it.", err)
            LGR.info("Removing %s, left by an interrupted run.", folder.name)
            shutil.rmtree(folder, ignore_errors=True)


def marker_content(files: list[str], run_id: str) -> dict:
    from .._version import __version__

    return {"GeneratedBy": f"ahba-app {__version__}", "Run": run_id,
            "Completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "Files": files}
