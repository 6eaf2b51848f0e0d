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
README's "Multiverse runs"); nothing is cached in the package's folder (``cache=False``): a
container's is read-only. The engine's units cache them in the work folder the user gave
(:func:`ahba_app.multiverse.sweep.kernel_cache`).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .._blocks import thread_map
from ..normalize import IQR_NORMAL

__all__ = ["GENE_NORMS", "gene_normalized", "median_network", "networks", "region_tables",
           "sorting_network"]


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


def median_network(n: int) -> np.ndarray:
    """The comparators of :func:`sorting_network` that can move a value to the middle
    positions ``(n - 1) // 2`` and ``n // 2``, in order: they leave there the values a sort
    leaves (a comparator whose outputs no later kept comparator nor a middle position reads
    changes nothing there), with about a fifth fewer comparators. The other positions are
    not sorted."""
    pairs = sorting_network(n)
    needed = {(n - 1) // 2, n // 2}
    keep = np.zeros(len(pairs), dtype=bool)
    for p in range(len(pairs) - 1, -1, -1):  # from the last comparator back
        low, high = int(pairs[p, 0]), int(pairs[p, 1])
        if low in needed or high in needed:
            keep[p] = True
            needed.update((low, high))
    return pairs[keep]


@numba.njit(nogil=True, cache=False)
def _kahan_add(row, total, carry):
    """One Kahan step (pandas' groupby mean's) of each column: ``row`` added to ``total``
    (``carry``: the compensations; one that turns NaN is set to 0)."""
    for k in range(row.shape[0]):
        y = row[k] - carry[k]
        t = total[k] + y
        c = (t - total[k]) - y
        carry[k] = c if c == c else 0.0
        total[k] = t


@numba.njit(nogil=True, cache=False)
def _medians(rows, n, pairs, first, out):
    """The median of each column of ``rows[:n]`` into ``out``: the middle rows put in place
    column by column by the network ``pairs[first[n]:first[n + 1]]`` (:func:`median_network`;
    ``rows`` is reordered), then the middle row, or the two middle rows added and halved."""
    width = rows.shape[1]
    for p in range(first[n], first[n + 1]):
        a, b = rows[pairs[p, 0]], rows[pairs[p, 1]]
        for k in range(width):
            x, y = a[k], b[k]
            a[k] = y if y < x else x
            b[k] = x if y < x else y
    low, high = (n - 1) // 2, n // 2
    if low == high:
        for k in range(width):
            out[k] = rows[low, k]
    else:
        for k in range(width):
            out[k] = (rows[low, k] + rows[high, k]) / 2


@numba.njit(nogil=True, cache=False)
def _kernel(joined, source, block_starts, block_sizes, region_blocks, region_n_blocks,
            pairs, first, g0, g1, donors_mean, samples_mean, donors_median, samples_median):
    width = g1 - g0
    total, carry = np.empty(width), np.empty(width)
    block_total, block_carry = np.empty(width), np.empty(width)
    run_total, run_carry = np.empty(width), np.empty(width)
    want_dmean, want_smean = donors_mean.shape[0] > 0, samples_mean.shape[0] > 0
    want_dmed, want_smed = donors_median.shape[0] > 0, samples_median.shape[0] > 0
    longest, most, widest = 1, 1, 1
    for r in range(region_blocks.shape[0]):
        b0, nb = region_blocks[r], region_n_blocks[r]
        n = block_starts[b0 + nb - 1] + block_sizes[b0 + nb - 1] - block_starts[b0]
        longest, most = max(longest, n), max(most, nb)
    for b in range(block_sizes.shape[0]):
        widest = max(widest, block_sizes[b])
    rows = np.empty((longest, width))
    block_rows = np.empty((widest, width))
    per_block = np.empty((most, width))
    for r in range(region_blocks.shape[0]):
        b0, nb = region_blocks[r], region_n_blocks[r]
        start = block_starts[b0]
        stop = block_starts[b0 + nb - 1] + block_sizes[b0 + nb - 1]
        n = stop - start
        # one pass over the region's rows, in order: the samples' Kahan sums, each block's,
        # and the copy the medians reorder (a NaN found on the way: given up below)
        nan = False
        signed = False  # a -0.0 among them
        copy = want_dmed or want_smed
        for k in range(width):
            total[k] = 0.0
            carry[k] = 0.0
            run_total[k] = 0.0
            run_carry[k] = 0.0
        for b in range(b0, b0 + nb):
            s, m = block_starts[b], block_sizes[b]
            for k in range(width):
                block_total[k] = 0.0
                block_carry[k] = 0.0
            for i in range(s, s + m):
                row = joined[source[i], g0:g1]
                if want_smean:
                    _kahan_add(row, total, carry)
                if want_dmean:
                    _kahan_add(row, block_total, block_carry)
                if copy:
                    for k in range(width):
                        x = row[k]
                        nan |= x != x
                        signed |= (x == 0.0) & (math.copysign(1.0, x) < 0.0)
                        rows[i - start, k] = x
                else:
                    for k in range(width):
                        nan |= row[k] != row[k]
            if want_dmean:  # the donors' running mean, in donor order
                for k in range(width):
                    y = block_total[k] / m - run_carry[k]
                    t = run_total[k] + y
                    c = (t - run_total[k]) - y
                    run_carry[k] = c if c == c else 0.0
                    run_total[k] = t
        if nan:
            return False
        if want_smean:
            for k in range(width):
                samples_mean[r, g0 + k] = total[k] / n
        if want_dmean:
            for k in range(width):
                donors_mean[r, g0 + k] = run_total[k] / nb
        if want_dmed:
            # Each block's network reorders the block's own rows, unless the samples' median
            # follows: its network then reads them in another order, and where a -0.0 and a
            # 0.0 tie which of them it leaves in the middle depends on that order (without
            # one, the middle values are the same bits whatever the order: no NaN here)
            own = not (want_smed and signed)
            for b in range(b0, b0 + nb):
                s, m = block_starts[b] - start, block_sizes[b]
                if own:
                    _medians(rows[s:s + m], m, pairs, first, per_block[b - b0])
                    continue
                for i in range(m):  # (a copy: the samples' median reads the rows as they are)
                    for k in range(width):
                        block_rows[i, k] = rows[s + i, k]
                _medians(block_rows, m, pairs, first, per_block[b - b0])
            _medians(per_block, nb, pairs, first, donors_median[r, g0:g1])
        if want_smed:
            _medians(rows, n, pairs, first, samples_median[r, g0:g1])
    return True


def networks(sizes, known: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The median networks (:func:`median_network`) of every size up to ``max(sizes)`` that
    ``sizes`` holds, for :func:`region_tables`: their comparators laid end to end, and where
    each size's start (size ``n``: ``pairs[first[n]:first[n + 1]]``; sizes not asked for have
    none). ``known``: networks already made (size -> :func:`median_network`), used and added
    to."""
    sizes = set(int(n) for n in sizes)
    top = max(sizes, default=0)
    known = {} if known is None else known
    for n in sizes - set(known):
        known[n] = median_network(n)
    parts = [known[n] if n in sizes else np.zeros((0, 2), np.intp) for n in range(top + 1)]
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


# ---------------------------------------------------------------------------------------------
# gene normalization ('scaled_robust_sigmoid') of a block of genes: each donor's kept samples,
# within classes, with the arithmetic of ahba_app.normalize, operation by operation
# ---------------------------------------------------------------------------------------------
@numba.njit(nogil=True, cache=False)
def _shell_sort(a, lo, hi):
    """``a[lo:hi]`` sorted in place (finite values; a few lines to compile, unlike numba's
    own sort: most calls sort a bucket of two or three values)."""
    gap = 1
    while gap < (hi - lo) // 3:
        gap = 3 * gap + 1
    while gap >= 1:
        for i in range(lo + gap, hi):
            x = a[i]
            j = i
            while j - gap >= lo and a[j - gap] > x:
                a[j] = a[j - gap]
                j -= gap
            a[j] = x
        gap //= 3


@numba.njit(nogil=True, cache=False)
def _select(values, n, low, high, want, got, keys, counts, pool, found):
    """``got[j]``: the value a sort of ``values[:n]`` puts at position ``want[j]`` (``want``
    ascending; values finite). Each value gets a bucket, ``floor((x - low) * buckets /
    (high - low))``, monotone in ``x``: a bucket's values lie between those of the buckets
    below and above it, so counting them tells which bucket holds each position and its rank
    there; only those buckets' values are then sorted. The numbers are the order statistics
    themselves, however they are found. ``low``, ``high``: the smallest and largest value.
    ``keys``, ``counts`` (int32), ``pool``: working arrays of ``n`` values; ``found``: one of
    (4, ``want``'s length), intp (each wanted position's bucket, rank, and where its bucket's
    values go in ``pool``)."""
    n_buckets = n // 2
    scale = n_buckets / (high - low) if high > low else 0.0
    if n < 32 or not (scale > 0.0 and scale < np.inf):  # short, or all equal: a sort
        for i in range(n):
            pool[i] = values[i]
        _shell_sort(pool, 0, n)
        for j in range(want.shape[0]):
            got[j] = pool[want[j]]
        return
    # the keys in a loop of their own (vectorized), then counted
    for i in range(n):
        k = int((values[i] - low) * scale)
        keys[i] = n_buckets if k > n_buckets else k
    for b in range(n_buckets + 1):
        counts[b] = 0
    for i in range(n):
        counts[keys[i]] += 1
    m = want.shape[0]
    holder, rank, first, size = found[0], found[1], found[2], found[3]
    # the bucket of each wanted position and its rank there: whole runs of eight buckets
    # skipped while the position lies beyond them (their sum vectorizes)
    j, total, b = 0, 0, 0
    while j < m:
        while b + 8 <= n_buckets + 1:
            run = 0
            for e in range(b, b + 8):
                run += counts[e]
            if want[j] < total + run:
                break
            total += run
            b += 8
        c = counts[b]
        while j < m and want[j] < total + c:
            holder[j], rank[j] = b, want[j] - total
            j += 1
        total += c
        b += 1
    # the wanted buckets' values side by side in ``pool``: a wanted bucket's count becomes
    # -1 - (where its next value goes)
    at = 0
    for j in range(m):
        b = holder[j]
        if j == 0 or b != holder[j - 1]:
            first[j], size[j] = at, counts[b]
            counts[b] = -1 - at
            at += size[j]
        else:
            first[j], size[j] = first[j - 1], size[j - 1]
    for i in range(n):
        c = counts[keys[i]]
        if c < 0:
            pool[-1 - c] = values[i]
            counts[keys[i]] = c - 1
    for j in range(m):
        if j == 0 or holder[j] != holder[j - 1]:
            _shell_sort(pool, first[j], first[j] + size[j])
        got[j] = pool[first[j] + rank[j]]


@numba.njit(nogil=True, cache=False)
def _at(want, got, position):
    for j in range(want.shape[0]):
        if want[j] == position:
            return got[j]
    return np.nan


@numba.njit(nogil=True, cache=False)
def _quantile(want, got, n, q):
    """:func:`ahba_app.normalize._quantile` of a column of ``n`` whose order statistics at
    the positions ``want`` are ``got``."""
    position = (n - 1) * q
    below = min(int(position), n - 1)  # (floor: not negative)
    above = min(below + 1, n - 1)
    weight = position - below
    a, b = _at(want, got, below), _at(want, got, above)
    step = b - a
    return b - step * (1.0 - weight) if weight >= 0.5 else a + step * weight


@numba.njit(nogil=True, cache=False)
def _longest(class_starts):
    """The number of samples of the largest class (at least 1)."""
    longest = 1
    for c in range(class_starts.shape[0] - 1):
        longest = max(longest, class_starts[c + 1] - class_starts[c])
    return longest


@numba.njit(nogil=True, cache=False)
def _range(a, n, bounds):
    """The smallest and largest of ``a[:n]`` (n >= 1) into ``bounds``; False when one is not
    finite. Four running minima and maxima, combined at the end: one chain of compares waited
    for the one before. (Which of two equal zeros a bound keeps can depend on that order: the
    callers use the bounds as numbers, or hold no -0.0.)"""
    x = a[0]
    finite = True
    l0, l1, l2, l3 = x, x, x, x
    h0, h1, h2, h3 = x, x, x, x
    i = 0
    while i + 4 <= n:
        x0, x1, x2, x3 = a[i], a[i + 1], a[i + 2], a[i + 3]
        finite &= (x0 - x0 == 0.0) & (x1 - x1 == 0.0) & (x2 - x2 == 0.0) & (x3 - x3 == 0.0)
        l0 = x0 if x0 < l0 else l0
        l1 = x1 if x1 < l1 else l1
        l2 = x2 if x2 < l2 else l2
        l3 = x3 if x3 < l3 else l3
        h0 = x0 if x0 > h0 else h0
        h1 = x1 if x1 > h1 else h1
        h2 = x2 if x2 > h2 else h2
        h3 = x3 if x3 > h3 else h3
        i += 4
    while i < n:
        x = a[i]
        finite &= x - x == 0.0  # (inf - inf, NaN - NaN: NaN)
        l0 = x if x < l0 else l0
        h0 = x if x > h0 else h0
        i += 1
    l0 = l1 if l1 < l0 else l0
    l2 = l3 if l3 < l2 else l2
    h0 = h1 if h1 > h0 else h0
    h2 = h3 if h3 > h2 else h2
    bounds[0] = l2 if l2 < l0 else l0
    bounds[1] = h2 if h2 > h0 else h0
    return finite


@numba.njit(nogil=True, cache=False)
def _gather_range(row, at, n, values, bounds):
    """``values[:n]``: one gene's values (``row``) at the positions ``at`` (a class's kept
    samples), their smallest and largest into ``bounds`` (used as numbers: a range of keys,
    an equality test); False when one is not finite."""
    for i in range(n):
        values[i] = row[at[i]]
    return _range(values, n, bounds)


@numba.njit(nogil=True, cache=False)
def _positions(keep, members, s0, n, at):
    """Where a class's kept samples are in the donor's array (``at``), found once for all
    genes."""
    for i in range(n):
        at[i] = keep[members[s0 + i]]


@numba.njit(nogil=True, cache=False, error_model="numpy")
def _srs_genes(source, keep, members, class_starts, g0, g1, base, work, row0, iqr_normal):
    """The scaled robust sigmoid of the genes ``g0..g1`` of one donor's kept samples, each
    class on its own, into ``work[g - base, row0 + j]`` (genes x samples in class order: ``j``
    is the kept sample ``keep[members[j]]``; ``source``: the donor's genes x samples array;
    class ``c``: ``j`` from ``class_starts[c]`` to ``class_starts[c + 1]``), except numpy's
    ``exp`` (the API's): this writes ``(median - x) / iqr``. False when a value is not finite
    (the caller then normalizes those genes as the API does)."""
    longest = _longest(class_starts)
    values = np.empty(longest)
    keys = np.empty(longest, np.int32)
    counts = np.empty(longest // 2 + 1, np.int32)
    pool = np.empty(longest)
    found = np.empty((4, 6), np.intp)
    at = np.empty(longest, np.intp)
    bounds = np.empty(2)
    want = np.empty(6, np.intp)
    got = np.empty(6)
    for c in range(class_starts.shape[0] - 1):
        s0, s1 = class_starts[c], class_starts[c + 1]
        n = s1 - s0
        # the positions the median and the quartiles read, ascending
        below25 = min(int((n - 1) * 0.25), n - 1)  # (floor: not negative)
        below75 = min(int((n - 1) * 0.75), n - 1)
        want[0], want[1] = below25, min(below25 + 1, n - 1)
        want[2], want[3] = (n // 2 - 1 if n % 2 == 0 else n // 2), n // 2
        want[4], want[5] = below75, min(below75 + 1, n - 1)
        _shell_sort(want, 0, 6)
        _positions(keep, members, s0, n, at)
        for g in range(g0, g1):
            if not _gather_range(source[g], at, n, values, bounds):
                return False
            _select(values, n, bounds[0], bounds[1], want, got, keys, counts, pool, found)
            if n % 2:
                median = _at(want, got, n // 2)
            else:
                median = (_at(want, got, n // 2 - 1) + _at(want, got, n // 2)) / 2.0
            iqr = (_quantile(want, got, n, 0.75) - _quantile(want, got, n, 0.25)) / iqr_normal
            out = work[g - base, row0 + s0:row0 + s1]
            for i in range(n):
                out[i] = (median - values[i]) / iqr
    return True


@numba.njit(nogil=True, cache=False, error_model="numpy")
def _srs_finish(work, class_starts, row0, k0, k1):
    """The rest, in place, after numpy's ``exp`` of ``work`` (laid out as :func:`_srs_genes`
    lays it out): ``1 / (1 + w)``, then each gene's (rows ``k0..k1``) minimum and maximum
    over each class, ``(v - min) / (max - min)``. (The divisions in loops of their own, over
    a class's contiguous values: vectorized.)"""
    bounds = np.empty(2)
    for k in range(k0, k1):
        for c in range(class_starts.shape[0] - 1):
            w = work[k, row0 + class_starts[c]:row0 + class_starts[c + 1]]
            n = w.shape[0]
            for i in range(n):
                w[i] = 1.0 / (1.0 + w[i])
            # (the values are in [0, 1] or NaN, never -0.0: the order _range compares them
            # in cannot change the bounds)
            nan = not _range(w, n, bounds)
            low, high = bounds[0], bounds[1]
            if nan:  # (numpy's minimum and maximum give NaN)
                low = high = np.nan
            span = high - low
            for i in range(n):
                w[i] = (w[i] - low) / span


@numba.njit(nogil=True, cache=False)
def _place(work, order, k0, k1, out):
    """``out[order[j], k] = work[k, j]`` for the genes ``k0..k1``: the class-ordered genes x
    samples block put back as samples x genes in the rows' order, sixteen genes (two cache
    lines of a row of ``out``) at a time (measured quicker than 8 or 32)."""
    for a in range(k0, k1, 16):
        b = min(a + 16, k1)
        for j in range(order.shape[0]):
            d = order[j]
            for k in range(a, b):
                out[d, k] = work[k, j]


@numba.njit(nogil=True, cache=False, error_model="numpy")
def _block_sum(a, lo, hi):
    """numpy's pairwise sum of ``a[lo:hi]``, at most 128 values: eight running sums, added in
    pairs, then the values left over one by one (fewer than eight: one by one)."""
    n = hi - lo
    if n < 8:
        res = 0.0
        for i in range(lo, hi):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = lo + 8
    end = hi - n % 8
    while i < end:
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < hi:
        res += a[i]
        i += 1
    return res


@numba.njit(nogil=True, cache=False, error_model="numpy")
def _pairwise_sum(a, n, stack, sums):
    """numpy's sum of a contiguous ``a[:n]`` (its pairwise summation): up to 128 values by
    :func:`_block_sum`, more as the sum of two halves split at a multiple of eight. The
    halving is walked with a stack (a recursive function takes numba long to compile):
    ``stack``, (3, 64) intp, and ``sums``, 64 values, the caller's (allocated once, not per
    sum)."""
    if n <= 128:
        return _block_sum(a, 0, n)
    lo_of, hi_of, state = stack[0], stack[1], stack[2]
    # state 0: left half next, 1: right half next, 2: add both
    top, n_sums = 0, 0
    lo_of[0], hi_of[0], state[0] = 0, n, 0
    while top >= 0:
        lo, hi = lo_of[top], hi_of[top]
        if hi - lo <= 128:
            sums[n_sums] = _block_sum(a, lo, hi)
            n_sums += 1
            top -= 1
            continue
        half = (hi - lo) // 2
        half -= half % 8
        if state[top] == 2:
            sums[n_sums - 2] = sums[n_sums - 2] + sums[n_sums - 1]
            n_sums -= 1
            top -= 1
            continue
        child_lo, child_hi = (lo, lo + half) if state[top] == 0 else (lo + half, hi)
        state[top] += 1
        top += 1
        lo_of[top], hi_of[top], state[top] = child_lo, child_hi, 0
    return sums[0]


@numba.njit(nogil=True, cache=False, error_model="numpy")
def _sum(a, n, pairwise, stack, sums):
    """numpy's ``add.reduce`` of ``a[:n]``: from 0.0, pairwise along a contiguous axis,
    else value after value (a reduction across the rows of a C-ordered block).
    ``stack``, ``sums``: :func:`_pairwise_sum`'s."""
    if pairwise:
        return 0.0 + _pairwise_sum(a, n, stack, sums)
    res = 0.0
    for i in range(n):
        res += a[i]
    return res


@numba.njit(nogil=True, cache=False, error_model="numpy")
def _zscore_genes(source, keep, members, class_starts, g0, g1, base, work, row0, pairwise):
    """:func:`ahba_app.normalize._zscore` of the genes ``g0..g1`` of one donor's kept samples,
    each class on its own, laid out as :func:`_srs_genes` lays them out (class order);
    ``pairwise``: the
    API's block holds each gene's samples contiguous (numpy sums them pairwise), else they are
    a C-ordered block's rows (summed one after the other). False when a value is not finite."""
    longest = _longest(class_starts)
    values = np.empty(longest)
    squares = np.empty(longest)
    at = np.empty(longest, np.intp)
    stack = np.empty((3, 64), np.intp)
    sums = np.empty(64)
    bounds = np.empty(2)
    for c in range(class_starts.shape[0] - 1):
        s0, s1 = class_starts[c], class_starts[c + 1]
        n = s1 - s0
        _positions(keep, members, s0, n, at)
        for g in range(g0, g1):
            if not _gather_range(source[g], at, n, values, bounds):
                return False
            low, high = bounds[0], bounds[1]
            mean = _sum(values, n, pairwise, stack, sums) / n
            for i in range(n):
                d = values[i] - mean
                squares[i] = d * d
            sd = math.sqrt(_sum(squares, n, pairwise, stack, sums) / max(n - 1, 0))
            out = work[g - base, row0 + s0:row0 + s1]
            if low == high:  # every value equal (finite values)
                for i in range(n):
                    out[i] = np.nan
            else:
                for i in range(n):
                    out[i] = (values[i] - mean) / sd
    return True


def _classes(n: int, classes) -> tuple[np.ndarray, np.ndarray] | None:
    """The kept samples of each class laid end to end, and where each class starts (one class:
    all of them); None when a sample has no class (the API leaves it NaN)."""
    if classes is None:
        return np.arange(n, dtype=np.intp), np.array([0, n], dtype=np.intp)
    import pandas as pd

    codes, _ = pd.factorize(pd.Series(np.asarray(classes, dtype=object)), sort=True)
    if len(codes) != n or (codes < 0).any():
        return None
    members = np.argsort(codes, kind="stable").astype(np.intp)
    starts = np.concatenate([[0], np.cumsum(np.bincount(codes))]).astype(np.intp)
    return members, starts


#: The gene normalizations :func:`gene_normalized` computes.
GENE_NORMS = ("scaled_robust_sigmoid", "zscore")


def gene_normalized(name: str, sources, keeps, classes, g0: int, g1: int, out: np.ndarray,
                    n_threads: int = 1, scratch: np.ndarray | None = None) -> bool:
    """The genes ``g0..g1`` of each donor's kept samples normalized across samples by ``name``
    (one of :data:`GENE_NORMS`), within classes, into ``out`` (C, (sum of the kept samples,
    g1 - g0)): the donors' rows one after the other, each donor's in the order of its
    ``keep``. ``sources``: each donor's genes x samples array (C); ``keeps``: the positions
    of its kept samples; ``classes``: each donor's class per kept sample, or None;
    ``scratch``: a (g1 - g0, rows) working array, or None.

    The numbers of :func:`ahba_app.normalize.normalize_array` (``axis=0``, ``groups=classes``)
    on each donor's block of those rows (genes x kept samples, transposed: samples contiguous
    per gene), bit for bit: the same order statistics, sums in numpy's order, then the same
    operations in the same order (numpy's ``exp`` itself). False, with ``out`` undefined,
    when a value is not finite or a sample has no class: the caller then uses the API."""
    parts = []
    row0 = 0
    work = scratch if scratch is not None else np.empty(out.shape[::-1])
    for source, keep, cls in zip(sources, keeps, classes):
        keep = np.asarray(keep, dtype=np.intp)
        layout = _classes(len(keep), cls)
        if layout is None:
            return False
        # the API's block of a class is a C-ordered copy (its rows picked), else the donor's
        # F-ordered rows: numpy sums them in different orders
        parts.append((np.ascontiguousarray(source, dtype=np.float64), keep, *layout, row0,
                      cls is None))
        row0 += len(keep)
    # ``work`` holds each donor's samples class by class: where each goes in ``out``
    order = np.concatenate([row0 + members for _, _, members, _, row0, _ in parts]
                           ) if parts else np.zeros(0, np.intp)
    pieces = [(a, min(a + _PIECE, g1)) for a in range(g0, g1, _PIECE)]

    # each piece of genes from start to end while its rows of ``work`` are in cache
    def run(piece):
        k0, k1 = piece[0] - g0, piece[1] - g0
        if name == "zscore":
            if not all(_zscore_genes(source, keep, members, starts, piece[0], piece[1], g0,
                                     work, row0, whole)
                       for source, keep, members, starts, row0, whole in parts):
                return False
        else:
            if not all(_srs_genes(source, keep, members, starts, piece[0], piece[1], g0, work,
                                  row0, IQR_NORMAL)
                       for source, keep, members, starts, row0, _ in parts):
                return False
            with np.errstate(all="ignore"):  # (as the API: a zero scale gives inf, then 0, 1)
                np.exp(work[k0:k1], out=work[k0:k1])
            for _, _, _, starts, row0, _ in parts:
                _srs_finish(work, starts, row0, k0, k1)
        _place(work, order, k0, k1, out)
        return True

    return all(thread_map(run, pieces, threads=n_threads))
