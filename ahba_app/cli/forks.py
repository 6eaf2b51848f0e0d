"""SIGINT and SIGTERM kept out of the callbacks that run around ``fork()``.

Python runs a signal's handler in the main thread between two bytecodes, wherever that thread
is: also inside the callbacks that libraries register with :func:`os.register_at_fork` (filelock
records its locks before a fork and forgets them after it; logging takes its lock before and
releases it after). The run's handler raises :class:`~ahba_app.cli.run.Interrupted`: raised in
such a callback it cannot propagate (Python hands it to ``sys.unraisablehook``), and it leaves the
library's before/after pair half done. With filelock 4.3.2 the after-fork callback then failed
too and printed a traceback (issue #16's CI run: a SIGTERM while MultiProc forked a worker).

:data:`BLOCK_AROUND_FORK` registers hooks that block SIGINT and SIGTERM in the forking thread
before every other before-fork callback and restore that thread's signal mask after every other
after-fork callback, in the parent and in the child. A signal sent meanwhile waits in the kernel
and reaches its handler once ``os.fork`` has returned. The hooks are C functions
(``pthread_sigmask`` through :mod:`ctypes`): no bytecode of ours runs inside the fork, where a
pending handler would run. A handler that does run while its signal is blocked (another thread
received it, and Python handles signals in the main thread) puts it back: :func:`hold`.

Before-fork callbacks run in the reverse order of their registration, after-fork ones in that
order: hooks registered after every other library's are the outermost. :meth:`ForkSignalBlock.
register` is called when the MultiProc pool is made (:mod:`ahba_app.cli.multiproc`): after Nipype
and filelock are imported, before the first fork. Hooks cannot be unregistered, so they are
registered once per process; :data:`BLOCK_AROUND_FORK` is the process's record of that.
"""

from __future__ import annotations

import os
import signal
import threading
from functools import partial

__all__ = ["BLOCK_AROUND_FORK", "SIGNALS", "ForkSignalBlock", "blocked", "hold"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SIGSET_BYTES = 128  # glibc's sigset_t (1024 signals); no smaller than any other libc's


class ForkSignalBlock:
    """At-fork hooks blocking ``signals`` in the forking thread from before the fork's first
    callback until after its last one (see the module's docstring). One per process:
    :data:`BLOCK_AROUND_FORK`; :attr:`registered` says whether its hooks are in place."""

    def __init__(self, signals=SIGNALS):
        self.signals = tuple(signals)
        self.registered = False

    def register(self) -> bool:
        """Register the hooks, unless done before (returns whether they are registered: not
        where Python cannot fork or libc has no ``pthread_sigmask``). Call it after importing
        the libraries that register fork callbacks, so that ours are the outermost."""
        if self.registered:
            return True
        if not hasattr(os, "register_at_fork"):
            return False
        import ctypes

        try:
            libc = ctypes.CDLL(None)  # (a handle of our own: setting argtypes changes no one's)
            mask, empty, add = libc.pthread_sigmask, libc.sigemptyset, libc.sigaddset
        except (OSError, AttributeError):  # pragma: no cover - no such libc
            return False
        ours = (ctypes.c_ubyte * _SIGSET_BYTES)()
        empty(ours)
        for signum in self.signals:
            add(ours, ctypes.c_int(int(signum)))
        # the thread's mask before the fork; threads forking at the same moment share it (the
        # masks of Python's threads are all empty unless a program blocks signals itself)
        saved = (ctypes.c_ubyte * _SIGSET_BYTES)()
        mask.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        restore = partial(mask, int(signal.SIG_SETMASK), saved, None)
        os.register_at_fork(before=partial(mask, int(signal.SIG_BLOCK), ours, saved),
                            after_in_parent=restore, after_in_child=restore)
        self.registered = True
        return True


#: The process's one :class:`ForkSignalBlock` (its hooks live as long as the process).
BLOCK_AROUND_FORK = ForkSignalBlock()


def blocked(signum: int) -> bool:
    """Whether ``signum`` is blocked in the calling thread (in the main thread: a fork is under
    way, see :data:`BLOCK_AROUND_FORK`)."""
    return hasattr(signal, "pthread_sigmask") and \
        signum in signal.pthread_sigmask(signal.SIG_BLOCK, ())


def hold(signum: int) -> None:
    """Send ``signum`` again to the calling thread, where it is blocked: it waits in the kernel
    and is handled when the thread unblocks it."""
    signal.pthread_kill(threading.get_ident(), signum)
