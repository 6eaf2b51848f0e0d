"""Volumes matched on their image grid: the same voxels, coordinates and centroids as the
KD-tree and the straightforward computations give, bit for bit."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial import cKDTree

from ahba_app import geometry
from ahba_app.atlas import AtlasTree, _grid_to_world, _voxel_to_world

AFFINES = {
    "1mm": np.diag([1.0, 1.0, 1.0, 1.0]),
    "2mm flipped x": np.diag([-2.0, 2.0, 2.0, 1.0]),
    "1.5mm": np.diag([1.5, 1.5, 1.5, 1.0]),
    "anisotropic 0.7/1.3/2.1": np.diag([0.7, 1.3, 2.1, 1.0]),
    "permuted axes": np.array([[0.0, 1.1, 0.0, 0.0], [0.0, 0.0, -0.9, 0.0],
                               [1.2, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]),
    "negative zeros": np.array([[1.0, -0.0, -0.0, 0.0], [-0.0, 1.0, -0.0, 0.0],
                                [-0.0, -0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]),
    "oblique": np.array([[0.98, 0.17, 0.0, 0.0], [-0.17, 0.98, 0.05, 0.0],
                         [0.0, -0.05, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]),
}


def _atlas(affine, seed=0, shape=(14, 12, 10)) -> AtlasTree:
    rng = np.random.default_rng(seed)
    affine = np.array(affine, dtype=float)
    affine[:3, 3] = [-7.3, -5.0, -4.25]
    data = rng.integers(0, 6, size=shape).astype(np.int16)
    data[rng.random(shape) < 0.4] = 0       # background between the regions
    return AtlasTree(nib.Nifti1Image(data, affine))


def _tree_hits(atlas: AtlasTree, xyz, radius) -> list:
    tree = cKDTree(atlas.coords)
    return sorted((row, int(atlas.atlas[node]))
                  for row, nodes in enumerate(tree.query_ball_point(xyz, r=radius))
                  for node in nodes)


@pytest.mark.parametrize("name", AFFINES)
def test_grid_coordinates_are_the_voxels_own(name):
    affine = np.array(AFFINES[name])
    affine[:3, 3] = [-90.0, 12.5, -0.0]
    nz = np.nonzero(np.random.default_rng(1).random((9, 8, 7)) < 0.5)
    grid = _grid_to_world(affine, nz)
    plain = _voxel_to_world(affine, np.column_stack(nz))
    assert grid.tobytes() == plain.tobytes()


@pytest.mark.parametrize("name", AFFINES)
@pytest.mark.parametrize("radius", [0, 1, 2, 3, 10])  # 10: several blocks of points
def test_ball_labels_equal_the_kd_tree(name, radius):
    atlas = _atlas(AFFINES[name])
    rng = np.random.default_rng(2)
    # voxel centres (distances exactly 0, 1, 2 ... away from other centres), points between
    # them and points outside the volume
    centres = atlas.coords[rng.choice(len(atlas.coords), 60)]
    ijk = rng.integers(-3, 16, size=(60, 3)).astype(float)
    off_grid = _voxel_to_world(atlas.affine, ijk) + rng.normal(0, 0.6, size=(60, 3))
    xyz = np.vstack([centres, off_grid, [[500.0, 500.0, 500.0], [-1e6, 0.0, 0.0]]])
    rows, labels = atlas._ball_labels(xyz, radius)
    assert labels.dtype == np.int64
    assert sorted(zip(rows.tolist(), labels.tolist())) == _tree_hits(atlas, xyz, radius)


def test_ball_labels_refuse_nan_as_the_tree_does():
    atlas = _atlas(AFFINES["1mm"])
    with pytest.raises(ValueError, match="finite"):
        atlas._ball_labels(np.array([[np.nan, 0.0, 0.0]]), 1)


def test_ball_labels_after_new_coordinates_ask_the_tree():
    atlas = _atlas(AFFINES["1mm"])
    atlas.coords = atlas.coords + 0.25        # no longer the grid's own coordinates
    xyz = atlas.coords[:40]
    rows, labels = atlas._ball_labels(xyz, 1)
    assert sorted(zip(rows.tolist(), labels.tolist())) == _tree_hits(atlas, xyz, 1)


def test_matching_never_builds_a_tree_for_a_volume():
    atlas = _atlas(AFFINES["1mm"])
    atlas.label_samples(atlas.coords[:30] + 0.3)
    assert atlas._tree is None


@pytest.mark.parametrize("labels", [
    np.array([3, 1, 3, 0, 7, 1, 1, 3], dtype=np.int64),
    np.array([5, 2**40, 5, 9], dtype=np.int64),     # too large to count: sorted
    np.array([], dtype=np.int64),
])
def test_centroids_and_unique_labels_as_by_sorting(labels):
    rng = np.random.default_rng(3)
    coords = rng.normal(size=(len(labels), 3)) * 1e3
    assert np.array_equal(geometry.unique_labels(labels), np.unique(labels))
    assert geometry.unique_labels(labels).dtype == np.unique(labels).dtype
    fast = geometry.get_centroids(labels, coords, np.unique(labels))
    uniq, inverse = np.unique(labels, return_inverse=True)
    for pos, label in enumerate(uniq.tolist()):
        mine = inverse == pos
        sums = np.array([np.bincount(inverse[mine] * 0, weights=coords[mine, d])[0]
                         for d in range(3)])
        assert fast[label].tobytes() == (sums / mine.sum()).tobytes()


@pytest.mark.parametrize("name", AFFINES)
def test_volume_coordinates_and_centroids_as_computed_plainly(name):
    """The atlas's labelled voxels, their coordinates and its centroids are those of
    np.nonzero, _voxel_to_world and get_centroids on a C-ordered copy, bit for bit."""
    atlas = _atlas(AFFINES[name], seed=3)
    volume = atlas.label_volume()
    nz = np.nonzero(volume)
    plain = _voxel_to_world(atlas.affine, np.column_stack(nz))
    assert np.ascontiguousarray(atlas.coords).tobytes() == plain.tobytes()
    assert atlas.atlas.tolist() == volume[nz].tolist()
    centroids = geometry.get_centroids(volume[nz], np.ascontiguousarray(plain), atlas.labels)
    assert list(centroids) == list(atlas.centroids)
    assert all(centroids[lab].tobytes() == atlas.centroids[lab].tobytes() for lab in centroids)


@pytest.mark.parametrize("image_class", [nib.Nifti1Image, nib.Nifti2Image])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_gzipped_volumes_read_as_nibabel_reads_them(tmp_path, image_class, dtype):
    """A .nii.gz inflated by isal (atlas._read_image) gives nibabel's header, affine and
    data; files isal cannot read give nibabel's errors."""
    from ahba_app.atlas import _read_image

    rng = np.random.default_rng(4)
    data = rng.integers(0, 40, size=(9, 8, 7)).astype(dtype)
    image = image_class(data, np.array(AFFINES["2mm flipped x"]))
    if dtype is np.float32:
        image.header.set_slope_inter(0.5, 1.0)
    path = tmp_path / "atlas.nii.gz"
    nib.save(image, path)
    ours, theirs = _read_image(path), nib.load(path)
    assert type(ours) is type(theirs)
    assert ours.header.binaryblock == theirs.header.binaryblock
    assert np.asarray(ours.dataobj).tobytes() == np.asarray(theirs.dataobj).tobytes()
    assert np.asarray(ours.dataobj).dtype == np.asarray(theirs.dataobj).dtype
    assert ours.affine.tobytes() == theirs.affine.tobytes()
    path.write_bytes(b"not a gzip file" * 4)
    with pytest.raises(nib.filebasedimages.ImageFileError, match="not a gzip file"):
        _read_image(path)


def test_gzipped_volumes_isal_errors(tmp_path, monkeypatch):
    """Files isal cannot inflate (cut short, trailing bytes, a bad deflate block, a folder)
    get nibabel's own error; an error that says nothing about the file is not hidden."""
    import gzip

    from isal import igzip

    from ahba_app.atlas import _read_image

    image = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    path = tmp_path / "atlas.nii.gz"
    nib.save(image, path)
    whole = path.read_bytes()
    damaged = {"cut short": whole[:-20], "trailing bytes": whole + b"garbage",
               "bad deflate block": whole[:10] + b"\xff" * 60}
    for what, content in damaged.items():
        path.write_bytes(content)
        try:
            nib.load(path).get_fdata()
        except Exception as err:  # nibabel's error for this file, whatever it is
            expected = type(err)
        else:  # (nibabel reads it: so must we)
            expected = None
        if expected is None:
            assert np.asarray(_read_image(path).dataobj).shape == (2, 3, 4), what
            continue
        with pytest.raises(expected):
            np.asarray(_read_image(path).dataobj)
    folder = tmp_path / "folder.nii.gz"
    folder.mkdir()
    with pytest.raises(Exception) as ours:
        _read_image(folder)
    with pytest.raises(Exception) as theirs:
        nib.load(folder)
    assert type(ours.value) is type(theirs.value)

    path.write_bytes(whole)

    def broken(data):
        raise RuntimeError("a fault of the inflater, not of the file")

    monkeypatch.setattr(igzip, "decompress", broken)
    with pytest.raises(RuntimeError, match="fault of the inflater"):
        _read_image(path)
    assert gzip.decompress(whole)  # (the file itself is fine)
