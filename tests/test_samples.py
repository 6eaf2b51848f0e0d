"""ahba_app.samples: coordinates, hemispheres and classes, mirroring, similarity filtering.

Parity tests compare every sample table with abagen 0.1.3's on the synthetic data (one cached
oracle run shared with tests/test_probes.py); unit tests pin behaviour on hand-made tables,
including where we differ from abagen on purpose.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import parity_helpers
from ahba_app.matrix import DonorMatrix
from ahba_app import samples

SAMPLE_CASES = [c["name"] for c in parity_helpers.CASES]


# --------------------------------------------------------------------------------------------
# hand-made tables
# --------------------------------------------------------------------------------------------
def ontology() -> pd.DataFrame:
    """A tiny ontology: cortex (with L/R leaves), white matter, a grouping node without hemisphere,
    and a left-only structure."""
    rows = [
        (4005, "Br", "brain", None, None, "/4005/"),
        (4006, "GM", "gray matter", 4005, None, "/4005/4006/"),
        (4008, "Cx", "cerebral cortex", 4006, None, "/4005/4006/4008/"),
        (20001, "FP", "frontal pole, left", 4008, "L", "/4005/4006/4008/20001/"),
        (20002, "FP", "frontal pole, right", 4008, "R", "/4005/4006/4008/20002/"),
        (9218, "WM", "white matter", 4005, None, "/4005/9218/"),
        (20003, "CWM", "cerebral white matter, left", 9218, "L", "/4005/9218/20003/"),
        (20004, "CWM", "cerebral white matter, right", 9218, "R", "/4005/9218/20004/"),
        (20005, "ODD", "left-only structure", 4008, "L", "/4005/4006/4008/20005/"),
        (20006, "MID", "midline structure", 4005, None, "/4005/20006/"),
    ]
    frame = pd.DataFrame(rows, columns=["id", "acronym", "name", "parent_structure_id",
                                        "hemisphere", "structure_id_path"])
    frame["graph_order"] = range(len(frame))
    frame["color_hex_triplet"] = "FFFFFF"
    return frame


def annotation(rows) -> pd.DataFrame:
    """SampleAnnot rows from (structure_id, mni_x) pairs."""
    onto = ontology().set_index("id")
    frame = pd.DataFrame({
        "structure_id": [r[0] for r in rows],
        "slab_num": 1,
        "well_id": np.arange(1000, 1000 + len(rows)),
        "slab_type": "CX",
        "structure_acronym": [onto.loc[r[0], "acronym"] for r in rows],
        "structure_name": [onto.loc[r[0], "name"] for r in rows],
        "polygon_id": 1,
        "mri_voxel_x": 10, "mri_voxel_y": 20, "mri_voxel_z": 30,
        "mni_x": [float(r[1]) for r in rows],
        "mni_y": 1.5, "mni_z": -2.5,
    })
    frame.index = pd.RangeIndex(1, len(rows) + 1, name="sample_id")
    return frame


# --------------------------------------------------------------------------------------------
# parity with abagen 0.1.3
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(ahba_small, tmp_path_factory):
    return parity_helpers.abagen_reference(ahba_small, tmp_path_factory.mktemp("oracle"))


@pytest.mark.oracle
@pytest.mark.parametrize("name", SAMPLE_CASES)
def test_sample_tables_match_abagen(reference, name):
    cases, results = reference
    case = cases[name]
    data = parity_helpers.load_dataset(case["data_dir"], tuple(case["donors"]))
    _, ours, _ = parity_helpers.run_ours(data, case)
    theirs = results[name + "__annotation"]
    assert list(ours) == list(theirs)
    for donor, frame in ours.items():
        ref = theirs[donor]
        assert np.array_equal(frame.index, ref.index), donor  # same samples, same order
        np.testing.assert_allclose(frame[["mni_x", "mni_y", "mni_z"]].to_numpy(float),
                                   ref[["mni_x", "mni_y", "mni_z"]].to_numpy(float),
                                   rtol=1e-12, atol=0)
        for col in ("structure_id", "structure_acronym", "structure_name", "well_id",
                    "hemisphere", "structure"):
            ours_col = frame[col].astype(object).where(frame[col].notna(), None)
            ref_col = ref[col].astype(object).where(ref[col].notna(), None)
            assert ours_col.tolist() == ref_col.tolist(), (donor, col)


@pytest.mark.oracle
def test_reference_covers_mirroring_and_dropping(reference):
    """The cases do exercise mirroring, mismatch dropping and the similarity filter."""
    _, results = reference
    plain = results["samples-corrected-None__annotation"]["9861"]
    mirrored = results["samples-corrected-bidirectional__annotation"]["9861"]
    similar = results["samples-sim1__annotation"]["9861"]
    assert len(mirrored) > 1.8 * len(plain)
    assert set(plain["hemisphere"]) == {"L", "R"}
    assert len(similar) < len(plain)


# --------------------------------------------------------------------------------------------
# hemisphere, class and mismatches
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, expected", [
    ("/4005/4006/4008/20001/", "cortex"),
    ("/4005/9218/20003/", "white matter"),
    ("/4005/4006/4249/4008/", "cortex"),            # the deepest class id wins
    ("/4005/4006/4008/4249/", "subcortex/brainstem"),
    ("/4005/4696/12345/", "cerebellum"),
    ("/4005/9352/", "other"),
    ("/4005/20006/", None),
    (None, None),
])
def test_structure_class(path, expected):
    assert samples.structure_class(path) == expected


def test_annotate_and_drop_mismatches():
    annot = annotation([(20001, -10), (20001, 12), (20002, 30), (20002, -1), (20003, -5),
                        (20006, 0.0), (20006, 4.0)])
    out = samples.annotate_samples(annot, ontology())
    assert out["hemisphere"].tolist() == ["L", "L", "R", "R", "L", "B", "B"]
    assert out["structure"].tolist()[:5] == ["cortex"] * 4 + ["white matter"]
    assert pd.isna(out["structure"].iloc[5])
    kept = samples.drop_mismatch_samples(annot, ontology())
    # left with x < 0, right with x > 0, no hemisphere only at x == 0 exactly (abagen's rule)
    assert kept.index.tolist() == [1, 3, 5, 6]


def test_unknown_structure_is_named():
    with pytest.raises(ValueError, match="99999"):
        samples.annotate_samples(annotation([(20001, -1)]).assign(structure_id=99999),
                                 ontology())


# --------------------------------------------------------------------------------------------
# coordinates
# --------------------------------------------------------------------------------------------
def test_corrected_coordinates_and_unknown_wells():
    coords = pd.DataFrame({"mni_x": [-7.0, 8.0], "mni_y": [1.0, 2.0], "mni_z": [3.0, 4.0]},
                          index=pd.Index([1001, 1000], name="well_id"))
    annot = annotation([(20001, -10), (20002, 10)])
    out = samples.update_coords(annot, coords=coords)
    assert out[["mni_x", "mni_y", "mni_z"]].to_numpy().tolist() == [[8, 2, 4], [-7, 1, 3]]
    assert annot["mni_x"].tolist() == [-10, 10]  # input untouched
    kept = samples.update_coords(annot, corrected_mni=False)
    assert kept["mni_x"].tolist() == [-10, 10]
    # abagen raises a KeyError; we name the wells and the way out
    with pytest.raises(ValueError, match=r"1000.*corrected_mni=False"):
        samples.update_coords(annot, coords=coords.iloc[:1])


def test_native_coordinates_from_affine():
    affine = np.array([[-1, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]], float)
    out = samples.update_coords(annotation([(20001, -10)]), corrected_mni=False,
                                native_affine=affine)
    assert out[["mni_x", "mni_y", "mni_z"]].to_numpy().tolist() == [[80, -106, -42]]


# --------------------------------------------------------------------------------------------
# mirroring
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("swap, copied", [
    ("bidirectional", [1, 3, 2]),  # left copies first, then right copies
    ("leftright", [1, 3]),
    ("rightleft", [2]),
])
def test_mirror_order_ids_and_structures(swap, copied):
    annot = annotation([(20001, -10), (20002, 20), (20003, -30)])
    out = samples.mirror_samples(annot, ontology(), swap=swap)
    assert out.index.tolist() == [1, 2, 3] + copied  # copies keep their sample_id
    copies = out.iloc[3:]
    assert copies["mni_x"].tolist() == (-annot.loc[copied, "mni_x"]).tolist()
    swapped = {20001: 20002, 20002: 20001, 20003: 20004}
    assert copies["structure_id"].tolist() == [swapped[s] for s in
                                               annot.loc[copied, "structure_id"]]
    assert copies["structure_name"].str.contains("right|left").all()
    annotated = samples.drop_mismatch_samples(out, ontology())
    assert len(annotated) == len(out)  # every copy is consistent with its new hemisphere


def test_mirror_without_counterpart_warns():
    """abagen stops with a KeyError; we keep the sample and skip its copy."""
    annot = annotation([(20005, -10), (20001, -12)])
    with pytest.warns(RuntimeWarning, match="could not be mirrored"):
        out = samples.mirror_samples(annot, ontology(), swap="leftright")
    assert out.index.tolist() == [1, 2, 2]


def test_mirror_registry_and_checks():
    assert set(samples.MIRROR_METHODS) == {"bidirectional", "leftright", "rightleft"}
    assert samples.check_lr_mirror(None) is None
    assert samples.check_lr_mirror("leftright") == "leftright"
    with pytest.warns(FutureWarning):
        assert samples.check_lr_mirror(True) == "bidirectional"
    with pytest.raises(ValueError, match=r"'sideways'.*bidirectional"):
        samples.check_lr_mirror("sideways")
    with pytest.raises(ValueError, match="sideways"):
        samples.mirror_samples(annotation([(20001, -1)]), ontology(), swap="sideways")


def test_prepare_samples_counts():
    annot = annotation([(20001, -10), (20002, 20), (20002, -3)])
    out, info = samples.prepare_samples(annot, ontology(), corrected_mni=False,
                                        lr_mirror="bidirectional", return_info=True)
    assert info == {"n_samples": 3, "n_mirrored": 3, "n_mismatched": 2, "n_kept": 4}
    assert out.index.tolist() == [1, 2, 1, 2]
    assert {"hemisphere", "structure"} <= set(out.columns)


# --------------------------------------------------------------------------------------------
# similarity filter
# --------------------------------------------------------------------------------------------
def _brute_similarity(values, cols):
    return np.corrcoef(values[:, cols].T).sum(axis=1)


@pytest.mark.parametrize("layout", ["C", "F"])
def test_similarity_sums_match_full_correlation(layout):
    rng = np.random.default_rng(3)
    values = rng.normal(8, 2, (300, 40)).astype(np.float32)
    values[:, 5] = values[:, 6] * 0.2 + rng.normal(0, 3, 300)  # an outlying sample
    frame = pd.DataFrame(np.asarray(values, order=layout), copy=False,
                         index=pd.Index(np.arange(300) + 10, name="probe_id"),
                         columns=pd.RangeIndex(1, 41, name="sample_id"))
    annot = pd.DataFrame({"structure_id": 1}, index=pd.Index(
        [1, 2, 3, 6, 7, 9, 2, 3] + list(range(12, 41)), name="sample_id"))  # repeats
    probes = pd.DataFrame({"gene_symbol": "G"}, index=frame.index[::2])
    kept, sim = samples.similarity_threshold(frame, annot, probes, threshold=1.0,
                                             return_similarity=True)
    cols = annot.index.to_numpy() - 1
    expected = _brute_similarity(values[::2].astype(np.float64), cols)
    np.testing.assert_allclose(sim, expected, rtol=1e-10)
    cutoff = expected.mean() - expected.std(ddof=1)
    assert kept.index.tolist() == annot.index[expected >= cutoff].tolist()


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "2", True])
def test_sim_threshold_checks(bad):
    with pytest.raises(ValueError, match="sim_threshold"):
        samples.check_sim_threshold(bad)


def test_similarity_needs_known_probes_and_samples():
    frame = pd.DataFrame(np.ones((3, 2), np.float32), index=[1, 2, 3], columns=[1, 2])
    annot = pd.DataFrame({"structure_id": [1, 1]}, index=[1, 2])
    with pytest.raises(ValueError, match="not in the microarray"):
        samples.similarity_threshold(frame, annot, pd.DataFrame(index=[1, 4]), threshold=1)
    with pytest.raises(ValueError, match=r"\[5\]"):
        samples.similarity_threshold(frame, annot.set_axis([1, 5]), pd.DataFrame(index=[1, 2]),
                                     threshold=1)


# --------------------------------------------------------------------------------------------
# reading the cache: only what is asked for, the same values
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cached_donor(ahba_small, tmp_path_factory):
    """A donor's microarray and PACall caches, built in a scratch copy of its folder."""
    import shutil

    from ahba_app import io

    source = ahba_small / "microarray" / "normalized_microarray_donor9861"
    folder = tmp_path_factory.mktemp("donor")
    for name in ("MicroarrayExpression.csv", "PACall.csv"):
        shutil.copy(source / name, folder / name)
    return (io.load_matrix(folder / "MicroarrayExpression.csv"),
            io.load_matrix(folder / "PACall.csv"))


@pytest.mark.parametrize("threads", ["1", "3"])
def test_donor_matrix_reads_what_select_rows_gives(cached_donor, monkeypatch, threads):
    from ahba_app import io

    monkeypatch.setenv("AHBA_APP_THREADS", threads)
    monkeypatch.setattr(io, "_DECODE_VALUES", 50)  # many blocks
    microarray, _ = cached_donor
    matrix = DonorMatrix(microarray, "microarray")
    rng = np.random.default_rng(0)
    rows = rng.choice(microarray.shape[0], 300, replace=False)
    cols = np.concatenate([rng.choice(microarray.n_samples, 20), [0, 0]])  # repeats too
    expected = io.select_rows(microarray, rows, cols)
    assert np.array_equal(matrix.take(rows, cols), expected)
    assert np.array_equal(matrix.take(rows, cols, transposed=True), expected.T)
    out = np.empty(expected.shape)
    assert matrix.take(rows, cols, out=out) is out and np.array_equal(out, expected)
    assert np.array_equal(matrix.take(None), io.select_rows(microarray))
    matrix.release(rows)
    matrix.release()
    assert np.array_equal(matrix.take(rows, cols), expected)  # pages come back when read
    frame = pd.DataFrame(expected, columns=pd.RangeIndex(1, expected.shape[1] + 1))
    from_frame = DonorMatrix(frame, "microarray")
    assert np.array_equal(from_frame.take([2, 1], [0, 3], transposed=True),
                          expected[[2, 1]][:, [0, 3]].T)


def test_present_calls_are_counted_from_packed_bits(cached_donor):
    from ahba_app import io

    _, pacall = cached_donor
    matrix = DonorMatrix(pacall, "pacall")
    rows = np.arange(0, pacall.shape[0], 3)
    cols = np.array([0, 5, 5, 7, pacall.n_samples - 1, 2, 2, 2])  # mirrored copies repeat
    expected = io.select_rows(pacall, rows)[:, cols].sum(axis=1)
    assert np.array_equal(matrix.count_true(rows, cols), expected)
    frame = pd.DataFrame(io.select_rows(pacall))
    assert np.array_equal(DonorMatrix(frame, "pacall").count_true(rows, cols), expected)
