"""Donor-native atlases matched as abagen 0.1.3 matches them: each donor's samples placed on its
raw T1w (read from the data folder, never downloaded here) and their hemispheres checked in those
native coordinates.

(A parity test against abagen on the bundled donor-native volumes is still to come: the
synthetic samples' MRI voxels do not land in those volumes, so both tools match no sample.)"""

from __future__ import annotations

import numpy as np
import pytest

from ahba_app import pipeline
from ahba_app.datasets import fetch_desikan_killiany
from conftest import _synthetic, _with_anatomy


DONORS = ["12876", "15496"]


@pytest.fixture(scope="module")
def data():
    return _with_anatomy(_synthetic("suite", 1234))


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
