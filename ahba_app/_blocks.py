"""Helpers for the heavy numeric loops of the stages: threads, and transposed copies.

Threads (numpy releases the GIL inside its loops): work is split into independent pieces (donors, blocks of rows or columns) whose results do
not depend on how many threads run or in which order they finish: every piece computes the
same numbers it would compute alone, and writes only its own part of the output. Each piece
of :func:`thread_map` runs in a copy of the calling thread's context (:mod:`contextvars`), so
what a run passes down that way (:func:`ahba_app.io.remembering_checks`'s record) reaches it.

The number of threads is ``$AHBA_APP_THREADS`` when set (1 turns threads off), else the number
of CPUs this process may use (``os.sched_getaffinity``, which batch schedulers restrict), at
most :data:`MAX_THREADS`.

Transposed copies (:func:`transpose_into`) go tile by tile, so that both arrays are read and
written in cache; numpy's own copy between C and F layouts of large matrices is several times
slower.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

__all__ = ["MAX_THREADS", "background", "n_threads", "own_copy", "shared_threads", "thread_map",
           "transpose_into"]

#: More threads than this gain little: the loops are mostly memory-bound.
MAX_THREADS = 4

T = TypeVar("T")
R = TypeVar("R")


def n_threads() -> int:
    """Threads to use: ``$AHBA_APP_THREADS``, else the usable CPUs (at most MAX_THREADS)."""
    value = os.environ.get("AHBA_APP_THREADS", "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ValueError(f"AHBA_APP_THREADS={value!r} is not a whole number: set it to the "
                             "number of threads to use (1 for none), or unset it.") from None
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cpus))


def even_block_count(n_items: int, width: int, parts: int | None = None) -> int:
    """The number of blocks of at most ``width`` items that ``n_items`` need, rounded up to a
    multiple of ``parts`` (default :func:`n_threads`), so that each thread gets as many: for
    loops whose numbers do not depend on where the blocks start."""
    parts = n_threads() if parts is None else parts
    count = -(-n_items // max(1, width))
    return -(-count // parts) * parts


def thread_map(func: Callable[[T], R], items: Iterable[T], threads: int | None = None
               ) -> list[R]:
    """``[func(item) for item in items]``, run on up to ``threads`` threads, results in order.

    An exception in any call is raised here (after the calls already running have finished).
    """
    items = list(items)
    shared = _SHARED.get() if threads is None else None
    threads = n_threads() if threads is None else threads
    if threads <= 1 or len(items) <= 1 or getattr(_local, "worker", False):
        return [func(item) for item in items]  # (inside a worker: no threads of threads)

    def work(item, context):
        _local.worker = True
        try:
            return context.run(func, item)
        finally:
            _local.worker = False

    contexts = [copy_context() for _ in items]  # (one each: a context runs on one thread)
    if shared is not None:  # the pool of the enclosing shared_threads block
        futures = [shared.submit(work, item, context)
                   for item, context in zip(items, contexts)]
        wait(futures)       # every call ends before an error is raised, as below
        return [future.result() for future in futures]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(work, items, contexts))


_local = threading.local()

#: The pool :func:`thread_map` uses within a :func:`shared_threads` block (of this thread).
_SHARED: ContextVar[ThreadPoolExecutor | None] = ContextVar("ahba_app_shared_threads",
                                                            default=None)


@contextmanager
def shared_threads() -> Iterator[None]:
    """Within the block (one run), :func:`thread_map` calls made by this thread run on one
    pool of :func:`n_threads` threads, started here and ended with the block, instead of
    starting threads at every call (a few milliseconds each, more while another thread holds
    the interpreter). The calls' pieces are leaves: a piece never waits for another, so
    sharing the threads cannot deadlock; the numbers are the same (see the module's note)."""
    threads = n_threads()
    if threads <= 1 or _SHARED.get() is not None:
        yield
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        token = _SHARED.set(pool)
        try:
            yield
        finally:
            _SHARED.reset(token)


class _Inline:
    """An executor that runs each task when it is submitted (one thread: nothing to overlap)."""

    def submit(self, func, *args, **kwargs) -> Future:
        future = Future()
        try:
            future.set_result(func(*args, **kwargs))
        except BaseException as err:  # handed to whoever asks for the result, as threads do
            future.set_exception(err)
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def background(threads: int | None = None):
    """An executor (a context manager) for tasks to overlap with the caller's own work: a
    pool of :func:`n_threads` threads, or, with one thread, one that runs each task at once."""
    threads = n_threads() if threads is None else threads
    if threads <= 1:
        return _Inline()
    return ThreadPoolExecutor(max_workers=threads)


def transpose_into(dst: np.ndarray, src: np.ndarray, rows: int = 512, cols: int = 64) -> None:
    """``dst[...] = src.T`` for 2-D arrays, copied tile by tile (``rows`` x ``cols`` of
    ``dst``); values are copied (and cast, if the dtypes differ) exactly as numpy would."""
    n_rows, n_cols = dst.shape
    if src.shape != (n_cols, n_rows):
        raise ValueError(f"Cannot copy the transpose of a {src.shape} array into {dst.shape}.")
    for i in range(0, n_rows, rows):
        for j in range(0, n_cols, cols):
            dst[i:i + rows, j:j + cols] = src[j:j + cols, i:i + rows].T


def own_copy(values: np.ndarray, order: str = "K", buffer=None) -> np.ndarray:
    """A copy of the 2-D ``values`` laid out in ``order`` ('C', 'F', or 'K': as ``values``
    are), in ``buffer``'s memory (a large enough 1-D array) when given and of their dtype."""
    if order == "K":
        order = "F" if values.flags.f_contiguous and not values.flags.c_contiguous else "C"
    if buffer is None or buffer.dtype != values.dtype:
        return np.array(values, order=order)
    flat = buffer[:values.size]
    out = flat.reshape(values.shape) if order == "C" else flat.reshape(values.shape[::-1]).T
    out[...] = values
    return out
