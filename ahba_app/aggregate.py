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

LGR = logging.getLogger(__name__)

#: Elements per float64 working block (32 MB).
_BLOCK_ELEMENTS = 1 << 22

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


#: Name -> grouped reduction (both skip NaN values).
AGG_METRICS: dict[str, GroupReducer] = {
    "mean": _grouped("mean"),
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
                   agg_metric="mean") -> pd.DataFrame:
    """Reduce the samples (rows) of ``frame`` that share a region label to one row.

    Rows are the sorted union of the labels present and ``labels`` (regions without samples
    are NaN rows); label 0 and missing labels are left out. Index ``'label'``, same columns.
    """
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
        out[present] = reducer(values, np.flatnonzero(keep), codes.ravel(), len(present))
    return pd.DataFrame(out, index=_label_index(every), columns=frame.columns, copy=False)


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


def aggregate_regions(microarray, labels: Sequence | None = None, region_agg: str = "donors",
                      agg_metric="mean"):
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


def aggregate_donors(tables, agg_metric="mean") -> tuple[pd.DataFrame, pd.Index]:
    """Merge per-donor region x gene tables into one and drop the genes left incomplete.

    Each region's value is ``agg_metric`` over the donors that have one (NaN skipped). Genes
    still NaN in a region that has data (e.g. a gene normalization could not handle in the
    only donor sampling that region) are dropped, as abagen does. Returns the table and the
    dropped genes, so callers can report ``len(dropped)``.
    """
    frames, _ = _as_frames(tables)
    merged = group_by_label(_concat(frames), agg_metric=agg_metric)
    dropped = incomplete_genes(merged)
    if len(dropped):
        LGR.warning("Dropping %d of %d genes that are undefined in some region after "
                    "aggregation (normalization could not handle them).", len(dropped),
                    merged.shape[1])
        merged = merged.drop(columns=dropped)
    return merged, dropped


def aggregate_samples(microarray, labels: Sequence | None = None, region_agg: str = "donors",
                      agg_metric="mean", return_donors: bool = False):
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
    tables = aggregate_regions(microarray, labels=labels, region_agg=region_agg,
                               agg_metric=agg_metric)
    if return_donors:
        return tables
    merged, _ = aggregate_donors(tables, agg_metric=agg_metric)
    return merged


__all__ = [
    "AGG_METRICS",
    "MetricError",
    "REGION_AGGS",
    "aggregate_donors",
    "aggregate_regions",
    "aggregate_samples",
    "check_metric",
    "group_by_label",
    "incomplete_genes",
]
