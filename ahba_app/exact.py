"""The arithmetic that must follow pandas' order to give abagen's numbers bit for bit.

abagen averages with pandas (``groupby(...).mean()``), which adds a group's values in row order
with Kahan compensation and skips NaN. Floating-point sums depend on the order of the additions,
and region means decide ties of Spearman ranks (so which probe is chosen): to give the same
numbers, ahba-app adds in the same order with the same compensation. This module is the one
home of those sums; the stage modules call it, the orchestrators never see it.

- :func:`kahan_add` / :func:`kahan_mean`: one step of a NaN-skipping compensated sum over
  arrays of running sums (pandas' groupby mean), and its mean (the region means of
  aggregation and of probe selection);
- :data:`LAYOUT_FREE_NORMS` / :func:`read_order`: the normalizations whose numbers do not
  depend on the memory layout, and the layout a donor's table is read in before normalization.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LAYOUT_FREE_NORMS", "kahan_add", "kahan_mean", "read_order"]


def kahan_add(total, carry, seen, x, *, from_zero=False, carry_zero=False, keep=Ellipsis,
              fallback=True, finite=False, scratch=None) -> int | None:
    """Add ``x`` to running sums as pandas' groupby mean does, in place: Kahan compensation,
    NaN values skipped and counted in ``seen`` only when added.

    Returns 1 when every value was added without being counted in ``seen`` (the caller adds
    it to its count of such steps, which holds for every cell), else 0. That quick path is
    taken when the new sums are all finite: no NaN was added and no infinity is involved.
    ``seen`` may be None when ``x`` holds no NaN.

    Shortcuts that leave every bit the same, for callers that know more:

    - ``from_zero``: ``total`` and ``carry`` are still all +0.0. The sum ``0.0 + x`` is
      written in place (-0.0 becomes 0.0) and the compensation ``(t - 0.0) - x`` is +0.0
      for every finite ``x``, the zeros already there: one pass. (Fine atlases have one or
      two samples in most regions: most of their sums end after this step.)
    - ``carry_zero``: ``carry`` is still all +0.0, so ``x - carry`` is ``x`` itself (-0.0
      included).
    - ``keep``: the index (into ``carry``) of the only compensations read again later (cells
      whose sums end at this step need none): the quick path writes only those.
    - ``fallback=False``: when the new sums are not all finite, nothing is changed and None
      is returned (a caller that has no ``seen`` yet makes one and adds again).
    - ``finite``: the test is skipped and the sums taken as they come, a NaN spreading
      through its sum (probe selection's means, whose AHBA values are always finite): one
      pass fewer.
    - ``scratch``: two arrays of ``total``'s shape to hold ``x - carry`` and the new sums
      (probe selection adds thousands of small steps: fresh arrays each time cost more than
      the arithmetic).
    """
    if from_zero:
        np.add(x, 0.0, out=total)
        if np.isfinite(total.sum()):  # the same test as below, on the same sums
            return 1
        total[...] = 0.0
        if not fallback:
            return None
    y_out, t_out = (None, None) if scratch is None else scratch
    y = x if carry_zero else np.subtract(x, carry, out=y_out)
    t = np.add(total, y, out=t_out)
    # any NaN or infinity in t makes the sum NaN or infinite
    if finite or np.isfinite(t.sum()):
        if keep is Ellipsis:  # (views of whole arrays cost more than a small step's arithmetic)
            np.subtract(t, total, out=carry)
            carry -= y
        else:
            np.subtract(t[keep], total[keep], out=carry[keep])
            carry[keep] -= y[keep]
        total[...] = t
        return 1
    if not fallback:
        return None
    valid = x == x
    fix = np.subtract(t, total)
    fix -= y
    fix[fix != fix] = 0.0  # an infinite value: keep it rather than NaN (pandas)
    np.copyto(carry, fix, where=valid)
    np.copyto(total, t, where=valid)
    if seen is None:  # the caller knows ``x`` holds no NaN: every value was added
        return 1
    seen += valid
    return 0


def kahan_mean(total, seen) -> np.ndarray:
    means = total / seen
    means[seen == 0] = np.nan
    return means


#: Normalizations (canonical names) whose numbers do not depend on the memory layout of their
#: input: they only sort, compare and compute element by element. The others sum, and sums
#: round differently along contiguous and strided axes.
LAYOUT_FREE_NORMS = ("minmax", "robust_sigmoid", "scaled_robust_sigmoid")


def read_order(sample_norm: str | None) -> str:
    """The memory layout to read a donor's table in before normalization by ``sample_norm``
    (a canonical name, or None): genes contiguous ('C', quicker) when the normalization's
    numbers cannot depend on the layout, otherwise the layout it always had ('F')."""
    return "C" if sample_norm in LAYOUT_FREE_NORMS else "F"
