"""Matching samples to regions and filling empty regions (ahba_app.matching)."""

from __future__ import annotations


import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ahba_app import datasets, matching
from ahba_app.atlas import AtlasTree, check_atlas, coerce_atlas_to_dict

CLASSES = np.array(["cortex", "subcortex/brainstem", "cerebellum", "white matter", "other"],
                   dtype=object)
GENES = ["g1", "g2", "g3", "g4"]


# --------------------------------------------------------------------------------------------
# shared inputs
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dk():
    return datasets.fetch_desikan_killiany()


@pytest.fixture(scope="module")
def dk_volume(dk):
    return check_atlas(dk["image"]), check_atlas(dk["image"], dk["info"])


@pytest.fixture(scope="module")
def dk_surface():
    return check_atlas(datasets.fetch_desikan_killiany(surface=True)["image"])


def make_annotation(volume, n=None, seed=0) -> pd.DataFrame:
    """Real AHBA sample coordinates with a hemisphere (x sign, 2 % bilateral) and a structure
    (the DK region's, 15 % changed on purpose so constraints matter), indexed by sample_id."""
    rng = np.random.default_rng(seed)
    coords = datasets.load_corrected_mni().reset_index()
    if n is not None:
        coords = coords.iloc[np.sort(rng.choice(len(coords), n, replace=False))]
    labels = volume.label_samples(coords[matching.COORDS])["label"].to_numpy()
    info = pd.read_csv(datasets.fetch_desikan_killiany()["info"], index_col="id")
    struct = info.loc[np.where(labels == 0, 83, labels), "structure"].to_numpy(dtype=object)
    change = rng.random(len(coords)) < 0.15
    struct[change] = rng.choice(CLASSES, change.sum())
    frame = coords.assign(hemisphere=np.where(coords["mni_x"] < 0, "L", "R"), structure=struct)
    frame.loc[rng.random(len(frame)) < 0.02, "hemisphere"] = "B"
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="sample_id")
    return frame


def make_expression(index, seed=1) -> pd.DataFrame:
    """Random samples x genes values for the sample ids ``index`` (a frame's index or ids)."""
    index = getattr(index, "index", index)
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.random((len(index), len(GENES))), index=index, columns=GENES)


def mirror(annotation: pd.DataFrame) -> pd.DataFrame:
    """Every sample plus its left/right mirror image (sample ids repeat, as after mirroring)."""
    flipped = annotation.assign(mni_x=-annotation["mni_x"],
                                hemisphere=annotation["hemisphere"].map({"L": "R", "R": "L",
                                                                         "B": "B"}))
    return pd.concat([annotation, flipped])


def toy_volume(data, voxel=1.0, origin=(-10.0, -10.0, -10.0)):
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = origin
    return nib.Nifti1Image(np.asarray(data, dtype=np.int16), affine)


# --------------------------------------------------------------------------------------------
# label_samples: behaviour
# --------------------------------------------------------------------------------------------
def test_volume_inside_parcel_and_tolerance():
    data = np.zeros((21, 21, 21))
    data[5:8, 5:8, 5:8] = 1          # world -5..-3
    data[12:15, 12:15, 12:15] = 2    # world 2..4
    tree = AtlasTree(toy_volume(data))
    # grid coordinate just below: -4.5 -> -5 (inside 1); -0.5 -> -1 (2 mm from region 1)
    samples = [[-4.5, -4.5, -4.5], [-0.2, -4.2, -4.2], [2.5, 2.5, 2.5], [9, 9, 9]]
    assert tree.label_samples(samples, tolerance=0)["label"].tolist() == [1, 0, 2, 0]
    assert tree.label_samples(samples, tolerance=2)["label"].tolist() == [1, 1, 2, 0]
    # negative tolerance counts as its absolute value in volumes
    assert tree.label_samples(samples, tolerance=-2)["label"].tolist() == [1, 1, 2, 0]


def test_volume_tie_goes_to_closest_centroid():
    data = np.zeros((21, 21, 21))
    data[9, 9:12, 9:12] = 1      # one layer at x = -1 (centroid x = -1)
    data[11:16, 9:12, 9:12] = 2  # x = +1 .. +5 (centroid x = +3)
    tree = AtlasTree(toy_volume(data))
    labels = tree.label_samples([[0.5, 0.5, 0.5]], tolerance=1)["label"].tolist()
    # the sample moves to grid point 0; within 1 mm lie one voxel of each region (a tie), and
    # region 1's centroid is the closer
    assert labels == [1]
    data[9, 9:12, 9:12] = 0
    data[8:10, 10, 10] = 3
    tree = AtlasTree(toy_volume(data))
    assert tree.label_samples([[0.5, 0.5, 0.5]], tolerance=1)["label"].tolist() == [3]


def test_volume_oblique_group_atlas():
    data = np.zeros((21, 21, 21))
    data[5:8, 5:8, 5:8] = 1
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -10
    angle = np.deg2rad(10)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    tree = AtlasTree(nib.Nifti1Image(data.astype(np.int16), rotation @ affine))
    inside = nib.affines.apply_affine(rotation @ affine, [6.5, 6.5, 6.5])
    assert tree.label_samples([inside], tolerance=0)["label"].tolist() == [1]


def test_volume_constraints(dk_volume):
    _, with_info = dk_volume
    # centroid of left bankssts (1): a cortical left sample takes it, a right one cannot
    point = with_info.centroids[1]
    frame = pd.DataFrame([point, point, point], columns=matching.COORDS)
    frame["hemisphere"] = ["L", "R", "L"]
    frame["structure"] = ["cortex", "cortex", "cerebellum"]
    assert with_info.label_samples(frame, 0)["label"].tolist() == [1, 0, 0]
    # without hemisphere/structure columns there is no constraint
    assert with_info.label_samples(frame[matching.COORDS], 0)["label"].tolist() == [1, 1, 1]


def test_surface_tolerance_and_structure(dk_surface):
    point = dk_surface.centroids[1]
    far = point + np.array([-30.0, 0, 0])
    frame = pd.DataFrame([point, point, far], columns=matching.COORDS)
    frame["hemisphere"] = ["L", "L", "L"]
    frame["structure"] = ["cortex", "subcortex/brainstem", "cortex"]
    labels = dk_surface.label_samples(frame, tolerance=-5)["label"].tolist()
    assert labels == [1, 0, 0]          # non-cortical samples are never matched on surfaces
    labels = dk_surface.label_samples(frame, tolerance=-40)["label"].tolist()
    assert labels[0] == 1 and labels[1] == 0 and labels[2] != 0
    # arrays are all cortical
    assert dk_surface.label_samples(np.asarray([point]))["label"].tolist() == [1]


def test_matching_is_fast_enough_shape(dk_volume):
    """All 3,702 samples mirrored (7,404) with atlas info: labels for every row, some 0."""
    plain, with_info = dk_volume
    annotation = mirror(make_annotation(plain))
    labels = with_info.label_samples(annotation)
    assert len(labels) == 7404 and labels.index.equals(annotation.index)
    assert 0.6 < (labels["label"] > 0).mean() < 1


def test_native_coordinates():
    affine = np.array([[-1.0, 0, 0, 90], [0, 0, -1, 91], [0, -1, 0, 109], [0, 0, 0, 1]])
    frame = pd.DataFrame({"mri_voxel_x": [0, 10], "mri_voxel_y": [0, 5], "mri_voxel_z": [0, 2],
                          "mni_x": 0.0, "mni_y": 0.0, "mni_z": 0.0})
    out = matching.native_coordinates(frame, affine)
    assert out[matching.COORDS].to_numpy().tolist() == [[90, 91, 109], [80, 89, 104]]
    with pytest.raises(ValueError, match="mri_voxel"):
        matching.native_coordinates(frame.drop(columns="mri_voxel_z"), affine)


def test_unreachable_labels_warns(dk_volume):
    plain, _ = dk_volume
    frame = pd.DataFrame([plain.centroids[1]], columns=matching.COORDS)
    with pytest.warns(UserWarning, match="cannot be reached by any tissue sample"):
        missing = matching.unreachable_labels(plain, frame, tolerance=2)
    assert 1 not in missing and 83 in missing and len(missing) > 60


def test_sample_counts():
    counts = matching.sample_counts(
        {"9861": pd.DataFrame({"label": [1, 1, 3, 0]}), "10021": np.array([3, 0, 0])},
        all_labels=[1, 2, 3])
    assert counts.to_dict() == {"9861": {1: 2, 2: 0, 3: 1}, "10021": {1: 0, 2: 0, 3: 1}}
    assert all(dtype.kind == "i" for dtype in counts.dtypes)


# --------------------------------------------------------------------------------------------
# missing regions: behaviour
# --------------------------------------------------------------------------------------------
def test_inverse_distance_weights():
    weights = matching.inverse_distance_weights(np.array([[2.0], [0.0], [np.inf]]))
    assert weights[:, 0].tolist() == [0.5, 1.0, 0.0]
    row = matching.inverse_distance_weights(np.array([[0.0, 2.0, 4.0]]))
    assert row.tolist() == [[1.0, 0.0, 0.0]]


def test_fill_missing_registry_and_unknown():
    assert set(matching.MISSING_METHODS) == {None, "centroids", "interpolate"}
    with pytest.raises(ValueError, match="Unknown missing='nearest'"):
        matching.fill_missing("nearest", None, {}, {}, {})


def test_missing_with_lr_mirror_when_a_donor_covers_every_region(dk_volume):
    """abagen 0.1.3 crashes here: mirrored samples leave a donor with no empty region, and its
    centroid / interpolation helpers fail on an empty list (see the oracle test below). Our
    functions return no rows, and work with the repeated sample ids mirroring produces."""
    plain, with_info = dk_volume
    annotation = mirror(make_annotation(plain))
    expression = make_expression(annotation)
    labels = with_info.label_samples(annotation)
    assert len(np.setdiff1d(with_info.labels, labels["label"])) == 0
    assert not annotation.index.is_unique
    for method in ("centroids", "interpolate"):
        rows = matching.fill_missing(method, with_info, {"d": labels}, {"d": expression},
                                     {"d": annotation})
        assert rows["d"].empty and list(rows["d"].columns) == GENES
    # a mirrored donor with empty regions gets them filled
    half = annotation.iloc[::7]
    sub_labels = with_info.label_samples(half)
    rows = matching.fill_missing("interpolate", with_info, {"d": sub_labels},
                                 {"d": expression.iloc[::7]}, {"d": half})["d"]
    assert len(rows) > 0 and rows.notna().all().all()
    assert set(rows.index).isdisjoint(sub_labels["label"])


def test_centroids_fill_only_regions_empty_everywhere(dk_volume):
    plain, with_info = dk_volume
    annotation = make_annotation(plain, n=400, seed=3)
    expression = make_expression(annotation)
    halves = {"a": annotation.iloc[:200], "b": annotation.iloc[200:]}
    labels = {k: with_info.label_samples(v) for k, v in halves.items()}
    expr = {k: expression.loc[v.index] for k, v in halves.items()}
    rows = matching.fill_missing("centroids", with_info, labels, expr, halves)
    empty_all = set(np.setdiff1d(with_info.labels, labels["a"]["label"])) & \
        set(np.setdiff1d(with_info.labels, labels["b"]["label"]))
    assert set(rows["a"].index) == empty_all
    assert rows["a"].equals(rows["b"])


def test_interpolate_surface_is_sparse(dk_surface):
    """Geodesic filling on a surface never builds a dense nodes x nodes matrix."""
    annotation = make_annotation(check_atlas(datasets.fetch_desikan_killiany()["image"]),
                                 n=300, seed=5)
    expression = make_expression(annotation)
    labels = dk_surface.label_samples(annotation)
    rows = matching.interpolate_missing(dk_surface, labels, expression, annotation)
    assert len(rows) and rows.index.name == "label"
    assert dk_surface.graph.nnz < 20 * len(dk_surface.atlas)


# --------------------------------------------------------------------------------------------
# parity with abagen 0.1.3
# --------------------------------------------------------------------------------------------
ORACLE_SNIPPET = '''
from functools import reduce
from abagen import images, datasets, allen, samples_

def frame(path):
    return pd.read_csv(path, index_col="sample_id")

ann = frame(PARAMS["annotation"])
expr = frame(PARAMS["expression"])
donor = pd.read_csv(PARAMS["donor"], index_col="sample_id")["donor"]
dk = datasets.fetch_desikan_killiany()
dks = datasets.fetch_desikan_killiany(surface=True)
vol = images.check_atlas(dk["image"])
voli = images.check_atlas(dk["image"], dk["info"])
surf = images.check_atlas(dks["image"])
geo = tuple(datasets.fetch_fsaverage5(load=False))
fslr = images.check_atlas(dks["image"], geometry=geo, space="fslr")
labels = {}
for tol in PARAMS["volume_tolerances"]:
    labels[f"vol|{tol}"] = vol.label_samples(ann, tol)["label"].values
    labels[f"voli|{tol}"] = voli.label_samples(ann, tol)["label"].values
for tol in PARAMS["surface_tolerances"]:
    labels[f"surf|{tol}"] = surf.label_samples(ann, tol)["label"].values
labels["fslr|2"] = fslr.label_samples(ann, 2)["label"].values
save("labels", labels)

# donor-native volumes: native coordinates through the image affine (fetch_raw_mri would
# download the T1w; the bundled native volumes share its grid, so their own image is used)
native = datasets.fetch_desikan_killiany(native=True)
trees, group = images.coerce_atlas_to_dict(native["image"], PARAMS["native_donors"],
                                           native["info"])
out = {"group": group}
for d in PARAMS["native_donors"]:
    annot = samples_.update_coords(frame(PARAMS["native_annotation"][d]), corrected_mni=False,
                                   native_space=native["image"][d])
    out[d] = trees[d].label_samples(annot, 2)["label"].values
save("native", out)

# missing regions, per pseudo-donor, with matched samples only (abagen's default)
missing = {}
for name, atl in (("vol", vol), ("voli", voli), ("surf", surf)):
    cents, counts = [], {}
    for d in sorted(donor.unique()):
        a = ann[donor == d]
        e = expr.loc[a.index]
        lab = atl.label_samples(a, 2)
        keep = np.asarray(lab["label"] != 0)
        a, e, lab = a.loc[keep], e.loc[keep], lab.loc[keep]
        counts[d] = lab
        rows, lab2 = allen._interpolate_missing(atl, lab, e, a)
        rows.index = lab2["label"].values
        missing[f"interp|{name}|{d}"] = rows
        cents.append(allen._match_centroids(atl, lab, e, a))
    empty = reduce(set.intersection, [set(f.index) for f, _ in cents])
    combined = {}
    for roi in sorted(empty):
        values = pd.concat([f.loc[[roi]] for f, _ in cents])
        w = allen._get_weights(np.asarray([dist.get(roi) for _, dist in cents])[:, None])
        combined[roi] = (values * w).sum(axis=0) / w.sum()
    missing[f"centroids|{name}"] = pd.DataFrame(combined, index=expr.columns).T
    # abagen's counts frame, built as get_expression_data builds it
    table = pd.DataFrame(np.zeros((len(atl.labels) + 1, len(counts)), dtype=int),
                         index=np.append([0], atl.labels), columns=list(counts))
    for d, lab in counts.items():
        labs, num = np.unique(lab, return_counts=True)
        table.loc[labs, d] = num
    missing[f"counts|{name}"] = table.drop([0], axis=0)
save("missing", missing)

# a mirrored donor reaching every region: abagen's helpers fail
mir = frame(PARAMS["mirrored"])
mexpr = expr.loc[mir.index]
idx = pd.Series(range(1, len(mir) + 1), name="sample_id")
mir.index = idx.copy(); mexpr.index = idx.copy()
lab = voli.label_samples(mir, 2)
errors = {}
for func in (allen._match_centroids, allen._interpolate_missing):
    try:
        func(voli, lab, mexpr, mir)
        errors[func.__name__] = None
    except Exception as err:
        errors[func.__name__] = f"{type(err).__name__}: {err}"
save("mirror", errors)
'''

VOLUME_TOLERANCES = [0, 2, 5, -3]
SURFACE_TOLERANCES = [0, 2, -2, -5, 1.5]
NATIVE_DONORS = ["9861", "12876"]


def native_annotation(donor, seed) -> pd.DataFrame:
    """Samples on a donor's native grid: voxels inside regions, near them and in between."""
    rng = np.random.default_rng(seed)
    img = nib.load(datasets.fetch_desikan_killiany(native=True)["image"][donor])
    data = np.asarray(img.dataobj)
    inside = np.column_stack(np.nonzero(data))
    pick = inside[rng.choice(len(inside), 250, replace=False)]
    near = pick[:100] + rng.integers(-4, 5, size=(100, 3))
    voxels = np.clip(np.vstack([pick, near]), 0, np.asarray(data.shape) - 1)
    labels = data[tuple(voxels.T)]
    info = pd.read_csv(datasets.fetch_desikan_killiany()["info"], index_col="id")
    xyz = nib.affines.apply_affine(img.affine, voxels)
    hemi = np.where(labels > 0, info["hemisphere"].reindex(labels).fillna("L"),
                    np.where(xyz[:, 0] < 0, "L", "R"))
    struct = np.where(labels > 0, info["structure"].reindex(labels).fillna("cortex"),
                      rng.choice(CLASSES, len(labels)))
    frame = pd.DataFrame({"mri_voxel_x": voxels[:, 0], "mri_voxel_y": voxels[:, 1],
                          "mri_voxel_z": voxels[:, 2], "mni_x": 0.0, "mni_y": 0.0,
                          "mni_z": 0.0, "hemisphere": hemi, "structure": struct})
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="sample_id")
    return frame


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, dk_volume):
    from oracle import run_abagen

    plain, _ = dk_volume
    work = tmp_path_factory.mktemp("matching-oracle")
    annotation = make_annotation(plain, n=900, seed=11)
    donor = pd.Series(np.repeat([0, 1], 450), index=annotation.index, name="donor")
    mirrored = mirror(make_annotation(plain)).iloc[::3]  # repeated ids, every region reached
    expression = make_expression(pd.RangeIndex(1, 3703, name="sample_id"))
    natives = {d: native_annotation(d, seed=n) for n, d in enumerate(NATIVE_DONORS)}
    paths = {"annotation": work / "annotation.csv", "expression": work / "expression.csv",
             "donor": work / "donor.csv", "mirrored": work / "mirrored.csv"}
    annotation.to_csv(paths["annotation"])
    expression.to_csv(paths["expression"])
    donor.to_csv(paths["donor"])
    mirrored.to_csv(paths["mirrored"])
    native_paths = {}
    for d, frame in natives.items():
        native_paths[d] = work / f"native-{d}.csv"
        frame.to_csv(native_paths[d])
    results = run_abagen(ORACLE_SNIPPET, work, annotation=paths["annotation"],
                         expression=paths["expression"], donor=paths["donor"],
                         mirrored=paths["mirrored"], native_annotation=native_paths,
                         native_donors=NATIVE_DONORS, volume_tolerances=VOLUME_TOLERANCES,
                         surface_tolerances=SURFACE_TOLERANCES)
    results["inputs"] = dict(annotation=annotation, donor=donor, natives=natives,
                             mirrored=mirrored, expression=expression)
    return results


@pytest.mark.oracle
def test_labels_match_abagen(oracle, dk_volume, dk_surface):
    annotation = oracle["inputs"]["annotation"]
    plain, with_info = dk_volume
    fslr = check_atlas(datasets.fetch_desikan_killiany(surface=True)["image"],
                       geometry=tuple(datasets.fetch_fsaverage5(load=False)), space="fslr")
    trees = {"vol": plain, "voli": with_info, "surf": dk_surface, "fslr": fslr}
    assert len(oracle["labels"]) == 2 * len(VOLUME_TOLERANCES) + len(SURFACE_TOLERANCES) + 1
    for key, expected in oracle["labels"].items():
        name, tol = key.split("|")
        ours = trees[name].label_samples(annotation, float(tol))["label"].to_numpy()
        mismatch = np.flatnonzero(ours != expected)
        assert len(mismatch) == 0, f"{key}: {len(mismatch)} samples differ, e.g. {mismatch[:5]}"
        assert (expected > 0).sum() > 100


@pytest.mark.oracle
def test_native_volume_labels_match_abagen(oracle):
    native = datasets.fetch_desikan_killiany(native=True)
    with pytest.warns(UserWarning, match=r"absent from .*\[83\]"):  # no brainstem there
        trees, group = coerce_atlas_to_dict(native["image"], NATIVE_DONORS, native["info"])
    assert group is False and oracle["native"]["group"] is False
    for d in NATIVE_DONORS:
        assert trees[d].native_affine is trees[d].affine
        frame = matching.native_coordinates(oracle["inputs"]["natives"][d], trees[d].native_affine)
        ours = trees[d].label_samples(frame, 2)["label"].to_numpy()
        np.testing.assert_array_equal(ours, oracle["native"][d])


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["vol", "voli", "surf"])
def test_missing_and_counts_match_abagen(oracle, dk_volume, dk_surface, name):
    plain, with_info = dk_volume
    tree = {"vol": plain, "voli": with_info, "surf": dk_surface}[name]
    annotation, donor = oracle["inputs"]["annotation"], oracle["inputs"]["donor"]
    expression = oracle["inputs"]["expression"].loc[annotation.index]
    labels, expr, annot = {}, {}, {}
    for d in (0, 1):
        a = annotation[donor == d]
        lab = tree.label_samples(a, 2)
        keep = lab["label"].to_numpy() != 0
        labels[d], annot[d], expr[d] = lab[keep], a[keep], expression.loc[a.index[keep]]
    interpolated = matching.fill_missing("interpolate", tree, labels, expr, annot)
    for d in (0, 1):
        expected = oracle["missing"][f"interp|{name}|{d}"]
        ours = interpolated[d]
        assert ours.index.tolist() == expected.index.tolist()
        np.testing.assert_allclose(ours.to_numpy(), expected.to_numpy(), rtol=1e-6)
    centroids = matching.fill_missing("centroids", tree, labels, expr, annot)
    expected = oracle["missing"][f"centroids|{name}"]
    assert centroids[0].index.tolist() == expected.index.tolist()
    np.testing.assert_allclose(centroids[0].to_numpy(), expected.to_numpy(dtype=float),
                               rtol=1e-9)
    counts = matching.sample_counts(labels, tree.labels)
    pd.testing.assert_frame_equal(counts, oracle["missing"][f"counts|{name}"],
                                  check_dtype=False)


@pytest.mark.oracle
def test_abagen_fails_when_a_mirrored_donor_has_no_empty_region(oracle, dk_volume):
    """The reason abagen 0.1.3 crashes with lr_mirror + missing: its helpers fail on a donor
    whose samples reach every region. Ours return no rows."""
    errors = oracle["mirror"]
    assert "Columns must be same length as key" in errors["_match_centroids"]
    assert "No objects to concatenate" in errors["_interpolate_missing"]
    _, with_info = dk_volume
    mirrored = oracle["inputs"]["mirrored"]
    expression = oracle["inputs"]["expression"].loc[mirrored.index]
    labels = with_info.label_samples(mirrored)
    assert len(np.setdiff1d(with_info.labels, labels["label"])) == 0
    assert matching.interpolate_missing(with_info, labels, expression, mirrored).empty
    rows, dist = matching.match_centroids(with_info, labels, expression, mirrored)
    assert rows.empty and dist.empty


def _labels_near_by_box(atlas, xyz, radius):
    """The voxels _reached_volume_labels reads, one point at a time with every index tested
    against the grid: the labels it must give."""
    affine = np.asarray(atlas.affine, dtype=float)
    volume = atlas.label_volume()
    step = float(np.linalg.svd(affine[:3, :3], compute_uv=False).min())
    reach = radius / step + 1.0
    span = np.arange(-int(np.ceil(reach)), int(np.ceil(reach)) + 1)
    offsets = np.stack(np.meshgrid(span, span, span, indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets[(offsets ** 2).sum(axis=1) <= reach ** 2]
    found = {0}
    for point in np.rint(np.c_[xyz, np.ones(len(xyz))] @ np.linalg.inv(affine).T)[:, :3]:
        near = point.astype(np.int64) + offsets
        near = near[((near >= 0) & (near < volume.shape)).all(axis=1)]
        found |= set(volume[tuple(near.T)].tolist())
    return np.setdiff1d(atlas.labels, sorted(found))


def test_unreachable_labels_at_the_grid_edges(dk_volume):
    """Points well inside the grid (their voxels looked up by flat index) and points near or
    beyond its edges (each index tested) give the labels of a point-by-point search."""
    import nibabel as nib

    from ahba_app.atlas import AtlasTree

    plain, _ = dk_volume
    volume = plain.label_volume()
    # a volume cut so that regions touch its faces
    cut = AtlasTree(nib.Nifti1Image(volume[30:-40, 40:-50, 20:-60].astype(np.int16),
                                    plain.affine @ np.array([[1, 0, 0, 30], [0, 1, 0, 40],
                                                             [0, 0, 1, 20], [0, 0, 0, 1.0]])))
    rng = np.random.default_rng(11)
    corner = cut.affine[:3, 3]
    far = corner + np.asarray(cut._shape) * cut.voxel_size * np.sign(np.diag(cut.affine)[:3])
    lo, hi = np.minimum(corner, far), np.maximum(corner, far)
    xyz = rng.uniform(lo - 6, hi + 6, size=(300, 3))
    for atlas in (plain, cut):
        for tolerance in (0, 2, -5):
            margin = float(np.sqrt(np.sum(atlas.voxel_size ** 2)))
            expected = _labels_near_by_box(atlas, xyz, abs(tolerance) + margin)
            missing = matching.unreachable_labels(atlas, pd.DataFrame(xyz, columns=matching.COORDS),
                                                  tolerance=tolerance, warn=False)
            assert missing.tolist() == expected.tolist()
            assert 0 < len(missing) < len(atlas.labels) or atlas is plain
    assert len(matching.unreachable_labels(cut, pd.DataFrame(xyz[:0], columns=matching.COORDS),
                                           warn=False)) == len(cut.labels)


def test_unreachable_labels_never_names_a_region_within_reach(dk_volume):
    """The grid look-up reaches every region a ball query of the labelled voxels reaches
    (it may reach a few more, up to a voxel further), on the 1 mm and a 2 mm oblique grid."""
    import nibabel as nib

    from ahba_app.atlas import AtlasTree

    plain, _ = dk_volume
    rng = np.random.default_rng(5)
    picked = plain.coords[rng.choice(len(plain.coords), 40, replace=False)]
    xyz = picked + rng.normal(0, 4, size=picked.shape)
    frame = pd.DataFrame(xyz, columns=matching.COORDS)
    volume = plain.label_volume()
    tilted = np.array([[2 * np.cos(0.3), -2 * np.sin(0.3), 0, -90],
                       [2 * np.sin(0.3), 2 * np.cos(0.3), 0, -126],
                       [0, 0, 2, -72], [0, 0, 0, 1]])
    coarse = AtlasTree(nib.Nifti1Image(volume[::2, ::2, ::2].astype(np.int16), tilted))
    for atlas in (plain, coarse):
        for tolerance in (0, 2, -3):
            margin = float(np.sqrt(np.sum(atlas.voxel_size ** 2)))
            radius = abs(tolerance) + margin
            hits = atlas.tree.query_ball_point(xyz, r=radius)
            by_tree = np.unique(atlas.atlas[np.concatenate([np.asarray(h, int) for h in hits])])
            missing = matching.unreachable_labels(atlas, frame, tolerance=tolerance, warn=False)
            assert not np.isin(by_tree, missing).any()
            # and no region far beyond reach is said to be reachable
            far = atlas.tree.query_ball_point(xyz, r=radius + 2 * margin)
            near = np.unique(atlas.atlas[np.concatenate([np.asarray(h, int) for h in far])])
            assert set(np.setdiff1d(atlas.labels, missing)) <= set(near)


def test_weighted_mean_rows_is_the_one_fill_mean():
    """Regions filled from samples (interpolate_missing), from donors (combine_centroids) and by
    the multiverse's blocks of genes share one public weighted mean: a NaN adds nothing to its
    column's sum while its row's weight stays in the divisor."""
    from ahba_app import geometry
    from ahba_app.multiverse import upstream

    values = np.array([[1.0, np.nan, 2.0], [3.0, 4.0, np.nan]])
    got = geometry.weighted_mean_rows(values, np.array([1.0, 3.0]))
    np.testing.assert_array_equal(got, [(1 + 9) / 4, 12 / 4, 2 / 4])
    assert matching.weighted_mean_rows is geometry.weighted_mean_rows
    assert upstream.weighted_mean_rows is geometry.weighted_mean_rows
