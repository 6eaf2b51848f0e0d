"""Every gene accounted for: ahba_app.genes.gene_fates on stage outputs made by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ahba_app.genes import FATES, explain, gene_fates, summarize


def _probes(pairs):
    ids, symbols = zip(*pairs)
    return pd.DataFrame({"gene_symbol": list(symbols)}, index=pd.Index(ids, name="probe_id"))


@pytest.fixture
def stages():
    raw = _probes([(1, "KEPT"), (2, "KEPT"), (3, "GONE"), (4, "DIM"), (5, "DIM"), (6, "HALF"),
                   (7, "FLAT"), (8, "NOISY"), (9, "OLDNAME")])
    # reannotation: GONE's probe is dropped, OLDNAME's probe 9 now measures NEWNAME
    annotated = _probes([(1, "KEPT"), (2, "KEPT"), (4, "DIM"), (5, "DIM"), (6, "HALF"),
                         (7, "FLAT"), (8, "NOISY"), (9, "NEWNAME")])
    share = pd.Series([0.9, 0.8, np.nan, 0.3, 0.45, 0.7, 0.9, 0.9, 0.6],
                      index=pd.Index(range(1, 10), name="probe_id"))
    filtered = annotated.loc[[1, 2, 6, 7, 8, 9]]
    selection = pd.DataFrame({
        "donor": ["9861"] * 5 + ["10021"] * 4,
        "gene_symbol": ["KEPT", "HALF", "FLAT", "NOISY", "NEWNAME",
                        "KEPT", "FLAT", "NOISY", "NEWNAME"],
        "probe_id": [1, 6, 7, 8, 9, 2, 7, 8, 9]})
    return dict(raw_probes=raw, annotated=annotated, filtered=filtered, selection=selection,
                expression_genes=["KEPT", "NEWNAME"], share=share, ibf_threshold=0.5,
                dropped_incomplete=["FLAT"],
                stability=pd.Series({"KEPT": 0.6, "NOISY": 0.05, "NEWNAME": 0.4}),
                stability_threshold=0.2, donors=["9861", "10021"])


def test_every_gene_once_with_its_stage_and_numbers(stages):
    table = gene_fates(**stages).set_index("gene_symbol")
    assert sorted(table.index) == ["DIM", "FLAT", "GONE", "HALF", "KEPT", "NEWNAME", "NOISY",
                                   "OLDNAME"]
    assert table["fate"].to_dict() == {
        "DIM": "intensity_filter", "FLAT": "incomplete", "GONE": "no_annotated_probe",
        "HALF": "probe_selection", "KEPT": "kept", "NEWNAME": "kept",
        "NOISY": "stability_threshold", "OLDNAME": "no_annotated_probe"}
    assert table.loc["DIM", "best_share_above_background"] == pytest.approx(0.45)
    assert "45.0% of the samples, below the threshold of 50%" in table.loc["DIM", "reason"]
    assert table.loc["HALF", "donors_without_probe"] == "10021"
    assert table.loc["NOISY", "differential_stability"] == pytest.approx(0.05)
    assert "(0.050) is below the threshold of 0.2" in table.loc["NOISY", "reason"]
    assert table.loc["GONE", "n_probes_array"] == 1 and table.loc["GONE", "n_probes_annotated"] == 0
    assert table.loc["KEPT", ["n_probes_array", "n_probes_annotated",
                              "n_probes_above_threshold"]].tolist() == [2, 2, 2]
    assert summarize(table.reset_index()) == {
        "no_annotated_probe": 2, "intensity_filter": 1, "probe_selection": 1,
        "incomplete": 1, "stability_threshold": 1, "kept": 2}
    assert list(summarize(table.reset_index())) == list(FATES)


def test_kept_genes_must_be_the_expression_columns(stages):
    with pytest.raises(ValueError, match=r"gene\(s\) \['MYSTERY'\] that no stage output"):
        gene_fates(**dict(stages, expression_genes=["KEPT", "NEWNAME", "MYSTERY"]))
    with pytest.raises(ValueError, match="'KEPT' passed every stage but is not in the"):
        gene_fates(**dict(stages, expression_genes=["NEWNAME"], stability_threshold=None,
                          stability=None))


def test_one_choice_for_all_donors(stages):
    selection = pd.DataFrame({"donor": "all", "gene_symbol": ["KEPT", "FLAT", "NOISY",
                                                              "NEWNAME"],
                              "probe_id": [1, 7, 8, 9]})
    table = gene_fates(**dict(stages, selection=selection)).set_index("gene_symbol")
    assert table.loc["HALF", "fate"] == "probe_selection"
    assert table.loc["HALF", "reason"] == "no probe could be chosen for it"


def test_explain(stages):
    table = gene_fates(**stages)
    assert explain(table, "dim").startswith("DIM was dropped at stage 'intensity_filter': its "
                                            "best probe is above background in 45.0%")
    assert explain(table, "KEPT") == "KEPT is kept: it is a column of the expression table."
    assert explain(table, "ESR2") == "ESR2 is not a gene symbol of the AHBA probe table."
