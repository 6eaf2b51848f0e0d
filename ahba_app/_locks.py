"""Locks shared by processes, that say who holds them.

One lock is one file, locked with ``flock`` (what :mod:`filelock` uses on Unix too, so both
exclude each other). The holder writes who it is into the file (process id, host, command, start
time); a process that finds the lock taken reads it back to say *which* run is in the way, and
whether that run is still going, stopped (Ctrl-Z, a suspended job) or gone. The kernel releases
a lock when its holder dies, even by ``kill -9``: a lock never outlives its run.

Used for the work folder (one run at a time), the output folder while publishing, a staging
folder (alive while its run is) and the matrix caches (one builder at a time).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not Unix: locks are not shared between processes
    fcntl = None

__all__ = ["Lock", "LockBusyError", "acquire", "describe_holder", "holder", "try_acquire"]

LGR = logging.getLogger("ahba_app")


class LockBusyError(RuntimeError):
    """A lock is held by another process that cannot be waited for."""


class Lock:
    """A lock held by this process; ``release()`` (or leaving a ``with`` block) frees it."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file releases the flock
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)


def try_acquire(path, what: str = "") -> Lock | None:
    """Take the lock at ``path`` if it is free (None if another process holds it)."""
    path = Path(path)
    fd = _open(path)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
    info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError:  # who holds it is only a courtesy (e.g. a full disk)
        pass
    return Lock(path, fd)


def holder(path) -> dict | None:
    """What the holder of the lock at ``path`` wrote about itself (None if unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.loads(handle.read() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def process_state(info: dict | None) -> str:
    """'running', 'stopped', 'gone' or 'unknown' (another host, no /proc) for a holder."""
    if not info or info.get("host") != socket.gethostname() or not isinstance(info.get("pid"),
                                                                               int):
        return "unknown"
    try:
        with open(f"/proc/{info['pid']}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "unknown" if not os.path.isdir("/proc") else "gone"
    return "stopped" if state in ("T", "t") else "gone" if state in ("Z", "X") else "running"


def describe_holder(info: dict | None) -> str:
    """'process 123 on host h (ahba-app IN OUT group, started ...)'."""
    if not info:
        return "another process"
    text = f"process {info.get('pid', '?')} on host {info.get('host', '?')}"
    details = [d for d in (info.get("command"), info.get("started") and
                           f"started {info['started']}") if d]
    return text + (f" ({', '.join(details)})" if details else "")


def acquire(path, what: str, *, poll: float = 0.2, notice_after: float = 2.0,
            timeout: float | None = None) -> Lock:
    """Wait for the lock at ``path`` while its holder runs; say once whom we wait for.

    Raises :class:`LockBusyError` at once when the holder is stopped (it would never release
    the lock), and after ``timeout`` seconds when one is given.
    """
    path = Path(path)
    started = time.monotonic()
    noticed = False
    while True:
        lock = try_acquire(path, what)
        if lock is not None:
            return lock
        info = holder(path)
        state = process_state(info)
        if state == "stopped":
            pid = info["pid"]
            raise LockBusyError(
                f"{what} is locked by {describe_holder(info)}, which is stopped (suspended with "
                f"Ctrl-Z or by the job scheduler) and would keep it forever: resume it "
                f"(kill -CONT {pid}) or end it (kill {pid}), then run again.")
        waited = time.monotonic() - started
        if timeout is not None and waited > timeout:
            raise LockBusyError(f"{what} is still locked by {describe_holder(info)} after "
                                f"{timeout:.0f} s: wait for it to finish, then run again.")
        if not noticed and waited >= notice_after:
            LGR.info("Waiting for %s, which holds %s.", describe_holder(info), what)
            noticed = True
        time.sleep(poll)
