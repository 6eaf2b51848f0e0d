"""The matrix layer: one donor's probes x samples matrix, read a block at a time.

:class:`DonorMatrix` wraps a DataFrame, an :class:`ahba_app.io.CachedMatrix` or the path of a
``MicroarrayExpression.csv`` / ``PACall.csv`` (opened through its cache) and reads only the rows
and samples asked for (decoding is :mod:`ahba_app.io`'s); :func:`row_chunks` cuts work into
blocks of bounded memory. The sample and probe stages (:mod:`ahba_app.samples`,
:mod:`ahba_app.probes`) read expression through it.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

__all__ = ["DonorMatrix", "as_array", "probes_by_samples", "row_chunks"]


def as_array(frame) -> np.ndarray:
    """The values of a probes x samples frame, without a copy when it is one block."""
    if isinstance(frame, pd.DataFrame):
        return frame.to_numpy(copy=False)
    return np.asarray(frame)


class DonorMatrix:
    """One donor's probes x samples matrix (microarray or PACall), read a block at a time.

    Wraps a DataFrame (index ``probe_id``, columns ``sample_id``), an
    :class:`ahba_app.io.CachedMatrix`, or the path of a ``MicroarrayExpression.csv`` /
    ``PACall.csv`` (opened through the cache). From the cache only the rows (and samples) asked
    for are read and decoded, so the whole matrix is never copied; :meth:`release` hands the
    pages read back to the page cache, so that finished donors do not count in this process's
    memory.
    """

    def __init__(self, obj, kind: str):
        from . import io  # imported late: io is optional for callers passing frames

        if isinstance(obj, (str, os.PathLike)):
            obj = io.load_matrix(obj, kind)
        if isinstance(obj, io.CachedMatrix):
            self.cached, self.frame = obj, None
            self.probe_index = pd.Index(np.asarray(obj.probe_ids), name="probe_id")
            self.sample_index = pd.RangeIndex(1, obj.n_samples + 1, name="sample_id")
            self.dtype = obj.dtype
        elif isinstance(obj, pd.DataFrame):
            self.cached, self.frame = None, obj
            self.probe_index, self.sample_index = obj.index, obj.columns
            self.dtype = as_array(obj).dtype
        else:
            raise TypeError(f"Expected a pandas DataFrame, an ahba_app.io.CachedMatrix or a "
                            f"path for the {kind} data, got {type(obj).__name__}.")

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.probe_index), len(self.sample_index))

    @property
    def releases_rows(self) -> bool:
        """Whether :meth:`take` hands back the pages of the rows it reads (a coded microarray
        cache: each block as it is decoded), so that a caller need not :meth:`release` them."""
        return self.cached is not None and self.cached.codes is not None

    def take(self, rows=None, cols=None, transposed: bool = False, out=None) -> np.ndarray:
        """``values[rows][:, cols]`` as a new C-contiguous probes x samples array, or samples x
        probes with ``transposed`` (never a view of the source, so callers may modify it).

        ``rows`` and ``cols`` are positions (None: all); microarray values come out as the
        float64 the cache decodes them to, bit for bit. ``out`` (optional): a C-contiguous
        array of the result's shape and dtype to write into (and return). From a coded cache
        the pages of the rows read are released as they are decoded (:attr:`releases_rows`).
        """
        if self.releases_rows:  # a coded cache: decoded (and released) block by block
            from . import io

            rows = np.arange(self.shape[0]) if rows is None else rows
            return io.decode_rows(self.cached, rows, cols, transposed, out, release=True)
        if self.cached is None:
            values = as_array(self.frame)
            block = probes_by_samples(values, rows, cols)
            if transposed:
                block = np.array(block.T, order="C", copy=True)
            elif np.may_share_memory(block, values):
                block = block.copy()
        else:  # PACall bits, or microarray stored as float64
            from . import io

            block = io.select_rows(self.cached, rows, cols)
            block = np.ascontiguousarray(block.T) if transposed else block
        if out is None:
            return block
        out[...] = block
        return out

    def count_true(self, rows, cols) -> np.ndarray:
        """For PACall: per row, how many of the columns ``cols`` (repeats counted) are True.

        From the cache the packed bits are counted as they are (bitwise AND with one mask per
        repeat level, then popcount), never unpacked.
        """
        cached = self.cached
        if cached is None or not cached.packed:
            counts = np.zeros(len(rows), dtype=np.int64)
            for part in row_chunks(len(rows), len(cols), 1 << 23):
                counts[part] = self.take(rows[part], cols).sum(axis=1, dtype=np.int64)
            return counts
        weight = np.bincount(np.asarray(cols, dtype=np.intp), minlength=cached.n_samples)
        masks = [np.packbits(weight >= level) for level in range(1, int(weight.max(initial=0)) + 1)]
        counts = np.zeros(len(rows), dtype=np.int64)
        packed = cached.values
        for part in row_chunks(len(rows), packed.shape[1], 1 << 22):
            block = packed[rows[part]]
            for mask in masks:
                counts[part] += _popcount(block & mask).sum(axis=1, dtype=np.int64)
        return counts

    def release(self, rows=None) -> None:
        """Drop the cache pages mapped so far from this process, or those of the rows
        ``rows`` (positions): they stay in the page cache."""
        if self.cached is not None:
            from . import io

            io.release_rows(self.cached, rows)


_BIT_COUNTS = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint8 value."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values)
    return _BIT_COUNTS[values]


def probes_by_samples(values: np.ndarray, rows=None, cols=None) -> np.ndarray:
    """``values[rows][:, cols]`` as a C-contiguous probes x samples array (None means all).

    A probes-major array (e.g. the memory map of :mod:`ahba_app.io`) is gathered row by row; a
    samples-major one (what pandas keeps for a frame it built itself) is gathered along its
    contiguous axis first and transposed once.
    """
    if values.flags.f_contiguous and not values.flags.c_contiguous:
        out = values.T
        if rows is not None:
            out = np.take(out, rows, axis=1)
        if cols is not None and not _is_identity(cols, out.shape[0]):
            out = np.take(out, cols, axis=0)
        return np.ascontiguousarray(out.T)
    out = values
    if rows is not None:
        out = np.take(out, rows, axis=0)
    if cols is not None and not _is_identity(cols, out.shape[1]):
        out = np.take(out, cols, axis=1)
    return np.ascontiguousarray(out)


def _is_identity(index, n: int) -> bool:
    index = np.asarray(index)
    return len(index) == n and bool((index == np.arange(n)).all())


def row_chunks(n_rows: int, n_cols: int, budget: int = 1 << 22):
    """Slices of rows whose float64 copy holds about ``budget`` values (32 MB)."""
    step = max(1, budget // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


