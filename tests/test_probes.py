"""ahba_app.probes: reannotation, intensity filter, probe selection.

Parity tests run abagen 0.1.3's probe stages on the synthetic data (every selection method and
donor_probes mode, every lr_mirror mode, both coordinate and annotation choices, plus a copy of
the data with constant and duplicated probes) in one cached oracle run, and check that the
same probes survive filtering, that the same probe is chosen for every gene, and that the
expression values agree. Unit tests pin the rest on hand-made data.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import parity_helpers
from ahba_app import probes

SELECTION_CASES = [(c["name"], m, dp) for c in parity_helpers.CASES for m, dp in c["methods"]]
PROBE_CASES = [c["name"] for c in parity_helpers.CASES if c["methods"]]


# --------------------------------------------------------------------------------------------
# parity with abagen 0.1.3
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(ahba_small, tmp_path_factory):
    return parity_helpers.abagen_reference(ahba_small, tmp_path_factory.mktemp("oracle"))


@lru_cache(maxsize=None)
def _our_stage(data_dir: str, name: str):
    case = dict(parity_helpers.CASES_BY_NAME[name])
    data = parity_helpers.load_dataset(data_dir, tuple(case["donors"]))
    return (data, *parity_helpers.run_ours(data, case))


@pytest.mark.oracle
@pytest.mark.parametrize("name", PROBE_CASES)
def test_probe_tables_match_abagen(reference, name):
    cases, results = reference
    data, info, annots, filtered = _our_stage(cases[name]["data_dir"], name)
    assert np.array_equal(info.index, results[name + "__probe_info"])
    assert np.array_equal(filtered.index, results[name + "__filtered"])
    for threshold in cases[name]["ibf_extra"]:
        kept = probes.filter_probes(data["pacall"], annots, info, threshold=threshold)
        assert np.array_equal(kept.index, results[f"{name}__ibf_{threshold}"]), threshold


@pytest.mark.oracle
@pytest.mark.parametrize("name, method, donor_probes", SELECTION_CASES)
def test_selection_matches_abagen(reference, name, method, donor_probes):
    cases, results = reference
    theirs = results[f"{name}__{method}__{donor_probes}"]
    assert not isinstance(theirs, str), theirs
    data, _, annots, filtered = _our_stage(cases[name]["data_dir"], name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # donor_probes forced to 'aggregate'
        ours, selected = probes.collapse_probes(data["microarray"], annots, filtered,
                                                method=method, donor_probes=donor_probes,
                                                rnaseq=data["rnaseq"], return_info=True)
    if method != "average":  # the oracle did record abagen's picks
        assert all((ref["probes"] >= 0).all() for ref in theirs.values())
    assert parity_helpers.expression_differences(ours, selected, theirs) == []


@pytest.mark.oracle
def test_edge_cases_are_exercised(reference):
    """The edge dataset's ties and undefined statistics reach the compared outputs."""
    cases, results = reference
    picks = json.loads((Path(cases["edge"]["data_dir"]) / "edge_probes.json").read_text())
    constant_gene, dup_gene = picks["genes"][4], picks["genes"][3]
    ds = results["edge__diff_stability__aggregate"]["9861"]
    assert constant_gene not in set(ds["columns"])  # undefined stability: dropped by both
    assert constant_gene in set(results["edge__max_intensity__aggregate"]["9861"]["columns"])
    for method, donor_probes in parity_helpers.ALL_COMBOS:
        if method == "average":
            continue
        ref = results[f"edge__{method}__{donor_probes}"]["9861"]
        # two identical probes: abagen keeps the one listed first, and so do we (compared
        # in test_selection_matches_abagen)
        assert ref["probes"][list(ref["columns"]).index(dup_gene)] == picks["duplicate"][0]


# --------------------------------------------------------------------------------------------
# hand-made data
# --------------------------------------------------------------------------------------------
GENES = {"AAA": 1, "BBB": 2, "CCC": 3, "DDD": 4, "EEE": 2}


def small_data(layout="C", dtype=np.float32, seed=0, n_samples=(12, 9, 7)):
    """Three donors, genes with 1-4 probes, samples in a handful of structures."""
    rng = np.random.default_rng(seed)
    symbols = [g for g, k in GENES.items() for _ in range(k)]
    order = rng.permutation(len(symbols))
    probe_ids = np.arange(100, 100 + len(symbols))
    table = pd.DataFrame({"probe_name": [f"P{i}" for i in probe_ids],
                          "gene_symbol": np.array(symbols)[order],
                          "entrez_id": pd.array(np.arange(len(symbols)) + 1, dtype="Int64")},
                         index=pd.Index(probe_ids, name="probe_id"))
    micro, annots = {}, {}
    for donor, n in zip(("9861", "10021", "12876"), n_samples):
        values = rng.normal(7, 1.5, (len(symbols), n)) + rng.normal(0, 1, (1, n))
        columns = pd.RangeIndex(1, n + 1, name="sample_id")
        micro[donor] = pd.DataFrame(np.asarray(values.astype(dtype), order=layout), copy=False,
                                    index=table.index, columns=columns)
        annots[donor] = pd.DataFrame({"structure_id": rng.integers(1, 6, n),
                                      "mni_x": -10.0}, index=columns)
    return micro, annots, table


def chosen(selected: pd.DataFrame, donor="all") -> dict:
    rows = selected[selected["donor"] == donor]
    return dict(zip(rows["gene_symbol"], rows["probe_id"]))


def test_registries_and_checks():
    assert list(probes.SELECTION_METHODS) == list(parity_helpers.SELECTIONS)
    assert probes.check_probe_selection("mean") == "average"
    assert set(probes.DONOR_PROBES) == {"aggregate", "independent", "common"}
    with pytest.raises(ValueError, match=r"'best'.*diff_stability"):
        probes.check_probe_selection("best")
    with pytest.raises(ValueError, match=r"'some'.*independent"):
        probes.check_donor_probes("some")
    assert probes.check_donor_probes("common", "max_variance") == "common"
    for method in probes.AGGREGATE_ONLY:
        with pytest.warns(UserWarning, match="aggregate"):
            assert probes.check_donor_probes("independent", method) == "aggregate"


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_ibf_threshold_outside_unit_interval_is_an_error(bad):
    """abagen clips the threshold to [0, 1] silently; we refuse it."""
    with pytest.raises(ValueError, match="ibf_threshold"):
        probes.check_ibf_threshold(bad)


def test_reannotation_tolerates_missing_probes():
    """abagen crashes when Probes.csv lacks a probe of its table; we leave those rows out."""
    table = pd.DataFrame({"probe_name": ["A", "B", "C", "D"],
                          "gene_symbol": ["G1", "G2", "G3", "G4"],
                          "entrez_id": [11.0, np.nan, 33.0, 44.0]})
    raw = pd.DataFrame({"probe_name": ["D", "A", "B", "Z"], "gene_symbol": ["x", "y", "z", "w"],
                        "entrez_id": pd.array([1, 2, None, 4], dtype="Int64")},
                       index=pd.Index([40, 10, 20, 90], name="probe_id"))
    out = probes.reannotate_probes(raw, table=table)
    assert out.index.tolist() == [10, 40]  # sorted by probe id; C absent, B without Entrez
    assert out["gene_symbol"].tolist() == ["G1", "G4"]
    assert out["entrez_id"].dtype == np.int64
    assert probes.prepare_probes(raw, reannotated=False).index.tolist() == [40, 10, 90]


def test_reannotation_same_table_whatever_the_string_type():
    """Names held as pandas' default strings are looked up by pyarrow, other names by pandas:
    the same table (a repeated name takes its first probe, a missing name a missing one)."""
    table = pd.DataFrame({"probe_name": ["A", "B", None, "D", "A", "E"],
                          "gene_symbol": ["G1", None, "G3", "G4", "G5", "G6"],
                          "entrez_id": [11.0, 22.0, 33.0, 44.0, 55.0, np.nan]})
    raw = pd.DataFrame({"probe_name": ["D", "A", "B", None, "A"]},
                       index=pd.Index([40, 10, 20, 90, 5], name="probe_id"))

    def as_objects(frame):
        return frame.astype({c: object for c in frame.columns if frame[c].dtype != float})

    out = probes.reannotate_probes(raw, table=table)
    pd.testing.assert_frame_equal(
        out, probes.reannotate_probes(as_objects(raw), table=as_objects(table)))
    assert out.index.tolist() == [10, 10, 20, 40, 90]
    assert out["probe_name"].tolist()[:4] == ["A", "A", "B", "D"]
    assert out["gene_symbol"].isna().tolist() == [False, False, True, False, False]
    assert out["entrez_id"].tolist() == [11, 55, 22, 44, 33]


def test_filter_counts_repeated_samples():
    pacall = {"a": pd.DataFrame([[1, 1, 0, 0], [1, 0, 0, 0]], index=[1, 2],
                                columns=[1, 2, 3, 4]).astype(bool)}
    table = pd.DataFrame({"gene_symbol": ["G", "H"]}, index=[1, 2])
    annot = {"a": pd.DataFrame(index=[1, 2, 3, 4])}
    kept, share = probes.filter_probes(pacall, annot, table, threshold=0.5, return_share=True)
    assert kept.index.tolist() == [1] and share.tolist() == [0.5, 0.25]
    mirrored = {"a": pd.DataFrame(index=[1, 2, 3, 4, 1, 1])}  # sample 1 copied twice
    kept, share = probes.filter_probes(pacall, mirrored, table, threshold=0.5,
                                       return_share=True)
    assert kept.index.tolist() == [1, 2] and share.tolist() == [4 / 6, 3 / 6]
    assert probes.filter_probes(pacall, annot, table, threshold=0.0).index.tolist() == [1, 2]
    assert probes.filter_probes(pacall, annot, table, threshold=1.0).empty


@pytest.mark.parametrize("method", [m for m in parity_helpers.SELECTIONS if m != "rnaseq"])
def test_layout_and_dtype_do_not_change_the_choice(method):
    outputs = []
    for layout, dtype in (("C", np.float32), ("F", np.float32), ("C", np.float64)):
        micro, annots, table = small_data(layout, dtype)
        out, selected = probes.collapse_probes(micro, annots, table, method=method,
                                               return_info=True)
        assert all(frame.dtypes.eq(dtype).all() for frame in out.values())
        outputs.append((out, selected))
    for out, selected in outputs[1:]:
        assert chosen(selected) == chosen(outputs[0][1])
        for donor, frame in out.items():
            np.testing.assert_allclose(frame.to_numpy(np.float64),
                                       outputs[0][0][donor].to_numpy(np.float64), rtol=1e-6)


def test_output_frames():
    micro, annots, table = small_data()
    annots["9861"] = annots["9861"].iloc[[0, 3, 3, 5]]  # repeats, as after mirroring
    out = probes.collapse_probes(micro, annots, table, method="max_intensity")
    frame = out["9861"]
    assert frame.index.tolist() == [1, 4, 4, 6]
    assert frame.columns.tolist() == sorted(GENES) and frame.columns.name == "gene_symbol"
    avg = probes.collapse_probes(micro, annots, table, method="mean")["9861"]
    rows = table.index[table["gene_symbol"] == "DDD"]
    expected = micro["9861"].loc[rows, [1, 4, 4, 6]].to_numpy(np.float64).mean(axis=0)
    np.testing.assert_allclose(avg["DDD"].to_numpy(np.float64), expected, rtol=1e-6)


def test_pc_loading_matches_a_per_gene_svd():
    micro, annots, table = small_data(seed=4)
    _, selected = probes.collapse_probes(micro, annots, table, method="pc_loading",
                                         return_info=True)
    data = pd.concat([micro[d].loc[:, annots[d].index] for d in micro], axis=1)
    for gene, k in GENES.items():
        rows = table.index[table["gene_symbol"] == gene]
        if k == 1:
            assert chosen(selected)[gene] == rows[0]
            continue
        block = data.loc[rows].to_numpy(np.float64)
        block = block - block.mean(axis=0)  # centre each sample over the gene's probes
        u, s, vt = np.linalg.svd(block, full_matrices=False)
        flip = np.sign(vt[0, np.argmax(np.abs(vt[0]))])
        assert chosen(selected)[gene] == rows[np.argmax(u[:, 0] * s[0] * flip)], gene


def test_correlation_and_variance_choices():
    micro, annots, table = small_data(seed=5)
    data = pd.concat([micro[d].loc[:, annots[d].index] for d in micro], axis=1)
    data = data.astype(np.float64)
    for method in ("corr_variance", "corr_intensity", "max_variance", "max_intensity"):
        _, selected = probes.collapse_probes(micro, annots, table, method=method,
                                             return_info=True)
        for gene, k in GENES.items():
            rows = table.index[table["gene_symbol"] == gene]
            block = data.loc[rows].to_numpy()
            if method.startswith("corr") and k > 2:
                score = np.corrcoef(block).mean(axis=1)
            elif method.endswith("variance"):
                score = block.var(axis=1)
            else:
                score = block.mean(axis=1)
            assert chosen(selected)[gene] == rows[np.argmax(score)], (method, gene)


def test_diff_stability_needs_two_donors_and_reports_its_value():
    micro, annots, table = small_data()
    with pytest.raises(ValueError, match="at least two donors"):
        probes.collapse_probes({"9861": micro["9861"]}, annots, table)
    _, selected = probes.collapse_probes(micro, annots, table, return_info=True)
    assert set(selected["criterion"]) == {"diff_stability"}
    assert selected["score"].between(-1, 1).all()
    assert selected.columns.tolist() == ["donor", "gene_symbol", "probe_id", "probe_name",
                                         "n_probes", "criterion", "score"]
    assert dict(zip(selected["gene_symbol"], selected["n_probes"])) == GENES


def test_independent_and_common_modes():
    micro, annots, table = small_data(seed=7)
    out, selected = probes.collapse_probes(micro, annots, table, method="max_variance",
                                           donor_probes="independent", return_info=True)
    assert set(selected["donor"]) == set(micro)
    for donor in micro:
        data = micro[donor].astype(np.float64)
        for gene in GENES:
            rows = table.index[table["gene_symbol"] == gene]
            assert chosen(selected, donor)[gene] == data.loc[rows].var(axis=1).idxmax()
    _, common = probes.collapse_probes(micro, annots, table, method="max_variance",
                                       donor_probes="common", return_info=True)
    for gene in GENES:
        picks = [chosen(selected, d)[gene] for d in micro]
        counts = pd.Series(picks).value_counts()
        best = min(counts.index[counts == counts.max()])  # ties: smallest probe id
        assert chosen(common)[gene] == best
        assert common.set_index("gene_symbol").loc[gene, "score"] == counts.max()


def test_common_mode_when_a_donor_cannot_choose():
    """abagen's mode needs every donor to choose every gene (it fails otherwise); a donor that
    cannot choose (one sample: no variance) simply does not vote here."""
    micro, annots, table = small_data(n_samples=(1, 9, 7))
    out, selected = probes.collapse_probes(micro, annots, table, method="max_variance",
                                           donor_probes="common", return_info=True)
    assert len(selected) == len(GENES)
    assert selected["score"].max() <= 2
    assert out["9861"].shape == (1, len(GENES))


def test_rnaseq_needs_data_of_known_donors():
    micro, annots, table = small_data()
    with pytest.raises(ValueError, match="needs the RNA-seq data"):
        probes.collapse_probes(micro, annots, table, method="rnaseq")
    tpm = pd.DataFrame(np.random.default_rng(0).random((3, 4)), index=["AAA", "BBB", "CCC"],
                       columns=[1, 2, 3, 4])
    rna_annot = pd.DataFrame({"ontology_structure_id": [1, 2, 3, 4]}, index=[1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"Unknown AHBA donor '12876'.*9861"):
        probes.collapse_probes(micro, annots, table, method="rnaseq",
                               rnaseq={"12876": {"tpm": tpm, "annotation": rna_annot}})
    out, selected = probes.collapse_probes(micro, annots, table, method="rnaseq",
                                           rnaseq={"9861": {"tpm": tpm,
                                                            "annotation": rna_annot}},
                                           return_info=True)
    assert set(selected["gene_symbol"]) <= {"AAA", "BBB", "CCC"}  # genes without RNA-seq go
    with pytest.raises(ValueError, match="needs a donor with RNA-seq"):
        probes.collapse_probes({"12876": micro["12876"]}, annots, table, method="rnaseq",
                               rnaseq={"9861": {"tpm": tpm, "annotation": rna_annot}})


def test_missing_probe_or_sample_is_named():
    micro, annots, table = small_data()
    extra = pd.concat([table, pd.DataFrame({"gene_symbol": ["ZZZ"]}, index=[999])])
    with pytest.raises(ValueError, match="999"):
        probes.collapse_probes(micro, annots, extra, method="average")
    annots["10021"] = annots["10021"].set_axis(range(50, 50 + len(annots["10021"])))
    with pytest.raises(ValueError, match="50"):
        probes.collapse_probes(micro, annots, table, method="average")


def test_ranks_of_column_subsets_match_scipy():
    rng = np.random.default_rng(1)
    values = np.round(rng.random((200, 30)) * 4) / 4  # many ties
    values[::2] = rng.random((100, 30))
    ranker = probes._Ranker(values)
    for columns in (np.arange(30), np.sort(rng.choice(30, 11, replace=False)), np.array([4])):
        np.testing.assert_array_equal(ranker.ranks(columns),
                                      stats.rankdata(values[:, columns], axis=1))
    assert ranker.ranks(np.array([], dtype=int)).shape == (200, 0)


def test_region_means_equal_pandas_groupby_mean_bit_for_bit():
    # abagen averages regions with pandas' groupby mean (Kahan-compensated sums); with values
    # of few decimals, region means tie often, and a last-bit difference would break a tie and
    # change the Spearman ranks (on full-size data it changed the probe chosen for a gene)
    rng = np.random.default_rng(2)
    values = np.round(rng.uniform(2, 18, size=(500, 240)), 3)
    structure = rng.integers(0, 30, size=240) ** 2
    structure[:12] = 4  # one large region
    order, regions, starts, counts = probes._region_order(structure)
    means = probes._region_means(lambda rows, samples: values[rows][:, samples].T.copy(),
                                 len(values), order, starts, counts)
    expected = pd.DataFrame(values.T).groupby(structure).mean()
    np.testing.assert_array_equal(regions, expected.index)
    assert np.array_equal(means, expected.to_numpy().T)


def test_ranks_without_some_columns_equal_counting_again():
    rng = np.random.default_rng(5)
    values = np.round(rng.random((300, 40)) * 6) / 6  # many ties
    values[::3] = rng.random((100, 40))
    ranker = probes._Ranker(values)
    rows = slice(10, 250)
    full = ranker.doubled_ranks(np.arange(40), rows)
    for left_out in ([3], [0, 39], [1, 2, 3, 17, 30, 31]):
        columns = np.setdiff1d(np.arange(40), left_out)
        np.testing.assert_array_equal(ranker.doubled_ranks_without(columns, rows, full),
                                      ranker.doubled_ranks(columns, rows))
        np.testing.assert_array_equal(ranker.doubled_ranks(columns, rows) / 2,
                                      stats.rankdata(values[rows][:, columns], axis=1))


def test_diff_stability_does_not_depend_on_threads_or_shortcuts(monkeypatch):
    micro, annots, table = small_data(seed=6, dtype=np.float64)
    monkeypatch.setenv("AHBA_APP_THREADS", "1")
    monkeypatch.setattr(probes, "_MAX_LEFT_OUT", 0)
    expected = probes.collapse_probes(micro, annots, table, return_info=True)
    monkeypatch.setenv("AHBA_APP_THREADS", "3")
    monkeypatch.setattr(probes, "_MAX_LEFT_OUT", 100)
    monkeypatch.setattr(probes, "_RANK_CHUNK", 40)  # several blocks of probes, on threads
    got = probes.collapse_probes(micro, annots, table, return_info=True)
    pd.testing.assert_frame_equal(got[1], expected[1], check_exact=True)
    for donor in micro:
        pd.testing.assert_frame_equal(got[0][donor], expected[0][donor], check_exact=True)


def test_chosen_probes_read_on_demand_equal_collapse_probes():
    micro, annots, table = small_data(dtype=np.float64)
    expected, info = probes.collapse_probes(micro, annots, table, return_info=True)
    chosen, chosen_info = probes.select_probes(micro, annots, table)
    pd.testing.assert_frame_equal(chosen_info, info)
    for donor, frame in expected.items():
        pd.testing.assert_frame_equal(chosen.frame(donor), frame, check_exact=True)
        assert chosen.columns(donor).equals(frame.columns)
        rows = np.array([2, 0, 2])
        for order in "CF":
            buffer = np.zeros(frame.size + 3)
            part = chosen.frame(donor, rows, order=order, buffer=buffer)
            pd.testing.assert_frame_equal(part, frame.iloc[rows], check_exact=True)
            assert np.shares_memory(part.to_numpy(), buffer)
            assert part.to_numpy().flags["C_CONTIGUOUS" if order == "C" else "F_CONTIGUOUS"]


@pytest.mark.parametrize("method", ["max_intensity", "average"])
def test_chosen_probes_read_returns_the_array_it_filled(method):
    # read() hands over the values it wrote (in the buffer given, laid out as asked), which
    # the caller may overwrite; the frame() of the same rows is equal, and a table kept in
    # memory (probes averaged) is copied, never handed out to be overwritten
    micro, annots, table = small_data(dtype=np.float64)
    chosen, _ = probes.select_probes(micro, annots, table, method=method)
    for donor in micro:
        rows = np.array([2, 0, 2])
        for order in "CF":
            for buffer in (np.zeros(1000), None):
                read = chosen.read(donor, rows, order=order, buffer=buffer, columns=[1, 0])
                expected = chosen.frame(donor, rows, order=order, columns=[1, 0])
                pd.testing.assert_frame_equal(read.frame(), expected, check_exact=True)
                values = read.values
                assert values.flags.writeable
                assert values.flags["C_CONTIGUOUS" if order == "C" else "F_CONTIGUOUS"]
                if buffer is not None:
                    assert np.shares_memory(values, buffer)
                assert not np.shares_memory(values, chosen.frame(donor).to_numpy())
                values[...] = -1.0  # the caller's: the next read is unchanged
                pd.testing.assert_frame_equal(
                    chosen.frame(donor, rows, order=order, columns=[1, 0]), expected,
                    check_exact=True)


def test_chosen_probes_are_read_again_from_their_table():
    micro, annots, table = small_data(dtype=np.float64)
    chosen, _ = probes.select_probes(micro, annots, table)
    for donor in micro:
        picked = chosen.probe_table(donor)
        assert picked.index.name == "probe_id" and picked["gene_symbol"].is_unique
        rows = np.array([1, 0])
        pd.testing.assert_frame_equal(
            probes.read_chosen_probes(micro[donor], annots[donor], picked, rows,
                                      order="C").frame(),
            chosen.frame(donor, rows, order="C"), check_exact=True)
    two = pd.concat([picked, picked.iloc[:1].set_axis([table.index.difference(picked.index)[0]])])
    with pytest.raises(ValueError, match="one per gene"):
        probes.read_chosen_probes(micro[donor], annots[donor], two)
    averaged, _ = probes.select_probes(micro, annots, table, method="average")
    assert averaged.probe_table(donor) is None


def test_probe_summary():
    table = pd.DataFrame({"gene_symbol": ["A", "A", "B"]}, index=[1, 2, 3])
    summary = probes.probe_summary({"Probes.csv": table, "selected": {"n_probes": 2,
                                                                      "n_genes": 2}})
    assert summary.to_dict("records") == [
        {"step": "Probes.csv", "n_probes": 3, "n_genes": 2},
        {"step": "selected", "n_probes": 2, "n_genes": 2}]


@pytest.mark.parametrize("symbols", [
    ["b", "a", "B", "", "é", "zé", "Z", "a", None, "中", "a\U0001F600", "aÿ", "b"],
    ["x\x00", "x", "a", None, "x"],  # numpy's strings drop the trailing NUL: x twice
])
def test_genes_numbered_alike_whatever_the_string_type(symbols):
    """Gene symbols held as pandas' default strings are numbered by pyarrow, others by numpy:
    the same genes (sorted by code point), probes and layout."""
    frame = pd.DataFrame({"gene_symbol": symbols,
                          "probe_name": [f"p{i}" for i in range(len(symbols))]},
                         index=pd.Index(np.arange(len(symbols))[::-1] + 1, name="probe_id"))
    objects = frame.astype(object)
    fast, general = probes._Genes.from_probes(frame), probes._Genes.from_probes(objects)
    for name in ("symbols", "probe_ids", "names", "gene_of", "starts", "sizes", "layout"):
        assert getattr(fast, name).dtype == getattr(general, name).dtype
        assert getattr(fast, name).tolist() == getattr(general, name).tolist()
    kept = [s for s in symbols if s is not None]
    assert fast.symbols.tolist() == sorted({s.rstrip("\x00") for s in kept})
