"""Nipype's MultiProc plugin, with workers that never outlive the run.

Nipype's workers (a ``ProcessPoolExecutor``) wait for work forever: when the main process dies
(``kill -9``, an out-of-memory kill) they stay, and a Ctrl-C reaches them too and turns into a
node "failure". Here each worker asks the kernel to end it when its parent dies
(``PR_SET_PDEATHSIG``, Linux), ignores SIGINT (the main process handles it and ends the
workers), and takes the default action on SIGTERM; :meth:`MultiProcPlugin.terminate` ends the
workers of an interrupted run at once. No SIGINT or SIGTERM is handled while a worker is forked
(:mod:`ahba_app.cli.forks`).

The workers share the CPUs: each runs its numeric loops on ``usable CPUs // workers`` threads
(``$AHBA_APP_THREADS``, see :mod:`ahba_app._blocks`), unless the user set that variable, so
that two workers on two cores do not each start two threads and fight over the caches.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

from nipype.pipeline.plugins import multiproc as _nipype_multiproc

from .forks import BLOCK_AROUND_FORK

__all__ = ["MultiProcPlugin", "worker_threads"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def worker_threads(processors: int) -> int:
    """Threads for each of ``processors`` workers: the usable CPUs shared out, at least one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, int(processors)))


def _initialize_worker(cwd: str, parent: int, threads: int) -> None:
    _die_with_parent(parent)
    os.environ.setdefault("AHBA_APP_THREADS", str(threads))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _nipype_multiproc.process_initializer(cwd)


class MultiProcPlugin(_nipype_multiproc.MultiProcPlugin):
    """``MultiProc`` whose workers end with the run (see the module's docstring)."""

    def __init__(self, plugin_args=None):
        super().__init__(plugin_args=plugin_args)
        # (Nipype, hence filelock, is imported: our fork hooks are registered after theirs)
        BLOCK_AROUND_FORK.register()
        # the pool nipype made has started no worker yet (they start on the first task)
        self.pool.shutdown(wait=False)
        self.pool = ProcessPoolExecutor(
            max_workers=self.processors, initializer=_initialize_worker,
            initargs=(self._cwd, os.getpid(), worker_threads(self.processors)),
            mp_context=mp.get_context(self.plugin_args.get("mp_context")))

    def _async_callback(self, args):
        """A worker that died (killed, out of memory) fails its node instead of leaving the
        scheduler waiting for a result forever (and no traceback is printed)."""
        try:
            result = args.result()
        except BaseException as err:  # BrokenProcessPool, CancelledError
            # not registered yet: the future failed at once, inside _submit_job
            taskid = next((t for t, future in self._task_obj.items() if future is args),
                          self._taskid)
            self._taskresult[taskid] = {
                "result": None, "taskid": taskid,
                "traceback": [f"RuntimeError: the worker process running this step ended "
                              f"abruptly (killed, or out of memory?): {err}\n"]}
            return
        self._taskresult[result["taskid"]] = result

    def terminate(self) -> None:
        """End every worker now (an interrupted run)."""
        processes = dict(getattr(self.pool, "_processes", None) or {})
        for process in processes.values():
            try:
                process.kill()
            except (OSError, AttributeError):
                pass
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes.values():
            try:
                process.join(timeout=5)
            except (OSError, AttributeError, AssertionError):
                pass
