"""End-to-end parity of ahba_app.get_expression_data with abagen 0.1.3 on synthetic data.

Each group of cases runs in ONE abagen subprocess (abagen reads the CSVs once per case, so the
groups are split to let pytest-xdist spread them over both cores). Every case requires the same
region index, the same gene columns, the same NaN cells, values within 1e-6 and equal counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ahba_app import api
from ahba_app.datasets import fetch_desikan_killiany
from oracle import run_abagen

DK = fetch_desikan_killiany()
DK_SURF = fetch_desikan_killiany(surface=True)
TOLERANCE = 1e-6

# name -> (atlas kind, with atlas info, keyword arguments)
GROUPS = {
    "normalizations": {
        "defaults": ("volume", True, {}),
        "no-info": ("volume", False, {}),
        "center-zscore": ("volume", True, dict(sample_norm="center", gene_norm="zscore")),
        "minmax-sigmoid": ("volume", True, dict(sample_norm="minmax", gene_norm="sigmoid")),
        "scaled-sigmoids": ("volume", True, dict(sample_norm="scaled_sigmoid",
                                                 gene_norm="scaled_sigmoid_quantiles")),
        "robust-mixed": ("volume", True, dict(sample_norm="robust_sigmoid",
                                              gene_norm="mixed_sigmoid")),
        "aliases-none": ("volume", True, dict(sample_norm=None, gene_norm="rs")),
        "demean-sig": ("volume", True, dict(sample_norm="demean", gene_norm="sig")),
    },
    "aggregation": {
        "norm-all": ("volume", True, dict(norm_matched=False)),
        "norm-structures": ("volume", True, dict(norm_structures=True)),
        "region-samples": ("volume", True, dict(region_agg="samples")),
        "median": ("volume", True, dict(agg_metric="median")),
        "two-donors": ("volume", True, dict(donors=["9861", "H0351.2002"],
                                            probe_selection="max_intensity")),
        "return-donors": ("volume", True, dict(return_donors=True)),
        "tolerance-0": ("volume", True, dict(tolerance=0, ibf_threshold=0.2)),
    },
    "matching": {
        "mirror-bidirectional": ("volume", True, dict(lr_mirror="bidirectional")),
        "mirror-leftright": ("volume", True, dict(lr_mirror="leftright",
                                                  probe_selection="pc_loading")),
        "mirror-rightleft": ("volume", False, dict(lr_mirror="rightleft")),
        "centroids": ("volume", True, dict(missing="centroids", norm_matched=False)),
        "interpolate": ("volume", True, dict(missing="interpolate")),
        "surface": ("surface", False, dict(tolerance=2)),
        "surface-negative-tol": ("surface", False, dict(tolerance=-3, missing="centroids")),
        "probes-corr-independent": ("volume", True, dict(probe_selection="corr_variance",
                                                         donor_probes="independent",
                                                         corrected_mni=False)),
        "probes-common-original": ("volume", True, dict(probe_selection="max_variance",
                                                        donor_probes="common",
                                                        reannotated=False)),
        "average-sim": ("volume", True, dict(probe_selection="average", sim_threshold=2)),
        "rnaseq": ("volume", True, dict(probe_selection="rnaseq")),
    },
}

SNIPPET = """
for name, (kind, with_info, kwargs) in PARAMS["cases"].items():
    atlas = PARAMS["volume"] if kind == "volume" else tuple(PARAMS["surface"])
    info = PARAMS["info"] if with_info else None
    out = abagen.get_expression_data(atlas, info, data_dir=PARAMS["data"], return_counts=True,
                                     **kwargs)
    save(name, out)
"""


def _atlas(kind):
    return DK["image"] if kind == "volume" else DK_SURF["image"]




def _oracle(group, ahba_small, workdir):
    return run_abagen(SNIPPET, workdir, cases=GROUPS[group], volume=str(DK["image"]),
                      surface=[str(p) for p in DK_SURF["image"]], info=str(DK["info"]),
                      data=str(ahba_small))


def _compare(name, ours, theirs):
    assert ours.index.equals(theirs.index), f"{name}: region index differs"
    assert list(ours.columns) == list(theirs.columns), f"{name}: gene columns differ"
    np.testing.assert_array_equal(ours.isna().to_numpy(), theirs.isna().to_numpy(),
                                  err_msg=f"{name}: NaN cells differ")
    diff = np.nanmax(np.abs(ours.to_numpy(dtype=float) - theirs.to_numpy(dtype=float)),
                     initial=0)
    assert diff <= TOLERANCE, f"{name}: values differ by up to {diff:.3g}"


@pytest.mark.oracle
@pytest.mark.parametrize("group", list(GROUPS))
def test_get_expression_data_matches_abagen(group, ahba_small, tmp_path):
    expected = _oracle(group, ahba_small, tmp_path)
    for name, (kind, with_info, kwargs) in GROUPS[group].items():
        ours, counts = api.get_expression_data(_atlas(kind), DK["info"] if with_info else None,
                                               data_dir=ahba_small, return_counts=True, **kwargs)
        theirs, their_counts = expected[name]
        if kwargs.get("return_donors"):
            assert isinstance(ours, dict) and list(ours) == list(theirs)
            for donor in ours:
                _compare(f"{name} {donor}", ours[donor], theirs[donor])
        else:
            _compare(name, ours, theirs)
        assert list(counts.index) == list(their_counts.index), f"{name}: counts index"
        assert list(counts.columns) == list(their_counts.columns), f"{name}: counts donors"
        np.testing.assert_array_equal(counts.to_numpy(), their_counts.to_numpy(),
                                      err_msg=f"{name}: counts differ")


MASK_SNIPPET = """
import nibabel as nib
dk = nib.load(PARAMS["volume"])
mask = nib.Nifti1Image((np.asarray(dk.dataobj) == 10).astype("uint8"), dk.affine)
save("in_mask", abagen.get_samples_in_mask(mask, data_dir=PARAMS["data"]))
save("all", abagen.get_samples_in_mask(None, data_dir=PARAMS["data"], gene_norm="zscore"))
save("dense", abagen.get_interpolated_map(PARAMS["genes"], mask, data_dir=PARAMS["data"],
                                         lr_mirror=None))
"""


@pytest.mark.oracle
def test_sample_level_functions_match_abagen(ahba_small, tmp_path):
    import nibabel as nib

    dk = nib.load(DK["image"])
    mask = nib.Nifti1Image((np.asarray(dk.dataobj) == 10).astype("uint8"), dk.affine)
    ours, coords = api.get_samples_in_mask(mask, data_dir=ahba_small)
    genes = list(ours.columns[:3])
    expected = run_abagen(MASK_SNIPPET, tmp_path, volume=str(DK["image"]),
                          data=str(ahba_small), genes=genes)
    theirs, their_coords = expected["in_mask"]
    _compare("in-mask", ours, theirs)
    np.testing.assert_allclose(coords.to_numpy(), their_coords.to_numpy(), atol=1e-9)

    ours_all, _ = api.get_samples_in_mask(None, data_dir=ahba_small, gene_norm="zscore")
    _compare("all-samples", ours_all, expected["all"][0])

    # abagen's default lr_mirror='bidirectional' gives mirrored copies their ORIGINAL coordinates
    # (see test_mirrored_samples_keep_mirrored_coordinates), so compare without mirroring
    dense = api.get_interpolated_map(genes, mask, data_dir=ahba_small, lr_mirror=None)
    for gene in genes:
        np.testing.assert_allclose(dense[gene], expected["dense"][gene], atol=TOLERANCE)


@pytest.mark.parametrize("missing", ["centroids", "interpolate"])
@pytest.mark.parametrize("lr_mirror", ["bidirectional", "leftright", "rightleft"])
def test_missing_works_with_any_mirroring(ahba_small, missing, lr_mirror):
    """abagen 0.1.3 crashes when a mirrored donor has no empty region; ours fills every region."""
    expression = api.get_expression_data(DK["image"], DK["info"], data_dir=ahba_small,
                                         missing=missing, lr_mirror=lr_mirror,
                                         norm_matched=False)
    assert not expression.isna().all(axis=1).any()


def test_bad_options_name_the_value_and_the_choices(ahba_small):
    with pytest.raises(ValueError, match=r"probe_selection.*'nope'|'nope'.*probe_selection"):
        api.get_expression_data(DK["image"], data_dir=ahba_small, probe_selection="nope")
    with pytest.raises(ValueError, match="ibf_threshold"):
        api.get_expression_data(DK["image"], data_dir=ahba_small, ibf_threshold=1.5)
    with pytest.raises(ValueError, match="99999"):
        api.get_expression_data(DK["image"], data_dir=ahba_small, donors=["99999"])
    with pytest.raises(ValueError, match="gene_norm"):
        api.get_expression_data(DK["image"], data_dir=ahba_small, gene_norm="batch")
    with pytest.raises(ValueError, match="return_donors"):
        api.get_expression_data(DK["image"], data_dir=ahba_small, region_agg="samples",
                                return_donors=True)


def test_mirrored_samples_keep_mirrored_coordinates(ahba_small):
    """abagen 0.1.3 looks sample coordinates up by well_id, so a mirrored copy gets its
    original's coordinates and mirroring adds nothing to get_interpolated_map (whose default is
    lr_mirror='bidirectional'). Ours keeps each copy at its mirrored position."""
    plain, plain_coords = api.get_samples_in_mask(None, data_dir=ahba_small, donors=["9861"],
                                                  probe_selection="max_intensity")
    mirrored, coords = api.get_samples_in_mask(None, data_dir=ahba_small, donors=["9861"],
                                               probe_selection="max_intensity",
                                               lr_mirror="bidirectional")
    assert len(mirrored) > len(plain)
    copies = coords.loc[coords.index.duplicated(keep=False)]
    for well, rows in copies.groupby(level=0):
        xs = sorted(rows["x"])
        assert xs[0] == pytest.approx(-xs[-1]), f"well {well}: copy not mirrored"


def test_regions_no_sample_can_reach_are_warned_about(ahba_small, tmp_path):
    """A region far from every sample (a block of voxels in a corner of the DK volume) is named
    in a warning; it is not an error, and its row stays empty."""
    import nibabel as nib

    dk = nib.load(DK["image"])
    data = np.asarray(dk.dataobj).astype(np.int16)
    data[:4, :4, :4] = 999
    atlas = tmp_path / "dk-plus-corner.nii.gz"
    nib.save(nib.Nifti1Image(data, dk.affine), atlas)
    with pytest.warns(UserWarning, match=r"cannot be reached by any tissue sample.*999"):
        expression = api.get_expression_data(atlas, data_dir=ahba_small, donors=["9861", "10021"])
    assert expression.loc[999].isna().all()
