"""Readers for the AHBA data files, and a binary cache of the two big matrices.

One reader per file type, with abagen's names, arguments and return conventions:

=====================  ====================  ==========================================
reader                 file                  returns
=====================  ====================  ==========================================
``read_microarray``    MicroarrayExpression  (P, S) float64, index ``probe_id``,
                                             columns ``sample_id`` 1..S
``read_pacall``        PACall                (P, S) int64 0/1, same labels
``read_probes``        Probes                index ``probe_id``, ``entrez_id`` as Int64
``read_annotation``    SampleAnnot           index ``sample_id`` 1..S
``read_ontology``      Ontology              default RangeIndex
``read_tpm``           RNAseqTPM             (G, S) float64, index ``gene_symbol``,
                                             columns ``sample_id`` 1..S
``read_counts``        RNAseqCounts          the same as ``read_tpm``
``read_genes``         Genes                 index: the file's first column
=====================  ====================  ==========================================

Every reader also accepts a DataFrame that is already loaded, and returns it (a copy when
``copy=True``).

Deliberate differences from abagen
----------------------------------
- PACall values are bool rather than int64.
- RNA-seq TPM and counts are float64 even when a column holds whole numbers only.
- Microarray values are float64 like abagen's, and exact: each is the float64 nearest to the
  decimal written in the CSV (Python's ``float(text)``; pandas' default C parser, which abagen
  uses, is sometimes one unit in the last place off). The cache stores them losslessly in 3 to
  7 bytes a value, whatever the digits of the file (see below); the DataFrame is a new, writable
  float64 array decoded from it, so writing to the frame never touches the cache.

The binary cache
----------------
The first read of a ``MicroarrayExpression.csv`` or ``PACall.csv`` parses it (pyarrow, streamed
in blocks of a few MB, so the build needs little memory beyond the blocks; a PACall file in its
plain form is read straight from its bytes by :func:`_plain_calls`) into one cache file;
later reads map that file and never parse CSV again. ``parquet=True`` (abagen's name) means "use
the cache"; ``parquet=False`` parses the CSV into memory (float64) and writes nothing.

Lossless microarray storage, at any precision ("row-scaled"). Each row (probe) is stored for
itself as integers ``n`` with ``value == float64(n) / d`` bit for bit, where ``d`` is ``10**k``
(decimals: the fewest k, and integers up to 2**53) or ``2**q`` (binary fixed point, for values
with more digits than 15 decimals hold, e.g. 17 significant digits). For decimals this is the
parse of the text itself: IEEE division is correctly rounded and 10**k is exact, so ``n / 10**k``
is the float64 nearest to the decimal n * 10**-k; for binary it is exact arithmetic. Every row's
candidate is decoded as readers decode it and compared bit for bit before it is accepted; a row
nothing holds (NaN, infinities, -0.0, magnitudes too far apart) is kept as float64. The
integers are stored minus the row's least, in the fewest bytes holding the row's range: 3 bytes
a value for 6 decimals, 4 for 9 significant digits, 5 for 12, 7 for 17 (AHBA-like rows, whose
values span less than 10). Rows of one width form one segment, so a reader gathers the rows it
wants with a strided view and decodes them block by block (:func:`decode_rows`): a few ns a
value, nothing but the result held in float64. The alternatives measured (a general-purpose
compressor, float32 plus a correction) are in ``README.md``, Performance.

Location. ``<folder of the CSV>/.ahba-cache/<file name>.cache`` when that folder is writable.
Otherwise (a read-only folder, e.g. a Singularity bind mount) under a cache root keyed by the
resolved absolute path of the CSV's folder: ``<root>/matrix-cache/<hash>/<file name>.cache``,
where ``<root>`` is ``$AHBA_CACHE_DIR``, else ``$XDG_CACHE_HOME/ahba-app``, else
``~/.cache/ahba-app``. A valid cache is looked for in both places, beside the data first. When
no location is writable the CSV is parsed into memory with a warning.

Layout of a cache file (format version 4, little-endian)::

    0    preamble (64 bytes): magic b"AHBAMTX\\0", uint32 version, uint32 0,
         uint64 header offset, uint64 header length
    64   values. PACall: bits packed along samples (np.packbits, big bit order), uint8
         (P, ceil(S / 8)). Microarray: segments at 64-byte boundaries, each followed by 8 spare
         bytes: segment 0 float64 (rows, S); segment w (1..8) unsigned w-byte integers (rows, S)
    ..   microarray row table, in file order: segment uint8 (P,), base int64 (P,), divisor
         float64 (P,); the value is float64(base + stored) / divisor; check uint64 (P,), each
         row's :func:`row_checks` of what it stores
    ..   probe ids: int64 (P,), at a 64-byte boundary
    ..   header: UTF-8 JSON with the kind, the shapes, the encoding (``"row-scaled"`` with its
         segments, or ``"packed-bits"``) and offsets, a CRC-32 of the values region and of each
         array, and the source file's absolute path, size and mtime_ns

Sizes (full-size synthetic data, donor 9861): 3.02 bytes a value at 6 decimals, 5.02 at 12
significant digits, 7.02 at 17, against 8 for float64 (what abagen's parquet files hold, at
any precision). Caches of other versions (1: float32, lossy; 2: int32 decimals, else
float64; 3: rows without checks) are rebuilt, never read.

Validity. A cache is used only if its magic, version and kind match, its file size equals what
the header describes, the source's size and mtime_ns equal those recorded, and the CRC-32s of
the probe ids and of the row table match. Anything else (stale, truncated, corrupt, older
format) is rebuilt. The values are checked too, without reading more than a run needs: a
PACall cache (a few MB, read whole by every run) by the CRC-32 of its values when it is opened
(not by the call that has just written the file, whose checksums it computed from the bytes it
wrote, nor by a caller that passes the record of the files its run has checked,
:class:`CheckedCaches`, or opens them within :func:`remembering_checks`); a microarray cache
(hundreds of MB, of which a warm run reads a quarter) row by row, each row against its check
as it is read. A row that fails means the file was damaged after it was written: the cache is
rebuilt from its CSV, and the run reads the rebuilt file (:class:`_Origin`).

Atomicity. A builder holds a lock (``<cache>.lock``, one per cache file) while it writes a
temporary file in the same folder, fsyncs it, and renames it over the cache with ``os.replace``:
readers (who take no lock) see the old complete file or the new complete file, never a partial
one, and two processes building at once produce one cache, built once.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import struct
import sys
import threading
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from . import _locks, atomic
from ._version import __version__

try:  # the same CRC-32 as zlib's, several times faster (checking a cache reads it whole)
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal has wheels for the usual platforms
    from zlib import crc32 as _crc32

__all__ = [
    "AHBAFileError", "CACHE_DIRNAME", "CACHE_FORMAT_VERSION", "CachedMatrix", "CheckedCaches",
    "DamagedCacheError", "RowCodes", "cache_locations", "check_microarray_pacall", "content_id",
    "decode_rows", "ensure_cache", "largest_first", "load_matrix", "probe_positions",
    "read_annotation", "read_counts", "read_genes", "read_microarray", "read_ontology",
    "read_pacall", "read_probes", "read_tpm", "release_rows", "remembering_checks",
    "row_checks", "select_rows",
]

LOGGER = logging.getLogger(__name__)

#: abagen's flag saying whether it keeps parquet copies of the matrices: ahba-app never does
#: (its cache is described above), so scripts that test it take the CSV path.
use_parq = False

PathLike = Union[str, os.PathLike]

#: Version of the cache file layout; caches of any other version are rebuilt.
#: 1: microarray float32 (lossy). 2: microarray int32 decimals (or float64), exact.
#: 3: microarray rows as scaled integers of 1 to 8 bytes (or float64), exact at any precision.
#: 4: the same rows, each with a check of its own, verified as the row is read.
CACHE_FORMAT_VERSION = 4
#: Folder created beside the data to hold the caches.
CACHE_DIRNAME = ".ahba-cache"
#: The two matrix kinds that are cached, with the file names they come from.
MATRIX_KINDS = {"microarray": "MicroarrayExpression.csv", "pacall": "PACall.csv"}

_MAGIC = b"AHBAMTX\0"
_PREAMBLE = struct.Struct("<8sIIQQ")
_DATA_OFFSET = 64
_ALIGN = 64
_CACHE_SUFFIX = ".cache"
# bytes of CSV per parsed block (about 500 rows of 946 samples at 6 decimals, 240 at 17
# digits). The parser converts each column of a block apart, so its cost per value falls as
# blocks grow: against 2 MB blocks a cold run's CPU fell by 3-6 s at 12 and 17 digits (within
# the noise at 6 decimals); 6 and 8 MB saved no more CPU (more system time) and raised the
# peak memory by 150-400 MB.
_BLOCK_SIZE = 4 << 20
_CHECK_CHUNK = 16 << 20        # bytes read at a time when checksumming a cache
_WRITEBACK_STEP = 32 << 20     # bytes of a cache written between requests to write them out
_SYNC_FILE_RANGE_WRITE = 2     # <fcntl.h>: start writing the range's dirty pages, not waiting
_BUILD_ATTEMPTS = 3
_MAX_DETAIL = 300              # characters of a parser message quoted in an error
# errors of a cache location without room (or no longer writable): try elsewhere, else parse
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
# values encodings recorded in a cache header
_ROW_SCALED, _PACKED_BITS = "row-scaled", "packed-bits"


class AHBAFileError(ValueError):
    """An AHBA data file (or a pair of them) is malformed or inconsistent.

    The message names the file and the problem; unless it says what to do, the fix for a
    damaged download is added."""

    FIX = ("Restore the file from the Allen download (or delete the donor's folder and fetch "
           "it again).")

    def __init__(self, message: str = "", *args):
        text = str(message).rstrip()
        if text and not re.search(r"\b(restore|download|must come from|fetch)\b", text, re.I):
            text = f"{text}{'' if text.endswith(('.', '!')) else '.'} {self.FIX}"
        super().__init__(text, *args)


class DamagedCacheError(AHBAFileError):
    """A matrix cache that fails its checks and cannot be rebuilt in place (see
    :class:`_Origin`): the message names the cache and its CSV file."""

    FIX = ("Check the disk, then delete the cache file named above (it is rebuilt from its CSV "
           "file by the next run).")


# --------------------------------------------------------------------------------------------
# Arrays held in the cache
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class RowCodes:
    """How each row of a microarray cache is stored (the ``"row-scaled"`` encoding).

    Row ``r`` lives in segment ``segment[r]`` at position ``slot[r]``. Segment 0 holds rows as
    float64; segment ``w`` (1..8) holds rows as ``w``-byte unsigned integers ``u``, and the
    value is ``float64(base[r] + u) / divisor[r]`` (``divisor`` is ``10**k`` or ``2**q``, exact
    in float64). ``views[w]`` is a (rows, S) view of segment ``w``; for ``w`` of 3, 5, 6 or 7 it
    reads 4 or 8 bytes per value (the segment is padded) and ``masks[w]`` keeps the low ``w``
    bytes.

    ``check[r]`` is row ``r``'s check (:func:`row_checks` of its stored integers, or of its
    float64 values' bits), compared with the row's bytes each time the row is read;
    ``origin`` rebuilds the cache when a row fails (:class:`_Origin`).
    """

    segment: np.ndarray
    slot: np.ndarray
    base: np.ndarray
    divisor: np.ndarray
    views: dict
    masks: dict
    check: np.ndarray | None = None
    origin: "_Origin | None" = None

    def widths(self) -> dict:
        """Rows per segment (0: float64; w: w bytes per value)."""
        counts = np.bincount(self.segment, minlength=9)
        return {int(w): int(n) for w, n in enumerate(counts) if n}


@dataclass(frozen=True, eq=False)
class CachedMatrix:
    """A donor's microarray or PACall matrix, as arrays (memory-mapped from the cache).

    Attributes
    ----------
    kind : {'microarray', 'pacall'}
    source : Path
        The CSV the matrix was read from.
    cache : Path or None
        The cache file mapped, or None when the CSV was parsed into memory.
    probe_ids : (P,) int64 ndarray
        Probe ids, in file order (read-only).
    values : ndarray
        The stored array, read-only (use :func:`select_rows` for the values themselves).
        PACall: (P, ceil(S / 8)) uint8, the present/absent calls packed along samples with
        ``np.packbits``. Microarray from a cache: the bytes of the stored rows (see ``codes``);
        parsed into memory: (P, S) float64.
    n_samples : int
        S; sample ``j`` (0-based column) has sample id ``j + 1``.
    codes : RowCodes or None
        How a microarray cache stores each row; None for PACall and for matrices in memory.
    content_id : str or None
        What the cache file holds, in a few characters (its recorded checksums, shape and
        encoding): equal ids mean the same matrix. None when the CSV was parsed into memory.
    """

    kind: str
    source: Path
    cache: Path | None
    probe_ids: np.ndarray
    values: np.ndarray
    n_samples: int
    codes: RowCodes | None = None
    content_id: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(P, S): probes by samples."""
        return (len(self.probe_ids), self.n_samples)

    @property
    def packed(self) -> bool:
        """True when ``values`` holds packed bits (PACall)."""
        return self.kind == "pacall"

    @property
    def dtype(self) -> np.dtype:
        """dtype of the values :func:`select_rows` returns: float64 (microarray) or bool."""
        return np.dtype(bool) if self.packed else np.dtype(np.float64)

    def to_frame(self) -> pd.DataFrame:
        """All values as a writable DataFrame labelled like abagen's (probe_id x sample_id).

        float64 for microarray, bool for PACall. The values are decoded (or unpacked) into a new
        array, unless they are float64 in memory and writable already (parsed without a cache).
        """
        if self.packed or self.codes is not None or not self.values.flags.writeable:
            return _frame(self, select_rows(self))
        return _frame(self, self.values)


def select_rows(matrix: CachedMatrix, rows=None, samples=None) -> np.ndarray:
    """Gather some probe rows (and optionally samples) of ``matrix`` into a new array.

    Only the pages holding the requested rows are read from the cache, and only those rows are
    decoded (a few MB at a time), so taking the few tens of thousands of probes that survive
    filtering costs little beyond the result itself.

    Parameters
    ----------
    matrix : CachedMatrix
        From :func:`load_matrix`.
    rows : None, slice, int array or bool mask of length P
        Row positions (not probe ids: see :func:`probe_positions`). None takes every row.
    samples : None, slice, int array or bool mask of length S
        Column positions (sample id minus one). None takes every sample.

    Returns
    -------
    ndarray
        (rows, samples), float64 for microarray (exactly the values parsed from the CSV), bool
        for PACall; writable and owning its data.
    """
    values = matrix.values
    n_probes = len(matrix.probe_ids)
    if matrix.codes is not None:
        positions = _row_positions(rows, n_probes)
        if isinstance(positions, slice):
            positions = np.arange(n_probes)[positions]
        elif positions.ndim != 1:                   # scalar or n-d positions: small, rare
            flat = decode_rows(matrix, positions.ravel(), samples)
            return flat.reshape(positions.shape + flat.shape[1:])
        return decode_rows(matrix, positions, samples)
    if rows is None:
        block = np.array(values)
    elif isinstance(rows, slice):
        block = np.array(values[rows])
    else:
        block = np.asarray(values[_row_positions(rows, n_probes)])
    if matrix.packed:
        block = np.unpackbits(block, axis=1, count=matrix.n_samples).view(bool)
    if samples is not None:
        block = block[:, samples]
    return np.ascontiguousarray(block)


def _row_positions(rows, n_probes: int):
    """``rows`` as a slice or an int array of positions (a bool mask is checked and converted)."""
    if rows is None:
        return slice(None)
    if isinstance(rows, slice):
        return rows
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (n_probes,):
            raise IndexError(f"Boolean row mask has shape {rows.shape}; the matrix has "
                             f"{n_probes} rows.")
        return np.flatnonzero(rows)
    return rows


# values decoded at a time (1 MB of float64): each block stays in the CPU's cache
_DECODE_VALUES = 1 << 17


def decode_rows(matrix: CachedMatrix, rows, samples=None, transposed: bool = False,
                out: np.ndarray | None = None, release: bool = False) -> np.ndarray:
    """Rows ``rows`` (positions) and samples ``samples`` of a microarray cache, as float64.

    Decoded block by block (about 1 MB of output at a time, on the threads of
    :func:`ahba_app._blocks.thread_map`), so nothing but the result is ever held in float64.
    ``transposed`` gives samples x probes. ``out`` (optional): a C-contiguous float64 array of
    the result's shape to write into (and return). Each value is the float64 the CSV's text
    parses to, bit for bit. ``release``: hand the pages of each block back once it is decoded
    (:func:`release_rows`), so that the mapped file never counts whole in this process's memory.
    """
    from ._blocks import thread_map

    codes = matrix.codes
    rows = np.asarray(rows, dtype=np.intp).ravel()
    cols = None
    if samples is not None:
        cols = np.atleast_1d(np.arange(matrix.n_samples)[samples])
        if cols.size == matrix.n_samples and np.array_equal(cols, np.arange(matrix.n_samples)):
            cols = None
    width = matrix.n_samples if cols is None else len(cols)
    shape = (width, len(rows)) if transposed else (len(rows), width)
    if out is None:
        out = np.empty(shape)
    elif out.shape != shape or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ValueError(f"The output must be a C-contiguous float64 array of shape {shape}.")
    step = max(1, _DECODE_VALUES // max(width, 1))
    # blocks of rows in file order: each block reads (and releases) a narrow stretch of the
    # file; rows asked for in another order (probes in gene order) are put back in place.
    # Blocks of scattered rows touched the whole file (all of it resident until the end, and
    # three times slower)
    order = None if rows.size < 2 or (np.diff(rows) >= 0).all() else \
        np.argsort(rows, kind="stable")
    if transposed and order is not None:
        # samples x probes: decode in file order into columns in that order (each block a
        # contiguous band of columns, copied tile by tile), then put the columns in place a
        # few rows at a time; scattering each block's columns across the whole output
        # dragged every cache line of it in for every block (twice as slow)
        decode_rows(matrix, rows[order], samples, transposed=True, out=out, release=release)
        _permute_columns(out, np.argsort(order, kind="stable"))
        return out

    # each thread decodes its transposed blocks in one array of its own, made once for the
    # call (a fresh megabyte per block cost more in page faults than the decoding)
    scratch: dict = {}

    def run(start):  # one block of rows
        if order is None:
            part, where = rows[start:start + step], slice(start, start + step)
        else:
            where = order[start:start + step]
            part = rows[where]
        if transposed:
            if order is None:
                mine = scratch.get(threading.get_ident())
                if mine is None:
                    mine = scratch[threading.get_ident()] = np.empty(step * width)
                block = mine[:len(part) * width].reshape(len(part), width)
                # (a block of about 1 MB: numpy's copy is quicker than tiles here)
                np.copyto(out[:, where], _decode_block(codes, part, cols, block).T)
            else:
                out[:, where] = _decode_block(codes, part, cols).T
        elif order is None:
            _decode_block(codes, part, cols, out[where])
        else:
            out[where] = _decode_block(codes, part, cols)
        if release:
            release_rows(matrix, part)

    thread_map(run, range(0, len(rows), step))
    return out


def _permute_columns(out: np.ndarray, source: np.ndarray) -> None:
    """``out[:, :] = out[:, source]`` in place (C-contiguous ``out``), a band of rows at a
    time (each band and its copy stay in the CPU's cache), on the threads of
    :func:`ahba_app._blocks.thread_map`."""
    from ._blocks import thread_map

    band = max(1, _DECODE_VALUES // max(out.shape[1], 1))

    def run(start):
        rows = out[start:start + band]
        rows[...] = np.take(rows, source, axis=1)

    thread_map(run, range(0, out.shape[0], band))


def release_rows(matrix: CachedMatrix, rows=None) -> None:
    """Drop the pages of a cache mapped for ``rows`` (positions; None: all) from this process:
    they stay in the page cache, and a later read maps them again."""
    codes = matrix.codes
    if codes is None or rows is None:
        release_pages(matrix.values, rows)
        return
    rows = np.asarray(rows)
    segments = codes.segment[rows]
    for width in np.unique(segments):
        release_pages(codes.views[int(width)], codes.slot[rows[segments == width]])


def release_pages(values: np.ndarray, rows=None) -> None:
    """``madvise(MADV_DONTNEED)`` on the read-only shared memory map behind ``values``: all of
    it, or the pages holding ``rows`` (positions: from the first to the last).

    Pages of a read-only file mapping count in the resident memory of every process that has
    touched them; dropping them costs nothing (the data stay in the page cache, and a later read
    maps them again). Copy-on-write or writable maps, and arrays not backed by a map, are left
    alone.
    """
    import mmap

    advice = getattr(mmap, "MADV_DONTNEED", None)
    base = values
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    if advice is None or base is None or getattr(base, "mode", None) != "r":
        return
    mapping = getattr(base, "_mmap", None)
    if not isinstance(mapping, mmap.mmap):
        return
    try:
        if rows is None:
            mapping.madvise(advice)
            return
        rows = np.asarray(rows)
        if rows.size == 0 or values.ndim != 2 or values.strides[0] <= 0:
            return
        # np.memmap maps the file from the granularity boundary below its offset
        offset = int(base.offset)
        first = offset - offset % mmap.ALLOCATIONGRANULARITY
        start = offset - first + (values.ctypes.data - base.ctypes.data)
        row_bytes = values.strides[0]
        lo = start + int(rows.min()) * row_bytes
        hi = min(len(mapping), start + (int(rows.max()) + 1) * row_bytes)
        lo -= lo % mmap.PAGESIZE
        if hi > lo:
            mapping.madvise(advice, lo, hi - lo)
    except (OSError, ValueError):  # closed, or not supported here: nothing to give back
        pass


def _decode_block(codes: RowCodes, rows: np.ndarray, cols, out=None) -> np.ndarray:
    """Rows (positions) of a row-scaled cache, all samples or ``cols``, as float64."""
    width = codes.views[next(iter(codes.views))].shape[1] if cols is None else len(cols)
    segment = codes.segment[rows]
    first = segment[0] if len(rows) else 0
    if len(rows) and (segment == first).all():
        # rows of one segment (nearly always): decoded straight into ``out``, or returned as
        # decoded (a new array) rather than copied once more into another one: fresh pages
        # and one more pass doubled the cost of a block
        return _decode_segment(codes, int(first), rows, cols, out)
    if out is None:
        out = np.empty((len(rows), width))
    for w in np.unique(segment):
        pick = np.flatnonzero(segment == w)
        out[pick] = _decode_segment(codes, int(w), rows[pick], cols)
    return out


def _decode_segment(codes: RowCodes, w: int, rows: np.ndarray, cols, out=None) -> np.ndarray:
    """Rows (positions) of segment ``w`` of a row-scaled cache, all samples or ``cols``, as
    float64: a new array, or ``out`` filled. Each row is checked whole before its samples are
    taken (:func:`_checked_rows`)."""
    stored = _checked_rows(codes, w, rows)   # whole rows (a few kB each), then the samples
    if cols is not None:
        stored = np.take(stored, cols, axis=1)
    if w == 0:
        if out is None:
            return stored
        out[...] = stored
        return out
    return _scaled_values(_offset_ints(stored, codes.base[rows]), codes.divisor[rows], out)


def _stored_rows(codes: RowCodes, w: int, rows: np.ndarray) -> np.ndarray:
    """The stored integers (float64 values for ``w`` 0) of ``rows`` of segment ``w``, whole:
    a new C-ordered array."""
    stored = codes.views[w][codes.slot[rows]]
    mask = codes.masks.get(w)
    if mask is not None:
        stored &= mask
    return stored


def row_checks(stored: np.ndarray) -> np.ndarray:
    """The check of each row of ``stored`` (unsigned integers, or float64 taken by their
    bits): ``sum(u[j] * (2 j + 1))`` modulo 2**64. Any change of one value changes it (the
    weights are odd), and so does swapping two values; a row of a few kB costs about 0.4 ns a
    value, against reading the whole cache for a CRC-32 (a warm run's rows are a quarter of
    it)."""
    if stored.dtype.kind == "f":
        stored = stored.view(np.uint64)
    weights = 2 * np.arange(stored.shape[1], dtype=np.uint64) + np.uint64(1)
    return np.einsum("ij,j->i", stored, weights, dtype=np.uint64)


def _sound(codes: RowCodes, rows: np.ndarray, stored: np.ndarray) -> bool:
    """Whether ``stored`` (:func:`_stored_rows` of ``rows``) matches the checks recorded."""
    return codes.check is None or np.array_equal(row_checks(stored), codes.check[rows])


def _checked_rows(codes: RowCodes, w: int, rows: np.ndarray) -> np.ndarray:
    """:func:`_stored_rows`, each row's check compared with the one the cache recorded; rows
    that fail mean the file was damaged after it was written: it is rebuilt from its CSV
    (:meth:`_Origin.repair`) and the rows are read from the new file."""
    stored = _stored_rows(codes, w, rows)
    if _sound(codes, rows, stored):
        return stored
    if codes.origin is None:
        raise DamagedCacheError("Rows of a microarray cache fail their checks, and the cache "
                                "does not say which file it was made from.")
    return codes.origin.repair(codes, w, rows)


class _Origin:
    """Where a microarray cache came from, to rebuild it when rows fail their checks as they
    are read. A cache is checked row by row (the rows a run reads, not the whole file); a
    damaged one is rebuilt once, and the mapped views of every :class:`RowCodes` of the
    process that reads it are pointed at the new file (the same layout: the same CSV gives
    the same rows), so the run goes on with the right numbers."""

    def __init__(self, source: Path, location: Path, identity: tuple):
        self.source = source
        self.location = location
        self.identity = identity   # of the file the views map now
        self.rebuilt = False
        self._lock = threading.Lock()

    def repair(self, codes: RowCodes, w: int, rows: np.ndarray) -> np.ndarray:
        with self._lock:  # (threads reading other rows wait, then read the new file)
            stored = _stored_rows(codes, w, rows)
            if _sound(codes, rows, stored):
                return stored  # another thread has rebuilt it
            if self.rebuilt:
                raise DamagedCacheError(
                    f"The cache {self.location} of {self.source} was rebuilt because rows of it "
                    "failed their checks, and they fail again: the disk may be failing.")
            LOGGER.warning("Rows of the cache %s fail their checks (the file was damaged "
                           "after it was written); replacing it with a cache rebuilt from %s "
                           "(by this run, or already by another one)", self.location,
                           self.source)
            fresh = _cached_matrix(self.source, "microarray", mode="r", damaged=self.identity)
            other = fresh.codes
            if other is None:  # (no place to write it: parsed into memory instead)
                raise DamagedCacheError(
                    f"Rows of the cache {self.location} of {self.source} fail their checks, "
                    "and it cannot be rebuilt here (no cache folder can be written).")
            if not all(np.array_equal(getattr(other, name), getattr(codes, name))
                       for name in ("segment", "base", "divisor", "check")):
                raise DamagedCacheError(
                    f"{self.source} no longer gives the rows its cache {self.location} held "
                    "when this run started: was it replaced during the run? Run again.")
            codes.views.update(other.views)
            self.identity = other.origin.identity
            self.rebuilt = True
            stored = _stored_rows(codes, w, rows)
            if not _sound(codes, rows, stored):
                raise DamagedCacheError(
                    f"The cache {fresh.cache} rebuilt from {self.source} fails its checks as "
                    "soon as it is written: the disk may be failing.")
            return stored


def _offset_ints(stored: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``base + stored`` per row as int64 (added modulo 2**64: the sum always fits int64).
    ``stored`` is the caller's own array (gathered from the cache): stored as 8 bytes (widths
    5 to 8), the sum is written over it rather than into a copy (a pass less at 12 and 17
    digits)."""
    total = stored.astype(np.uint64, copy=False)
    total += base.view(np.uint64)[:, None]
    return total.view(np.int64)


def _scaled_values(ints: np.ndarray, divisor: np.ndarray, out: np.ndarray | None = None
                   ) -> np.ndarray:
    """``float64(ints) / divisor`` per row: the one formula of the encoder's check and of every
    decode, so a value that passed the check decodes to the same bits. ``out``: a float64
    array of ``ints``' shape to write into (the same conversion as ``astype``)."""
    if out is None:
        values = ints.astype(np.float64)
    else:
        values = out
        np.copyto(values, ints, casting="unsafe")
    values /= divisor[:, None]
    return values


def probe_positions(matrix: CachedMatrix, probe_ids) -> np.ndarray:
    """Row positions in ``matrix`` of the given probe ids (for :func:`select_rows`).

    Raises a KeyError naming the probe ids that ``matrix`` does not hold.
    """
    wanted = np.asarray(probe_ids, dtype=np.int64)
    positions = pd.Index(np.asarray(matrix.probe_ids)).get_indexer(wanted)
    missing = wanted[positions < 0]
    if missing.size:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if missing.size > 10 else "")
        raise KeyError(f"{missing.size} probe id(s) are not in {matrix.source}: {shown}")
    return positions


def load_matrix(fname: PathLike, kind: str | None = None, *, cache: bool = True,
                verify: bool = True, checked: CheckedCaches | None = None) -> CachedMatrix:
    """Map a donor's microarray or PACall matrix from the cache, building the cache if needed.

    Parameters
    ----------
    fname : str or os.PathLike
        ``MicroarrayExpression.csv`` or ``PACall.csv``.
    kind : {'microarray', 'pacall'}, optional
        Inferred from the file name when omitted.
    cache : bool
        False parses the CSV into memory without reading or writing any cache.
    verify : bool
        Kept for the callers of earlier versions: the values are always checked, a PACall
        cache's whole (its CRC-32, a few MB) when it is opened, unless ``checked`` holds the
        same file, unchanged, and a microarray cache's row by row, each row as it is read
        (:func:`row_checks`; a warm run reads about a quarter of the file). A row that fails
        has the cache rebuilt from the CSV, and the run goes on with the rebuilt file.
    checked : CheckedCaches, optional
        The caller's record of the PACall caches its run has checked (or written): a file it
        holds is not read whole again, and a file checked here is added to it. By default,
        the record of the enclosing :func:`remembering_checks` block of this thread, if any;
        else every call checks afresh.

    Returns
    -------
    CachedMatrix
        With read-only, memory-mapped ``probe_ids`` and ``values`` (zero copy).
    """
    source = _as_path(fname, "a MicroarrayExpression.csv or PACall.csv file")
    kind = _matrix_kind(source, kind)
    if not cache:
        return _parse_into_memory(source, kind)
    return _cached_matrix(source, kind, mode="r", checked=checked)


def ensure_cache(fname: PathLike, kind: str | None = None) -> Path | None:
    """Build the cache of ``fname`` unless a valid one exists; return its path.

    Returns None (with a warning) when no cache location is writable.
    """
    return load_matrix(fname, kind).cache


def content_id(fname: PathLike, kind: str | None = None) -> str:
    """What identifies the content of a microarray or PACall file, cheaply: the content id of
    its cache (checksums, shape, encoding; the cache is built when it can be), else, when no
    cache can exist, the file's size and modification time."""
    source = _as_path(fname, "a MicroarrayExpression.csv or PACall.csv file")
    kind = _matrix_kind(source, kind)
    locations = cache_locations(source)
    if any(loc.is_file() or _can_write(loc.parent) for loc in locations):
        matrix = _cached_matrix(source, kind, mode="r")
        if matrix.content_id:
            return matrix.content_id
    stat = source.stat()
    return f"{kind}:file:{stat.st_size}:{stat.st_mtime_ns}"


def cache_locations(fname: PathLike) -> list[Path]:
    """Where the cache of ``fname`` is looked for, in order: beside the data, then the user's."""
    source = _as_path(fname, "a MicroarrayExpression.csv or PACall.csv file")
    name = source.name + _CACHE_SUFFIX
    folder = os.path.realpath(source.parent)
    key = hashlib.sha256(os.fsencode(folder)).hexdigest()[:16]
    return [source.parent / CACHE_DIRNAME / name, _user_cache_root() / "matrix-cache" / key / name]


def largest_first(paths: dict) -> list:
    """The keys of ``paths`` (key -> file) ordered by decreasing file size (a file that cannot
    be read counts as empty), e.g. to open donors' matrices on a few threads: when their caches
    must be built, the longest builds start first and the last to end is a short one, so no
    thread is left alone with a long build at the end."""
    def size(key):
        try:
            return os.stat(paths[key]).st_size
        except (OSError, TypeError, ValueError):  # (not a path: e.g. a DataFrame)
            return 0

    return sorted(paths, key=size, reverse=True)


def check_microarray_pacall(microarray, pacall) -> None:
    """Raise AHBAFileError unless a donor's microarray and PACall agree in shape and probe ids.

    Each argument may be a path, a :class:`CachedMatrix` or a DataFrame from the readers.
    """
    def describe(obj, kind):
        if isinstance(obj, pd.DataFrame):
            return "the given DataFrame", np.asarray(obj.index), obj.shape
        matrix = obj if isinstance(obj, CachedMatrix) else load_matrix(obj, kind)
        return str(matrix.source), np.asarray(matrix.probe_ids), matrix.shape

    micro_name, micro_ids, micro_shape = describe(microarray, "microarray")
    pa_name, pa_ids, pa_shape = describe(pacall, "pacall")
    where = f"microarray {micro_name} and PACall {pa_name}"
    if micro_shape != pa_shape:
        raise AHBAFileError(
            f"The {where} disagree in shape: {micro_shape[0]} x {micro_shape[1]} against "
            f"{pa_shape[0]} x {pa_shape[1]} (probes x samples). They must come from one donor's "
            "folder, unchanged.")
    differ = np.flatnonzero(micro_ids != pa_ids)
    if differ.size:
        row = differ[0]
        raise AHBAFileError(
            f"The {where} list different probe ids: {differ.size} rows differ, the first at row "
            f"{row + 1} ({micro_ids[row]} against {pa_ids[row]}). They must come from one "
            "donor's folder, unchanged.")


# --------------------------------------------------------------------------------------------
# abagen-compatible readers
# --------------------------------------------------------------------------------------------

def read_microarray(fname, copy: bool = False, parquet: bool = True) -> pd.DataFrame:
    """Read a donor's ``MicroarrayExpression.csv``.

    Parameters
    ----------
    fname : str, os.PathLike or pandas.DataFrame
        The file, or a DataFrame already read (returned as is, or copied if ``copy``).
    copy : bool
        Copy ``fname`` when it is a DataFrame.
    parquet : bool
        Use the binary cache (abagen's name for its parquet copy). False parses the CSV.

    Returns
    -------
    (P, S) pandas.DataFrame of float64
        Log2 expression, each value the float64 nearest to the decimal in the CSV; index
        ``probe_id`` (int64), columns ``sample_id`` 1..S (int64) in ``SampleAnnot.csv`` row
        order. A new, writable array (decoded from the cache).
    """
    if isinstance(fname, pd.DataFrame):
        return fname.copy() if copy else fname
    source = _as_path(fname, "a MicroarrayExpression.csv file")
    if not parquet:
        return _parse_into_memory(source, "microarray", writable=True).to_frame()
    return _cached_matrix(source, "microarray", mode="c").to_frame()


def read_pacall(fname, copy: bool = False, parquet: bool = True) -> pd.DataFrame:
    """Read a donor's ``PACall.csv``: whether each probe is above background in each sample.

    Arguments as for :func:`read_microarray`. Returns a (P, S) DataFrame of 0/1 (int64, as
    abagen's) with index ``probe_id`` and columns ``sample_id`` 1..S.
    """
    if isinstance(fname, pd.DataFrame):
        return fname.copy() if copy else fname
    calls = load_matrix(_as_path(fname, "a PACall.csv file"), "pacall", cache=parquet).to_frame()
    return calls.astype(np.int64)


def read_probes(fname, copy: bool = False) -> pd.DataFrame:
    """Read ``Probes.csv``: one row per probe, index ``probe_id``.

    Columns probe_name, gene_id, gene_symbol, gene_name, entrez_id (nullable Int64) and
    chromosome, as in the file.
    """
    if isinstance(fname, pd.DataFrame):
        return fname.copy() if copy else fname
    _as_path(fname, "a Probes.csv file")
    try:
        data = _read_table(fname, "Probes.csv", index_col=0, dtype={"entrez_id": "Int64"})
    except TypeError as err:  # e.g. text in entrez_id
        raise AHBAFileError(f"{fname} is not a valid AHBA Probes.csv file: {_clip(err)}. "
                            "Restore it from the Allen download.") from err
    _check_numeric(data.reset_index(), fname, "Probes.csv", ("probe_id",))
    duplicated = data.index[data.index.duplicated()].unique()
    if len(duplicated):
        shown = ", ".join(map(str, duplicated[:10])) + (" ..." if len(duplicated) > 10 else "")
        raise AHBAFileError(f"{fname} is not a valid AHBA Probes.csv file: probe ids appear more "
                            f"than once ({shown}), so a gene's probe would be ambiguous. Restore "
                            "the file from the Allen download.")
    return data


def read_annotation(fname, copy: bool = False) -> pd.DataFrame:
    """Read ``SampleAnnot.csv``: one row per sample, index ``sample_id`` 1..S.

    RNA-seq annotation columns ``ontology_structure_id`` and ``ontology_structure_acronym`` are
    renamed ``structure_id`` and ``structure_acronym``, like the microarray ones.
    """
    renames = {"ontology_structure_id": "structure_id",
               "ontology_structure_acronym": "structure_acronym"}
    if isinstance(fname, pd.DataFrame):
        data = fname.copy() if copy else fname
        present = {k: v for k, v in renames.items() if k in data.columns}
        return data.rename(columns=present) if present else data
    data = _read_table(fname, "SampleAnnot.csv")
    data.index = pd.Index(np.arange(1, len(data) + 1, dtype=np.int64), name="sample_id")
    data = data.rename(columns=renames)
    if data.empty:
        raise AHBAFileError(f"{fname} is not a valid AHBA SampleAnnot.csv file: it lists no "
                            "sample (a header only). Restore it from the Allen download.")
    _check_numeric(data, fname, "SampleAnnot.csv", _NUMERIC_ANNOTATION)
    return data


def read_ontology(fname, copy: bool = False) -> pd.DataFrame:
    """Read ``Ontology.csv``: one row per brain structure, with a default integer index."""
    if isinstance(fname, pd.DataFrame):
        return fname.copy() if copy else fname
    data = _read_table(fname, "Ontology.csv")
    _check_numeric(data, fname, "Ontology.csv", ("id", "parent_structure_id", "graph_order"))
    return data


def read_genes(fname, copy: bool = False) -> pd.DataFrame:
    """Read the RNA-seq ``Genes.csv``: one row per gene, indexed by the file's first column."""
    if isinstance(fname, pd.DataFrame):
        return fname.copy() if copy else fname
    return _read_table(fname, "Genes.csv", index_col=0)


def read_tpm(fname, copy: bool = False) -> pd.DataFrame:
    """Read ``RNAseqTPM.csv``: (G, S) float64, index ``gene_symbol``, columns ``sample_id``."""
    if isinstance(fname, pd.DataFrame):
        return fname.copy() if copy else fname
    return _read_gene_matrix(_as_path(fname, "an RNAseqTPM.csv file"), "RNA-seq TPM")


def read_counts(fname, copy: bool = False) -> pd.DataFrame:
    """Read ``RNAseqCounts.csv``: (G, S) float64, index ``gene_symbol``, columns ``sample_id``."""
    if isinstance(fname, pd.DataFrame):
        return fname.copy() if copy else fname
    return _read_gene_matrix(_as_path(fname, "an RNAseqCounts.csv file"), "RNA-seq counts")


# --------------------------------------------------------------------------------------------
# Helpers: paths and small tables
# --------------------------------------------------------------------------------------------

def _as_path(fname, what: str) -> Path:
    if not isinstance(fname, (str, os.PathLike)):
        raise TypeError(f"Expected the path of {what} (or a DataFrame already read), "
                        f"got {type(fname).__name__}.")
    path = Path(fname)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, f"No such AHBA file (expected {what})", str(path))
    return path


def _matrix_kind(source: Path, kind: str | None) -> str:
    if kind is None:
        for name, file_name in MATRIX_KINDS.items():
            if source.name.startswith(file_name.split(".")[0]):
                return name
        raise ValueError(f"Cannot tell from its name whether {source} holds microarray "
                         f"expression or PACall: pass kind='microarray' or kind='pacall'.")
    if kind not in MATRIX_KINDS:
        raise ValueError(f"Unknown matrix kind {kind!r}: choose one of {sorted(MATRIX_KINDS)}.")
    return kind


def _read_table(fname, what: str, **kwargs) -> pd.DataFrame:
    """A small CSV with a header row, read by pandas (whose type inference abagen relies on)."""
    path = _as_path(fname, f"a {what} file")
    try:
        data = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise AHBAFileError(f"{path} is not a valid AHBA {what} file: {_clip(err)}") from err
    _check_last_row(path, what, len(data.columns) + (1 if kwargs.get("index_col") == 0 else 0))
    return data


def _check_last_row(path: Path, what: str, n_fields: int) -> None:
    """AHBAFileError when the last row has fewer fields than the header: the file was cut
    (pandas would fill the missing cells with NaN)."""
    import csv

    with open(path, "rb") as handle:
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - 65536))
        tail = handle.read().decode("utf-8", errors="replace")
    lines = [line for line in tail.splitlines() if line.strip()]
    if not lines:
        return
    fields = next(csv.reader([lines[-1]]), [])
    if len(fields) < n_fields:
        raise AHBAFileError(f"{path} is not a valid AHBA {what} file: its last row has "
                            f"{len(fields)} of {n_fields} fields, so the file is cut short "
                            "(an interrupted download or copy?).")


#: SampleAnnot.csv columns that must hold numbers (empty cells are allowed: missing values)
_NUMERIC_ANNOTATION = ("structure_id", "well_id", "mri_voxel_x", "mri_voxel_y", "mri_voxel_z",
                       "mni_x", "mni_y", "mni_z")


def _check_numeric(data: pd.DataFrame, fname, what: str, columns) -> None:
    """AHBAFileError naming the file, the column and the first cell that is not a number."""
    for column in columns:
        if column not in data.columns or data[column].dtype.kind in "iufb":
            continue
        values = data[column]
        numbers = pd.to_numeric(values, errors="coerce")
        bad = numbers.isna() & values.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise AHBAFileError(
                f"{fname} is not a valid AHBA {what} file: column {column!r} holds text "
                f"({values.iloc[row]!r} in data row {row + 1}) where numbers belong. Restore "
                "the file from the Allen download.")
        data[column] = numbers


def _read_gene_matrix(path: Path, what: str) -> pd.DataFrame:
    n_samples = _count_samples(path, what)
    names = ["gene_symbol"] + [str(i) for i in range(1, n_samples + 1)]
    types = {name: pa.float64() for name in names[1:]}
    types["gene_symbol"] = pa.string()
    try:
        table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(column_names=names),
                               convert_options=pacsv.ConvertOptions(column_types=types))
    except pa.ArrowInvalid as err:
        raise AHBAFileError(_arrow_problem(path, what, err)) from err
    values = np.empty((table.num_rows, n_samples), dtype=np.float64)
    for j in range(n_samples):
        values[:, j] = table.column(j + 1).to_numpy()
    index = pd.Index(table.column(0).to_numpy(zero_copy_only=False), name="gene_symbol")
    return pd.DataFrame(values, index=index, columns=_sample_ids(n_samples), copy=False)


def _sample_ids(n_samples: int) -> pd.Index:
    return pd.Index(np.arange(1, n_samples + 1, dtype=np.int64), name="sample_id")


def _frame(matrix: CachedMatrix, values: np.ndarray) -> pd.DataFrame:
    index = pd.Index(np.array(matrix.probe_ids, dtype=np.int64), name="probe_id")
    return pd.DataFrame(np.asarray(values), index=index, columns=_sample_ids(matrix.n_samples),
                        copy=False)


def _clip(err: Exception) -> str:
    text = str(err).strip()
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + " ..."


# --------------------------------------------------------------------------------------------
# CSV parsing (pyarrow, streamed)
# --------------------------------------------------------------------------------------------

_LABELS = {"microarray": "MicroarrayExpression", "pacall": "PACall"}


def _count_samples(path: Path, what: str) -> int:
    """Number of sample columns, from the first non-empty line (column 0 is the row label)."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                break
        else:
            raise AHBAFileError(f"{path} is not a valid AHBA {what} file: it is empty.")
    n_samples = line.count(b",")
    if n_samples == 0:
        raise AHBAFileError(f"{path} is not a valid AHBA {what} file: its first row has no "
                            "sample columns (expected a label followed by comma-separated "
                            "values).")
    return n_samples


def _arrow_problem(path: Path, what: str, err: Exception, rows_before: int = 0) -> str:
    """A parser error rephrased: which file, roughly where, what was wrong."""
    detail = _clip(err)
    hint = ""
    match = re.match(r"In CSV column #(\d+): (.*)", detail, flags=re.S)
    if match:
        column = int(match.group(1))
        if column == 0:
            place = "the first column (the row label)"
            hint = " The file must have no header row and start each row with its id."
        else:
            place = f"sample column {column}"
        detail = f"{place}: {match.group(2)}"
    where = f" (after row {rows_before})" if rows_before else ""
    return f"{path} is not a valid AHBA {what} file{where}: {detail}.{hint}"


def _iter_blocks(path: Path, kind: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (probe_ids, values) for consecutive blocks of rows of a matrix CSV.

    values are (n, S) float64 (C order) for microarray, and for PACall the calls packed along
    samples (``np.packbits`` of the (n, S) 0/1 values: uint8, (n, ceil(S / 8))). A PACall file
    in the plain form the Allen Institute writes is read by :func:`_plain_calls`; any other
    (or a damaged one) by pyarrow's parser, which reports what is wrong.
    """
    what = _LABELS[kind]
    n_samples = _count_samples(path, what)
    if kind == "pacall":
        plain = _plain_calls(path, n_samples)
        if plain is not None:
            yield from plain
            return
    names = ["probe_id"] + [str(i) for i in range(1, n_samples + 1)]
    value_type = pa.float64() if kind == "microarray" else pa.uint8()
    types = {name: value_type for name in names[1:]}
    types["probe_id"] = pa.int64()
    convert = pacsv.ConvertOptions(column_types=types)
    read = pacsv.ReadOptions(column_names=names, block_size=_BLOCK_SIZE, use_threads=True)
    rows = 0
    try:
        # (from the path, not a Python file object: a reader left by a parse error with its
        # read-ahead thread still on a closed Python file aborted the process at exit,
        # "terminate called without an active exception", after the error message)
        reader = pacsv.open_csv(path, read_options=read, convert_options=convert)
        with _progress(path, n_samples) as bar:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                probe_ids = batch.column(0)
                if probe_ids.null_count:
                    raise AHBAFileError(f"{path} is not a valid AHBA {what} file: a row after "
                                        f"row {rows} has no probe id.")
                # (dropping the one id column: selecting the ~950 value columns by name
                # looked each name up, 1.8 ns a value at 17 digits, half the conversion's time)
                values = _row_major(batch.drop_columns(["probe_id"]), path, what, rows)
                if kind == "pacall":
                    values = np.packbits(_as_calls(values, path, rows), axis=1)
                yield probe_ids.to_numpy(), values
                rows += batch.num_rows
                bar.update(batch.num_rows)
    except pa.ArrowInvalid as err:
        raise AHBAFileError(_arrow_problem(path, what, err, rows)) from err
    if rows == 0:
        raise AHBAFileError(f"{path} is not a valid AHBA {what} file: it has no rows.")


#: bytes of a PACall file read at a time by :func:`_plain_calls`
_CALLS_CHUNK = 8 << 20
_COMMA, _NEWLINE, _RETURN, _QUOTE, _ZERO = 44, 10, 13, 34, 48


def _plain_calls(path: Path, n_samples: int) -> list | None:
    """A PACall file in a plain form, read straight from its bytes: [(probe_ids, packed
    calls)] by blocks, or None when any line is not ``<digits>`` followed by ``,0`` or ``,1``
    for each of the ``n_samples`` samples and a line end (spaces, a header, an empty line, a
    damaged row...): pyarrow's parser then reads the file from the start, with its checks and
    messages. The first line sets the form of every line: each field quoted (``"1058685","0"``)
    or none, and ``\\n`` or ``\\r\\n`` line ends (the last line may have none). What this
    accepts, pyarrow reads to the same ids and calls (a line's layout is fixed by its length:
    the id's digits, then a fixed number of bytes a sample), about ten times faster.
    """
    blocks = []
    quoted = crlf = None  # (the form of every line, set by the first)
    with open(path, "rb") as handle:
        rest = b""
        while True:
            chunk = handle.read(_CALLS_CHUNK)
            data = rest + chunk
            if quoted is None and data:
                first_end = data.find(b"\n")
                quoted = data[:1] == b'"'
                crlf = first_end > 0 and data[first_end - 1] == _RETURN
            if not chunk:
                if not data:
                    break
                if not data.endswith(b"\n"):
                    data += b"\r\n" if crlf else b"\n"
                rest = b""
            else:
                end = data.rfind(b"\n") + 1
                data, rest = data[:end], data[end:]
                if not data:
                    continue
            parsed = _plain_call_lines(np.frombuffer(data, dtype=np.uint8), n_samples,
                                       quoted, crlf)
            if parsed is None:
                return None
            blocks.extend(parsed)
            if not chunk:
                break
    return blocks or None


def _plain_call_lines(data: np.ndarray, n_samples: int, quoted: bool = False,
                      crlf: bool = False) -> list | None:
    """Whole lines of a plain PACall file (bytes ending with a line end), as in
    :func:`_plain_calls`; each run of lines of one length is one 2-D view of the bytes."""
    quote = int(quoted)
    field = 2 + 2 * quote                  # ,0 or ,"0"
    line_end = 2 if crlf else 1
    stops = np.flatnonzero(data == _NEWLINE) + 1
    starts = np.empty_like(stops)
    starts[0] = 0
    starts[1:] = stops[:-1]
    lengths = stops - starts               # line ends included
    cuts = np.flatnonzero(np.diff(lengths)) + 1
    blocks = []
    for first, stop in zip([0, *cuts.tolist()], [*cuts.tolist(), len(stops)]):
        length = int(lengths[first])
        digits = length - line_end - field * n_samples - 2 * quote
        if not 1 <= digits <= 18:          # 18 digits always fit int64
            return None
        lines = data[starts[first]:starts[first] + (stop - first) * length]
        lines = lines.reshape(stop - first, length)
        head = lines[:, quote:quote + digits] - np.uint8(_ZERO)          # wraps below '0'
        id_width = digits + 2 * quote
        fields = lines[:, id_width:id_width + field * n_samples].reshape(
            stop - first, n_samples, field)
        calls = fields[:, :, 1 + quote] - np.uint8(_ZERO)
        if (head > 9).any() or (fields[:, :, 0] != _COMMA).any() or (calls > 1).any():
            return None
        if quoted and ((lines[:, 0] != _QUOTE).any() or (lines[:, id_width - 1] != _QUOTE).any()
                       or (fields[:, :, 1] != _QUOTE).any() or (fields[:, :, 3] != _QUOTE).any()):
            return None
        if crlf and (lines[:, -2] != _RETURN).any():
            return None
        ids = head.astype(np.int64) @ (10 ** np.arange(digits - 1, -1, -1, dtype=np.int64))
        blocks.append((ids, np.packbits(calls, axis=1)))
    return blocks


def _row_major(batch: pa.RecordBatch, path: Path, what: str, rows: int) -> np.ndarray:
    """A batch of same-typed columns as one C-ordered (rows, columns) array (float nulls: NaN)."""
    # the first field's type alone: ``schema.types`` would make a Python object per column
    # (~950) for every block, enough to set off the garbage collector block after block
    floating = pa.types.is_floating(batch.schema.field(0).type)
    try:
        return np.asarray(batch.to_tensor(row_major=True, null_to_nan=floating))
    except pa.ArrowTypeError:  # nulls in integer columns
        column = next(j for j in range(batch.num_columns) if batch.column(j).null_count)
        raise AHBAFileError(f"{path} is not a valid AHBA {what} file: sample column "
                            f"{column + 1} has an empty value after row {rows}.") from None


def _as_calls(values: np.ndarray, path: Path, rows: int) -> np.ndarray:
    """PACall values (uint8) as bool, after checking that they are all 0 or 1."""
    bad = values > 1
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise AHBAFileError(
            f"{path} is not a valid AHBA PACall file: row {rows + row + 1}, sample column "
            f"{column + 1} holds {values[row, column]}; PACall values must be 0 or 1.")
    return values.view(np.bool_)


class _progress:
    """A tqdm bar (rows) on an interactive terminal, nothing elsewhere."""

    def __init__(self, path: Path, n_samples: int):
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            estimate = max(1, path.stat().st_size // (8 * (n_samples + 1)))
            self.bar = tqdm(total=estimate, unit=" probes", desc=f"Caching {path.name}",
                            leave=False)

    def __enter__(self):
        return self

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _check_unique(path: Path, kind: str, probe_ids: np.ndarray) -> None:
    unique, counts = np.unique(probe_ids, return_counts=True)
    if unique.size != probe_ids.size:
        dupes = unique[counts > 1]
        shown = ", ".join(map(str, dupes[:10])) + (" ..." if dupes.size > 10 else "")
        raise AHBAFileError(f"{path} is not a valid AHBA {_LABELS[kind]} file: probe ids appear "
                            f"more than once: {shown}")


def _parse_into_memory(source: Path, kind: str, writable: bool = False) -> CachedMatrix:
    ids_blocks, value_blocks = [], []
    for probe_ids, values in _iter_blocks(source, kind):
        ids_blocks.append(probe_ids)
        value_blocks.append(values)
    n_samples = _count_samples(source, _LABELS[kind])
    probe_ids = np.concatenate(ids_blocks)
    _check_unique(source, kind, probe_ids)
    values = np.concatenate(value_blocks)
    del value_blocks
    probe_ids.flags.writeable = False
    values.flags.writeable = writable
    return CachedMatrix(kind, source, None, probe_ids, values, n_samples)


# --------------------------------------------------------------------------------------------
# The cache: locations, writing, validating
# --------------------------------------------------------------------------------------------

def _user_cache_root() -> Path:
    if os.environ.get("AHBA_CACHE_DIR"):
        return Path(os.environ["AHBA_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "ahba-app"
    return Path.home() / ".cache" / "ahba-app"


def _can_write(folder: Path) -> bool:
    """Whether cache files can be created in ``folder`` (creating it if needed)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _cached_matrix(source: Path, kind: str, mode: str,
                   checked: CheckedCaches | None = None, damaged: tuple | None = None
                   ) -> CachedMatrix:
    """The matrix from a valid cache, building one where possible, else parsed into memory
    (``checked``: see :func:`load_matrix`; ``damaged``: the identity of a file not to use,
    whose rows failed their checks)."""
    if checked is None:
        checked = _RUN_CHECKS.get()
    locations = cache_locations(source)
    for _ in range(_BUILD_ATTEMPTS):
        stat = source.stat()
        for location in locations:
            matrix = _open_cache(location, source, stat, kind, mode, checked,
                                 damaged=damaged)
            if matrix is not None:
                return matrix
        writable = [loc for loc in locations if _can_write(loc.parent)]
        if not writable:
            warnings.warn(
                f"No writable place for the cache of {source}: tried "
                f"{' and '.join(str(loc.parent) for loc in locations)}. Parsing the CSV instead "
                "(slow, every run); set AHBA_CACHE_DIR to a writable folder to avoid this.",
                stacklevel=3)
            return _parse_into_memory(source, kind, writable=mode == "c")
        failed = []
        for location in writable:
            try:  # a builder that is stopped (Ctrl-Z) is an error, not an endless wait
                lock = _locks.acquire(str(location) + ".lock", f"the cache {location}")
            except OSError as err:  # e.g. a lock file left by another user
                LOGGER.info("Cannot lock %s (%s); trying elsewhere", location, err)
                continue
            try:
                # another process may have built it while this one waited for the lock
                matrix = _open_cache(location, source, stat, kind, mode, checked,
                                     quiet=True, damaged=damaged)
                if matrix is not None:
                    return matrix
                _remove_stale_temporaries(location)
                written = _write_cache(source, location, kind, stat)
            except OSError as err:
                if err.errno not in _NO_ROOM or err.filename == str(source):
                    raise
                failed.append(f"{location.parent} ({err.strerror or err})")
                continue
            finally:
                lock.release()
            break
        else:
            if failed:  # full or read-only file systems: the data can still be read
                warnings.warn(
                    f"Cannot write the cache of {source}: {'; '.join(failed)}. Parsing the CSV "
                    "into memory instead (slow, every run); free some space there or set "
                    "AHBA_CACHE_DIR to a folder with room.", stacklevel=3)
                return _parse_into_memory(source, kind, writable=mode == "c")
            raise OSError(errno.EACCES, "Cannot lock any cache location for", str(source))
        if _same_file_state(source.stat(), stat):
            # its checksums were computed from the bytes just written: reading the file back
            # at once to check them would find what was written
            if checked is None:
                checked = CheckedCaches()
            if written is not None:
                checked.add(written)
            matrix = _open_cache(location, source, stat, kind, mode, checked)
            if matrix is None:
                raise RuntimeError(f"The cache {location} just written for {source} does not "
                                   "read back; is its disk full or failing?")
            return matrix
        # the source changed while it was read: start again
    raise AHBAFileError(f"{source} kept changing while it was being read; try again once it is "
                        "complete.")


def _same_file_state(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def _remove_stale_temporaries(location: Path) -> None:
    """Delete temporary files left by builders that died (only called under the lock)."""
    for stale in location.parent.glob(location.name + ".*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass


# --- the microarray encoding: each row as scaled integers, or as float64 -----------------------

_MAX_DECIMALS = 15   # 10**15 * 10 > 2**53: with more decimals, values from 10 up cannot be exact
_EXACT_INT = 2**53   # integers up to this convert to float64 exactly
_SAMPLED = 16        # values of a row whose decimals say where to start that row's search
_WIDTH_LIMITS = [2**(8 * w) for w in range(1, 8)]


class _RowEncoder:
    """Encodes blocks of microarray rows, each row for itself (see :class:`RowCodes`).

    A row whose values are all ``n / 10**k`` (in float64, bit for bit) for integers ``n`` up to
    2**53 is stored as decimals: IEEE division is correctly rounded and ``10**k`` is exact, so
    ``n / 10**k`` is the float64 nearest to the decimal ``n * 10**-k``, which is what parsing the
    text gave, whatever the digits were. Other rows (more than 15 decimals, e.g. 17 significant
    digits) are stored in binary fixed point: ``n / 2**q``, with ``q`` making the smallest value's
    last mantissa bit one unit; exact by construction. A row neither can hold (NaN, infinity,
    -0.0, magnitudes too far apart) is stored as float64. Each candidate is checked by decoding it
    with :func:`_scaled_values`, as readers do, and comparing bits: exactness is tested, not
    assumed. The integers are stored minus the row's smallest, in the fewest bytes that hold the
    row's range (3 for 6 decimals, 4 for 9 significant digits, 5 for 12, 7 for 17).

    Decimals tried: each row's search starts at the fewest decimals that hold 16 of its values
    spread along the row (found on those values alone), and goes up only for the rows that need
    more; a row whose sampled values no decimals hold goes straight to binary. So every row is
    stored at its own fewest decimals, and no row pays for a search that the others needed
    (a row of few digits, e.g. a constant control probe, sets nothing for the rows after it).
    """

    def __init__(self):
        self.scratch = _Scratch()

    def encode(self, values: np.ndarray):
        """(segment, base, divisor, check, payload) of a block: ``check`` the rows' checks
        (:func:`row_checks` of what is stored), ``payload[w]`` the bytes of the rows of segment
        ``w``, in order, until the next call (its arrays are reused)."""
        values = np.ascontiguousarray(values, dtype="<f8")
        n_rows, n_cols = values.shape
        scratch = self.scratch
        ints = None   # the integers n, as float64 (each an integer below 2**63: exact)
        low, high = np.zeros(n_rows), np.zeros(n_rows)
        divisor = np.ones(n_rows)
        todo = np.ones(n_rows, dtype=bool)

        def accept(rows, ok, n, lo, hi, scale):
            nonlocal ints
            if rows.size == n_rows and ok.all():
                ints = n            # the usual case: every row at once, nothing copied
            else:
                if ints is None:
                    ints = np.zeros((n_rows, n_cols))
                ints[rows[ok]] = n[ok]
            done = rows[ok]
            low[done], high[done], divisor[done], todo[done] = lo[ok], hi[ok], scale[ok], False
            return done.size

        # each row is tried first at the decimals a few of its values need, then at more
        # until one holds it all; rows whose sampled values no decimals hold go to binary
        start = self._predicted_decimals(values)
        for k in range(int(start.min()), _MAX_DECIMALS + 1):
            rows = np.flatnonzero(todo & (start <= k))
            if rows.size == 0:
                if not (todo & (start <= _MAX_DECIMALS)).any():
                    break
                continue
            scale = np.full(rows.size, float(10 ** k))
            part = values if rows.size == n_rows else values[rows]
            accept(rows, *self._fit(part, scale, _EXACT_INT, scratch=scratch), scale)
        rows = np.flatnonzero(todo)
        if rows.size:
            part = values if rows.size == n_rows else values[rows]
            # the exponent of a row's least nonzero magnitude is the least exponent of its
            # values (NaN and infinities give some q: _fit rejects their rows; zeros: q = 0).
            # A row of positive values (AHBA's) has its least value as that magnitude: one
            # pass; the others' magnitudes are looked at apart
            least = part.min(axis=1)
            signed = ~(least > 0)
            if signed.any():
                other = part[signed]
                magnitude = np.abs(other, out=scratch.get("check", other.shape, np.float64))
                magnitude[magnitude == 0] = np.inf
                least[signed] = magnitude.min(axis=1)
            lowest = np.frexp(least)[1].astype(np.int64)
            q = np.where(np.isinf(least), 0, 53 - lowest)
            usable = (q >= -1000) & (q <= 1000)
            scale = np.ldexp(1.0, np.where(usable, q, 0))
            accept(rows, *self._fit(part, scale, 2**63 - 1024, usable, scratch=scratch), scale)
        scaled = ~todo
        base = np.where(scaled, low, 0).astype(np.int64)
        largest = (high.astype(np.int64).view(np.uint64)
                   - base.view(np.uint64))                  # modulo 2**64: exact
        segment = np.zeros(n_rows, dtype=np.uint8)
        segment[scaled] = 1 + sum((largest[scaled] >= limit).astype(np.uint8)
                                  for limit in _WIDTH_LIMITS)
        divisor[~scaled] = 1.0
        payload = {}
        check = np.empty(n_rows, dtype=np.uint64)
        for w in np.unique(segment):
            w = int(w)
            whole = segment[0] == w and (segment == w).all()
            picked = slice(None) if whole else np.flatnonzero(segment == w)
            if w == 0:
                payload[0] = values[picked]
                check[picked] = row_checks(payload[0])
                continue
            # each width's payload lives in work arrays of its own (named by the width): the
            # widths of one block never share memory, and the next block reuses them (a block
            # of several widths, nearly every block at 12 digits, once took fresh arrays for
            # each: 4-5 times the time of a block of one width)
            rows_w = ints if whole else np.take(
                ints, picked, axis=0, out=scratch.get("rows", (picked.size, n_cols), np.float64))
            shape = rows_w.shape
            if w <= 6:
                # n - base below 2**48: exact in float64 (integers whose difference is below
                # 2**53 subtract exactly), converted straight to the stored integers
                offsets = np.subtract(rows_w, low[picked][:, None],
                                      out=scratch.get("check", shape, np.float64))
                stored = scratch.get(f"ints{w}", shape, "<u4" if w <= 4 else "<u8")
                np.copyto(stored, offsets, casting="unsafe")
            else:
                stored = scratch.get(f"ints{w}", shape, np.uint64)
                np.copyto(stored, rows_w, casting="unsafe")         # exact: below 2**63
                stored -= base[picked].view(np.uint64)[:, None]     # modulo 2**64: exact
            check[picked] = row_checks(stored)  # (of the integers as readers unpack them)
            payload[w] = _packed(stored, w, scratch)
        return segment, base, divisor, check, payload

    @staticmethod
    def _predicted_decimals(values: np.ndarray) -> np.ndarray:
        """Each row's fewest decimals k (0.._MAX_DECIMALS) holding ``_SAMPLED`` of its values
        spread along the row, or ``_MAX_DECIMALS + 1`` when no k does: a lower bound of the k
        that holds the whole row, found on a few values."""
        n_rows, n_cols = values.shape
        step = max(1, n_cols // _SAMPLED)
        sample = np.ascontiguousarray(values[:, ::step][:, :_SAMPLED])
        start = np.full(n_rows, _MAX_DECIMALS + 1)
        left = np.arange(n_rows)
        with np.errstate(invalid="ignore", over="ignore"):
            for k in range(_MAX_DECIMALS + 1):
                scale = float(10 ** k)
                ints = np.rint(sample * scale)
                held = ((np.abs(ints) <= _EXACT_INT) & (ints / scale == sample)).all(axis=1)
                start[left[held]] = k
                left, sample = left[~held], sample[~held]
                if left.size == 0:
                    break
        return start

    @staticmethod
    def _fit(values: np.ndarray, scale: np.ndarray, limit: int, usable=None, *, scratch):
        """Which rows of ``values`` ``rint(values * scale)`` stores exactly (integers within
        +-limit that decode to the same bits); the integers (as float64, in ``scratch``), and
        each row's least and largest (meaningful for those rows only)."""
        with np.errstate(invalid="ignore", over="ignore"):
            scaled = np.multiply(values, scale[:, None],
                                 out=scratch.get("scaled", values.shape, np.float64))
            np.rint(scaled, out=scaled)
            # -0.0 becomes 0.0: what the integer 0 decodes to (a row holding -0.0 fails below)
            scaled += 0.0
            lo, hi = scaled.min(axis=1), scaled.max(axis=1)
            fits = (lo >= -limit) & (hi <= limit)   # False for NaN and infinities
        if usable is not None:
            fits &= usable
        if not fits.all():
            scaled[~fits] = 0
            lo[~fits] = hi[~fits] = 0
        # what readers compute (_scaled_values): float64(n), which is ``scaled`` itself (an
        # integer within 2**63), divided by the row's divisor
        back = np.divide(scaled, scale[:, None],
                         out=scratch.get("check", values.shape, np.float64))
        same = np.equal(back.view(np.int64), values.view(np.int64),
                        out=scratch.get("same", values.shape, bool)).all(axis=1)
        return fits & same, scaled, lo, hi


class _Scratch:
    """Work arrays reused block after block while one cache is built. Fresh arrays of a few MB
    a block cost page faults (the allocator gives large blocks back to the system and the
    kernel zeroes them again): that was more than half of the encoder's time."""

    def __init__(self):
        self.buffers = {}

    def get(self, name: str, shape, dtype) -> np.ndarray:
        """An uninitialised array ``shape`` of ``dtype``, in the buffer called ``name``."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape)) * dtype.itemsize
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self.buffers[name] = np.empty(max(size, 1), dtype=np.uint8)
        return buffer[:size].view(dtype).reshape(shape)


def _array(scratch: _Scratch | None, name: str, shape, dtype) -> np.ndarray:
    """``scratch.get(name, shape, dtype)``, or a new array when ``scratch`` is None."""
    return np.empty(shape, dtype) if scratch is None else scratch.get(name, shape, dtype)


def _packed(offsets: np.ndarray, width: int, scratch: _Scratch | None = None) -> np.ndarray:
    """(rows, S) unsigned integers below 2**(8 * width) as their low ``width`` bytes each,
    little-endian, rows one after the other: (rows, S * width) uint8 (or the integers
    themselves for widths 1, 2, 4 and 8). Written by strided stores of 4, 2 and 1 bytes, several
    times quicker than copying a byte slice of each value. ``scratch``: where to put the
    result (an array for each width) and the shifted integers, reused by the next call."""
    if width in (1, 2, 4, 8):
        return offsets.astype(f"<u{width}", copy=False)
    n_rows, n_cols = offsets.shape
    shape = (n_rows, n_cols * width)
    out = _array(scratch, f"packed{width}", shape, np.uint8)
    flat = offsets.reshape(-1)
    shifted = _array(scratch, "shifted", flat.shape, flat.dtype)
    if width == 7:
        # bytes 0-3 and 3-6 of each value: two stores (byte 3 written twice, the same both
        # times) instead of three, and one shift instead of two
        for start in (0, 3):
            part = np.ndarray(flat.shape, dtype="<u4", buffer=out, offset=start,
                              strides=(width,))
            if start:
                np.right_shift(flat, flat.dtype.type(8 * start), out=shifted)
            np.copyto(part, shifted if start else flat, casting="unsafe")
        return out
    done = 0
    for size in (4, 2, 1):
        if width - done >= size:
            part = np.ndarray(flat.shape, dtype=f"<u{size}", buffer=out, offset=done,
                              strides=(width,))
            if done:
                np.right_shift(flat, flat.dtype.type(8 * done), out=shifted)
            np.copyto(part, shifted if done else flat, casting="unsafe")
            done += size
    return out


class _SegmentFiles:
    """The rows' bytes by segment while a cache is built. The segment holding most rows of the
    first block (nearly every row, in files of one format) is written straight into the cache
    file ``out`` at the values' offset; each other segment collects in a temporary file and is
    copied after it at the end (one pass less over the bulk of the data)."""

    def __init__(self, location: Path, out):
        self.location = location
        self.out = out
        self.direct = None     # the width written straight into ``out``
        self.crc = 0           # of the bytes written into ``out`` so far
        self.files = {}
        self.rows = {}

    def append(self, payload: dict) -> None:
        if self.direct is None and payload:
            self.direct = max(payload, key=lambda w: len(payload[w]))
            self.rows[self.direct] = 0
        for w, block in payload.items():
            data = block.astype("<f8", copy=False) if w == 0 else block.view(np.uint8)
            if w == self.direct:
                self.crc = _crc32(data, self.crc)
                self.out.write(data)
            else:
                if w not in self.files:
                    fd, name = atomic.create_temporary(self.location, os.O_RDWR)
                    self.files[w] = (os.fdopen(fd, "w+b"), name)
                    self.rows[w] = 0
                self.files[w][0].write(data)
            self.rows[w] += len(block)

    def copy_into(self, n_cols: int) -> tuple[list, int]:
        """End the direct segment and copy the others after it (each at a 64-byte boundary,
        followed by 8 spare bytes); returns the segments' records and the CRC-32 of all the
        bytes from the values' offset on."""
        out, crc = self.out, self.crc
        records = []
        for w in ([] if self.direct is None else [self.direct]) + sorted(self.files):
            if w == self.direct:
                start = _DATA_OFFSET
            else:
                start = out.tell()
                if start % _ALIGN:
                    padding = bytes(-start % _ALIGN)
                    crc = _crc32(padding, crc)
                    out.write(padding)
                    start = out.tell()
                handle, _ = self.files[w]
                handle.flush()
                handle.seek(0)
                while True:
                    chunk = handle.read(_CHECK_CHUNK)
                    if not chunk:
                        break
                    crc = _crc32(chunk, crc)
                    out.write(chunk)
            spare = bytes(8)
            crc = _crc32(spare, crc)
            out.write(spare)
            records.append({"width": w, "offset": start, "rows": self.rows[w],
                            "bytes": self.rows[w] * n_cols * (8 if w == 0 else w)})
        return records, crc

    def close(self) -> None:
        for handle, name in self.files.values():
            handle.close()
            try:
                os.unlink(name)
            except OSError:
                pass


def _write_cache(source: Path, location: Path, kind: str, stat: os.stat_result
                 ) -> tuple | None:
    """Write the cache of ``source`` at ``location`` (a temporary file renamed into place);
    return the :func:`_file_identity` of the file written, None if another file lies there
    once it is in place."""
    LOGGER.info("Converting %s to a binary cache at %s (once)", source, location)
    fd, tmp_name = atomic.create_temporary(location)
    segments = None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(bytes(_DATA_OFFSET))
            if kind == "microarray":
                segments = _SegmentFiles(location, out)
            values_crc = 0
            ids_blocks, codes = [], []
            encoder = _RowEncoder()
            writeback = _EarlyWriteback(out)
            width = 0
            for probe_ids, values in _iter_blocks(source, kind):
                if kind == "pacall":
                    width = values.shape[1]
                    values_crc = _crc32(values, values_crc)
                    out.write(values)
                    values_end = out.tell()
                else:
                    segment, base, divisor, check, payload = encoder.encode(values)
                    segments.append(payload)
                    codes.append((segment, base, divisor, check))
                ids_blocks.append(probe_ids)
                writeback.start()
            probe_ids = np.concatenate(ids_blocks).astype("<i8", copy=False)
            _check_unique(source, kind, probe_ids)
            n_samples = _count_samples(source, _LABELS[kind])
            extra = {}
            if kind == "pacall":
                values_record = {"encoding": _PACKED_BITS, "dtype": "|u1",
                                 "shape": [int(probe_ids.size), int(width)]}
            else:
                records, values_crc = segments.copy_into(n_samples)
                values_end = out.tell()
                table = {name: np.concatenate([c[i] for c in codes]).astype(dtype, copy=False)
                         for i, (name, dtype) in enumerate(_ROW_TABLE)}
                values_record = {"encoding": _ROW_SCALED, "segments": records}
                for name, _ in _ROW_TABLE:
                    offset = _pad(out)
                    out.write(table[name])
                    extra[name] = {"offset": offset, "crc32": _crc32(table[name])}
            ids_offset = _pad(out)
            out.write(probe_ids)
            header_offset = out.tell()
            header = {
                "format": "ahba-app matrix cache",
                "version": CACHE_FORMAT_VERSION,
                "kind": kind,
                "created_by": f"ahba-app {__version__}",
                "source": {"path": str(source.resolve()), "size": stat.st_size,
                           "mtime_ns": stat.st_mtime_ns},
                "n_probes": int(probe_ids.size),
                "n_samples": int(n_samples),
                "values": {"offset": _DATA_OFFSET, "end": values_end, "crc32": values_crc,
                           **values_record},
                "rows": extra,
                "probe_ids": {"offset": ids_offset, "dtype": "<i8",
                              "shape": [int(probe_ids.size)],
                              "crc32": _crc32(probe_ids)},
            }
            if kind == "microarray":
                LOGGER.info("%s: rows stored with %s", source, _describe_widths(records))
            encoded = json.dumps(header, indent=1).encode()
            out.write(encoded)
            out.seek(0)
            out.write(_PREAMBLE.pack(_MAGIC, CACHE_FORMAT_VERSION, 0, header_offset,
                                     len(encoded)))
            out.flush()
            os.fsync(out.fileno())
            written = os.fstat(out.fileno())
        os.replace(tmp_name, location)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    finally:
        if segments is not None:
            segments.close()
    atomic.fsync_folder(location.parent)
    now = os.stat(location)  # (the file renamed into place is this one, unless replaced)
    if (now.st_dev, now.st_ino) == (written.st_dev, written.st_ino):
        return _identity(location, now)
    return None


class _EarlyWriteback:
    """Has the kernel start writing a cache file being built to disk as it grows, every
    :data:`_WRITEBACK_STEP` bytes (Linux's ``sync_file_range`` with ``SYNC_FILE_RANGE_WRITE``,
    which does not wait), so that the ``fsync`` before the rename waits for the last few MB
    rather than the whole file (a 17-digit donor's cache: 0.3 s, both builder threads at once).
    Only a hint: the ``fsync`` alone makes the file durable. Elsewhere, nothing is done."""

    def __init__(self, out):
        self.out = out
        self.started = 0      # bytes whose writing was asked for
        self.call = None
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                call = ctypes.CDLL(None, use_errno=True).sync_file_range
            except (OSError, AttributeError):  # pragma: no cover - a libc without it
                return
            call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            self.call = call

    def start(self) -> None:
        """Ask for the bytes written since the last request, when they are enough."""
        if self.call is None or self.out.tell() - self.started < _WRITEBACK_STEP:
            return
        self.out.flush()
        end = self.out.tell()
        # (an error, e.g. a file system without it, only means the fsync does it all)
        self.call(self.out.fileno(), self.started, end - self.started, _SYNC_FILE_RANGE_WRITE)
        self.started = end


#: The per-row arrays of a row-scaled cache, in file order.
_ROW_TABLE = (("segment", "|u1"), ("base", "<i8"), ("divisor", "<f8"), ("check", "<u8"))


def _describe_widths(records: list) -> str:
    return ", ".join(f"{r['rows']} rows as " + ("float64" if r["width"] == 0 else
                                                f"{r['width']}-byte integers") for r in records)


def _pad(out) -> int:
    position = out.tell()
    padding = -position % _ALIGN
    out.write(bytes(padding))
    return position + padding


class _Invalid(Exception):
    """Why a cache file cannot be used."""


def _open_cache(location: Path, source: Path, stat: os.stat_result, kind: str, mode: str,
                checked: CheckedCaches | None, quiet: bool = False,
                damaged: tuple | None = None) -> CachedMatrix | None:
    """Map a cache file if it is valid for ``source`` as it is now (and is not the file
    ``damaged`` identifies: see :class:`_Origin`); None otherwise."""
    try:
        handle = open(location, "rb")
    except FileNotFoundError:
        return None
    except OSError as err:
        LOGGER.warning("Cannot open the cache %s (%s); ignoring it", location, err)
        return None
    with handle:
        try:
            return _map_checked(handle, location, source, stat, kind, mode, checked, damaged)
        except _Invalid as why:
            if not quiet:
                LOGGER.info("Not using the cache %s: %s; it will be rebuilt", location, why)
            return None


def _map_checked(handle, location: Path, source: Path, stat: os.stat_result, kind: str,
                 mode: str, checked: CheckedCaches | None,
                 damaged: tuple | None = None) -> CachedMatrix:
    size = os.fstat(handle.fileno()).st_size
    preamble = handle.read(_PREAMBLE.size)
    if len(preamble) < _PREAMBLE.size:
        raise _Invalid("truncated")
    magic, version, _, header_offset, header_length = _PREAMBLE.unpack(preamble)
    if magic != _MAGIC:
        raise _Invalid("not an ahba-app cache file")
    if version != CACHE_FORMAT_VERSION:
        raise _Invalid(f"format version {version}, expected {CACHE_FORMAT_VERSION}")
    if header_offset + header_length != size:
        raise _Invalid(f"size {size} bytes, expected {header_offset + header_length}")
    handle.seek(header_offset)
    try:
        header = json.loads(handle.read(header_length))
        recorded = header["source"]
        values_info, ids_info = header["values"], header["probe_ids"]
        n_probes, n_samples = int(header["n_probes"]), int(header["n_samples"])
        kind_found = header["kind"]
        values_end = int(values_info["end"])
        encoding = values_info.get("encoding")
    except (ValueError, KeyError, TypeError) as err:
        raise _Invalid(f"unreadable header ({err})") from None
    if kind_found != kind:
        raise _Invalid(f"holds {kind_found}, not {kind}")
    if recorded.get("size") != stat.st_size or recorded.get("mtime_ns") != stat.st_mtime_ns:
        raise _Invalid(f"{source} changed since the cache was built")
    ids_offset = int(ids_info.get("offset", -1))
    layout_ok = (n_probes > 0 and n_samples > 0
                 and values_info.get("offset") == _DATA_OFFSET
                 and type(values_info.get("crc32")) is int
                 and _DATA_OFFSET <= values_end <= ids_offset
                 and ids_info.get("dtype") == "<i8" and ids_info.get("shape") == [n_probes]
                 and ids_offset + 8 * n_probes <= header_offset)
    if kind == "pacall":
        width = -(-n_samples // 8)
        layout_ok = (layout_ok and encoding == _PACKED_BITS
                     and values_info.get("shape") == [n_probes, width]
                     and _DATA_OFFSET + n_probes * width <= values_end)
    elif encoding != _ROW_SCALED:
        raise _Invalid(f"unknown values encoding {encoding!r}")
    if not layout_ok:
        raise _Invalid("inconsistent layout")
    probe_ids = np.memmap(handle, dtype="<i8", mode="r", offset=ids_offset, shape=(n_probes,))
    if _crc32(probe_ids) != ids_info.get("crc32"):
        raise _Invalid("probe ids fail their checksum")
    identity = _file_identity(handle, location)
    if damaged is not None and identity == damaged:
        raise _Invalid("rows of it failed their checks")
    if kind == "pacall":  # (read whole anyway: checked whole; microarray rows as they are read)
        if checked is None or identity not in checked:
            if _file_crc32(handle, _DATA_OFFSET,
                           values_end - _DATA_OFFSET) != values_info.get("crc32"):
                raise _Invalid("values fail their checksum")
            if checked is not None:
                checked.add(identity)
    codes = None
    if kind == "pacall":
        values = np.memmap(handle, dtype="|u1", mode=mode, offset=_DATA_OFFSET,
                           shape=(n_probes, width))
        detail = f"{n_probes}x{n_samples}"
    else:
        stored = np.memmap(handle, dtype="|u1", mode="r", offset=_DATA_OFFSET,
                           shape=(values_end - _DATA_OFFSET,))
        codes = _row_codes(handle, stored, header, n_probes, n_samples,
                           _Origin(source, location, identity))
        values = stored
        detail = f"{n_probes}x{n_samples}:" + ",".join(
            f"{w}={n}" for w, n in sorted(codes.widths().items()))
    content_id = (f"{kind}:{encoding}:{detail}:{values_info.get('crc32'):08x}:"
                  f"{ids_info.get('crc32'):08x}")
    return CachedMatrix(kind, source, location, np.asarray(probe_ids), values, n_samples, codes,
                        content_id)


def _row_codes(handle, stored: np.ndarray, header: dict, n_probes: int,
               n_samples: int, origin: _Origin | None = None) -> RowCodes:
    """The per-row table and the segment views of a row-scaled cache (checked)."""
    try:
        table = {}
        for name, dtype in _ROW_TABLE:
            info = header["rows"][name]
            offset = int(info["offset"])
            if (offset % 8 or offset < int(header["values"]["end"])
                    or offset + n_probes * np.dtype(dtype).itemsize
                    > int(header["probe_ids"]["offset"])):
                raise _Invalid("inconsistent row table")
            array = np.memmap(handle, dtype=dtype, mode="r", offset=offset, shape=(n_probes,))
            if _crc32(array) != info["crc32"]:
                raise _Invalid(f"row table '{name}' fails its checksum")
            table[name] = np.asarray(array)
        records = header["values"]["segments"]
        segment = table["segment"]
        if segment.max(initial=0) > 8:
            raise _Invalid("inconsistent row table")
        counts = np.bincount(segment, minlength=9)
        views, masks = {}, {}
        for record in records:
            w, start, n_rows = int(record["width"]), int(record["offset"]), int(record["rows"])
            item = 8 if w == 0 or w > 4 else (4 if w == 3 else w)
            length = n_rows * n_samples * (8 if w == 0 else w)
            if (w in views or not 0 <= w <= 8 or counts[w] != n_rows or start % _ALIGN
                    or start - _DATA_OFFSET + length + 8 > stored.shape[0]):
                raise _Invalid("inconsistent segments")
            dtype = "<f8" if w == 0 else f"<u{item}"
            step = 8 if w == 0 else w
            views[w] = np.ndarray((n_rows, n_samples), dtype=dtype, buffer=stored,
                                  offset=start - _DATA_OFFSET,
                                  strides=(n_samples * step, step))
            if 0 < w < item:
                masks[w] = np.array((1 << (8 * w)) - 1, dtype=dtype)
        if sum(int(r["rows"]) for r in records) != n_probes:
            raise _Invalid("inconsistent segments")
    except (KeyError, TypeError, ValueError) as err:
        raise _Invalid(f"unreadable row table ({err})") from None
    # position of each row within its segment (rows are stored in file order)
    slot = np.empty(n_probes, dtype=np.intp)
    order = np.argsort(segment, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot[order] = np.arange(n_probes) - np.repeat(starts, counts)
    return RowCodes(segment, slot, table["base"], table["divisor"], views, masks,
                    table["check"], origin)


class CheckedCaches:
    """The cache files whose values passed their checksum during one run, or that it wrote
    (their checksums computed from the bytes written), by :func:`_file_identity`; the most
    recent ``size``. The command line's nodes (Nipype's Linear plugin: one process) open the
    same caches one after another, and each is read whole for its checksum once. Caches are
    opened from worker threads too: every access holds the lock."""

    def __init__(self, size: int = 64):
        self.size = size
        self._entries: dict = {}
        self._lock = threading.Lock()

    def __contains__(self, identity) -> bool:
        with self._lock:
            return identity in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def add(self, identity: tuple) -> None:
        with self._lock:
            self._entries.pop(identity, None)
            self._entries[identity] = True  # (now the most recent)
            while len(self._entries) > self.size:
                del self._entries[next(iter(self._entries))]


#: The record of the run in progress in this thread (None outside :func:`remembering_checks`).
_RUN_CHECKS: ContextVar[CheckedCaches | None] = ContextVar("ahba_app_checked_caches",
                                                           default=None)


@contextmanager
def remembering_checks(checked: CheckedCaches | None = None) -> Iterator[CheckedCaches]:
    """Within the block (one run), the caches opened by this thread without a record of their
    own (and by the pieces of its :func:`ahba_app._blocks.thread_map` calls) use ``checked``,
    by default the record of the enclosing block, else a new one: a cache is read whole for its
    checksum once in the run. The record belongs to the run, dropped when the block ends."""
    record = checked if checked is not None else _RUN_CHECKS.get()
    if record is None:
        record = CheckedCaches()
    token = _RUN_CHECKS.set(record)
    try:
        yield record
    finally:
        _RUN_CHECKS.reset(token)


def _file_identity(handle, location: Path) -> tuple:
    """What tells this file from any other: a cache is written aside and renamed into place,
    never changed where it lies, and any change to a file moves its change time."""
    return _identity(location, os.fstat(handle.fileno()))


def _identity(location: Path, st: os.stat_result) -> tuple:
    """:func:`_file_identity` of the file at ``location`` whose status is ``st``."""
    return (os.fspath(location), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns)


def _file_crc32(handle, offset: int, length: int) -> int:
    """CRC-32 of a byte range of an open file, a chunk at a time.

    Each chunk is read through a read-only map of the file and its pages are handed back at
    once (``MADV_DONTNEED``: the map never holds more than a chunk in this process's memory),
    which spares the kernel a copy of every byte (a warm run checks some 700 MB: 0.12 -> 0.04
    s of system time); where that is not possible, the chunks are read into a buffer."""
    import mmap

    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is not None and length > 0:
        try:
            mapped = mmap.mmap(handle.fileno(), offset + length, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # (shorter than that, or not a file: read it)
            mapped = None
        if mapped is not None:
            with mapped:
                view = memoryview(mapped)
                try:
                    crc = 0
                    for start in range(offset, offset + length, _CHECK_CHUNK):
                        stop = min(start + _CHECK_CHUNK, offset + length)
                        crc = _crc32(view[start:stop], crc)
                        page = start - start % mmap.PAGESIZE
                        mapped.madvise(advice, page, stop - page)
                    return crc
                finally:
                    view.release()
    handle.seek(offset)
    crc = 0
    buffer = bytearray(min(_CHECK_CHUNK, max(length, 1)))
    view = memoryview(buffer)
    while length > 0:
        n = handle.readinto(view[:min(length, len(buffer))])
        if not n:
            break
        crc = _crc32(view[:n], crc)
        length -= n
    return crc
