"""Atomic file writes: the one way ahba-app writes a file that others rely on.

A file is written under a temporary name in its own folder (created exclusively, with the
permissions the umask allows, unlike ``mkstemp``'s 0600) and renamed over its final name with
``os.replace`` only once complete, so a reader sees the old file or the new one, never half of
one; on any error the temporary file is removed and nothing is left behind.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["create_temporary", "fsync_folder", "replacing", "write_bytes", "write_text"]


def create_temporary(location: str | os.PathLike, access: int = os.O_WRONLY
                     ) -> tuple[int, str]:
    """A new, empty file beside ``location`` (``<name>.<random>.tmp``), opened with ``access``
    (write only by default): its descriptor and name."""
    while True:
        name = os.fspath(location) + "." + secrets.token_hex(6) + ".tmp"
        try:
            return os.open(name, access | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make the renames done in ``folder`` durable (``fsync`` of the folder itself); a folder
    that cannot be opened or synced (some file systems) is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str | os.PathLike, *, mkdir: bool = True) -> Iterator[Path]:
    """``with replacing(path) as tmp:`` write ``tmp`` (it exists, empty); when the block ends
    without error, ``tmp`` replaces ``path``; otherwise it is removed."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = create_temporary(path)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
