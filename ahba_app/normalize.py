"""Normalization of expression matrices: one registry for ``sample_norm`` and ``gene_norm``.

Every method turns each column of a 2-D array into a normalized column, so the same function
serves both directions: ``gene_norm`` normalizes each gene across samples (``axis=0`` on a
samples x genes matrix) and ``sample_norm`` each sample across genes (``axis=1``).

The methods reproduce abagen 0.1.3 (``abagen.correct.normalize_expression``) number for number:

``center``
    subtract the column mean.
``zscore``
    subtract the mean, divide by the standard deviation (``ddof=1``); constant columns give NaN.
``minmax``
    rescale to [0, 1].
``sigmoid``
    ``1 / (1 + exp(-(x - mean) / sd))`` with ``ddof=1``.
``scaled_sigmoid``
    ``sigmoid`` then ``minmax``.
``scaled_sigmoid_quantiles``
    ``scaled_sigmoid`` whose mean and sd come only from the values between the 5th and 95th
    percentiles (inclusive); every value is transformed.
``robust_sigmoid``
    ``1 / (1 + exp(-(x - median) / IQR'))`` with ``IQR' = (Q3 - Q1) / 1.349`` (the interquartile
    range of a unit normal), quartiles linearly interpolated.
``scaled_robust_sigmoid``
    ``robust_sigmoid`` then ``minmax`` (the default).
``mixed_sigmoid``
    ``scaled_sigmoid`` for columns whose IQR is 0, ``scaled_robust_sigmoid`` for the others, and
    every undefined value (constant or NaN columns) set to 0.
``batch``
    across donors only (:func:`normalize_expression` with several donors): removes each donor's
    mean with a linear model of one indicator per donor plus an intercept that is not removed.

Columns a method cannot handle (constant, or holding a NaN) come out entirely NaN, as in abagen;
:func:`failed_genes` lists them so the caller can report how many genes normalization lost.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import order_stats
from ._blocks import even_block_count, n_threads, thread_map, transpose_into
from .exact import LAYOUT_FREE_NORMS
from .options import DEFAULTS

LGR = logging.getLogger(__name__)

#: Interquartile range of the standard normal distribution: the float64 that
#: ``2.0 * math.sqrt(2.0) * float(scipy.special.erfinv(0.5))`` gives (written out, so that
#: importing this module does not import scipy; a test computes it again).
IQR_NORMAL = 1.3489795003921636

#: Elements per float64 working block (32 MB): columns are processed in blocks of this size.
_BLOCK_ELEMENTS = 1 << 22
#: Smaller blocks (8 MB, kept in cache between the steps of a method) for the methods whose
#: results do not depend on the block layout: they only sort, compare and compute element by
#: element. Sums (means, standard deviations) over a block of one column can be rounded
#: differently from sums over wider blocks, so the other methods keep the blocks they had.
_SMALL_BLOCK_ELEMENTS = 1 << 20
_ORDER_FREE = LAYOUT_FREE_NORMS

NormFunc = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------
# the methods: float64 (n, m) array in, (n, m) array out, each column on its own
# --------------------------------------------------------------------------------------------

def _minmax(x: np.ndarray, inplace: bool = False, out: np.ndarray | None = None
            ) -> np.ndarray:
    """``(x - min) / (max - min)`` per column; ``inplace`` overwrites ``x`` (a temporary);
    ``out`` receives the result (any layout: the last step is element by element)."""
    low = x.min(axis=0, keepdims=True)
    high = x.max(axis=0, keepdims=True)
    shifted = np.subtract(x, low, out=x if inplace else None)
    return np.divide(shifted, high - low, out=shifted if out is None else out)


def _center(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0, keepdims=True)


def _zscore(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=0, keepdims=True)
    sd = x.std(axis=0, ddof=1, keepdims=True)
    # a column whose values all equal its minimum is constant: undefined, not +-inf or noise
    constant = (x == x.min(axis=0, keepdims=True)).all(axis=0, keepdims=True)
    z = (x - mean) / np.where(constant, 1.0, sd)
    z[:, constant[0]] = np.nan
    return z


def _logistic(x: np.ndarray, centre: np.ndarray, scale: np.ndarray,
              out: np.ndarray | None = None) -> np.ndarray:
    """``1 / (1 + exp(-(x - centre) / scale))``, every step in one new array (the last one in
    ``out`` if given). ``centre - x`` is ``-(x - centre)`` to the bit (rounding to nearest is
    symmetric about zero; a zero's sign is lost, and exp gives 1 for both), one pass less."""
    work = np.subtract(centre, x)
    np.divide(work, scale, out=work)
    np.exp(work, out=work)
    np.add(1.0, work, out=work)
    return np.divide(1.0, work, out=work if out is None else out)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return _logistic(x, x.mean(axis=0, keepdims=True), x.std(axis=0, ddof=1, keepdims=True))


def _scaled_sigmoid(x: np.ndarray) -> np.ndarray:
    return _minmax(_sigmoid(x), inplace=True)


def _columns_as_rows(x: np.ndarray) -> np.ndarray:
    """The columns of ``x`` as the rows of a new C-contiguous array (never a view: callers sort
    or partition it in place)."""
    if x.flags.f_contiguous:
        return np.array(x.T, order="C", copy=True)
    rows = np.empty(x.shape[::-1], dtype=x.dtype)
    if x.size <= _SMALL_BLOCK_ELEMENTS:  # in the CPU's cache: numpy's copy is quicker
        np.copyto(rows, x.T)
    else:
        transpose_into(rows, x)
    return rows


def _sorted_columns(x: np.ndarray) -> np.ndarray:
    """Each column of ``x`` sorted ascending (NaN last), as the rows of a contiguous array:
    one sort along the fast axis is several times quicker than numpy's median / percentile
    along axis 0, and serves every order statistic at once."""
    ordered = _columns_as_rows(x)
    ordered.sort(axis=1)
    return ordered


def _quantile(ordered: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` (in [0, 1]) of each row of ``ordered`` by linear interpolation, with
    numpy's arithmetic (``numpy.percentile(..., method='linear')``); NaN if the row has NaN."""
    n = ordered.shape[1]
    position = (n - 1) * q
    below, above = _quantile_positions(n, q)
    weight = position - below
    a, b = ordered[:, below], ordered[:, above]
    step = b - a
    value = b - step * (1.0 - weight) if weight >= 0.5 else a + step * weight
    return np.where(np.isnan(ordered[:, -1]), np.nan, value)


def _median(ordered: np.ndarray) -> np.ndarray:
    """Median of each row of ``ordered`` as numpy.median computes it; NaN if the row has NaN."""
    n = ordered.shape[1]
    middle = ordered[:, n // 2]
    value = middle if n % 2 else (ordered[:, n // 2 - 1] + middle) / 2.0
    return np.where(np.isnan(ordered[:, -1]), np.nan, value)


def _scaled_sigmoid_quantiles(x: np.ndarray) -> np.ndarray:
    ordered = _sorted_columns(x)
    low, high = _quantile(ordered, 5 / 100)[None], _quantile(ordered, 95 / 100)[None]
    del ordered
    inside = (x >= low) & (x <= high)
    n_inside = inside.sum(axis=0, keepdims=True)
    mean = np.where(inside, x, 0.0).sum(axis=0, keepdims=True) / n_inside
    deviation = np.where(inside, x - mean, 0.0)
    sd = np.sqrt((deviation * deviation).sum(axis=0, keepdims=True) / (n_inside - 1))
    return _minmax(_logistic(x, mean, sd), inplace=True)


def _quantile_positions(n: int, q: float) -> tuple[int, int]:
    """The two positions of a sorted column of ``n`` that :func:`_quantile` reads for ``q``."""
    below = min(max(math.floor((n - 1) * q), 0), n - 1)
    return below, min(below + 1, n - 1)


#: Columns at least this long are partitioned by :class:`_Selected`, shorter ones sorted.
#: numpy sorts and partitions with SIMD networks (x86-simd-sort); measured on full data,
#: sorting each column is quicker up to about 2,000 values (a gene across a donor's
#: samples), partitioning beyond (a sample across the genes).
_PARTITION_MIN = 2048


def _robust_centre_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and normal-scaled interquartile range of each column (NaN if the column has NaN)."""
    n = x.shape[0]
    # only the positions read below are found (and the last one: the largest, NaN if any):
    # the numbers a full sort puts there
    kth = {n // 2 - 1, n // 2, *_quantile_positions(n, 0.25), *_quantile_positions(n, 0.75)}
    ordered = _Selected(x, kth)
    iqr = (_quantile(ordered, 75 / 100) - _quantile(ordered, 25 / 100)) / IQR_NORMAL
    return _median(ordered)[None], iqr[None]


#: Columns of :class:`_Selected` are copied and partitioned a few at a time (1 MB of values:
#: each partition's passes stay in the CPU's cache; with 8 MB, 30 % slower).
_SELECT_ELEMENTS = 1 << 17
#: Columns counted or sorted in chunks (:func:`counting_selection`) go a few more at a time
#: (2 MB of values): fewer numpy calls a value. Measured on Zen 4 (best of 5, 785 x 14,710):
#: counted 4.5-4.75 ns a value against 4.86-4.99 with 1 MB, in chunks 5.43 against 5.64; the
#: warm Python API (12 digits, 14 alternating runs) 1.595 -> 1.555 s median.
_COUNTED_ELEMENTS = 1 << 18
#: Columns at least this long are counted (:mod:`ahba_app.order_stats`) where
#: :func:`counting_selection` says so (the samples across the genes); shorter ones are sorted
#: in chunks there (longer than 256 values) or sorted.
_COUNTING_MIN = 2048


@functools.cache
def counting_selection() -> bool:
    """Whether :class:`_Selected` counts or sorts in chunks (:mod:`ahba_app.order_stats`)
    instead of letting numpy partition and sort: on AMD CPUs where numpy takes its AVX-512
    sorting code, which runs an instruction that Zen 4 executes in microcode. There, in a warm
    run of the full data (DK, 12 digits), the samples' medians and quartiles took 0.41-0.50 s
    of CPU counted against 0.86-1.01 partitioned; the genes' (946 samples or fewer a column)
    0.30-0.32 s sorted in chunks, against 0.47-0.58 sorted whole and 0.74-0.78 counted. Both
    ways were measured on Zen 4 only: elsewhere numpy's own code is kept. All give the same
    numbers. (A fact of the machine, read once a process.)"""
    try:
        try:
            from numpy._core._multiarray_umath import __cpu_features__ as features
        except ImportError:  # numpy 1.x
            from numpy.core._multiarray_umath import __cpu_features__ as features
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            amd = any(line.startswith("vendor_id") and "AuthenticAMD" in line
                      for line in cpuinfo)
    except (ImportError, OSError):
        return False
    return amd and bool(features.get("AVX512_SKX"))


class _Selected:
    """What sorting each column of ``x`` puts at ``positions`` and at the last position (the
    largest value; NaN when the column holds one), read as ``self[:, position]`` as from the
    sorted columns laid out as rows: the same values, found a few columns at a time (``x`` is
    only read): where :func:`counting_selection` says so, counted (columns of at least
    :data:`_COUNTING_MIN` values) or sorted in chunks (shorter ones, of more than 256:
    :class:`ahba_app.order_stats.SortedChunks`); else in a copy, sorted (columns shorter than
    :data:`_PARTITION_MIN`) or partitioned; the columns the count or the chunks leave (NaN,
    many ties, a band missed) are sorted or partitioned too.

    numpy partitions around one position quickly (a SIMD quickselect), around several at
    once slowly (value by value). So the wanted positions are found one partition at a time,
    each in the part of the column still holding it: around the middle wanted position, then
    in the parts below and above it; a position at the end of its part is that part's
    minimum or maximum (a reduction), so positions side by side (a median's two, a
    quartile's two) cost one partition. Partitions put NaN last, so the last part's maximum
    is NaN when the column holds one. Zeros of both signs compare equal: which one a
    position gets among tied zeros is not defined (as with a sort).
    """

    def __init__(self, x: np.ndarray, positions, counting: bool | None = None):
        n, n_cols = x.shape
        self.shape = (n_cols, n)
        wanted = sorted({int(p) for p in positions if 0 <= p < n - 1} | {n - 1})
        self.values = {p: np.empty(n_cols) for p in wanted}
        if counting is None:
            counting = counting_selection()
        scratch = chunks = None
        unsorted = counting and n > order_stats.NETWORK_SORT_MAX  # counted or in chunks
        step = max(1, (_COUNTED_ELEMENTS if unsorted else _SELECT_ELEMENTS) // max(n, 1))
        if counting and n >= _COUNTING_MIN:
            scratch = order_stats.Scratch(min(step, n_cols) * n)
        elif unsorted:
            chunks = order_stats.SortedChunks(n, wanted[:-1])
            padded = np.empty((min(step, n_cols), chunks.width))
        work = np.empty(min(step, n_cols) * n)
        for start in range(0, n_cols, step):
            at = slice(start, min(start + step, n_cols))
            if scratch is not None:
                found = order_stats.select_by_counting(x[:, at], wanted[:-1], scratch)
                at = self._keep(found, wanted, at)
            elif chunks is not None:
                at = self._keep(chunks.select(chunks.fill(padded, x[:, at])), wanted, at)
            if at is None:
                continue
            columns = x[:, at].T
            rows = work[:columns.size].reshape(columns.shape)
            np.copyto(rows, columns)
            if n < _PARTITION_MIN:
                rows.sort(axis=1)
                for p in wanted:
                    self.values[p][at] = rows[:, p]
            else:
                self._select(rows, wanted, at)

    def _keep(self, found, wanted: list, at: slice) -> np.ndarray | None:
        """Keeps the values of the columns ``at`` that ``found`` (values, largest, done: as
        :mod:`ahba_app.order_stats` gives them) holds; returns the indices of the columns it
        left to a sort or partition, None when there are none."""
        values, largest, done = found
        for p, value in values.items():
            self.values[p][at] = value
        self.values[wanted[-1]][at] = largest
        if done.all():
            return None
        return np.flatnonzero(~done) + at.start

    def _select(self, rows: np.ndarray, wanted: list, at: slice) -> None:
        parts = [(0, rows.shape[1], wanted)]
        while parts:
            low, high, wanted = parts.pop()
            if not wanted:
                continue
            part = rows[:, low:high]
            if wanted == [high - 1]:
                self.values[high - 1][at] = part.max(axis=1)
            elif wanted == [low]:
                # a part below a partition's NaN may hold NaN too (mostly-NaN columns): its
                # first sorted value is its smallest number, NaN only when it holds none
                self.values[low][at] = np.fmin.reduce(part, axis=1)
            else:
                middle = wanted[len(wanted) // 2]
                part.partition(middle - low, axis=1)
                self.values[middle][at] = rows[:, middle]
                parts.append((low, middle, [p for p in wanted if p < middle]))
                parts.append((middle + 1, high, [p for p in wanted if p > middle]))

    def __getitem__(self, key) -> np.ndarray:
        _, pos = key
        return self.values[pos % self.shape[1]]


def _robust_sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return _logistic(x, *_robust_centre_scale(x), out=out)


def _scaled_robust_sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return _minmax(_robust_sigmoid(x), inplace=True, out=out)


def _mixed_sigmoid(x: np.ndarray) -> np.ndarray:
    median, iqr = _robust_centre_scale(x)
    zero_iqr = (iqr == 0)[0]
    out = np.empty_like(x)
    out[:, ~zero_iqr] = _minmax(_logistic(x[:, ~zero_iqr], median[:, ~zero_iqr],
                                          iqr[:, ~zero_iqr]), inplace=True)
    if zero_iqr.any():
        out[:, zero_iqr] = _scaled_sigmoid(x[:, zero_iqr])
    # undefined results (constant columns, NaN columns) become 0
    return np.nan_to_num(out, copy=False)


#: Canonical method name -> function normalizing every column of a float64 2-D array.
NORMALIZATIONS: dict[str, NormFunc] = {
    "center": _center,
    "zscore": _zscore,
    "minmax": _minmax,
    "sigmoid": _sigmoid,
    "scaled_sigmoid": _scaled_sigmoid,
    "scaled_sigmoid_quantiles": _scaled_sigmoid_quantiles,
    "robust_sigmoid": _robust_sigmoid,
    "scaled_robust_sigmoid": _scaled_robust_sigmoid,
    "mixed_sigmoid": _mixed_sigmoid,
}

#: Methods that need every donor at once (only :func:`normalize_expression` runs them).
ACROSS_DONORS = ("batch",)

#: Every canonical method name, in the order the CLI and the report list them.
METHODS: tuple[str, ...] = (*NORMALIZATIONS, *ACROSS_DONORS)

#: Other accepted spellings (abagen's) -> canonical name.
ALIASES: dict[str, str] = {
    "demean": "center",
    "sig": "sigmoid",
    "scaled_sig": "scaled_sigmoid",
    "scaled_sig_qnt": "scaled_sigmoid_quantiles",
    "rs": "robust_sigmoid",
    "rsig": "robust_sigmoid",
    "srs": "scaled_robust_sigmoid",
    "scaled_rsig": "scaled_robust_sigmoid",
    "mixed_sig": "mixed_sigmoid",
}


def layout_independent(norm: str | None) -> bool:
    """Whether method ``norm`` gives the same numbers bit for bit whatever the memory layout of
    its input (it only sorts, compares and computes element by element; methods that sum
    round differently along contiguous and strided axes)."""
    return resolve_norm(norm) in _ORDER_FREE


def resolve_norm(norm: str | None) -> str | None:
    """Canonical name of normalization ``norm`` (``None`` stays ``None``: no normalization).

    Raises ValueError naming ``norm`` and the accepted names when it is unknown.
    """
    if norm is None:
        return None
    if isinstance(norm, str):
        name = ALIASES.get(norm, norm)
        if name in METHODS:
            return name
    accepted = ", ".join(repr(n) for n in (*METHODS, *ALIASES))
    raise ValueError(f"Unknown normalization {norm!r}: use one of {accepted}, or None.")


# --------------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------------

def _out_dtype(values: np.ndarray) -> np.dtype:
    """float32 stays float32 (no doubling of big matrices); everything else becomes float64."""
    return np.dtype(np.float32) if values.dtype == np.float32 else np.dtype(np.float64)


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are views of the same elements in the same layout."""
    return (a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _same_layout(a: np.ndarray, b: np.ndarray) -> bool:
    return ((a.flags.f_contiguous and b.flags.f_contiguous)
            or (a.flags.c_contiguous and b.flags.c_contiguous))


def _column_blocks(n_rows: int, n_cols: int, elements: int = _BLOCK_ELEMENTS
                   ) -> Iterable[slice]:
    width = max(1, elements // max(n_rows, 1))
    for start in range(0, n_cols, width):
        yield slice(start, min(start + width, n_cols))


def _even_blocks(n_rows: int, n_cols: int, elements: int, parts: int) -> list[slice]:
    """Blocks of at most ``elements`` (as :func:`_column_blocks`), as many as a multiple of
    ``parts`` and of equal widths (within one column), so that ``parts`` threads each get the
    same share: for the methods whose numbers do not depend on the blocks."""
    count = min(n_cols, even_block_count(n_cols, elements // max(n_rows, 1), parts))
    if count <= 1:
        return [slice(0, n_cols)] if n_cols else []
    bounds = [n_cols * k // count for k in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _empty_rows(view: np.ndarray) -> np.ndarray:
    """Rows of ``view`` that are entirely NaN.

    A row NaN throughout is NaN in the first column: only the rows NaN there are read whole
    (usually none), not the whole array."""
    n_rows, n_cols = view.shape
    if view.dtype.kind != "f" or n_cols == 0:
        return np.full(n_rows, n_cols == 0)
    empty = np.isnan(view[:, 0])
    candidates = np.flatnonzero(empty)
    step = max(1, _BLOCK_ELEMENTS // n_cols)
    for start in range(0, len(candidates), step):
        rows = candidates[start:start + step]
        empty[rows] = np.isnan(view[rows]).all(axis=1)
    return empty


def _group_rows(groups: Sequence | None, n: int, usable: np.ndarray) -> list[np.ndarray | slice]:
    """Row selections (one per group, sorted by group) among the ``usable`` rows.

    Rows whose group is missing (None / NaN) belong to no group and stay NaN.
    """
    if groups is None:
        if usable.all():
            return [slice(None)] if n else []
        rows = np.flatnonzero(usable)
        return [rows] if rows.size else []
    codes, _ = pd.factorize(pd.Series(np.asarray(groups, dtype=object)), sort=True)
    if len(codes) != n:
        raise ValueError(f"Got {len(codes)} structural classes for {n} samples: give one "
                         "class per sample.")
    selections = []
    for code in range(codes.max() + 1 if len(codes) else 0):
        rows = np.flatnonzero((codes == code) & usable)
        if rows.size:
            selections.append(rows)
    return selections


def normalize_array(values: np.ndarray, norm: str | None = DEFAULTS["gene_norm"], axis: int = 0,
                    groups: Sequence | None = None, out: np.ndarray | None = None
                    ) -> np.ndarray:
    """Normalize every 1-D slice of 2-D ``values`` along ``axis`` with method ``norm``.

    ``axis=0`` normalizes each column across rows (genes across samples on a samples x genes
    matrix); ``axis=1`` each row across columns. Positions along ``axis`` that are NaN in every
    slice (e.g. samples without data) take no part and stay NaN. With ``groups`` (one label per
    position along ``axis``) each group is normalized on its own; positions with a missing
    group stay NaN. Statistics are computed in float64; the result is float32 for float32
    input, float64 otherwise. ``values`` is never modified, unless it is ``out``.

    ``out`` (optional): an array of ``values``' shape and the result's dtype, in any layout and
    not overlapping ``values``, to write the result into (and return); or, for the methods
    whose numbers do not depend on the layout, ``values``' very memory (same layout): each
    block is written once its numbers are computed from it, so the result is the same.
    """
    name = resolve_norm(norm)
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"Expected a 2-D expression matrix, got an array of shape "
                         f"{values.shape}.")
    if axis not in (0, 1, -1, -2):
        raise ValueError(f"axis must be 0 (normalize columns) or 1 (normalize rows), "
                         f"got {axis!r}.")
    if name in ACROSS_DONORS:
        raise ValueError(f"Normalization {name!r} removes donor effects and needs every donor at "
                         "once: call normalize_expression with a list of donor frames.")
    dtype = _out_dtype(values)
    if out is not None and (out.shape != values.shape or out.dtype != dtype
                            or (np.may_share_memory(out, values)
                                and not (_same_memory(out, values) and name in _ORDER_FREE))):
        raise ValueError(f"out must be a {dtype} array of shape {values.shape} apart from the "
                         f"input (or, for {', '.join(_ORDER_FREE)}, the input's own memory), "
                         f"got {out.dtype} {out.shape}.")
    if name is None:
        if out is None:
            return values.astype(dtype, copy=True)
        out[...] = values
        return out
    func = NORMALIZATIONS[name]
    elements = _SMALL_BLOCK_ELEMENTS if name in _ORDER_FREE else _BLOCK_ELEMENTS
    view = values if axis in (0, -2) else values.T
    selections = _group_rows(groups, view.shape[0], ~_empty_rows(view))
    covered = np.zeros(view.shape[0], dtype=bool)
    for rows in selections:
        covered[rows] = True
    if out is None:
        out_view = np.empty(view.shape, dtype=dtype)
    else:
        out_view = out if axis in (0, -2) else out.T

    def run(piece):
        rows, cols = piece
        with np.errstate(all="ignore"):
            block = np.asarray(view[rows, cols], dtype=np.float64)
            target = out_view[rows, cols] if isinstance(rows, slice) else None
            if target is None:
                out_view[rows, cols] = func(block)
            elif name in _ORDER_FREE and _same_layout(block, target):
                func(block, out=target)  # the last step writes in place
            else:
                result = func(block)
                if result.flags.f_contiguous and not _same_layout(result, target):
                    transpose_into(target, result.T)  # across layouts: tile by tile
                else:
                    target[...] = result

    # columns are normalized independently: blocks run on several threads (for the methods
    # whose numbers do not depend on the blocks, as many equal blocks for each thread)
    def blocks(n_rows):
        if name in _ORDER_FREE:
            return _even_blocks(n_rows, view.shape[1], elements, n_threads())
        return _column_blocks(n_rows, view.shape[1], elements)

    thread_map(run, [(rows, cols) for rows in selections
                     for cols in blocks(view.shape[0] if isinstance(rows, slice)
                                        else rows.size)])
    out_view[~covered] = np.nan  # the rows no block wrote
    return out_view if axis in (0, -2) else out_view.T


# --------------------------------------------------------------------------------------------
# frames, donors
# --------------------------------------------------------------------------------------------

def _as_frames(expression) -> tuple[list[pd.DataFrame], list | None, bool]:
    """(frames, dict keys or None, whether a single frame was given)."""
    if isinstance(expression, pd.DataFrame):
        return [expression], None, True
    if isinstance(expression, Mapping) and expression:
        return list(expression.values()), list(expression.keys()), False
    if isinstance(expression, (list, tuple)) and expression and all(
            isinstance(e, pd.DataFrame) for e in expression):
        return list(expression), None, False
    raise ValueError("Expression data must be a pandas DataFrame, or a non-empty list or dict "
                     f"of DataFrames, got {type(expression).__name__}.")


def _pack(frames: list, keys: list | None, single: bool):
    if keys is not None:
        return dict(zip(keys, frames))
    if single or len(frames) == 1:
        return frames[0]
    return frames


def _structure_labels(structures, frame: pd.DataFrame, whose: str) -> np.ndarray:
    """One structural class per row of ``frame`` from a DataFrame (column 'structure'),
    Series (same index as ``frame``) or array (by position)."""
    if isinstance(structures, pd.DataFrame):
        if "structure" not in structures.columns:
            raise ValueError(f"Structural classes of {whose} lack a 'structure' column "
                             f"(columns: {list(structures.columns)}).")
        structures = structures["structure"]
    if len(structures) != len(frame):
        raise ValueError(f"Got {len(structures)} structural classes for the {len(frame)} "
                         f"samples of {whose}: give one class per sample.")
    if isinstance(structures, pd.Series) and not structures.index.equals(frame.index):
        if not (structures.index.is_unique and frame.index.isin(structures.index).all()):
            raise ValueError(f"The index of the structural classes of {whose} does not match "
                             "the index of its expression data.")
        structures = structures.reindex(frame.index)
    return np.asarray(structures, dtype=object)


def _frame_like(values: np.ndarray, frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(values, index=frame.index, columns=frame.columns, copy=False)


def _batch_correct(frames: list[pd.DataFrame], classes: list[np.ndarray]) -> list[np.ndarray]:
    """Remove donor effects: within each structural class, fit expression ~ donor indicators +
    intercept by least squares and subtract the donor terms (not the intercept).

    The indicator design is rank deficient; its minimum-norm least-squares solution (what a
    generic solver returns) has donor term ``mean_d - sum(means) / (D + 1)``, so the residual is
    ``x - mean_d + sum(means) / (D + 1)`` for the ``D`` donors with samples in the class.
    """
    arrays = [f.to_numpy() for f in frames]
    arrays = [a if a.dtype.kind == "f" else a.astype(np.float64) for a in arrays]
    outs = [np.full(a.shape, np.nan, dtype=_out_dtype(a)) for a in arrays]
    usable = [~_empty_rows(a) for a in arrays]
    all_classes = pd.unique(np.concatenate([c[pd.notna(c)] for c in classes]))
    with np.errstate(all="ignore"):
        for cls in all_classes:
            rows = [np.flatnonzero(u & (c == cls)) for u, c in zip(usable, classes)]
            members = [d for d, r in enumerate(rows) if r.size]
            means = {d: arrays[d][rows[d]].mean(axis=0, dtype=np.float64) for d in members}
            intercept = sum(means.values()) / (len(members) + 1)
            for d in members:
                outs[d][rows[d]] = arrays[d][rows[d]] - (means[d] - intercept)
    return outs


def normalize_expression(expression, norm: str | None = DEFAULTS["gene_norm"], structures=None,
                         ignore_warn: bool = False):
    """Normalize each gene (column) of each donor's samples x genes expression data.

    Parameters
    ----------
    expression : DataFrame, list of DataFrame or dict of DataFrame
        (S, G) expression of S samples (or regions) over G genes, one frame per donor.
    norm : str or None
        A name or alias from :data:`METHODS` / :data:`ALIASES`; None returns the data as is.
    structures : DataFrame, Series or 1-D array (or a list / dict of them, one per donor)
        Structural class of every sample (DataFrame column ``'structure'``; a DataFrame or
        Series must share the expression's index, an array goes by position); each class is
        then normalized on its own. Samples without a class stay NaN.
    ignore_warn : bool
        Log the count of genes left undefined at DEBUG instead of WARNING level.

    Returns
    -------
    The normalized data in the shape it was given (a single frame for one donor), with the
    index and columns of the input. Rows that were entirely NaN stay NaN; genes a method cannot
    normalize (constant, or holding a NaN) are NaN for the samples concerned, see
    :func:`failed_genes`. float32 input gives float32 output, anything else float64.
    """
    name = resolve_norm(norm)
    frames, keys, single = _as_frames(expression)
    if name is None:
        return _pack(frames, keys, single)

    if structures is None:
        classes = [np.zeros(len(f), dtype=object) for f in frames]
    else:
        if isinstance(structures, (pd.DataFrame, pd.Series, np.ndarray)):
            structures = [structures]
        elif isinstance(structures, Mapping):
            structures = list(structures.values())
        if len(structures) != len(frames):
            raise ValueError(f"Got structural classes for {len(structures)} donors and "
                             f"expression for {len(frames)}: give one per donor.")
        donor_ids = keys if keys is not None else range(len(frames))
        classes = [_structure_labels(s, f, f"donor {d}")
                   for s, f, d in zip(structures, frames, donor_ids)]

    if name in ACROSS_DONORS:
        if len(frames) < 2:
            raise ValueError(f"Normalization {name!r} removes donor effects and needs at least "
                             f"two donors, got {len(frames)}.")
        arrays = _batch_correct(frames, classes)
    else:
        arrays = [normalize_array(f.to_numpy(), name, axis=0,
                                  groups=None if structures is None else c)
                  for f, c in zip(frames, classes)]

    normalized = [_frame_like(a, f) for a, f in zip(arrays, frames)]
    failed = failed_genes(normalized)
    if len(failed):
        level = logging.DEBUG if ignore_warn else logging.WARNING
        LGR.log(level, "Normalization %r left %d of %d genes undefined (constant, or holding "
                "NaN, in some donor or structural class); genes still undefined in a region "
                "after aggregation are dropped.", name, len(failed), normalized[0].shape[1])
    return _pack(normalized, keys, single)


def failed_genes(expression) -> pd.Index:
    """Genes (columns) holding a NaN in a sample (row) that is not entirely NaN, in any donor.

    After normalization these are the genes the method could not handle; abagen (and
    :func:`ahba_app.aggregate.aggregate_samples`) drop such genes once regions are aggregated
    (unless another donor fills the gap), so ``len(failed_genes(...))`` is what to report.
    """
    frames, _, _ = _as_frames(expression)
    failed = None
    for frame in frames:
        values = frame.to_numpy()
        if values.dtype.kind != "f":
            values = values.astype(np.float64)
        empty = _empty_rows(values)
        rows = slice(None) if not empty.any() else ~empty
        bad = np.zeros(values.shape[1], dtype=bool)
        for cols in _column_blocks(values.shape[0], values.shape[1]):
            bad[cols] = np.isnan(values[rows, cols]).any(axis=0)
        genes = frame.columns[bad]
        failed = genes if failed is None else failed.union(genes, sort=False)
    return failed if failed is not None else pd.Index([])


def _buffer(buffers, values: np.ndarray, transposed: bool = False) -> np.ndarray | None:
    """A view of the first of ``buffers`` apart from ``values``, shaped like ``values`` in the
    layout normalize_array gives its result (a C array, or the transpose of one): None when
    there is none."""
    if buffers is None or values.dtype != np.float64:
        return None
    for buffer in buffers:
        if buffer.size >= values.size and not np.may_share_memory(buffer, values):
            flat = buffer[:values.size]
            return flat.reshape(values.shape[::-1]).T if transposed else flat.reshape(values.shape)
    return None


def normalize_donor(expression: pd.DataFrame, sample_norm: str | None = DEFAULTS["sample_norm"],
                    gene_norm: str | None = DEFAULTS["gene_norm"], matched=None, structures=None,
                    ignore_warn: bool = True, buffers=None, out=None) -> pd.DataFrame:
    """One donor's normalization as ``get_expression_data`` runs it.

    ``expression`` is (S, G) samples x genes. ``matched`` (optional boolean mask over the S
    samples, e.g. ``labels != 0``) keeps only those samples *before* normalizing:
    ``norm_matched=True`` passes it, ``norm_matched=False`` passes None and drops the
    unmatched samples later. Then each sample is normalized across genes with
    ``sample_norm`` and each gene across samples with ``gene_norm``, within the
    ``structures`` classes (one per sample, as in :func:`normalize_expression`) when given
    (``norm_structures=True``). Returns the kept samples.

    ``buffers`` (optional): two 1-D float64 arrays, each at least as large as the kept data,
    whose memory the normalizations write into instead of new arrays (the same numbers). One
    of them may hold ``expression``'s values when the caller no longer needs them: a
    normalization never writes over its own input.

    ``out`` (optional): the float64 array holding ``expression``'s values (every sample kept,
    no ``matched``), which the caller no longer needs: when both methods' numbers do not
    depend on the layout (:func:`layout_independent`, or None) they are computed in its
    memory, block by block (the same numbers, and no other memory for the table); otherwise
    it is not used.
    """
    sample_name, gene_name = resolve_norm(sample_norm), resolve_norm(gene_norm)
    for which, name in (("sample_norm", sample_name), ("gene_norm", gene_name)):
        if name in ACROSS_DONORS:
            raise ValueError(f"{which}={name!r} needs every donor at once; use "
                             "normalize_expression on the list of donors instead.")
    classes = None
    if structures is not None:
        classes = _structure_labels(structures, expression, "the samples")
    if matched is not None:
        matched = np.asarray(matched, dtype=bool).ravel()
        if matched.shape[0] != len(expression):
            raise ValueError(f"The matched-sample mask has {matched.shape[0]} entries for "
                             f"{len(expression)} samples.")
        expression = expression.iloc[np.flatnonzero(matched)]
        classes = None if classes is None else classes[matched]
    values = expression.to_numpy()
    index, columns = expression.index, expression.columns
    del expression  # the caller may have let go of it: then each input is freed once used
    if (out is not None and out.dtype == np.float64 and _same_memory(out, values)
            and all(name is None or name in _ORDER_FREE for name in (sample_name, gene_name))):
        # in place: the buffers are not needed (each step reads a block, then writes it)
        values = out
        if sample_name is not None:
            values = normalize_array(values, sample_name, axis=1, out=out)
        if gene_name is not None:
            values = normalize_array(values, gene_name, axis=0, groups=classes, out=out)
        return _normalized_frame(values, index, columns, ignore_warn)
    if sample_name is not None:
        # the gene normalization reads what this writes: genes contiguous (the transposed
        # buffer) for a method that sums, whose numbers depend on the layout; samples
        # contiguous for one that does not (written as computed, without a transposed copy)
        values = normalize_array(values, sample_name, axis=1,
                                 out=_buffer(buffers, values,
                                             transposed=not layout_independent(gene_name)))
    if gene_name is not None:
        values = normalize_array(values, gene_name, axis=0, groups=classes,
                                 out=_buffer(buffers, values))
    return _normalized_frame(values, index, columns, ignore_warn)


def _normalized_frame(values: np.ndarray, index, columns, ignore_warn: bool) -> pd.DataFrame:
    out = pd.DataFrame(values, index=index, columns=columns, copy=False)
    level = logging.DEBUG if ignore_warn else logging.WARNING
    if LGR.isEnabledFor(level):  # a pass over the data, for a log message
        failed = failed_genes(out)
        if len(failed):
            LGR.log(level, "Normalization left %d of %d genes undefined.", len(failed),
                    out.shape[1])
    return out


__all__ = [
    "ACROSS_DONORS",
    "ALIASES",
    "IQR_NORMAL",
    "METHODS",
    "NORMALIZATIONS",
    "failed_genes",
    "normalize_array",
    "normalize_donor",
    "normalize_expression",
    "resolve_norm",
]
