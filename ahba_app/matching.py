"""Matching tissue samples to atlas regions, and filling regions that no sample reached.

Everything here works on an :class:`ahba_app.atlas.AtlasTree` (built by
:func:`ahba_app.atlas.check_atlas`; ``matching.AtlasTree`` is the same class, as in abagen) and
on plain pandas / numpy objects; the region geometry (centroids, surface graphs, nearest-region
searches) is :mod:`ahba_app.geometry`, which atlases use too:

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

import warnings
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from .atlas import AtlasTree, check_atlas
from .options import DEFAULTS
# the region geometry lives in ahba_app.geometry (atlases use it too); its names are abagen's
# matching names as well
from .geometry import (COORDS, INFO, _fill_plan, _has_info, _label_values,  # noqa: F401
                       _nearest_samples, allowed, closest_centroid, fill_label_nodes,
                       get_centroids, inverse_distance_weights, sample_frame, surface_graph,
                       unique_labels, weighted_mean_rows)

VOXELS = ["mri_voxel_x", "mri_voxel_y", "mri_voxel_z"]

__all__ = [
    "AtlasTree",
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


# --------------------------------------------------------------------------------------------
# coordinates
# --------------------------------------------------------------------------------------------
def _parts(atlas) -> bool:
    """Whether ``atlas`` is made of atlases matched one by one (``atlas.parts``, e.g. a
    :class:`ahba_app.grayordinates.GrayordinateAtlas`): its regions are filled part by part."""
    return bool(getattr(atlas, "parts", None))


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
def label_samples(atlas, annotation, tolerance: float = DEFAULTS["tolerance"]) -> pd.DataFrame:
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

    return check_atlas(atlas).label_samples(annotation, tolerance=tolerance)


def unreachable_labels(atlas, annotation, tolerance: float = DEFAULTS["tolerance"],
                       warn: bool = True) -> np.ndarray:
    """Regions of ``atlas`` that none of the samples in ``annotation`` can be matched to.

    Volumes: regions with no voxel near any sample: within ``abs(tolerance)`` mm plus one voxel
    diagonal, widened to whole voxels of the image grid (see :func:`_reached_volume_labels`).
    Surfaces: regions holding none of the cortical samples' nearest vertices. Hemisphere and
    structure are not considered, so a region listed here stays empty whatever the constraints.
    With ``warn`` a UserWarning names them (``missing=`` can fill them).
    """

    atlas = check_atlas(atlas)
    frame = sample_frame(annotation, copy=False)
    xyz = np.asarray(frame[COORDS], dtype=float)
    if _parts(atlas):  # e.g. CIFTI grayordinates: part by part
        reached = np.setdiff1d(atlas.labels, np.concatenate([
            unreachable_labels(part, frame, tolerance, warn=False)
            for part in atlas.parts]).astype(np.int64))
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
    volume = atlas.grid_labels()
    shape = np.asarray(volume.shape)
    step = float(np.linalg.svd(affine[:3, :3], compute_uv=False).min())
    reach = radius / step + 1.0
    half = int(np.ceil(reach))
    span = np.arange(-half, half + 1)
    offsets = np.stack(np.meshgrid(span, span, span, indexing="ij"), axis=-1).reshape(-1, 3)
    offsets = offsets[(offsets ** 2).sum(axis=1) <= reach ** 2]
    ijk = np.rint(np.c_[xyz, np.ones(len(xyz))] @ np.linalg.inv(affine).T)[:, :3]
    ijk = np.unique(ijk.astype(np.int64), axis=0)
    # points whose whole box of offsets lies in the grid (nearly all): a voxel's flat index is
    # the point's plus the offset's, with no bounds to test; the labels are then counted
    # rather than sorted (geometry.unique_labels), which made the search ten times quicker
    inner = np.all((ijk >= half) & (ijk < shape - half), axis=1)
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    flat, offset_flat = volume.ravel(), offsets @ strides
    found = []
    centre, edge = ijk[inner] @ strides, ijk[~inner]
    for start in range(0, len(centre), 512):  # a few MB of candidate indices at a time
        found.append(flat[(centre[start:start + 512, None] + offset_flat[None]).ravel()])
    for start in range(0, len(edge), 512):
        near = (edge[start:start + 512, None, :] + offsets[None]).reshape(-1, 3)
        near = near[((near >= 0) & (near < shape)).all(axis=1)]
        found.append(volume[near[:, 0], near[:, 1], near[:, 2]])
    return unique_labels(np.concatenate(found)).astype(np.int64)


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

    atlas = check_atlas(atlas)
    if _parts(atlas):  # e.g. CIFTI grayordinates: part by part
        return pd.concat([interpolate_missing(part, labels, expression, annotation)
                          for part in atlas.parts]).sort_index()
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
            rows[label] = (weighted_mean_rows(values[used], per_sample[used])
                           if len(used) else np.full(values.shape[1], np.nan))
    return _rows_frame(rows, expression.columns)


def match_centroids(atlas, labels, expression: pd.DataFrame, annotation: pd.DataFrame):
    """For each region that ``labels`` leaves empty: the sample closest to the region centroid.

    With atlas info the sample must have exactly the region's hemisphere and structure (a
    bilateral region needs a bilateral sample). One donor at a time. Returns ``(rows, dist)``:
    ``rows`` indexed by ``label`` with the chosen sample's expression (NaN when no sample fits)
    and ``dist`` the distances (inf when no sample fits), both over every empty region.
    """

    atlas = check_atlas(atlas)
    if _parts(atlas):  # e.g. CIFTI grayordinates: part by part
        found = [match_centroids(part, labels, expression, annotation) for part in atlas.parts]
        return (pd.concat([r for r, _ in found]).sort_index(),
                pd.concat([d for _, d in found]).sort_index())
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
        out[label] = weighted_mean_rows(values, weights)
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
