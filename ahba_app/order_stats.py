"""Exact order statistics of the columns of a float64 block, found without numpy's sort and
partition of long rows.

The robust sigmoids need a few order statistics of each sample across the genes and of each
gene across the samples (a median's two middle values, a quartile's two). numpy finds them
with x86-simd-sort, whose AVX-512 code for more than 256 values writes with a
memory-destination compress (``vpcompressq``). AMD's Zen 4 runs that instruction in microcode
(its software optimisation guide, 2.11.2), so there numpy's partition and sort take several
times as long as on an Intel CPU with AVX-512 (``benchmarks/simd_sort.py``). Two ways do
without them, both giving a sort's very numbers:

* :func:`select_by_counting`, for long columns (a sample across ~15,000 genes);
* :class:`SortedChunks`, for short ones (a gene across a donor's samples, a few hundred to a
  thousand or two): chunks of at most 256 values, which numpy sorts with sorting networks
  (no compress), then a narrow band of each chunk (see the class).

Counting:

1. Each column's values are mapped to buckets by ``trunc((x - low) * scale)``, clipped at
   both ends. Every step rounds monotonically (subtraction and multiplication by a positive
   number never reverse two values, nor do clipping and truncation), so a value in a lower
   bucket is never larger than one in a higher bucket: counting the buckets gives every
   value's rank to within its bucket, exactly.
2. ``np.bincount`` counts the buckets of all columns at once (each column its own range of
   bucket numbers); a cumulative count finds the bucket holding each wanted position.
3. Only the values of those buckets are taken out (a few percent of the column), sorted, and
   the wanted positions read from them.

The window ``[low, low + nb / scale]`` is the column's minimum to maximum for short columns;
for long ones it is read from a sorted sample of the column around the wanted positions, so
that a few extreme values do not crowd the middle of the column into a few buckets. The window
only decides the speed, never the numbers: a column whose wanted buckets hold too many values
(many ties, a very skewed column), or that holds NaN, infinities in its window, or a single
value, is left to the caller (``done`` is False for it), which sorts or partitions it.
"""

from __future__ import annotations

import math

import numpy as np

#: Columns at least this long take their bucket window from a sample of their values;
#: shorter ones from their minimum and maximum.
SAMPLED_WINDOW_MIN = 1024
#: At most this many values of a long column are sorted to place its window (numpy sorts up
#: to 256 values a row with sorting networks alone, quickly on every CPU).
WINDOW_SAMPLE = 256


class Scratch:
    """Working memory of :func:`select_by_counting` for blocks of up to ``size`` values (the
    values' bucket positions, their bucket numbers, and which values are taken out), reused
    block after block so that no block pays for fresh pages."""

    def __init__(self, size: int):
        self.scaled = np.empty(size)
        self.buckets = np.empty(size, dtype=np.intp)
        self.taken = np.empty(size, dtype=bool)

    def views(self, block: np.ndarray):
        """Three arrays shaped like ``block``, laid out as its values are in memory."""
        if block.size > self.scaled.size:
            self.__init__(block.size)
        columns_contiguous = block.strides[0] < block.strides[1]
        shape = block.shape[::-1] if columns_contiguous else block.shape
        views = [whole[:block.size].reshape(shape) for whole in
                 (self.scaled, self.buckets, self.taken)]
        return [view.T for view in views] if columns_contiguous else views


def n_buckets(n: int) -> int:
    """Buckets a column of ``n`` values is counted in (about 8 values each)."""
    return min(max(n // 8, 16), 4096)


def _window(x: np.ndarray, largest: np.ndarray, positions: list[int]
            ) -> tuple[np.ndarray, np.ndarray, bool]:
    """The low end and width of each column's bucket window, and whether values can fall
    outside it (see the module's docstring)."""
    n = x.shape[0]
    if n < SAMPLED_WINDOW_MIN:
        low = x.min(axis=0)
        return low, largest - low, False
    sample = np.sort(x[::-(-n // WINDOW_SAMPLE)], axis=0)
    m = sample.shape[0]
    # four standard deviations of a sample quartile's rank around the wanted positions
    margin = 4.0 * math.sqrt(m / 4.0) + 1.0
    first = int(max(0, math.floor(positions[0] / (n - 1) * (m - 1) - margin)))
    last = int(min(m - 1, math.ceil(positions[-1] / (n - 1) * (m - 1) + margin)))
    return sample[first], sample[last] - sample[first], True


def select_by_counting(x: np.ndarray, positions: list[int], scratch: Scratch
                       ) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """The values that sorting each column of ``x`` (n x C float64, any layout, read only)
    puts at each of ``positions`` (sorted, each below ``n - 1``), and each column's largest
    value (NaN when the column holds NaN), for the columns where ``done`` is True; the others
    are the caller's.

    Returns ``(values, largest, done)``: ``values[p]`` has one number a column (undefined
    where ``done`` is False).
    """
    n, n_cols = x.shape
    largest = x.max(axis=0)
    if not positions:
        return {}, largest, ~np.isnan(largest)
    nb = n_buckets(n)
    with np.errstate(all="ignore"):  # (infinite or NaN windows: such columns are not usable)
        low, span, clip = _window(x, largest, positions)
        scale = nb / span
        usable = (~np.isnan(largest) & np.isfinite(low) & np.isfinite(span) & (span > 0)
                  & np.isfinite(scale))
    if not usable.all():  # such columns are put in bucket 0 and left to the caller
        low, scale = np.where(usable, low, 0.0), np.where(usable, scale, 0.0)
    scaled, buckets, taken = scratch.views(x)
    with np.errstate(all="ignore"):  # the columns left to the caller may give NaN
        np.subtract(x, low, out=scaled)
        np.multiply(scaled, scale, out=scaled)
        if clip:  # below the window: -1 (bucket 0), above it: nb + 1 (bucket nb + 2)
            np.clip(scaled, -1, nb + 1, out=scaled)
    if not usable.all():
        scaled[:, ~usable] = 0.0
    width = nb + 3
    first_bucket = np.arange(n_cols, dtype=np.intp) * width
    np.copyto(buckets, scaled, casting="unsafe")  # truncation toward zero
    buckets += first_bucket + 1
    in_memory_order = buckets.ravel(order="K")
    counts = np.bincount(in_memory_order, minlength=n_cols * width).reshape(n_cols, width)
    up_to = np.cumsum(counts, axis=1)
    # the bucket of each wanted position: the first whose count up to its end passes it
    flat_up_to = (up_to + (np.arange(n_cols) * (n + 1))[:, None]).ravel()
    wanted = np.zeros(n_cols * width, dtype=bool)
    bucket_of = {}
    for p in positions:
        bucket_of[p] = (np.searchsorted(flat_up_to, np.arange(n_cols) * (n + 1) + p,
                                        side="right") - first_bucket)
        wanted[bucket_of[p] + first_bucket] = True
    # in memory order (the scratch is contiguous one way or the other): numpy takes in C
    # order, through copies when the arrays are columns after columns (3 times as long)
    flat_taken = taken.ravel(order="K")
    if not np.may_share_memory(flat_taken, taken):  # (Scratch.views are contiguous: a view)
        raise AssertionError("the scratch's mask must be contiguous")
    np.take(wanted, in_memory_order, out=flat_taken)
    taken_up_to = np.cumsum(np.where(wanted.reshape(n_cols, width), counts, 0), axis=1)
    n_taken = taken_up_to[:, -1]
    done = usable & (n_taken <= max(128, n // 8))
    if not done.all():
        taken[:, ~done] = False
        n_taken = np.where(done, n_taken, 0)
    # the values taken out of each column, sorted, in a row of a padded table (+inf after them)
    at = np.flatnonzero(taken.ravel(order="K"))
    column = in_memory_order[at] // width
    if taken.strides[0] < taken.strides[1]:  # in memory column after column: grouped already
        row_in_x = at % n
    else:  # row after row: grouped by a sort (a radix sort for 16-bit numbers)
        row_in_x = at // n_cols
        order = np.argsort(column.astype(np.int16) if n_cols < 1 << 15 else column,
                           kind="stable")
        column, row_in_x = column[order], row_in_x[order]
    ends = np.cumsum(n_taken)
    table = np.full((n_cols, max(1, int(n_taken.max()))), np.inf)
    table[column, np.arange(at.size) - (ends - n_taken)[column]] = x[row_in_x, column]
    table.sort(axis=1)
    every_column = np.arange(n_cols)
    values = {}
    for p in positions:
        bucket = bucket_of[p]
        in_bucket = counts[every_column, bucket]
        # taken values in the buckets before p's, then p's place within its bucket
        place = (taken_up_to[every_column, bucket] - in_bucket
                 + p - (up_to[every_column, bucket] - in_bucket))
        values[p] = table[every_column, np.where(done, place, 0)]
    return values, largest, done


# --------------------------------------------------------------------------------------------
# short rows: sorted in chunks short enough for sorting networks, then a band of each chunk
# --------------------------------------------------------------------------------------------

#: numpy sorts a row of up to this many float64 values with sorting networks alone, quickly on
#: every CPU (about 2 ns a value on Zen 4 against 8-16 for rows of 257 to 2,000 values, whose
#: quicksort partitions with the instruction Zen 4 runs in microcode).
NETWORK_SORT_MAX = 256
#: A band reaches this many standard deviations of a chunk's count below the wanted position
#: on either side of where it is expected (a row whose band misses is left to the caller).
BAND_SIGMAS = 4.0


def chunk_layout(n: int) -> tuple[int, int]:
    """How :class:`SortedChunks` cuts a row of ``n`` values: ``(chunks, values a chunk)``, each
    chunk at most :data:`NETWORK_SORT_MAX` long, the last one padded with +inf."""
    chunks = max(1, -(-n // NETWORK_SORT_MAX))
    return chunks, -(-n // chunks)


class SortedChunks:
    """The values that sorting rows of ``n`` float64 values puts at ``positions`` (each below
    ``n - 1``) and each row's largest value, found without sorting whole rows.

    Each row is cut into :func:`chunk_layout`'s chunks, and each chunk sorted (sorting
    networks). For each run of neighbouring wanted positions, a band of the same width is taken
    from every sorted chunk around where the run is expected in it (its share of the row), the
    bands are sorted together, and position ``k`` of the row is read at ``k - A`` of them, ``A``
    being the values below the bands. That is the row's ``k``-th value when every value below a
    band is no larger than it, and every value above a band no smaller: a chunk's value just
    below its band is compared with the run's first value, the one just above with its last
    (each chunk is sorted, so these are the largest below and the smallest above). A row where
    a comparison fails (an unusual row, about 1 in 10,000 of normal data), or holding NaN, is
    left to the caller (``done`` is False). The numbers are a sort's, whatever the data.

    The plan (chunks, bands, the columns compared) depends only on ``n`` and ``positions``:
    made once, used for block after block of rows.
    """

    def __init__(self, n: int, positions):
        self.n = n
        self.chunks, self.length = chunk_layout(n)
        self.width = self.chunks * self.length
        starts = np.arange(self.chunks) * self.length
        #: values of the row in each chunk (the first ``n % chunks`` chunks hold one more)
        self.shared = n // self.chunks
        real = self.shared + (np.arange(self.chunks) < n - self.shared * self.chunks)
        #: the last place of each chunk (where a NaN of the chunk is, after the padding)
        self.chunk_ends = starts + self.length - 1
        #: the last place of each chunk's own values (its largest value)
        self.real_ends = starts + real - 1
        runs: list[list[int]] = []
        for p in sorted({int(p) for p in positions}):
            if runs and p - runs[-1][-1] <= 2:
                runs[-1].append(p)
            else:
                runs.append([p])
        centres, band_width = [], 0
        for run in runs:
            middle = (run[0] + run[-1]) / 2
            share = middle / max(n - 1, 1)
            # standard deviation of how many of a chunk's values fall below the run
            spread = np.sqrt(real * share * (1 - share) * np.maximum(n - real, 0) / max(n - 1, 1))
            reach = int(np.ceil(BAND_SIGMAS * spread.max())) + 1
            band_width = max(band_width, min(self.length, 2 * reach + run[-1] - run[0] + 2))
            centres.append(middle * real / n)
        self.band_width = band_width
        #: each run: its positions, their places in the sorted bands, and the places of the
        #: values just below and just above the bands
        self.runs, bands = [], []
        for run, centre in zip(runs, centres):
            first = np.clip(np.round(centre - band_width / 2).astype(np.intp), 0,
                            self.length - band_width)
            within = [p - int(first.sum()) for p in run]
            # (a band at least twice its reach wide, placed around each chunk's share, always
            # holds its run; checked, as reading outside the bands would give wrong numbers)
            if within[0] < 0 or within[-1] >= self.chunks * band_width:
                raise ValueError(f"the bands of {self.chunks} chunks of {self.length} values "
                                 f"do not hold positions {run} of {n}")
            self.runs.append((run, within, (starts + first - 1)[first > 0],
                              (starts + first + band_width)[first + band_width < self.length]))
            bands.append(((starts + first)[:, None] + np.arange(band_width)).ravel())
        #: the places of every run's bands, run after run
        self.band_columns = np.concatenate(bands or [np.empty(0, dtype=np.intp)])

    def fill(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Writes each column of ``columns`` (n x R, any layout) into a row of ``rows`` (at
        least R rows of :attr:`width`, C-contiguous), as :meth:`select` reads them: value ``i``
        of a column goes to chunk ``i % chunks``, so that each chunk is a spread sample of the
        column whatever the order of its values (a column sorted, or in runs, as samples
        grouped by structure can be), and +inf pads the chunks one value short. Returns the
        R rows written."""
        n, n_rows = columns.shape
        shared, extra = self.shared, n - self.shared * self.chunks
        _check_rows(rows, self.width)
        rows = rows[:n_rows]
        chunked = rows.reshape(n_rows, self.chunks, self.length)
        np.copyto(chunked[:, :, :shared],
                  columns[:shared * self.chunks].reshape(shared, self.chunks, n_rows).T)
        if self.length > shared:
            chunked[:, :extra, shared] = columns[shared * self.chunks:].T
            chunked[:, extra:, shared] = np.inf
        return rows

    def select(self, rows: np.ndarray) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
        """``rows``: a C-contiguous (R, :attr:`width`) float64 array filled by :meth:`fill`;
        its chunks are sorted in place. Returns ``(values, largest, done)`` as
        :func:`select_by_counting` does, a value a row."""
        n_rows = rows.shape[0]
        _check_rows(rows, self.width)
        rows.reshape(n_rows, self.chunks, self.length).sort(axis=2)
        done = ~np.isnan(rows[:, self.chunk_ends]).any(axis=1)
        largest = rows[:, self.real_ends].max(axis=1)
        bands = np.take(rows, self.band_columns, axis=1).reshape(
            n_rows, len(self.runs), self.chunks * self.band_width)
        bands.sort(axis=2)
        values = {}
        with np.errstate(invalid="ignore"):
            for i, (run, within, below, above) in enumerate(self.runs):
                first, last = bands[:, i, within[0]], bands[:, i, within[-1]]
                if below.size:
                    done &= rows[:, below].max(axis=1) <= first
                if above.size:
                    done &= rows[:, above].min(axis=1) >= last
                for p, at in zip(run, within):
                    values[p] = bands[:, i, at]
        return values, largest, done


def _check_rows(rows: np.ndarray, width: int) -> None:
    """:class:`SortedChunks` sorts its rows' chunks in place, through a reshaped view: rows
    that are not one C-contiguous float64 block would be sorted in a copy."""
    if rows.dtype != np.float64 or rows.ndim != 2 or rows.shape[1] != width or \
            not rows.flags.c_contiguous:
        raise ValueError(f"Expected a C-contiguous float64 array of rows of {width} values, got "
                         f"{rows.dtype} {rows.shape}.")
