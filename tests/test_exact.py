"""ahba_app.exact: the compensated sums that follow pandas' order."""

from __future__ import annotations

import numpy as np

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
