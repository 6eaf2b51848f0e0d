"""Post-processing of region x gene tables: differential stability and distance correction.

``differential_stability`` is, for each gene, the correlation of its regional profile between
two donors averaged over every pair of donors (Hawrylycz et al. 2015); ``keep_stable_genes``
keeps the most stable genes. ``remove_distance`` regresses the Euclidean distance between
region centroids out of a region x region coexpression matrix.

:func:`normalize_expression` lives in :mod:`ahba_app.normalize` and is re-exported here, where
abagen keeps it.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from typing import Mapping

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist

from .normalize import normalize_expression

LGR = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# differential stability
# --------------------------------------------------------------------------------------------

def _standardize(x: np.ndarray) -> np.ndarray:
    """Column z-scores with ddof=1; constant columns (and columns with NaN) give NaN."""
    from .normalize import NORMALIZATIONS

    return NORMALIZATIONS["zscore"](x)


def column_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``x`` with the same column of ``y``.

    NaN for columns that are constant or hold a NaN in either; all NaN when there are no rows.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"Need two 2-D arrays of the same shape, got {x.shape} and {y.shape}.")
    if x.shape[0] == 0:
        return np.full(x.shape[1], np.nan)
    with np.errstate(all="ignore"):
        return (_standardize(x) * _standardize(y)).sum(axis=0) / (x.shape[0] - 1)


def _donor_frames(expression) -> tuple[list[pd.DataFrame], list | None]:
    if isinstance(expression, Mapping) and expression:
        return list(expression.values()), list(expression.keys())
    if isinstance(expression, (list, tuple)) and expression and all(
            isinstance(e, pd.DataFrame) for e in expression):
        return list(expression), None
    raise ValueError("Expression must be a non-empty list (or dict) of region x gene DataFrames, "
                     f"one per donor, got {type(expression).__name__}.")


def differential_stability(expression, rank: bool = True) -> pd.Series:
    """Differential stability of every gene: its correlation across regions between two
    donors, averaged over all donor pairs.

    ``expression`` is a list (or dict) of region x gene DataFrames, one per donor, with the
    same genes. Each pair uses the regions that have data (a row not entirely NaN) in both.
    ``rank=True`` correlates ranks (Spearman; ranks are taken within each donor over all its
    regions, ties averaged), ``rank=False`` values (Pearson). Pairs where a gene's correlation
    is undefined are skipped; a gene undefined in every pair gets 0. Returns a Series indexed
    by gene (the first donor's columns).
    """
    frames, _ = _donor_frames(expression)
    genes = frames[0].columns
    for n, frame in enumerate(frames[1:], start=1):
        if frame.shape[1] != len(genes):
            raise ValueError(f"Donor {n} has {frame.shape[1]} genes and donor 0 has "
                             f"{len(genes)}: give every donor the same genes.")
    tables = [f.rank() if rank else f for f in frames]
    with_data = [f.index[f.notna().any(axis=1).to_numpy()] for f in frames]
    pairs = list(itertools.combinations(range(len(frames)), 2))
    correlations = np.full((len(genes), len(pairs)), np.nan)
    for p, (a, b) in enumerate(pairs):
        shared = np.intersect1d(with_data[a], with_data[b])
        correlations[:, p] = column_correlations(tables[a].loc[shared].to_numpy(),
                                                 tables[b].loc[shared].to_numpy())
    defined = ~np.isnan(correlations)
    n_defined = defined.sum(axis=1)
    with np.errstate(all="ignore"):
        stability = np.where(defined, correlations, 0.0).sum(axis=1) / n_defined
    stability[n_defined == 0] = 0.0
    return pd.Series(stability, index=genes, name="differential_stability")


def keep_stable_genes(expression, threshold: float = 0.9, percentile: bool = True,
                      rank: bool = True, return_stability: bool = False):
    """Keep the genes whose :func:`differential_stability` reaches ``threshold``.

    ``percentile=True`` reads ``threshold`` (in [0, 1]) as a quantile of the stabilities
    (0.9 keeps the top 10 %, linear interpolation); ``percentile=False`` as an absolute value.
    Genes with stability >= the cut-off are kept. Returns the donors' tables restricted to those
    genes (a list, or a dict for dict input), plus the (G,) stability array with
    ``return_stability=True``.
    """
    frames, keys = _donor_frames(expression)
    if percentile and not 0 <= threshold <= 1:
        raise ValueError(f"threshold={threshold!r} is read as a percentile (percentile=True) "
                         "and must lie in [0, 1].")
    stability = differential_stability(frames, rank=rank).to_numpy()
    cutoff = np.percentile(stability, threshold * 100) if percentile else threshold
    keep = stability >= cutoff
    LGR.info("Keeping %d of %d genes with differential stability >= %.4g.", keep.sum(),
             len(keep), cutoff)
    kept = [f.iloc[:, keep] for f in frames]
    kept = dict(zip(keys, kept)) if keys is not None else kept
    return (kept, stability) if return_stability else kept


# --------------------------------------------------------------------------------------------
# distance correction
# --------------------------------------------------------------------------------------------

def volume_centroids(img) -> dict:
    """Centroid (mean world coordinate of its voxels) of every non-zero label of a volume."""
    import nibabel as nib

    if isinstance(img, (str, os.PathLike)):
        img = nib.load(os.fspath(img))
    data = np.asarray(img.dataobj)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"A volumetric atlas must be 3-D, got shape {data.shape}.")
    if data.dtype.kind == "f":
        if not np.all(np.mod(data, 1) == 0):
            raise ValueError("Atlas volume holds non-integer values: labels must be integers.")
    ijk = np.nonzero(data)
    values = data[ijk].astype(np.int64)
    labels, codes = np.unique(values, return_inverse=True)
    counts = np.bincount(codes, minlength=len(labels))
    mean_ijk = np.column_stack([np.bincount(codes, weights=axis, minlength=len(labels))
                                for axis in ijk]) / counts[:, None]
    xyz = mean_ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
    return dict(zip(labels.tolist(), xyz))


def _is_volume(atlas) -> bool:
    """A NIfTI volume (image or path), not a CIFTI file (``.dlabel.nii`` and the like)."""
    if isinstance(atlas, (str, os.PathLike)):
        name = os.path.basename(os.fspath(atlas)).lower()
        cifti = re.search(r"\.d[a-z]+\.nii$", name) is not None
        return name.endswith((".nii", ".nii.gz")) and not cifti
    import nibabel as nib

    return isinstance(atlas, nib.spatialimages.SpatialImage) and len(atlas.shape) in (3, 4)


def atlas_centroids(atlas) -> dict:
    """Region centroids of ``atlas``: an object with ``.centroids`` (e.g. what
    ``ahba_app.atlas.check_atlas`` returns), a NIfTI image / path, or anything
    ``ahba_app.atlas.check_atlas`` accepts (surfaces)."""
    if hasattr(atlas, "centroids"):
        return dict(atlas.centroids)
    if _is_volume(atlas):
        return volume_centroids(atlas)
    try:
        from .atlas import check_atlas
    except ImportError as err:
        raise ValueError(f"Cannot find region centroids of atlas {atlas!r}: give a NIfTI "
                         "volume or an object with a `centroids` mapping.") from err
    return dict(check_atlas(atlas).centroids)


_STRUCTURES = {"subcortex": "subcortex/brainstem", "brainstem": "subcortex/brainstem"}


def _structure_classes(atlas_info, labels: np.ndarray) -> np.ndarray:
    """Structural class of each of ``labels`` from an atlas-info table (CSV / TSV path or
    DataFrame with 'id' (or BIDS 'index'), 'hemisphere' and 'structure'); 'subcortex' and
    'brainstem' both mean 'subcortex/brainstem'."""
    if isinstance(atlas_info, (str, os.PathLike)):
        tsv = os.fspath(atlas_info).endswith((".tsv", ".tsv.gz"))
        atlas_info = pd.read_csv(atlas_info, sep="\t" if tsv else ",")
    if not isinstance(atlas_info, pd.DataFrame):
        raise ValueError("atlas_info must be a CSV / TSV path or a DataFrame with columns 'id', "
                         f"'hemisphere' and 'structure', got {type(atlas_info).__name__}.")
    info = atlas_info
    for key in ("id", "index"):  # 'index': BIDS dseg.tsv
        if key in info.columns:
            info = info.set_index(key)
            break
    missing_cols = [c for c in ("hemisphere", "structure") if c not in info.columns]
    if missing_cols or info.index.name not in ("id", "index"):
        raise ValueError(f"atlas_info needs columns 'id', 'hemisphere' and 'structure'; it has "
                         f"{[info.index.name, *info.columns]}.")
    absent = np.setdiff1d(labels, info.index.to_numpy())
    if absent.size:
        raise ValueError(f"atlas_info has no row for region(s) {absent.tolist()}.")
    structure = info["structure"].map(lambda s: _STRUCTURES.get(s, s))
    return structure.loc[labels].to_numpy()


def _residualize(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Residuals of ``y`` after an ordinary least-squares fit of ``y ~ x + 1``."""
    design = np.column_stack([x, np.ones_like(x)])
    betas = np.linalg.lstsq(design, y, rcond=None)[0]
    return y - design @ betas


def _resid_dist(dv, iv) -> np.ndarray:
    """abagen's name for :func:`_residualize` of one vector on another."""
    return _residualize(np.asarray(dv, dtype=float), np.asarray(iv, dtype=float))


def remove_distance(coexpression, atlas=None, atlas_info=None, labels=None, *,
                    centroids: Mapping | pd.DataFrame | None = None) -> np.ndarray:
    """Regress inter-regional Euclidean distance out of a region x region coexpression matrix.

    Parameters
    ----------
    coexpression : (R, R) array_like
        Symmetric region x region matrix, e.g. ``numpy.corrcoef(expression)``.
    atlas : NIfTI image / path, or object with ``centroids``
        The atlas whose region centroids give the distances (ignored with ``centroids``).
    atlas_info : path or DataFrame, optional
        Columns 'id', 'hemisphere', 'structure': each kind of region pair (cortex-cortex,
        cortex-subcortex/brainstem, ...) is then residualized on its own.
    labels : (R,) array_like, optional
        The regions of ``coexpression``, in order (default: every label of the atlas).
    centroids : mapping label -> (x, y, z) or DataFrame indexed by label, keyword-only
        Centroids to use instead of computing them from ``atlas``.

    Returns
    -------
    (R, R) ndarray of residuals: upper-triangle values residualized against distance, mirrored,
    with ones on the diagonal.
    """
    coexpression = np.asarray(coexpression, dtype=np.float64)
    if coexpression.ndim != 2 or coexpression.shape[0] != coexpression.shape[1]:
        raise ValueError(f"coexpression must be a square (R, R) matrix, got shape "
                         f"{coexpression.shape}.")
    if labels is None and centroids is None:
        labels = getattr(atlas, "labels", None)
    if centroids is None:
        if atlas is None:
            raise ValueError("remove_distance needs an atlas or centroids.")
        centroids = atlas_centroids(atlas)
    elif isinstance(centroids, pd.DataFrame):
        centroids = dict(zip(centroids.index, centroids.to_numpy(dtype=np.float64)))
    if labels is None:
        labels = np.sort(np.asarray(list(centroids)))
    labels = np.asarray(labels).ravel()
    if len(labels) != len(coexpression):
        raise ValueError(f"Got {len(labels)} region labels for a coexpression matrix of shape "
                         f"{coexpression.shape}: pass the labels of its rows.")
    unknown = [lab for lab in labels.tolist() if lab not in centroids]
    if unknown:
        raise ValueError(f"Region(s) {unknown} of `labels` are not in the atlas.")
    if not np.allclose(coexpression, coexpression.T, atol=1e-10):
        raise ValueError("coexpression matrix is not symmetric.")

    points = np.vstack([np.asarray(centroids[lab], dtype=np.float64) for lab in labels.tolist()])
    distance = cdist(points, points)
    n = len(labels)
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    residuals = np.zeros_like(coexpression)
    if atlas_info is None:
        residuals[upper] = _residualize(coexpression[upper], distance[upper])
    else:
        classes = _structure_classes(atlas_info, labels)
        kinds = pd.unique(classes)
        for first, second in itertools.combinations_with_replacement(kinds, 2):
            in_first, in_second = classes == first, classes == second
            pair = (np.outer(in_first, in_second) | np.outer(in_second, in_first)) & upper
            if pair.any():
                residuals[pair] = _residualize(coexpression[pair], distance[pair])
    return residuals + residuals.T + np.eye(n)


__all__ = [
    "atlas_centroids",
    "column_correlations",
    "differential_stability",
    "keep_stable_genes",
    "normalize_expression",
    "remove_distance",
    "volume_centroids",
]
