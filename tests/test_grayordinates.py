"""CIFTI grayordinates: cortical samples on the surface, subcortical ones in the volume."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import ahba_app
from ahba_app import synthetic_templateflow as stf
from ahba_app.atlas import check_atlas
from ahba_app.grayordinates import GrayordinateAtlas, structure_of


@pytest.fixture(scope="module")
def cifti(tmp_path_factory):
    """A dlabel with cortex (fsLR-like mesh) and subcortical voxels, its pieces and surfaces."""
    folder = tmp_path_factory.mktemp("cifti")
    path = stf.write_cifti_atlas(folder / "tpl-fsLR_atlas-Synth_den-32k_dseg.dlabel.nii")
    (lh, rh), (volume, affine), names = stf.cifti_parts()
    geometry = [folder / f"tpl-fsLR_den-32k_hemi-{h}_midthickness.surf.gii" for h in "LR"]
    for surf, (vertices, faces) in zip(geometry, stf.fslr_mesh()):
        stf.write_surface(surf, vertices, faces)
    info = pd.DataFrame([(k, *v) for k, v in sorted(names.items())],
                        columns=["id", "label", "hemisphere", "structure"])
    return dict(path=path, lh=lh, rh=rh, volume=volume, affine=affine, info=info,
                geometry=[str(g) for g in geometry])


def test_cifti_with_subcortex_loads_both_parts(cifti):
    tree = check_atlas(cifti["path"], geometry=cifti["geometry"], space="fslr")
    assert isinstance(tree, GrayordinateAtlas)
    surface, volume = tree.parts
    assert not surface.volumetric and volume.volumetric
    expected_surface = np.union1d(np.unique(cifti["lh"][cifti["lh"] != 0]),
                                  np.unique(cifti["rh"][cifti["rh"] != 0]))
    assert np.array_equal(surface.labels, expected_surface)
    assert np.array_equal(volume.labels, np.unique(cifti["volume"][cifti["volume"] != 0]))
    info = tree.atlas_info
    # hemisphere and structure come from the CIFTI structure names
    thalamus = info.index[info["label"] == "THALAMUS_LEFT"][0]
    assert tuple(info.loc[thalamus, ["hemisphere", "structure"]]) == ("L", "subcortex/brainstem")
    stem = info.index[info["label"] == "BRAIN_STEM"][0]
    assert info.loc[stem, "hemisphere"] == "B"
    assert set(info.loc[surface.labels, "structure"]) == {"cortex"}


@pytest.mark.parametrize("missing", [None, "centroids"])
def test_cifti_table_equals_surface_and_volume_runs_merged(cifti, ahba_small, missing):
    """One run with the grayordinates atlas = the surface pair run and the subcortical volume
    run put together (the same samples normalized in all three: norm_matched=False)."""
    options = dict(data_dir=ahba_small, norm_matched=False, missing=missing,
                   return_counts=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = check_atlas(cifti["path"], geometry=cifti["geometry"], space="fslr")
        both, counts_both = ahba_app.get_expression_data(tree, **options)
        surface = check_atlas((cifti["lh"], cifti["rh"]), geometry=cifti["geometry"],
                              space="fslr")
        cortex, counts_cortex = ahba_app.get_expression_data(surface, **options)
        info = cifti["info"]
        volume, counts_volume = ahba_app.get_expression_data(
            nib.Nifti1Image(cifti["volume"], cifti["affine"]),
            info[info["structure"] != "cortex"], **options)
    merged = pd.concat([cortex, volume]).sort_index()
    assert len(cortex) and len(volume)
    assert merged.index.equals(both.index) and merged.columns.equals(both.columns)
    np.testing.assert_array_equal(merged.to_numpy(), both.to_numpy())
    pd.testing.assert_frame_equal(pd.concat([counts_cortex, counts_volume]).sort_index(),
                                  counts_both, check_dtype=False)
    # both parts matched samples: cortical on the surface, the others in the volume
    assert counts_cortex.to_numpy().sum() > 0 and counts_volume.to_numpy().sum() > 0


def test_label_shared_by_surface_and_voxels_is_an_error(cifti):
    surface = check_atlas((cifti["lh"], cifti["rh"]), geometry=cifti["geometry"], space="fslr")
    clash = cifti["volume"].copy()
    clash[clash != 0] = 1  # label 1 is a left cortical parcel
    volume = check_atlas(nib.Nifti1Image(clash, cifti["affine"]))
    with pytest.raises(ValueError, match=r"label\(s\) \[1\] are used both"):
        GrayordinateAtlas(surface, volume, source="clash.dlabel.nii")


def test_cifti_without_geometry_names_the_fix(cifti):
    with pytest.raises(ValueError, match="geometry="):
        check_atlas(cifti["path"])


@pytest.mark.parametrize("name, expected", [
    ("CIFTI_STRUCTURE_THALAMUS_LEFT", ("L", "subcortex/brainstem")),
    ("CIFTI_STRUCTURE_PUTAMEN_RIGHT", ("R", "subcortex/brainstem")),
    ("CIFTI_STRUCTURE_CEREBELLUM_LEFT", ("L", "cerebellum")),
    ("CIFTI_STRUCTURE_BRAIN_STEM", ("B", "subcortex/brainstem")),
    ("CIFTI_STRUCTURE_CORTEX_RIGHT", ("R", "cortex")),
])
def test_structure_of_cifti_names(name, expected):
    assert structure_of(name) == expected
