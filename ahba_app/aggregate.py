"""Aggregation of sample-level expression into regions, and of regions across donors.

Samples are grouped by the atlas label in their frame's index (level ``'label'``); label 0 (not
matched to any region) is left out. ``mean`` and ``median`` run as one compiled pandas groupby
over blocks of columns (converted to float64 a block at a time). Like abagen 0.1.3, whose
``groupby(...).aggregate`` they reproduce, both skip NaN values and give NaN for a region only
when it has no value at all.

A callable ``agg_metric`` must accept ``axis`` (abagen's contract); it is called once per region
on that region's (n_samples, n_genes) float64 block with ``axis=0`` and sees NaN values as they
are. ``numpy.mean`` / ``numpy.median`` (and their nan-versions) map to the built-in metrics.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ._blocks import even_block_count, thread_map
from .exact import kahan_add, kahan_mean
from .options import DEFAULTS

LGR = logging.getLogger(__name__)

#: Elements per float64 working block (32 MB).
_BLOCK_ELEMENTS = 1 << 22
#: Group sums per block of columns in the mean (1 MB, with the rows being added: in cache).
_KAHAN_ELEMENTS = 1 << 17

#: Accepted values of ``region_agg``.
REGION_AGGS = ("donors", "samples")


class MetricError(ValueError, TypeError):
    """An ``agg_metric`` that is neither a known name nor a well-behaved reducing callable.

    It is a ValueError like every bad option here, and a TypeError like abagen's.
    """


# --------------------------------------------------------------------------------------------
# grouped reductions: values (S, G); rows = positions of the samples to use; codes = their group
# (0 .. n_groups - 1, every group present) -> (n_groups, G) float64
# --------------------------------------------------------------------------------------------

GroupReducer = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def _blocks(n_rows: int, n_cols: int):
    width = max(1, _BLOCK_ELEMENTS // max(n_rows, 1))
    for start in range(0, n_cols, width):
        yield slice(start, min(start + width, n_cols))


def _grouped(how: str) -> GroupReducer:
    """A NaN-skipping grouped reduction run by pandas' compiled groupby, one float64 block of
    columns at a time (a float32 matrix is never copied whole to float64)."""
    def reduce(values, rows, codes, n_groups) -> np.ndarray:
        out = np.empty((n_groups, values.shape[1]), dtype=np.float64)
        for cols in _blocks(len(rows), values.shape[1]):
            block = pd.DataFrame(np.asarray(values[rows, cols], dtype=np.float64), copy=False)
            out[:, cols] = getattr(block.groupby(codes, sort=True), how)().to_numpy()
        return out
    reduce.__name__ = f"group_{how}"
    return reduce


def _callable_reducer(metric: Callable) -> GroupReducer:
    def reduce(values, rows, codes, n_groups) -> np.ndarray:
        out = np.empty((n_groups, values.shape[1]), dtype=np.float64)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
        for g in range(n_groups):
            block = np.asarray(values[rows[order[bounds[g]:bounds[g + 1]]]], dtype=np.float64)
            result = np.asarray(metric(block, axis=0), dtype=np.float64)
            if result.shape != (values.shape[1],):
                raise MetricError(f"agg_metric {metric!r} reduced a {block.shape} block to "
                                  f"shape {result.shape} instead of ({values.shape[1]},).")
            out[g] = result
        return out
    return reduce


def _group_mean(values, rows, codes, n_groups, out=None, where=None) -> np.ndarray:
    """NaN-skipping mean of each group's rows, per column, exactly as pandas' groupby mean.

    pandas adds a group's values in row order with Kahan compensation, skipping NaN, and
    divides by the number of values added (NaN when none). The same steps run here on whole
    arrays: groups are ordered by size, so the groups still adding a row at step k are a prefix,
    and every step adds one row to each of them, a block of columns at a time; the results are
    those of pandas bit for bit, without building a DataFrame per block. With ``out`` the means
    of group g are written to row ``where[g]`` of ``out`` (and ``out`` is returned).
    """
    if out is None:
        out = np.empty((n_groups, values.shape[1]), dtype=np.float64)
        where = np.arange(n_groups)
    if n_groups == 0 or values.shape[1] == 0:
        return out
    codes = np.asarray(codes)
    order = np.argsort(codes, kind="stable")           # rows grouped, in row order within
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    by_size = np.argsort(-sizes, kind="stable")
    first = starts[by_size]
    active = [int(np.count_nonzero(sizes[by_size] > k)) for k in range(int(sizes.max()))]
    steps = [np.asarray(rows)[order[first[:n] + k]] for k, n in enumerate(active)]
    targets = np.asarray(where)[by_size]
    # genes x samples when the samples of a gene are contiguous: every step then gathers
    # within rows held in cache; the arithmetic is the same element by element
    by_gene = values.flags.f_contiguous and not values.flags.c_contiguous
    # blocks sized for the steps after the first (kahan_add from_zero makes it in one pass): the
    # groups with a second row; with fine atlases far fewer than the groups
    width = max(1, _KAHAN_ELEMENTS // max(active[1] if len(active) > 1 else n_groups, 1))
    # as many blocks for each thread (each cell's sum is its own: any blocks, the same bits)
    width = max(1, -(-values.shape[1] // even_block_count(values.shape[1], width)))

    def run(start):  # one block of columns (independent of the others: on several threads)
        cols = slice(start, min(start + width, values.shape[1]))
        n_cols = cols.stop - cols.start
        with np.errstate(invalid="ignore", divide="ignore"):
            shape = (n_cols, n_groups) if by_gene else (n_groups, n_cols)
            total, carry = np.zeros(shape), np.zeros(shape)
            seen = None  # values counted one by one: made when a step needs it
            block = values.T[cols] if by_gene else None
            quick = np.zeros(n_groups, dtype=np.int64)  # quick steps of each group
            carry_zero = False  # whether every compensation is still the +0.0 it started at
            for k, n in enumerate(active):
                if by_gene:
                    x = np.asarray(block[:, steps[k]], dtype=np.float64)
                else:
                    x = np.asarray(values[steps[k], cols], dtype=np.float64)
                part = (slice(None), slice(n)) if by_gene else slice(n)
                # the groups adding a row after this one: the others' compensations are
                # never read again
                going_on = active[k + 1] if k + 1 < len(active) else 0
                keep = (slice(None), slice(going_on)) if by_gene else slice(going_on)
                if seen is None and kahan_add(total[part], carry[part], None, x,
                                              from_zero=k == 0, carry_zero=carry_zero,
                                              keep=keep, fallback=False):
                    quick[:n] += 1
                    carry_zero = k == 0  # (from zero, the compensations stay +0.0)
                    continue
                if seen is None:
                    seen = np.zeros(shape, dtype=np.int64)
                carry_zero = False
                quick[:n] += kahan_add(total[part], carry[part], seen[part], x)
            counts = quick if by_gene else quick[:, None]
            if seen is None:  # every value added at once: every count is its group's rows
                means = np.divide(total, counts.astype(np.float64), out=total)
            else:
                seen += counts
                means = kahan_mean(total, seen)
        out[targets, cols] = means.T if by_gene else means

    thread_map(run, range(0, values.shape[1], width))
    return out


class _RunningMean:
    """pandas' groupby mean over the rows of same-shaped tables stacked one after another,
    computed as the tables come (each cell: Kahan over the tables in order, NaN skipped).

    Rows that are NaN throughout (regions a donor has no sample in) add nothing and are
    skipped; the others are added a few rows at a time (in cache, on several threads).
    """

    def __init__(self, shape):
        self.total, self.carry = np.zeros(shape), np.zeros(shape)
        # values counted one by one (only where some table had NaN in a row it added: made
        # when first needed), and tables added to a row all at once
        self.seen: np.ndarray | None = None
        self.quick = np.zeros(shape[0], dtype=np.int32)

    def add(self, values: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Add a table: all rows, or row ``i`` of ``values`` to row ``rows[i]`` (increasing)."""
        n_cols = self.total.shape[1]
        values = np.asarray(values, dtype=np.float64)
        if rows is None:
            values = values.reshape(self.total.shape)
            rows = np.arange(len(values))
        rows = np.asarray(rows, dtype=np.intp)
        if values.shape != (len(rows), n_cols):
            raise ValueError(f"{values.shape} values for {len(rows)} rows of {n_cols} columns.")
        missing = np.isnan(values)  # (one pass: the rows to add and the pieces with NaN)
        used = np.flatnonzero(~missing.all(axis=1)) if n_cols else np.zeros(0, int)
        # runs of rows consecutive in both tables, cut into pieces of about _KAHAN_ELEMENTS
        step = max(1, _KAHAN_ELEMENTS // max(n_cols, 1))
        breaks = np.flatnonzero((np.diff(used) != 1) | (np.diff(rows[used]) != 1)) + 1
        pieces = []
        for run in np.split(used, breaks):
            for start in range(0, len(run), step):
                first, last = int(run[start]), int(run[min(start + step, len(run)) - 1])
                to = int(rows[first])
                pieces.append((slice(first, last + 1), slice(to, to + last - first + 1)))

        if self.seen is None and any(missing[src].any() for src, _ in pieces):
            self.seen = np.zeros(self.total.shape, dtype=np.int32)

        from_zero = not self.quick.any() and self.seen is None  # nothing added yet

        def add(piece):
            src, dst = piece
            seen = self.seen[dst] if self.seen is not None else None
            with np.errstate(invalid="ignore"):
                self.quick[dst] += kahan_add(self.total[dst], self.carry[dst], seen,
                                              values[src], from_zero=from_zero)

        thread_map(add, pieces)

    def mean(self) -> np.ndarray:
        if self.seen is None:  # one count a row: divide by a column, not a table of counts
            counts = self.quick.astype(np.float64)[:, None]
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.divide(self.total, counts)
            means[self.quick == 0] = np.nan
            return means
        seen = self.seen + self.quick[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return kahan_mean(self.total, np.broadcast_to(seen, self.total.shape))


#: Name -> grouped reduction (both skip NaN values).
AGG_METRICS: dict[str, GroupReducer] = {
    "mean": _group_mean,
    "median": _grouped("median"),
}

_NUMPY_EQUIVALENTS = {np.mean: "mean", np.nanmean: "mean",
                      np.median: "median", np.nanmedian: "median"}


def check_metric(metric) -> str | Callable:
    """Validate ``agg_metric``: return its registry name, or the callable itself.

    A callable must accept the ``axis`` keyword, reduce an N-d array to N-1 dimensions with it
    and to a scalar without it; otherwise (and for unknown names) :class:`MetricError`.
    """
    if isinstance(metric, str):
        if metric in AGG_METRICS:
            return metric
        raise MetricError(f"Unknown agg_metric {metric!r}: use one of {list(AGG_METRICS)} or a "
                          "callable accepting the `axis` keyword.")
    if not callable(metric):
        raise MetricError(f"agg_metric must be one of {list(AGG_METRICS)} or a callable, got "
                          f"{metric!r}.")
    try:
        if metric in _NUMPY_EQUIVALENTS:
            return _NUMPY_EQUIVALENTS[metric]
    except TypeError:  # unhashable callable
        pass
    probe = np.linspace(0.0, 1.0, 60).reshape(3, 4, 5)
    try:
        ok = (np.shape(metric(probe, axis=0)) == (4, 5) and np.ndim(metric(probe)) == 0)
    except Exception as err:  # any failure of a user function means it is unusable here
        raise MetricError(f"agg_metric {metric!r} failed on a test array ({err}); it must "
                          "accept the `axis` keyword and reduce along it.") from err
    if not ok:
        raise MetricError(f"agg_metric {metric!r} does not reduce along `axis`: it must turn an "
                          "N-d array into an (N-1)-d one with `axis` and into a scalar without.")
    return metric


def _reducer(metric) -> GroupReducer:
    checked = check_metric(metric)
    return AGG_METRICS[checked] if isinstance(checked, str) else _callable_reducer(checked)


# --------------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------------

def _sample_labels(frame: pd.DataFrame) -> np.ndarray:
    index = frame.index
    if isinstance(index, pd.MultiIndex):
        if "label" not in index.names:
            raise ValueError(f"Expression frame has index levels {list(index.names)} but no "
                             "'label' level holding the region of each sample.")
        index = index.get_level_values("label")
    return np.asarray(index)


def _label_index(values: np.ndarray) -> pd.Index:
    if values.dtype.kind == "f" and len(values) and np.all(np.mod(values, 1) == 0):
        values = values.astype(np.int64)
    return pd.Index(values, name="label")


def group_by_label(frame: pd.DataFrame, labels: Sequence | None = None,
                   agg_metric=DEFAULTS["agg_metric"]) -> pd.DataFrame:
    """Reduce the samples (rows) of ``frame`` that share a region label to one row.

    Rows are the sorted union of the labels present and ``labels`` (regions without samples
    are NaN rows); label 0 and missing labels are left out. Index ``'label'``, same columns.
    """
    out, every = _label_table(frame, labels, agg_metric)
    return pd.DataFrame(out, index=_label_index(every), columns=frame.columns, copy=False)


def _label_table(frame: pd.DataFrame, labels, agg_metric) -> tuple[np.ndarray, np.ndarray]:
    """:func:`group_by_label` as an array and its row labels."""
    reducer = _reducer(agg_metric)
    sample_labels = _sample_labels(frame)
    keep = pd.notna(sample_labels) & (sample_labels != 0)
    kept = sample_labels[keep]
    every = np.unique(kept)
    if labels is not None:
        wanted = np.asarray(labels).ravel()
        wanted = wanted[pd.notna(wanted)]
        every = np.union1d(every, wanted)
    every = every[every != 0]
    out = np.full((len(every), frame.shape[1]), np.nan, dtype=np.float64)
    if kept.size:
        present, codes = np.unique(np.searchsorted(every, kept), return_inverse=True)
        values = frame.to_numpy()
        if values.dtype.kind not in "fiu":
            values = values.astype(np.float64)
        if reducer is _group_mean:  # writes its rows in place
            _group_mean(values, np.flatnonzero(keep), codes.ravel(), len(present), out=out,
                        where=present)
        else:
            out[present] = reducer(values, np.flatnonzero(keep), codes.ravel(), len(present))
    return out, every


def _as_frames(microarray) -> tuple[list[pd.DataFrame], list | None]:
    if isinstance(microarray, pd.DataFrame):
        return [microarray], None
    if isinstance(microarray, Mapping) and microarray:
        return list(microarray.values()), list(microarray.keys())
    if isinstance(microarray, (list, tuple)) and microarray and all(
            isinstance(m, pd.DataFrame) for m in microarray):
        return list(microarray), None
    raise ValueError("Expression data must be a DataFrame, or a non-empty list or dict of "
                     f"DataFrames (one per donor), got {type(microarray).__name__}.")


def _check_region_agg(region_agg) -> str:
    if region_agg not in REGION_AGGS:
        raise ValueError(f"Unknown region_agg {region_agg!r}: use one of {list(REGION_AGGS)}.")
    return region_agg


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    columns = frames[0].columns
    for frame in frames[1:]:
        if not frame.columns.equals(columns):
            columns = columns.union(frame.columns, sort=False)
    if len(frames) == 1:
        return frames[0]
    return pd.concat([f if f.columns.equals(columns) else f.reindex(columns=columns)
                      for f in frames])


def aggregate_regions(microarray, labels: Sequence | None = None,
                      region_agg: str = DEFAULTS["region_agg"], agg_metric=DEFAULTS["agg_metric"]):
    """First stage of :func:`aggregate_samples`: region x gene tables before donors are merged.

    ``region_agg='donors'`` gives one table per donor (a dict if ``microarray`` is a dict, else
    a list); ``'samples'`` pools every donor's samples into a single table (a one-item list).
    """
    region_agg = _check_region_agg(region_agg)
    check_metric(agg_metric)
    frames, keys = _as_frames(microarray)
    if region_agg == "samples":
        return [group_by_label(_concat(frames), labels=labels, agg_metric=agg_metric)]
    tables = [group_by_label(f, labels=labels, agg_metric=agg_metric) for f in frames]
    return dict(zip(keys, tables)) if keys is not None else tables


def incomplete_genes(expression: pd.DataFrame) -> pd.Index:
    """Genes with a NaN in a region (row) that is not entirely NaN."""
    values = expression.to_numpy(dtype=np.float64)
    missing = np.isnan(values)
    return expression.columns[missing[~missing.all(axis=1)].any(axis=0)]


def _same_regions(first: pd.DataFrame, table: pd.DataFrame) -> bool:
    """Whether ``table`` has ``first``'s rows and columns, and those rows are a sorted list
    of distinct region labels (never 0): stacking such tables and grouping by label then
    averages cell by cell, in table order."""
    return (table.index.equals(first.index) and table.columns.equals(first.columns)
            and _label_rows(first.index))


def _label_rows(index: pd.Index) -> bool:
    """Whether ``index`` is a sorted list of distinct, non-zero integer region labels."""
    return (not isinstance(index, pd.MultiIndex) and index.dtype.kind in "iu"
            and index.is_unique and index.is_monotonic_increasing and not (index == 0).any())


def _drop_incomplete(merged: pd.DataFrame) -> tuple[pd.DataFrame, pd.Index]:
    dropped = incomplete_genes(merged)
    if len(dropped):
        LGR.warning("Dropping %d of %d genes that are undefined in some region after "
                    "aggregation (normalization could not handle them).", len(dropped),
                    merged.shape[1])
        merged = merged.drop(columns=dropped)
    return merged, dropped


class DonorMeans:
    """:func:`mean_over_donors`, fed one donor at a time: each donor's samples are reduced to
    a region table that is folded into a running mean and dropped.

    :meth:`add` raises :class:`ValueError` for a donor whose table does not have the first
    donor's regions and genes (then the tables must be stacked: :func:`aggregate_donors`).
    """

    def __init__(self, labels: Sequence | None = None):
        self.labels = labels
        self.index: pd.Index | None = None
        self.columns: pd.Index | None = None
        self.running: _RunningMean | None = None

    def add(self, frame: pd.DataFrame, extra: pd.DataFrame | None = None) -> None:
        """Fold in one donor: ``frame`` (samples x genes, index level ``label``) and the
        ``extra`` rows to append to its samples (regions filled by ``missing``)."""
        self.fold(self.table(frame, extra, first=self.index is None))

    def table(self, frame: pd.DataFrame, extra: pd.DataFrame | None = None, *,
              first: bool) -> pd.DataFrame:
        """One donor's region table, to be passed to :meth:`fold` (``first``: for the first
        donor folded). Reads nothing of ``self`` but the labels: donors' tables may be made
        side by side on several threads, then folded in order."""
        if first:
            return _group_with_extra(frame, extra, self.labels)
        # later donors: a table of the regions the donor has (its samples and extra rows)
        # only, added into its rows of the whole; regions it lacks would be NaN throughout
        # and add nothing. Fine atlases have many such regions per donor.
        wanted = None if extra is None or not len(extra) else extra.index
        return _group_with_extra(frame, extra, wanted)

    def fold(self, table: pd.DataFrame) -> None:
        """Add a donor's :meth:`table` into the running mean (donors in order: the sums are
        rounded in that order). The first donor's table may hold only the regions it has (a
        table made with ``first=False``, e.g. in another process): it is widened to every
        label, as ``first=True`` makes it."""
        if self.index is None:
            table = self._widened(table)
            if not _label_rows(table.index):
                raise ValueError("Region tables need sorted, distinct, non-zero integer labels "
                                 "to be averaged donor by donor.")
            self.index, self.columns = table.index, table.columns
            self.running = _RunningMean(table.shape)
            self.running.add(table.to_numpy())
            return
        at = self.index.get_indexer(table.index) if table.index.is_unique else None
        if (at is None or (at < 0).any() or not table.columns.equals(self.columns)
                or (len(at) and (np.diff(at) <= 0).any())):
            raise ValueError("The donors' region tables differ in regions or genes.")
        self.running.add(table.to_numpy(), rows=at)

    def _widened(self, table: pd.DataFrame) -> pd.DataFrame:
        """``table`` with a NaN row for each of :attr:`labels` it lacks (the rows of
        :func:`group_by_label` given those labels)."""
        if self.labels is None:
            return table
        wanted = np.asarray(self.labels).ravel()
        every = np.union1d(np.asarray(table.index), wanted[pd.notna(wanted)])
        every = every[every != 0]
        if len(every) == len(table):
            return table
        return table.reindex(_label_index(every))

    def result(self, columns=None) -> tuple[pd.DataFrame, pd.Index]:
        """The merged table, without the genes left incomplete, and those genes; with
        ``columns`` (positions), its genes in that order."""
        means, self.running = self.running.mean(), None
        merged = pd.DataFrame(means, index=_label_index(np.asarray(self.index)),
                              columns=self.columns, copy=False)
        if columns is not None:
            merged = merged.iloc[:, columns]
        return _drop_incomplete(merged)


def mean_over_donors(microarray, labels: Sequence | None = None, extra=None
                     ) -> tuple[pd.DataFrame, pd.Index]:
    """:func:`aggregate_samples` with ``region_agg='donors'`` and ``agg_metric='mean'``, donor
    by donor; also returns the genes dropped.

    Each donor's region table is folded into a running mean and dropped, so only one is held
    at a time (with ~1,000 regions they are large). ``extra`` (optional, a list or dict like
    ``microarray``) holds rows to add to each donor's samples, indexed by label (regions
    filled by ``missing``). The numbers are those of appending the extra rows to the samples,
    stacking the donors' tables and grouping by label; when the donors' tables differ in
    regions or genes, that is what is done.
    """
    frames, keys = _as_frames(microarray)
    if extra is None:
        extras = [None] * len(frames)
    else:
        extras = [extra.get(k) for k in keys] if keys is not None else list(extra)
    means = DonorMeans(labels)
    try:
        for frame, rows in zip(frames, extras):
            means.add(frame, rows)
    except ValueError:
        with_rows = [f if r is None or not len(r) else pd.concat([f, r.astype(f.dtypes.iloc[0])])
                     for f, r in zip(frames, extras)]
        return aggregate_donors(aggregate_regions(with_rows, labels=labels), agg_metric="mean")
    return means.result()


def _group_with_extra(frame: pd.DataFrame, rows, labels) -> pd.DataFrame:
    """``group_by_label`` (mean) of ``frame`` with the rows ``rows`` appended.

    A row whose label no sample of ``frame`` has is a group of its own, whose mean is the row
    itself plus 0.0 (pandas' sum starts at 0.0, which turns -0.0 into 0.0); so the rows need
    not be appended to (a copy of) the samples. Otherwise they are.
    """
    if rows is None or not len(rows):
        return group_by_label(frame, labels=labels, agg_metric="mean")
    rows = rows.astype(frame.dtypes.iloc[0])
    values, every = _label_table(frame, labels, "mean")
    at = pd.Index(every).get_indexer(rows.index)
    if (rows.columns.equals(frame.columns) and rows.index.is_unique and (at >= 0).all()
            and not np.isin(np.asarray(rows.index), _sample_labels(frame)).any()):
        values[at] = rows.to_numpy(dtype=np.float64) + 0.0
        return pd.DataFrame(values, index=_label_index(every), columns=frame.columns,
                            copy=False)
    return group_by_label(pd.concat([frame, rows]), labels=labels, agg_metric="mean")


def aggregate_donors(tables, agg_metric=DEFAULTS["agg_metric"]) -> tuple[pd.DataFrame, pd.Index]:
    """Merge per-donor region x gene tables into one and drop the genes left incomplete.

    Each region's value is ``agg_metric`` over the donors that have one (NaN skipped). Genes
    still NaN in a region that has data (e.g. a gene normalization could not handle in the
    only donor sampling that region) are dropped, as abagen does. Returns the table and the
    dropped genes, so callers can report ``len(dropped)``.
    """
    frames, _ = _as_frames(tables)
    if check_metric(agg_metric) == "mean" and all(_same_regions(frames[0], f) for f in frames):
        running = _RunningMean(frames[0].shape)
        for frame in frames:
            running.add(frame.to_numpy())
        merged = pd.DataFrame(running.mean(), index=_label_index(np.asarray(frames[0].index)),
                              columns=frames[0].columns, copy=False)
    else:
        merged = group_by_label(_concat(frames), agg_metric=agg_metric)
    return _drop_incomplete(merged)


def aggregate_samples(microarray, labels: Sequence | None = None,
                      region_agg: str = DEFAULTS["region_agg"], agg_metric=DEFAULTS["agg_metric"],
                      return_donors: bool = False):
    """Aggregate samples assigned to the same region (abagen's ``aggregate_samples``).

    Parameters
    ----------
    microarray : list or dict of (S, G) DataFrame
        One frame per donor, samples x genes, index (or index level) ``'label'`` giving each
        sample's region (0 = none).
    labels : array_like, optional
        Every region of the atlas; regions without samples become NaN rows.
    region_agg : {'donors', 'samples'}
        ``'donors'``: reduce each donor's samples per region, then reduce across donors;
        ``'samples'``: reduce all donors' samples of a region at once.
    agg_metric : {'mean', 'median'} or callable accepting ``axis``
    return_donors : bool
        Return the per-donor tables (list, or dict for dict input) instead of merging them;
        only with ``region_agg='donors'``.

    Returns
    -------
    (R, G) DataFrame with index ``'label'`` (sorted), the input's columns minus the genes
    dropped for being undefined in some region (see :func:`aggregate_donors`); or the
    per-donor tables, without dropping genes.
    """
    region_agg = _check_region_agg(region_agg)
    if return_donors and region_agg == "samples":
        raise ValueError("return_donors=True needs region_agg='donors': with "
                         "region_agg='samples' donors are pooled before aggregation.")
    if not return_donors and region_agg == "donors" and check_metric(agg_metric) == "mean":
        return mean_over_donors(microarray, labels=labels)[0]
    tables = aggregate_regions(microarray, labels=labels, region_agg=region_agg,
                               agg_metric=agg_metric)
    if return_donors:
        return tables
    merged, _ = aggregate_donors(tables, agg_metric=agg_metric)
    return merged


__all__ = [
    "AGG_METRICS",
    "DonorMeans",
    "MetricError",
    "REGION_AGGS",
    "aggregate_donors",
    "aggregate_regions",
    "aggregate_samples",
    "check_metric",
    "group_by_label",
    "incomplete_genes",
    "mean_over_donors",
]
