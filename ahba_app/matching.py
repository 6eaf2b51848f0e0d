"""Matching tissue samples to atlas regions, and filling regions that no sample reached.

Everything here works on an :class:`ahba_app.atlas.AtlasTree` (built by
:func:`ahba_app.atlas.check_atlas`) and on plain pandas / numpy objects:

- :func:`label_samples` gives each sample a region (0 when none), with abagen 0.1.3's rules;
- :func:`sample_counts` counts matched samples per region and donor;
- :func:`fill_missing` (registry :data:`MISSING_METHODS`) computes expression rows for regions
  without samples (``missing='centroids'`` or ``'interpolate'``), working with mirrored samples;
- :func:`unreachable_labels` lists regions that no sample can ever be matched to;
- :func:`native_coordinates` turns ``mri_voxel_*`` columns into scanner coordinates.

A sample annotation is a DataFrame with columns ``mni_x, mni_y, mni_z`` and, optionally,
``hemisphere`` (``L``/``R``/``B``) and ``structure`` (``cortex``, ``subcortex/brainstem``,
``cerebellum``, ``white matter``, ``other``); an ``(S, 3)`` array of coordinates also works.
When the atlas has atlas info and the annotation has both columns, a sample is only matched to
regions of its own structure, and of its own hemisphere unless the region is bilateral (``B``).
"""

from __future__ import annotations

import itertools
import warnings
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

# scipy.sparse (surface graphs) is imported where it is used: volumes never need it, and it
# is a tenth of a second of every start-up

COORDS = ["mni_x", "mni_y", "mni_z"]
VOXELS = ["mri_voxel_x", "mri_voxel_y", "mri_voxel_z"]
INFO = ["hemisphere", "structure"]

__all__ = [
    "MISSING_METHODS",
    "closest_centroid",
    "combine_centroids",
    "fill_missing",
    "get_centroids",
    "interpolate_missing",
    "inverse_distance_weights",
    "label_samples",
    "match_centroids",
    "native_coordinates",
    "sample_counts",
    "surface_graph",
    "unreachable_labels",
]


def __getattr__(name):  # ``matching.AtlasTree`` as in abagen, without an import cycle
    if name == "AtlasTree":
        from .atlas import AtlasTree
        return AtlasTree
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def sample_frame(annotation, copy: bool = True) -> pd.DataFrame:
    """``annotation`` as a DataFrame with (at least) ``mni_x, mni_y, mni_z``.

    Accepts a DataFrame, the path of a ``SampleAnnot.csv``-like file or an ``(S, 3)`` array of
    coordinates (index 0..S-1, no hemisphere or structure).
    """
    if isinstance(annotation, pd.DataFrame):
        frame = annotation.copy() if copy else annotation
    elif isinstance(annotation, (str, bytes)) or hasattr(annotation, "__fspath__"):
        frame = pd.read_csv(annotation)
        frame.index = pd.RangeIndex(1, len(frame) + 1, name="sample_id")
    else:
        coords = np.atleast_2d(np.asarray(annotation, dtype=float))
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(f"Sample coordinates must be an (S, 3) array; got shape "
                             f"{coords.shape}.")
        return pd.DataFrame(coords, columns=COORDS)
    missing = [c for c in COORDS if c not in frame.columns]
    if missing:
        raise ValueError(f"The sample annotation lacks the coordinate column(s) {missing}: it "
                         f"needs {COORDS} (and optionally 'hemisphere', 'structure').")
    return frame


def _has_info(frame: pd.DataFrame) -> bool:
    return all(c in frame.columns for c in INFO)


def _label_values(labels) -> np.ndarray:
    """Per-sample labels given as a DataFrame (column ``label``), Series or array."""
    if isinstance(labels, pd.DataFrame):
        labels = labels["label"] if "label" in labels.columns else labels.iloc[:, 0]
    return np.asarray(labels).ravel()


def allowed(label_hemi, label_struct, sample_hemi, sample_struct) -> np.ndarray:
    """Whether regions (hemisphere, structure) may take samples (hemisphere, structure).

    The structures must be equal; the hemispheres too, unless the region is bilateral ('B').
    Arguments broadcast; a missing (NaN/None) sample value never matches.
    """
    label_hemi, label_struct = np.asarray(label_hemi, object), np.asarray(label_struct, object)
    same_struct = label_struct == np.asarray(sample_struct, object)
    same_hemi = (label_hemi == "B") | (label_hemi == np.asarray(sample_hemi, object))
    return np.asarray(same_struct & same_hemi, dtype=bool)


def _check_label(label, sample_info, atlas_info) -> np.ndarray:
    """``label`` (one per row of ``sample_info``) with 0 where the region may not take the
    sample (see :func:`allowed`). Without hemisphere and structure in both tables, or for
    labels ``atlas_info`` does not list (such as 0), nothing changes."""
    label = np.array(np.atleast_1d(label))
    if not (_has_info(sample_info) and _has_info(atlas_info)):
        return label
    if len(sample_info) != len(label):  # one sample for several candidate labels
        sample_info = pd.concat([sample_info] * len(label))
    known = np.isin(label, atlas_info.index)
    regions = atlas_info.reindex(label[known])
    ok = allowed(regions["hemisphere"], regions["structure"],
                 np.asarray(sample_info["hemisphere"])[known],
                 np.asarray(sample_info["structure"])[known])
    label[np.flatnonzero(known)[~ok]] = 0
    return label


def inverse_distance_weights(dist) -> np.ndarray:
    """``1 / dist``; in a row holding a zero distance, those entries weigh 1 and others 0.

    ``dist`` is 2-D (rows are independent): with a column vector, as abagen uses it, every zero
    distance weighs 1 while the other entries keep ``1 / dist``.
    """
    dist = np.asarray(dist, dtype=float)
    with np.errstate(divide="ignore"):
        weights = 1.0 / dist
    zero = np.isinf(weights)
    rows = zero.any(axis=-1)
    weights[rows] = zero[rows]
    return weights


def get_centroids(data, coordinates, labels=None) -> dict:
    """Mean coordinate of the points carrying each label: ``{label: (D,) array}``.

    ``labels`` restricts (and orders) the output; by default every non-zero label, sorted.
    """
    data = np.asarray(data).ravel()
    coordinates = np.atleast_2d(np.asarray(coordinates, dtype=float))
    if labels is None:
        labels = np.unique(data)
        labels = labels[labels != 0]
    labels = np.asarray(labels)
    uniq, inverse = np.unique(data, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq)).astype(float)
    sums = np.stack([np.bincount(inverse, weights=coordinates[:, d], minlength=len(uniq))
                     for d in range(coordinates.shape[1])], axis=1)
    pos = np.searchsorted(uniq, labels)
    pos = np.clip(pos, 0, max(len(uniq) - 1, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums[pos] / counts[pos, None]
    present = (uniq[pos] == labels) if len(uniq) else np.zeros(len(labels), bool)
    means[~present] = np.nan
    return dict(zip(labels.tolist(), means))


def _distances(points, targets) -> np.ndarray:
    """Euclidean distances (P, T), computed like scipy's ``distance_matrix``."""
    diff = np.asarray(targets, float)[None, :, :] - np.asarray(points, float)[:, None, :]
    return np.sum(np.abs(diff) ** 2, axis=-1) ** 0.5


def closest_centroid(coords, centroids, return_dist: bool = False):
    """Index of the centroid closest to each coordinate (the first one on ties).

    Processed in blocks, so large inputs never build one big distance matrix.
    """
    coords = np.atleast_2d(np.asarray(coords, float))
    centroids = np.atleast_2d(np.asarray(centroids, float))
    closest = np.zeros(len(coords), dtype=int)
    distance = np.zeros(len(coords))
    step = max(1, 2_000_000 // max(len(centroids), 1))
    for start in range(0, len(coords), step):
        dist = _distances(coords[start:start + step], centroids)
        closest[start:start + step] = dist.argmin(axis=1)
        distance[start:start + step] = dist[np.arange(len(dist)), closest[start:start + step]]
    if return_dist:
        return closest, distance
    return closest


def native_coordinates(annotation: pd.DataFrame, affine) -> pd.DataFrame:
    """Replace ``mni_x/y/z`` by the scanner coordinates of the ``mri_voxel_x/y/z`` columns.

    ``affine`` is the (4, 4) voxel-to-world matrix of the donor's T1w image, or an image with an
    ``affine``. The donor-native Desikan-Killiany volumes bundled with ahba-app are on their
    donor's T1w grid, so their own affine serves.
    """
    import nibabel as nib

    affine = np.asarray(getattr(affine, "affine", affine), dtype=float)
    missing = [c for c in VOXELS if c not in annotation.columns]
    if missing:
        raise ValueError(f"Donor-native matching needs the sample annotation columns {VOXELS}; "
                         f"missing {missing}.")
    out = annotation.copy()
    out[COORDS] = nib.affines.apply_affine(affine, np.asarray(annotation[VOXELS]))
    return out


# --------------------------------------------------------------------------------------------
# sample -> region
# --------------------------------------------------------------------------------------------
def label_samples(atlas, annotation, tolerance: float = 2) -> pd.DataFrame:
    """Region of every sample in ``annotation`` (a one-column ``label`` frame, 0 = none).

    Volumes: a sample takes the parcel it falls in; otherwise the search grows in 1 mm steps up
    to ``abs(tolerance)`` mm, taking the most frequent parcel among the voxels found and, on a
    tie, the parcel with the closest centroid. With atlas info (and sample hemisphere and
    structure) only compatible parcels count, each once, so the closest centroid decides.
    Group (MNI) atlases first move sample coordinates to the atlas grid point just below them.

    Surfaces: only cortical samples are matched, to the nearest vertex; ``tolerance >= 0`` drops
    samples farther than mean + ``tolerance`` standard deviations of those distances, while
    ``tolerance < 0`` drops samples farther than ``-tolerance`` mm.
    """
    from .atlas import check_atlas

    return check_atlas(atlas).label_samples(annotation, tolerance=tolerance)


def _flatten_hits(hits) -> tuple[np.ndarray, np.ndarray]:
    """Rows and node indices of ``cKDTree.query_ball_point`` results."""
    lengths = np.fromiter((len(h) for h in hits), dtype=np.intp, count=len(hits))
    nodes = np.fromiter(itertools.chain.from_iterable(hits), dtype=np.intp,
                        count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(hits)), lengths)
    return rows, nodes


def _match_volume(tree, xyz, hemi, struct, tolerance) -> np.ndarray:
    """Volumetric matching (see :func:`label_samples`) for samples at coordinates ``xyz``."""
    labels = np.zeros(len(xyz), dtype=np.int64)
    info = tree.atlas_info
    constrain = info is not None and hemi is not None
    if constrain:
        lab_hemi, lab_struct = tree._info_arrays()
    todo = np.arange(len(xyz))
    radius = 0
    while radius <= tolerance and len(todo):
        rows, nodes = _flatten_hits(tree.tree.query_ball_point(xyz[todo], r=radius))
        if len(nodes):
            lab_pos = np.searchsorted(tree.labels, tree.atlas[nodes])
            key = rows * len(tree.labels) + lab_pos
            key, count = np.unique(key, return_counts=True)
            rows, lab_pos = np.divmod(key, len(tree.labels))
            if constrain:
                count[:] = 1
                sample = todo[rows]
                keep = allowed(lab_hemi[lab_pos], lab_struct[lab_pos], hemi[sample],
                               struct[sample])
                rows, lab_pos, count = rows[keep], lab_pos[keep], count[keep]
            if len(rows):
                centroid = tree._centroid_array()[lab_pos]
                dist = np.sum(np.abs(centroid - xyz[todo][rows]) ** 2, axis=-1) ** 0.5
                # per sample: most frequent, then closest centroid, then smallest label
                order = np.lexsort((lab_pos, dist, -count, rows))
                rows, lab_pos = rows[order], lab_pos[order]
                first = np.r_[True, rows[1:] != rows[:-1]]
                labels[todo[rows[first]]] = tree.labels[lab_pos[first]]
        todo = todo[labels[todo] == 0]
        radius += 1
    return labels


def _match_surface(tree, xyz, hemi, struct, tolerance) -> np.ndarray:
    """Surface matching (see :func:`label_samples`) for cortical samples at ``xyz``."""
    dist, node = tree.tree.query(xyz, k=1)
    labels = tree.atlas[node].astype(np.int64)
    if tree.atlas_info is not None and hemi is not None and len(labels):
        lab_hemi, lab_struct = tree._info_arrays()
        pos = np.searchsorted(tree.labels, labels)
        labels[~allowed(lab_hemi[pos], lab_struct[pos], hemi, struct)] = 0
    if tolerance < 0:
        drop = dist > -tolerance
    elif len(labels) > 1:
        drop = dist > dist.mean() + dist.std(ddof=1) * tolerance
    else:
        drop = np.zeros(len(labels), dtype=bool)
    labels[drop] = 0
    return labels


def unreachable_labels(atlas, annotation, tolerance: float = 2, warn: bool = True) -> np.ndarray:
    """Regions of ``atlas`` that none of the samples in ``annotation`` can be matched to.

    Volumes: regions with no voxel near any sample: within ``abs(tolerance)`` mm plus one voxel
    diagonal, widened to whole voxels of the image grid (see :func:`_reached_volume_labels`).
    Surfaces: regions holding none of the cortical samples' nearest vertices. Hemisphere and
    structure are not considered, so a region listed here stays empty whatever the constraints.
    With ``warn`` a UserWarning names them (``missing=`` can fill them).
    """
    from .atlas import check_atlas

    atlas = check_atlas(atlas)
    frame = sample_frame(annotation, copy=False)
    xyz = np.asarray(frame[COORDS], dtype=float)
    from . import grayordinates
    if isinstance(atlas, grayordinates.GrayordinateAtlas):  # CIFTI: part by part
        reached = np.setdiff1d(atlas.labels, grayordinates.unreachable_labels(
            atlas, frame, tolerance))
    elif atlas.volumetric:
        margin = float(np.sqrt(np.sum(np.asarray(atlas.voxel_size) ** 2)))
        reached = _reached_volume_labels(atlas, xyz, abs(tolerance) + margin)
    else:
        if "structure" in frame.columns:
            xyz = xyz[np.asarray(frame["structure"] == "cortex")]
        reached = np.unique(atlas.atlas[atlas.tree.query(xyz, k=1)[1]]) if len(xyz) else []
    missing = np.setdiff1d(atlas.labels, reached)
    if warn and len(missing):
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        warnings.warn(f"{len(missing)} region(s) of the atlas {atlas.source} cannot be reached by "
                      f"any tissue sample (tolerance={tolerance}): {shown}. They will stay empty "
                      f"unless missing='centroids' or 'interpolate' fills them.", UserWarning,
                      stacklevel=2)
    return missing


def _reached_volume_labels(atlas, xyz, radius: float) -> np.ndarray:
    """Labels of the voxels within about ``radius`` mm of any point of ``xyz``.

    Looked up on the image grid rather than in the KD-tree of labelled voxels (which a
    ball query per sample makes slow, and which need not be built yet): every voxel whose
    index lies within ``radius`` / (smallest voxel step) + 1 of a point's rounded index. That
    includes every voxel within ``radius`` mm (rounding moves a point by at most half a voxel
    diagonal) and some up to about two voxels further, so a region left out is surely out of
    reach.
    """
    if not len(xyz):
        return np.zeros(0, dtype=np.int64)
    affine = np.asarray(atlas.affine, dtype=float)
    volume = atlas.label_volume()
    shape = np.asarray(volume.shape)
    step = float(np.linalg.svd(affine[:3, :3], compute_uv=False).min())
    reach = radius / step + 1.0
    span = np.arange(-int(np.ceil(reach)), int(np.ceil(reach)) + 1)
    offsets = np.stack(np.meshgrid(span, span, span, indexing="ij"), axis=-1).reshape(-1, 3)
    offsets = offsets[(offsets ** 2).sum(axis=1) <= reach ** 2]
    ijk = np.rint(np.c_[xyz, np.ones(len(xyz))] @ np.linalg.inv(affine).T)[:, :3]
    ijk = np.unique(ijk.astype(np.int64), axis=0)
    reached = []
    for start in range(0, len(ijk), 512):  # a few MB of candidate indices at a time
        near = (ijk[start:start + 512, None, :] + offsets[None]).reshape(-1, 3)
        near = near[((near >= 0) & (near < shape)).all(axis=1)]
        reached.append(np.unique(volume[near[:, 0], near[:, 1], near[:, 2]]))
    return np.unique(np.concatenate(reached))


# --------------------------------------------------------------------------------------------
# counts
# --------------------------------------------------------------------------------------------
def sample_counts(labels: Mapping, all_labels) -> pd.DataFrame:
    """Samples matched to each region, per donor: index every region label, columns donors.

    ``labels`` maps donor to its per-sample labels (frame, Series or array; 0 = unmatched).
    """
    all_labels = np.asarray(all_labels)
    counts = pd.DataFrame(np.zeros((len(all_labels), len(labels)), dtype=int),
                          index=all_labels, columns=list(labels))
    for donor, lab in labels.items():
        values, num = np.unique(_label_values(lab), return_counts=True)
        keep = np.isin(values, all_labels)
        counts.loc[values[keep], donor] = num[keep]
    return counts


# --------------------------------------------------------------------------------------------
# surfaces: geodesic graph
# --------------------------------------------------------------------------------------------
def surface_graph(vertices, faces, mask=None) -> "scipy.sparse.csr_matrix":
    """Sparse graph of a triangle mesh for geodesic distances (abagen's construction).

    Edges join the vertices of every triangle (Euclidean length) and, across every edge shared
    by two triangles, the two opposite vertices; such an edge weighs the distances of both
    opposite vertices to the midpoint of their feet on the shared edge. Edges touching a vertex
    in ``mask`` (e.g. the medial wall) are left out.
    """
    vertices = np.asarray(vertices)
    faces = np.asarray(faces, dtype=np.int64)
    n = len(vertices)
    if mask is not None and len(mask) != n:
        raise ValueError(f"The mask has {len(mask)} entries but the mesh {n} vertices.")
    # every triangle side as (low, high); sorted, so repeats are neighbours
    pairs = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    face_of = np.repeat(np.arange(len(faces)), 3)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    sorted_pairs = pairs[order]
    new = np.r_[True, np.any(sorted_pairs[1:] != sorted_pairs[:-1], axis=1)]
    # direct edges, each once
    direct = sorted_pairs[new]
    direct_w = np.linalg.norm(vertices[direct[:, 1]] - vertices[direct[:, 0]], axis=-1)
    # indirect edges across sides shared by exactly two triangles
    starts = np.flatnonzero(new)
    sizes = np.diff(np.r_[starts, len(pairs)])
    starts = starts[sizes == 2]
    f0, f1 = face_of[order[starts]], face_of[order[starts + 1]]
    ok = f0 != f1
    f0, f1, shared = np.minimum(f0, f1)[ok], np.maximum(f0, f1)[ok], sorted_pairs[starts][ok]

    def opposite(face_idx):
        tri = faces[face_idx]
        other = (tri != shared[:, [0]]) & (tri != shared[:, [1]])
        good = other.sum(axis=1) == 1
        return tri[np.arange(len(tri)), other.argmax(axis=1)], good

    v0, good0 = opposite(f0)
    v1, good1 = opposite(f1)
    good = good0 & good1
    a, b = vertices[shared[good, 0]], vertices[shared[good, 1]]
    v0, v1 = v0[good], v1[good]

    def foot(v):
        point = vertices[v]
        w = np.sum((a - b) * (point - b), axis=1, keepdims=True) / \
            np.sum((a - b) ** 2, axis=1, keepdims=True)
        return b - w * (b - a)

    mid = (foot(v0) + foot(v1)) / 2
    indirect = np.c_[v0, v1]
    indirect_w = (np.linalg.norm(vertices[v0] - mid, axis=-1)
                  + np.linalg.norm(vertices[v1] - mid, axis=-1))
    edges = np.r_[direct, indirect]
    weights = np.r_[direct_w, indirect_w]
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        keep = ~(mask[edges[:, 0]] | mask[edges[:, 1]])
        edges, weights = edges[keep], weights[keep]
    from scipy import sparse

    return sparse.csr_matrix((weights, (edges[:, 0], edges[:, 1])), shape=(n, n))


# --------------------------------------------------------------------------------------------
# nearest allowed sample of every node of a region
# --------------------------------------------------------------------------------------------
def _nearest_samples_euclidean(node_xyz, source_xyz, source_rank):
    """For each node: the source (among unique source points) at the smallest Euclidean distance,
    ties going to the smallest rank. Returns (source position, distance)."""
    tree = cKDTree(source_xyz)
    k = min(8, len(source_xyz))
    dist, idx = tree.query(node_xyz, k=k)
    if k == 1:
        return idx, dist
    tied = dist == dist[:, [0]]
    rank = np.where(tied, source_rank[idx], np.iinfo(np.int64).max)
    best = idx[np.arange(len(idx)), rank.argmin(axis=1)]
    out_dist = dist[:, 0].copy()
    if k < len(source_xyz):
        unsure = np.flatnonzero(tied[:, -1])
        for row in unsure:  # more ties than k: rare (exactly equidistant grid points)
            cand = np.asarray(tree.query_ball_point(node_xyz[row], r=out_dist[row]))
            cand_d = np.sqrt(np.sum((source_xyz[cand] - node_xyz[row]) ** 2, axis=1))
            cand = cand[cand_d <= out_dist[row]]
            best[row] = cand[np.argmin(source_rank[cand])]
    return best, out_dist


def _nearest_samples(atlas, label_nodes: dict, sample_node, usable: dict):
    """For every region in ``label_nodes`` (label -> node indices): the usable sample nearest to
    each node and the distance. ``usable`` maps label -> boolean mask over samples. Samples are
    represented by their nearest atlas node; ties go to the first sample in annotation order.
    Returns ``{label: (sample positions, distances)}``, without regions no sample can reach.
    """
    out = {}
    # regions sharing the same usable samples are solved together
    groups: dict[bytes, list] = {}
    for label, mask in usable.items():
        if mask.any():
            groups.setdefault(np.packbits(mask).tobytes(), []).append(label)
    graph = atlas.graph if not atlas.volumetric else None
    for members in groups.values():
        mask = usable[members[0]]
        positions = np.flatnonzero(mask)
        nodes, first = np.unique(sample_node[positions], return_index=True)
        owner = positions[first]  # first sample (annotation order) at each node
        if graph is not None:
            from scipy.sparse.csgraph import dijkstra

            dist, _, source = dijkstra(graph, directed=False, indices=nodes,
                                       return_predecessors=True, min_only=True)
            owner_of_node = np.full(graph.shape[0], owner[0])
            owner_of_node[nodes] = owner
            for lab in members:
                tgt = label_nodes[lab]
                d = dist[tgt]
                if np.all(np.isinf(d)):
                    continue
                src = source[tgt]
                out[lab] = (owner_of_node[np.where(src >= 0, src, nodes[0])], d)
        else:
            targets = np.concatenate([label_nodes[lab] for lab in members])
            best, dist = _nearest_samples_euclidean(atlas.coords[targets], atlas.coords[nodes],
                                                    owner)
            start = 0
            for lab in members:
                stop = start + len(label_nodes[lab])
                out[lab] = (owner[best[start:stop]], dist[start:stop])
                start = stop
    return out


def _fill_plan(atlas, annotation: pd.DataFrame, labels):
    """Which samples each region may be filled from (abagen's fill_label constraints)."""
    xyz = np.asarray(annotation[COORDS], dtype=float)
    _, sample_node = atlas.tree.query(xyz, k=1)
    have_info = atlas.atlas_info is not None
    with_cols = _has_info(annotation)
    base = np.ones(len(annotation), dtype=bool)
    if have_info and with_cols:
        lab_hemi, lab_struct = atlas._info_arrays()
        pos = np.searchsorted(atlas.labels, atlas.atlas[sample_node])
        hemi = np.asarray(annotation["hemisphere"], object)
        struct = np.asarray(annotation["structure"], object)
        base = allowed(lab_hemi[pos], lab_struct[pos], hemi, struct)
    usable = {}
    for label in labels:
        mask = base
        if have_info and with_cols:
            row = atlas.atlas_info.loc[label]
            mask = base & (struct == row["structure"]) & (hemi == row["hemisphere"])
        usable[label] = mask
    return sample_node, usable


def fill_label_nodes(atlas, annotation, label, return_dist: bool = False):
    """The sample (index value of ``annotation``) nearest to every node of ``label``."""
    frame = sample_frame(annotation)
    sample_node, usable = _fill_plan(atlas, frame, [label])
    nodes = np.flatnonzero(atlas.atlas == label)
    found = _nearest_samples(atlas, {label: nodes}, sample_node, usable)
    if label in found:
        pos, dist = found[label]
    else:
        pos, dist = np.zeros(len(nodes), dtype=int), np.full(len(nodes), np.inf)
    samples = frame.index[pos]
    return (samples, dist) if return_dist else samples


# --------------------------------------------------------------------------------------------
# missing regions
# --------------------------------------------------------------------------------------------
def _aligned(expression: pd.DataFrame, annotation: pd.DataFrame) -> np.ndarray:
    """Expression rows in annotation order (positional when the indexes already agree, which
    also covers the duplicated sample ids that mirroring produces)."""
    if len(expression) == len(annotation) and expression.index.equals(annotation.index):
        return np.asarray(expression, dtype=float)
    if not expression.index.is_unique:
        raise ValueError("Expression and annotation rows differ and the expression index has "
                         "duplicates (mirrored samples?): pass them in the same row order.")
    return np.asarray(expression.loc[annotation.index], dtype=float)


def _weighted_rows(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of rows, ignoring NaN values in the numerator (as pandas' sum does)."""
    return np.nansum(values * weights[:, None], axis=0) / weights.sum()


def interpolate_missing(atlas, labels, expression: pd.DataFrame,
                        annotation: pd.DataFrame) -> pd.DataFrame:
    """Expression of the regions of ``atlas`` that ``labels`` leaves empty, by interpolation.

    Every node (voxel / vertex) of an empty region takes the nearest usable sample (Euclidean
    distance between the node and the sample's nearest node in volumes; geodesic distance on
    surfaces built with triangles); the region's value is the mean of those samples weighted
    by inverse distance (a zero distance weighs 1). With atlas info, usable samples have the
    region's hemisphere and structure and sit nearest to a compatible region. One donor at a
    time: ``expression`` (samples x genes) and ``annotation`` describe the same samples.

    Returns a frame indexed by ``label`` (the regions that could be filled), columns as
    ``expression``.
    """
    from .atlas import check_atlas

    atlas = check_atlas(atlas)
    from . import grayordinates
    if isinstance(atlas, grayordinates.GrayordinateAtlas):  # CIFTI: part by part
        return grayordinates.interpolate_missing(atlas, labels, expression, annotation)
    frame = sample_frame(annotation)
    values = _aligned(expression, frame)
    empty = np.setdiff1d(atlas.labels, _label_values(labels))
    if atlas.atlas_info is not None and _has_info(frame) and len(empty):
        info = atlas.atlas_info.loc[empty, INFO]
        pairs = set(zip(frame["hemisphere"], frame["structure"]))
        empty = np.asarray([lab for lab, h, s in zip(empty, info["hemisphere"],
                                                    info["structure"]) if (h, s) in pairs],
                           dtype=empty.dtype)
    rows = {}
    if len(empty) and len(frame):
        sample_node, usable = _fill_plan(atlas, frame, empty)
        label_nodes = atlas._nodes_of(empty)
        found = _nearest_samples(atlas, label_nodes, sample_node, usable)
        for label in empty:
            if label not in found:
                continue
            pos, dist = found[label]
            weights = inverse_distance_weights(dist[:, None])[:, 0]
            per_sample = np.bincount(pos, weights=weights, minlength=len(frame))
            used = np.flatnonzero(per_sample)
            rows[label] = (_weighted_rows(values[used], per_sample[used])
                           if len(used) else np.full(values.shape[1], np.nan))
    return _rows_frame(rows, expression.columns)


def match_centroids(atlas, labels, expression: pd.DataFrame, annotation: pd.DataFrame):
    """For each region that ``labels`` leaves empty: the sample closest to the region centroid.

    With atlas info the sample must have exactly the region's hemisphere and structure (a
    bilateral region needs a bilateral sample). One donor at a time. Returns ``(rows, dist)``:
    ``rows`` indexed by ``label`` with the chosen sample's expression (NaN when no sample fits)
    and ``dist`` the distances (inf when no sample fits), both over every empty region.
    """
    from .atlas import check_atlas

    atlas = check_atlas(atlas)
    from . import grayordinates
    if isinstance(atlas, grayordinates.GrayordinateAtlas):  # CIFTI: part by part
        return grayordinates.match_centroids(atlas, labels, expression, annotation)
    frame = sample_frame(annotation)
    values = _aligned(expression, frame)
    empty = np.setdiff1d(atlas.labels, _label_values(labels))
    chosen = np.full(len(empty), -1)
    dist = np.full(len(empty), np.inf)
    xyz = np.asarray(frame[COORDS], dtype=float)
    if len(empty) and len(frame):
        centroids = np.asarray([atlas.centroids[lab] for lab in empty])
        if atlas.atlas_info is not None and _has_info(frame):
            info = atlas.atlas_info.loc[empty, INFO]
            hemi = np.asarray(frame["hemisphere"], object)
            struct = np.asarray(frame["structure"], object)
            for (h, s), where in info.groupby(INFO, sort=False).indices.items():
                cand = np.flatnonzero((hemi == h) & (struct == s))
                if len(cand):
                    best, d = closest_centroid(centroids[where], xyz[cand], return_dist=True)
                    chosen[where], dist[where] = cand[best], d
        else:
            # candidates in sample-id order, as abagen's tree of samples sorts them
            order = np.argsort(np.asarray(frame.index), kind="stable") \
                if frame.index.is_unique else np.arange(len(frame))
            best, dist = closest_centroid(centroids, xyz[order], return_dist=True)
            chosen = order[best]
    data = np.full((len(empty), values.shape[1]), np.nan)
    ok = chosen >= 0
    data[ok] = values[chosen[ok]]
    index = pd.Index(empty, name="label")
    return (pd.DataFrame(data, index=index, columns=expression.columns),
            pd.Series(dist, index=index, name="distance"))


def combine_centroids(matches) -> pd.DataFrame:
    """Combine :func:`match_centroids` results of several donors.

    Only regions empty in every donor are filled: the inverse-distance weighted mean of the
    donors' closest samples (a zero distance weighs 1). ``matches`` is a list (or dict values)
    of ``(rows, dist)``. Returns a frame indexed by ``label``.
    """
    matches = list(matches.values()) if isinstance(matches, Mapping) else list(matches)
    if not matches:
        return pd.DataFrame()
    columns = matches[0][0].columns
    common = sorted(set.intersection(*[set(rows.index) for rows, _ in matches]))
    out = {}
    for label in common:
        values = np.stack([np.asarray(rows.loc[label], dtype=float) for rows, _ in matches])
        dist = np.asarray([d.loc[label] for _, d in matches], dtype=float)
        weights = inverse_distance_weights(dist[:, None])[:, 0]
        out[label] = _weighted_rows(values, weights)
    return _rows_frame(out, columns)


def _rows_frame(rows: dict, columns) -> pd.DataFrame:
    """``{label: 1-D row}`` as a frame indexed by ``label`` (one stacked array, which is much
    quicker than ``DataFrame.from_dict`` with thousands of columns)."""
    values = (np.vstack([np.asarray(row, dtype=float) for row in rows.values()]) if rows
              else np.empty((0, len(columns))))
    return pd.DataFrame(values, index=pd.Index(list(rows), name="label", dtype=np.int64),
                        columns=columns, copy=False)


def _fill_none(atlases, labels, expression, annotation):
    return {donor: expression[donor].iloc[:0].rename_axis("label") for donor in expression}


def _fill_centroids(atlases, labels, expression, annotation):
    matches = {donor: match_centroids(atlases[donor], labels[donor], expression[donor],
                                      annotation[donor]) for donor in expression}
    rows = combine_centroids(matches)
    return {donor: rows.copy() for donor in expression}


def _fill_interpolate(atlases, labels, expression, annotation):
    return {donor: interpolate_missing(atlases[donor], labels[donor], expression[donor],
                                       annotation[donor]) for donor in expression}


#: ``missing=`` option -> function(atlases, labels, expression, annotation) -> {donor: rows}
MISSING_METHODS: dict[str | None, Callable] = {
    None: _fill_none,
    "centroids": _fill_centroids,
    "interpolate": _fill_interpolate,
}


def fill_missing(missing, atlases, labels, expression, annotation) -> dict:
    """Expression rows (indexed by region ``label``) to add to each donor's samples.

    All arguments but ``missing`` are dicts keyed by donor: the donor's atlas (or one atlas for
    all, not a dict), its per-sample labels, its samples x genes expression and its annotation
    (same rows as the expression; mirrored samples with repeated ids are fine). With
    ``'centroids'`` every donor gets the same rows (regions empty in all donors); with
    ``'interpolate'`` each donor gets rows for its own empty regions.
    """
    if missing not in MISSING_METHODS:
        raise ValueError(f"Unknown missing={missing!r}: choose one of "
                         f"{list(MISSING_METHODS)}.")
    if not isinstance(atlases, Mapping):
        atlases = {donor: atlases for donor in expression}
    return MISSING_METHODS[missing](atlases, labels, expression, annotation)
