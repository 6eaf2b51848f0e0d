"""Region geometry shared by atlases and matching: coordinates, centroids, surface graphs and
the nearest-region searches.

The lowest layer of the atlas stages (it imports neither :mod:`ahba_app.atlas` nor
:mod:`ahba_app.matching`): :class:`ahba_app.atlas.AtlasTree` uses it to index a parcellation
and match samples, and :mod:`ahba_app.matching` (which re-exports the public names, as abagen's
``matching`` module has them) to fill regions without samples.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import pandas as pd

# scipy.spatial (KD-trees) and scipy.sparse (surface graphs) are imported where they are used:
# a volume atlas is matched on its grid, and their imports are a fifth of a second of every
# start-up

COORDS = ["mni_x", "mni_y", "mni_z"]
INFO = ["hemisphere", "structure"]

__all__ = ["COORDS", "INFO", "Hemispheres", "Surface", "allowed", "closest_centroid", "fill_label_nodes", "get_centroids",
           "inverse_distance_weights", "sample_frame", "surface_graph", "weighted_mean_rows"]


class Surface(NamedTuple):
    """A triangle mesh: (V, 3) vertex coordinates and (F, 3) vertex indices (or paths)."""

    vertices: object
    faces: object


class Hemispheres(NamedTuple):
    """Something per hemisphere (a :class:`Surface`, a path, ...)."""

    lh: object
    rh: object


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


def weighted_mean_rows(values, weights) -> np.ndarray:
    """The mean of the rows of ``values`` (2-D) weighted by ``weights`` (one a row): a NaN
    value adds nothing to its column's sum (as pandas' sum skips it) while its row's weight
    still counts in the divisor. How regions are filled from samples or donors at distances
    (:func:`inverse_distance_weights`)."""
    values, weights = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    return np.nansum(values * weights[:, None], axis=0) / weights.sum()


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
    if _small_labels(data):
        # labels as their own bins (no sort); each bin adds its points in the same order
        uniq, inverse = np.arange(int(data.max()) + 1 if data.size else 0), data
    else:
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


def _small_labels(data: np.ndarray) -> bool:
    """Whether integer ``data`` can serve as bincount bins: no negative value and no value
    much larger than the data (atlas labels usually are 1..N)."""
    return (data.dtype.kind in "iu" and (not data.size or (
        int(data.min()) >= 0 and int(data.max()) <= 4 * data.size + 65536)))


def unique_labels(data) -> np.ndarray:
    """``np.unique(data)`` (sorted distinct values); small non-negative integer labels are
    counted rather than sorted."""
    data = np.asarray(data).ravel()
    if _small_labels(data):
        return np.flatnonzero(np.bincount(data)).astype(data.dtype)
    return np.unique(data)


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
        rows, hit = tree._ball_labels(xyz[todo], radius)
        if len(hit):
            lab_pos = np.searchsorted(tree.labels, hit)
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


def _nearest_samples_euclidean(node_xyz, source_xyz, source_rank):
    """For each node: the source (among unique source points) at the smallest Euclidean distance,
    ties going to the smallest rank. Returns (source position, distance)."""
    from scipy.spatial import cKDTree

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
