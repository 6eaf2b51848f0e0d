"""Differential stability ties: computed exactly, the first probe wins (a deliberate difference).

With two donors and few structures in common, Spearman correlations take few values, and two
probes of one gene often have exactly the same differential stability. abagen 0.1.3 computes it
in floating point (z-scores of the ranks), so mathematically equal values differ in their last
bits and its ``idxmax`` picks whichever rounded highest; ahba-app computes Spearman's rho from
integer rank sums (exact for any tie), so equal values are equal and the gene keeps its probe
listed first, as for every other selection method. Measured on the synthetic "suite" data with
donors 12876 and 15496 (9 shared structures): 62 of 14,015 genes get another probe than in
abagen, every one of them an exact tie (six donors: no difference).

The ranks below are those of gene ABCC10's two probes in that measurement.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from ahba_app import probes
from oracle import run_abagen

# region ranks per donor of two probes of one gene (9 structures both donors sampled)
RANKS = {
    101: ([9, 5, 6, 4, 7, 1, 2, 8, 3], [8, 9, 3, 5, 7, 1, 4, 2, 6]),
    102: ([6, 9, 1, 5, 7, 3, 2, 8, 4], [9, 5, 3, 7, 8, 4, 1, 2, 6]),
}
# a second gene with one probe (abagen's selection needs two genes to return a table)
OTHER = {103: ([1, 2, 3, 4, 5, 6, 7, 8, 9], [2, 1, 3, 4, 5, 6, 7, 9, 8])}
GENES = ["GENE1", "GENE1", "GENE2"]


def _spearman(a, b) -> Fraction:
    """Exact Spearman's rho of two rankings without ties (as a fraction)."""
    n = len(a)
    d2 = sum((x - y) ** 2 for x, y in zip(a, b))
    return 1 - Fraction(6 * d2, n * (n * n - 1))


def _data():
    """Two donors, one sample per structure, expression = the ranks (plus a level per probe)."""
    microarray, annotation = {}, {}
    for k, donor in enumerate(("A", "B")):
        samples = pd.Index([f"{donor}{i}" for i in range(9)], name="sample_id")
        microarray[donor] = pd.DataFrame(
            [np.asarray(ranks[k], dtype=float) + 3.0 + p / 100
             for p, ranks in {**RANKS, **OTHER}.items()],
            index=pd.Index([*RANKS, *OTHER], name="probe_id"), columns=samples)
        annotation[donor] = pd.DataFrame({"structure_id": np.arange(4001, 4010)}, index=samples)
    info = pd.DataFrame({"gene_symbol": GENES}, index=pd.Index([*RANKS, *OTHER], name="probe_id"))
    return microarray, annotation, info


def test_the_two_probes_tie_exactly():
    rho = {p: _spearman(*RANKS[p]) for p in RANKS}
    assert rho[101] == rho[102] == Fraction(11, 30)


def test_an_exact_tie_keeps_the_first_probe():
    microarray, annotation, info = _data()
    out, table = probes.collapse_probes(microarray, annotation, info, method="diff_stability",
                                        return_info=True)
    assert table["probe_id"].tolist() == [101, 103]
    assert table["score"].iloc[0] == 11 / 30
    np.testing.assert_array_equal(out["A"]["GENE1"].to_numpy(),
                                  microarray["A"].loc[101].to_numpy())
    # listed the other way round, the other probe is first and wins
    order = [102, 101, 103]
    swapped = {d: m.loc[order] for d, m in microarray.items()}
    _, table = probes.collapse_probes(swapped, annotation, info.loc[order],
                                      method="diff_stability", return_info=True)
    assert table["probe_id"].tolist() == [102, 103]


SNIPPET = """
import pandas as pd
from abagen import probes_
expression = {d: pd.DataFrame(v["values"], index=v["probes"], columns=v["samples"])
              for d, v in PARAMS["microarray"].items()}
annotation = {d: pd.DataFrame({"structure_id": v["structures"]}, index=v["samples"])
              for d, v in PARAMS["microarray"].items()}
info = pd.DataFrame({"gene_symbol": PARAMS["genes"]}, index=PARAMS["probes"])
out = probes_._diff_stability(expression, info, annotation)
save("picked", [int(c) for c in out["A"].columns])
"""


@pytest.mark.oracle
def test_abagen_breaks_the_tie_by_rounding(tmp_path):
    """abagen picks the second probe: its floating-point rho of the first rounds lower."""
    microarray, annotation, _ = _data()
    params = {d: {"values": m.to_numpy().tolist(), "probes": [int(p) for p in m.index],
                  "samples": list(m.columns),
                  "structures": annotation[d]["structure_id"].tolist()}
              for d, m in microarray.items()}
    out = run_abagen(SNIPPET, tmp_path, microarray=params, probes=[*RANKS, *OTHER], genes=GENES)
    assert out["picked"] == [102, 103]
