"""ahba_app.exact: the compensated sums that follow pandas' order."""

from __future__ import annotations

import numpy as np
import pytest

from ahba_app.exact import kahan_add


def test_kahan_add_finite_with_scratch_gives_the_plain_steps_bits():
    """Probe selection's way of adding (finite=True, scratch arrays) gives the plain step's
    sums and compensations bit for bit over many steps (-0.0 and tiny values included), fills
    the scratch arrays instead of fresh ones, and lets a NaN spread through its sum (the plain
    step skips it)."""
    rng = np.random.default_rng(5)
    steps = rng.normal(size=(40, 6, 9)) * 10.0 ** rng.integers(-12, 12, size=(40, 6, 9))
    steps[3, 0, :3] = [-0.0, 0.0, 5e-324]
    plain = np.zeros((6, 9)), np.zeros((6, 9))
    quick = np.zeros((6, 9)), np.zeros((6, 9))
    y, t = np.full((6, 9), np.nan), np.full((6, 9), np.nan)
    for x in steps:
        assert kahan_add(*plain, None, x) == 1
        assert kahan_add(*quick, None, x, finite=True, scratch=(y, t)) == 1
    assert quick[0].tobytes() == plain[0].tobytes()
    assert quick[1].tobytes() == plain[1].tobytes()
    assert t.tobytes() == quick[0].tobytes()  # the last step's sums were made in ``t``
    assert not np.isnan(y).any()
    nan_step = np.zeros((6, 9))
    nan_step[2, 4] = np.nan
    seen = np.zeros((6, 9), dtype=np.int64)
    assert kahan_add(*plain, seen, nan_step) == 0
    kahan_add(*quick, None, nan_step, finite=True, scratch=(y, t))
    assert not np.isnan(plain[0]).any()
    assert np.isnan(quick[0]).sum() == 1 and np.isnan(quick[0][2, 4])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf - inf, as callers allow
def test_kahan_add_shortcuts_same_bits():
    """kahan_add's shortcuts (from_zero, carry_zero, keep) give the plain step's bits where
    their preconditions hold; fallback=False changes nothing on a step whose sums are not all
    finite and says so (None)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 7)) * 1e3
    x[0, :3] = [-0.0, 0.0, 1e-300]
    plain_t, plain_c = np.zeros_like(x), np.zeros_like(x)
    assert kahan_add(plain_t, plain_c, None, x) == 1
    quick_t, quick_c = np.zeros_like(x), np.zeros_like(x)
    assert kahan_add(quick_t, quick_c, None, x, from_zero=True) == 1
    assert quick_t.tobytes() == plain_t.tobytes() and quick_c.tobytes() == plain_c.tobytes()
    second = rng.normal(size=x.shape) * 1e-9
    assert kahan_add(plain_t, plain_c, None, second) == 1
    assert kahan_add(quick_t, quick_c, None, second, carry_zero=True, keep=slice(2)) == 1
    assert quick_t.tobytes() == plain_t.tobytes()
    assert quick_c[:2].tobytes() == plain_c[:2].tobytes()
    bad = second.copy()
    bad[1, 1] = np.inf
    before = quick_t.copy(), quick_c.copy()
    assert kahan_add(quick_t, quick_c, None, bad, fallback=False) is None
    assert quick_t.tobytes() == before[0].tobytes() and quick_c.tobytes() == before[1].tobytes()
    fresh_t, fresh_c = np.zeros_like(x), np.zeros_like(x)
    assert kahan_add(fresh_t, fresh_c, None, bad, from_zero=True, fallback=False) is None
    assert not fresh_t.any() and not fresh_c.any()
    seen = np.zeros(x.shape, dtype=np.int64)
    bad[2, 2] = np.nan
    assert kahan_add(fresh_t, fresh_c, seen, bad, from_zero=True) == 0
    assert np.isinf(fresh_t[1, 1]) and fresh_t[2, 2] == 0.0 and seen.sum() == x.size - 1
