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
def test_robust_sigmoids_are_the_same_counted_or_sorted(monkeypatch, shape):
    # the whole default normalization of a donor-shaped table, counting against numpy's
    # partition and sort: bit for bit (a sample across 5,000 genes is counted)
    x = _columns(shape, 120, 5_000, seed=3)
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
