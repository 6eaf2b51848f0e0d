"""Compiled (numba) grouped means and medians of one block of genes, for
:class:`~ahba_app.multiverse.variants.SampleBlocks`.

The aggregation of a normalization group reduces thousands of small groups of samples (a
region's samples of one donor: a few rows each). With numpy every Kahan step and every sort of
short rows is a call over a few thousand values, and the calls' own cost dominated; here one
compiled pass over each region computes the four tables (``region_agg`` donors or samples x
``agg_metric`` mean or median) from the rows where they are, without gathering them first.

The arithmetic is the numpy path's, operation by operation, so the tables are bit for bit
those of :func:`ahba_app.aggregate._group_mean` / :class:`ahba_app.aggregate._RunningMean`
(pandas' groupby mean: Kahan compensation in row order, a compensation that turns NaN set to
0, the sum divided by the count) and of the medians (the middle value, or the two middle
values added and halved). Only additions, subtractions and divisions: no fused multiply-add
can change a rounding, and numba compiles without fast-math by default.

numba compiles the kernel on its first call in a process (about a second, measured in the
README's "Multiverse runs"); nothing is cached on disk (``cache=False``): the package folder
of a container is read-only, and no other folder is written without being asked.
"""

from __future__ import annotations

import numba
import numpy as np

from .._blocks import thread_map

__all__ = ["networks", "region_tables", "sorting_network"]


def sorting_network(n: int) -> np.ndarray:
    """The comparators ``(low, high)`` of Batcher's odd-even merge sort of ``n`` values, in
    order: (n', 2) intp. Putting the smaller value of each pair at ``low`` and the larger at
    ``high``, one pair after the other, sorts any ``n`` values (the network of the next power
    of two, without the comparators that reach past ``n``: those would compare with values
    larger than all, which stay where they are)."""
    size = 1 << max(0, int(n) - 1).bit_length()
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return np.asarray(pairs, dtype=np.intp).reshape(-1, 2)


@numba.njit(nogil=True, cache=False)
def _kahan_rows(joined, source, start, stop, g0, g1, total, carry):
    """Kahan sums (pandas' groupby mean's) of the rows ``source[start:stop]`` of ``joined``,
    columns g0..g1, into ``total[:g1 - g0]`` (``carry``: the compensations)."""
    n = g1 - g0
    total[:n] = 0.0
    carry[:n] = 0.0
    for i in range(start, stop):
        row = joined[source[i], g0:g1]
        for k in range(n):
            y = row[k] - carry[k]
            t = total[k] + y
            c = (t - total[k]) - y
            carry[k] = c if c == c else 0.0
            total[k] = t


@numba.njit(nogil=True, cache=False)
def _medians(rows, n, pairs, first, out):
    """The median of each column of ``rows[:n]`` into ``out``: the rows sorted column by
    column by the network ``pairs[first[n]:first[n + 1]]``, then the middle row, or the two
    middle rows added and halved."""
    width = rows.shape[1]
    for p in range(first[n], first[n + 1]):
        a, b = rows[pairs[p, 0]], rows[pairs[p, 1]]
        for k in range(width):
            x, y = a[k], b[k]
            a[k] = y if y < x else x
            b[k] = x if y < x else y
    low, high = (n - 1) // 2, n // 2
    if low == high:
        out[:] = rows[low]
    else:
        for k in range(width):
            out[k] = (rows[low, k] + rows[high, k]) / 2


@numba.njit(nogil=True, cache=False)
def _kernel(joined, source, block_starts, block_sizes, region_blocks, region_n_blocks,
            pairs, first, g0, g1, donors_mean, samples_mean, donors_median, samples_median):
    width = g1 - g0
    total, carry = np.empty(width), np.empty(width)
    run_total, run_carry = np.empty(width), np.empty(width)
    want_dmean, want_smean = donors_mean.shape[0] > 0, samples_mean.shape[0] > 0
    want_dmed, want_smed = donors_median.shape[0] > 0, samples_median.shape[0] > 0
    longest, most = 1, 1
    for r in range(region_blocks.shape[0]):
        b0, nb = region_blocks[r], region_n_blocks[r]
        n = block_starts[b0 + nb - 1] + block_sizes[b0 + nb - 1] - block_starts[b0]
        longest, most = max(longest, n), max(most, nb)
    rows = np.empty((longest, width))
    per_block = np.empty((most, width))
    for r in range(region_blocks.shape[0]):
        b0, nb = region_blocks[r], region_n_blocks[r]
        start = block_starts[b0]
        stop = block_starts[b0 + nb - 1] + block_sizes[b0 + nb - 1]
        n = stop - start
        nan = False
        for i in range(n):  # a NaN among the region's values: give up
            row = joined[source[start + i], g0:g1]
            for k in range(width):
                nan |= row[k] != row[k]
        if nan:
            return False
        if want_smean:
            _kahan_rows(joined, source, start, stop, g0, g1, total, carry)
            for k in range(width):
                samples_mean[r, g0 + k] = total[k] / n
        if want_dmean:
            run_total[:] = 0.0
            run_carry[:] = 0.0
            for b in range(b0, b0 + nb):
                s = block_starts[b]
                _kahan_rows(joined, source, s, s + block_sizes[b], g0, g1, total, carry)
                for k in range(width):
                    y = total[k] / block_sizes[b] - run_carry[k]
                    t = run_total[k] + y
                    c = (t - run_total[k]) - y
                    run_carry[k] = c if c == c else 0.0
                    run_total[k] = t
            for k in range(width):
                donors_mean[r, g0 + k] = run_total[k] / nb
        if want_dmed:
            for b in range(b0, b0 + nb):
                s, m = block_starts[b], block_sizes[b]
                for i in range(m):
                    rows[i] = joined[source[s + i], g0:g1]
                _medians(rows, m, pairs, first, per_block[b - b0])
            _medians(per_block, nb, pairs, first, donors_median[r, g0:g1])
        if want_smed:
            for i in range(n):
                rows[i] = joined[source[start + i], g0:g1]
            _medians(rows, n, pairs, first, samples_median[r, g0:g1])
    return True


def networks(sizes) -> tuple[np.ndarray, np.ndarray]:
    """The sorting networks of every size up to ``max(sizes)`` that ``sizes`` holds, for
    :func:`region_tables`: their comparators laid end to end, and where each size's start
    (size ``n``: ``pairs[first[n]:first[n + 1]]``; sizes not asked for have none)."""
    sizes = set(int(n) for n in sizes)
    top = max(sizes, default=0)
    parts = [sorting_network(n) if n in sizes else np.zeros((0, 2), np.intp)
             for n in range(top + 1)]
    first = np.zeros(top + 2, dtype=np.intp)
    first[1:] = np.cumsum([len(part) for part in parts])
    return np.concatenate(parts), first


#: Genes per piece of a block in :func:`region_tables`: a region's rows of those genes stay
#: in cache while its four tables are computed.
_PIECE = 256


def region_tables(joined: np.ndarray, source: np.ndarray, block_starts, block_sizes,
                  region_blocks, region_n_blocks, kinds, nets=None,
                  n_threads: int = 1) -> dict | None:
    """``{(region_agg, agg_metric): (R, G) table}`` for the ``kinds`` wanted, from the rows
    ``joined[source]`` (samples x genes) ordered by region, then donor, then row: block ``b``
    is the rows ``block_starts[b]`` .. + ``block_sizes[b]`` of that order (one donor in one
    region), region ``r`` the ``region_n_blocks[r]`` blocks from ``region_blocks[r]``.
    ``nets``: :func:`networks` of the block sizes, the region sizes and the numbers of blocks
    (made here when not given). None when a value used is NaN."""
    joined = np.ascontiguousarray(joined, dtype=np.float64)
    args = [np.asarray(a, dtype=np.intp) for a in (source, block_starts, block_sizes,
                                                    region_blocks, region_n_blocks)]
    n_regions, n_genes = len(args[3]), joined.shape[1]
    if nets is None:
        ends = args[1][args[3] + args[4] - 1] + args[2][args[3] + args[4] - 1]
        nets = networks(np.concatenate([args[2], ends - args[1][args[3]], args[4]]))
    empty = np.empty((0, 0))
    out = {kind: (np.empty((n_regions, n_genes)) if kind in kinds else empty)
           for kind in (("donors", "mean"), ("samples", "mean"), ("donors", "median"),
                        ("samples", "median"))}

    def run(g0):
        return _kernel(joined, *args, *nets, g0, min(g0 + _PIECE, n_genes), *out.values())

    if not all(thread_map(run, range(0, n_genes, _PIECE), threads=n_threads)):
        return None
    return {kind: table for kind, table in out.items() if kind in kinds}
