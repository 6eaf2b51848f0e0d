"""Order statistics found by counting (ahba_app.order_stats): the values a sort puts at the
wanted positions, bit for bit, on data of many shapes; the columns it cannot count are left to
the caller, never answered wrongly."""

import numpy as np
import pytest

from ahba_app import normalize as nm
from ahba_app import order_stats

SHAPES = ["normal", "rounded", "lognormal", "heavy-lognormal", "cauchy", "outliers", "ties",
          "signed-zeros", "tiny", "huge", "subnormal", "nan", "infinite", "constant", "sorted"]


def _columns(shape: str, n: int, n_cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(6, 2, (n, n_cols))
    if shape == "rounded":      # values as a CSV with 2 decimals gives them: some ties
        x = x.round(2)
    elif shape == "lognormal":
        x = rng.lognormal(0, 1, (n, n_cols))
    elif shape == "heavy-lognormal":  # skewed enough that windows overflow: left to the caller
        x = rng.lognormal(0, 3, (n, n_cols))
    elif shape == "cauchy":
        x = rng.standard_cauchy((n, n_cols))
    elif shape == "outliers":
        x[0] = 1e6
        x[1] = -1e6
    elif shape == "ties":
        x = rng.integers(0, 3, (n, n_cols)).astype(float)
    elif shape == "signed-zeros":
        x[::3] = -0.0
        x[1::3] = 0.0
    elif shape == "tiny":
        x *= 1e-300
    elif shape == "huge":
        x *= 1e300
    elif shape == "subnormal":
        x = rng.random((n, n_cols)) * 1e-310
    elif shape == "nan":
        x[rng.random(x.shape) < 0.001] = np.nan
        x[5, 0] = np.nan
    elif shape == "infinite":
        x[rng.random(x.shape) < 0.002] = np.inf
        x[rng.random(x.shape) < 0.002] = -np.inf
        x[:, 0] = np.inf
    elif shape == "constant":
        x[:, ::2] = 7.25
    elif shape == "sorted":
        x = np.sort(x, axis=0)
    return x


def _positions(n: int) -> list[int]:
    return sorted({n // 2 - 1, n // 2, *nm._quantile_positions(n, 0.25),
                   *nm._quantile_positions(n, 0.75)})


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [300, 737, 5_000, 14_710])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_counted_values_equal_a_sort(shape, n, layout):
    x = _columns(shape, n, 24, seed=SHAPES.index(shape) * 7 + n)
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "strided":   # columns of a wider table, as normalize_array's blocks are
        x = np.ascontiguousarray(np.repeat(x, 2, axis=1))[:, ::2]
    before = x.copy()
    positions = _positions(n)
    values, largest, done = order_stats.select_by_counting(x, positions,
                                                           order_stats.Scratch(1000))
    assert np.array_equal(x, before, equal_nan=True)   # only read
    expected = np.sort(x, axis=0)
    assert np.array_equal(largest, expected[-1], equal_nan=True)
    for p in positions:
        assert values[p][done].tobytes() == expected[p][done].tobytes()
    holds_nan = np.isnan(x).any(axis=0)
    assert not done[holds_nan].any()
    # the count must serve the data it is for: every column of the common shapes (a long
    # column's window is placed from a sample of it: the extremes do not matter)
    if shape in ("normal", "rounded", "tiny", "huge", "sorted") or (
            n >= order_stats.SAMPLED_WINDOW_MIN and shape in ("lognormal", "cauchy", "outliers")):
        assert done.all()
    elif shape == "nan":
        assert done[~holds_nan].all()


def test_columns_left_to_the_caller_are_those_it_cannot_count():
    # many ties fill a bucket, a single value has no width, infinity has no window
    x = _columns("normal", 5_000, 6, seed=1)
    x[:, 0] = 3.0
    x[:4000, 1] = 2.0
    x[:, 2] = np.inf
    values, largest, done = order_stats.select_by_counting(x, _positions(5_000),
                                                           order_stats.Scratch(10))
    assert done.tolist() == [False, False, False, True, True, True]
    assert largest[2] == np.inf


def test_only_the_largest_wanted():
    x = _columns("nan", 3_000, 5, seed=2)
    values, largest, done = order_stats.select_by_counting(x, [], order_stats.Scratch(10))
    assert values == {}
    assert np.array_equal(largest, x.max(axis=0), equal_nan=True)
    assert done.tolist() == (~np.isnan(largest)).tolist()


@pytest.mark.parametrize("shape", ["normal", "nan", "ties", "heavy-lognormal"])
@pytest.mark.parametrize("n_samples", [120, 946])
def test_robust_sigmoids_are_the_same_counted_or_sorted(monkeypatch, shape, n_samples):
    # the whole default normalization of a donor-shaped table, counting against numpy's
    # partition and sort: bit for bit (a sample across 5,000 genes is counted; a gene across
    # 946 samples is sorted in chunks, across 120 sorted)
    x = _columns(shape, n_samples, 5_000, seed=3)
    results = []
    for counting in (False, True):
        monkeypatch.setattr(nm, "counting_selection", lambda counting=counting: counting)
        samples = nm.normalize_array(x, "scaled_robust_sigmoid", axis=1)
        results.append(nm.normalize_array(samples, "scaled_robust_sigmoid", axis=0))
    assert results[0].tobytes() == results[1].tobytes()


def test_counting_is_chosen_on_amd_cpus_with_avx512():
    from numpy._core._multiarray_umath import __cpu_features__

    with open("/proc/cpuinfo") as cpuinfo:
        amd = "AuthenticAMD" in cpuinfo.read()
    assert nm.counting_selection() is (amd and bool(__cpu_features__.get("AVX512_SKX")))


# ---------------------------------------------------------------------------------------------
# short columns: sorted in chunks (order_stats.SortedChunks)
# ---------------------------------------------------------------------------------------------
ORDERS = ["as drawn", "sorted", "descending", "in runs"]


def _ordered(x: np.ndarray, order: str) -> np.ndarray:
    """The columns of ``x`` in an order a sample table can have: as drawn, sorted, or in runs
    (samples grouped by structure: each run of rows drawn from its own range)."""
    if order == "sorted":
        return np.sort(x, axis=0)
    if order == "descending":
        return np.sort(x, axis=0)[::-1]
    if order == "in runs":
        ranked = np.sort(x, axis=0)
        runs = np.argsort(np.arange(len(x)) % 7, kind="stable")
        return ranked[runs]
    return x


def _same(found: np.ndarray, expected: np.ndarray, shape: str) -> bool:
    """Bit for bit; among tied zeros of both signs which one a position gets is not defined
    (as with a sort), so there the values are compared."""
    if shape == "signed-zeros":
        return np.array_equal(found, expected)
    return found.tobytes() == expected.tobytes()


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [257, 363, 529, 946, 1_500, 2_047])
def test_values_from_sorted_chunks_equal_a_sort(shape, n, order):
    x = _ordered(_columns(shape, n, 40, seed=SHAPES.index(shape) * 11 + n), order)
    if order != "as drawn" and shape == "nan":
        x[5, 0] = np.nan
    positions = _positions(n)
    chunks = order_stats.SortedChunks(n, positions)
    rows = chunks.fill(np.empty((64, chunks.width)), x)
    values, largest, done = chunks.select(rows)
    expected = np.sort(x, axis=0)
    for p in positions:
        assert _same(values[p][done], expected[p][done], shape)
    assert _same(largest[done], expected[-1][done], shape)
    holds_nan = np.isnan(x).any(axis=0)
    assert not done[holds_nan].any()
    # nearly every column of the common shapes is found, in whatever order its values come (a
    # band misses a column now and then: about 1 in 1,000 of 2,047 values; here 1 in 40 at
    # most). Not the signed zeros: they come every third value, the period of the chunks
    # when there are 3 or 6 (a column like that is sorted by the caller)
    if shape not in ("signed-zeros", "nan"):
        assert done.sum() >= 39
    elif shape == "nan":
        assert done[~holds_nan].sum() >= (~holds_nan).sum() - 1


def test_chunks_and_bands_fit_the_sorting_networks():
    # a donor's samples (up to about 1,000): chunks of at most 256 values and bands of the
    # three runs (quartiles, median) of at most 256 values each, all sorted by networks
    for n in (257, 363, 529, 737, 893, 946, 1_023):
        chunks = order_stats.SortedChunks(n, _positions(n))
        assert chunks.length <= order_stats.NETWORK_SORT_MAX
        assert chunks.chunks * chunks.band_width <= order_stats.NETWORK_SORT_MAX
        assert len(chunks.runs) == 3
        assert chunks.width - n < chunks.chunks


def test_sorted_chunks_refuse_rows_they_would_sort_in_a_copy():
    chunks = order_stats.SortedChunks(946, _positions(946))
    x = _columns("normal", 946, 4, seed=1)
    with pytest.raises(ValueError, match="C-contiguous float64"):
        chunks.fill(np.empty((chunks.width, 4)).T, x)
    with pytest.raises(ValueError, match="C-contiguous float64"):
        chunks.select(np.empty((4, chunks.width), dtype=np.float32))
    with pytest.raises(ValueError, match="C-contiguous float64"):
        chunks.select(np.empty((4, 2 * chunks.width))[:, ::2])


def test_columns_whose_bands_miss_are_left_to_the_caller():
    # a column whose values follow the chunks' own period puts all its small values in one
    # chunk and all its large ones in another: the bands cannot hold the quartiles
    n = 946
    chunks = order_stats.SortedChunks(n, _positions(n))
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 3))
    x[:, 0] = np.arange(n) % chunks.chunks + rng.random(n) * 0.1
    values, largest, done = chunks.select(chunks.fill(np.empty((3, chunks.width)), x))
    assert done.tolist() == [False, True, True]
    expected = np.sort(x, axis=0)
    for p in _positions(n):
        assert values[p][1:].tobytes() == expected[p][1:].tobytes()
    # and the selection that uses it sorts that column instead: the values of a sort
    found = nm._Selected(x, _positions(n), counting=True)
    for p in [*_positions(n), n - 1]:
        assert found[:, p].tobytes() == expected[p].tobytes()


@pytest.mark.parametrize("shape", ["normal", "nan", "ties", "infinite", "signed-zeros"])
@pytest.mark.parametrize("n", [300, 946, 2_047])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_selected_in_sorted_chunks_equal_a_sort(monkeypatch, shape, n, layout):
    # the robust sigmoids' selection of short columns (a gene across a donor's samples) on
    # AMD CPUs with AVX-512, several blocks of columns at a time: the values of a sort
    monkeypatch.setattr(nm, "_COUNTED_ELEMENTS", 20 * n)
    x = _columns(shape, n, 90, seed=n)
    if layout == "F":
        x = np.asfortranarray(x)
    before = x.copy()
    positions = _positions(n)
    found = nm._Selected(x, positions, counting=True)
    assert np.array_equal(x, before, equal_nan=True)  # only read
    expected = np.sort(x, axis=0)
    holds_nan = np.isnan(expected[-1])
    assert np.isnan(found[:, -1][holds_nan]).all()
    for p in [*positions, n - 1]:
        assert _same(found[:, p][~holds_nan], expected[p][~holds_nan], shape)


def test_bands_hold_their_positions_for_every_length():
    # every length a short column can have, and positions anywhere (a quantile of any q, the
    # ends): the plan's bands hold each run of positions (else it refuses, never reads outside)
    rng = np.random.default_rng(9)
    for n in range(order_stats.NETWORK_SORT_MAX + 1, 2_048):
        for positions in (_positions(n), [0, 1], [n - 3, n - 2],
                          sorted(set(rng.integers(0, n - 1, 5).tolist()))):
            chunks = order_stats.SortedChunks(n, positions)
            for run, within, *_ in chunks.runs:
                assert 0 <= within[0] and within[-1] < chunks.chunks * chunks.band_width
