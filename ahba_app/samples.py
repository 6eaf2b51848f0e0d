"""Tissue samples: coordinates, hemisphere and structure classes, mirroring, similarity filter.

Each function takes one donor's ``SampleAnnot.csv`` table (a DataFrame indexed by ``sample_id``,
as :func:`ahba_app.io.read_annotation` gives it, or a path to the file) and returns a new table;
nothing is modified in place. The order in which :func:`prepare_samples` applies them is the
order abagen 0.1.3 uses, so that rows line up with its output:

1. :func:`update_coords` -- corrected MNI coordinates (default), the original ones, or
   donor-native coordinates from an affine;
2. :func:`mirror_samples` -- optional copies of samples across the midline, appended after the
   original rows (left-hemisphere copies first), keeping the original ``sample_id``;
3. :func:`drop_mismatch_samples` -- adds ``hemisphere`` and ``structure`` from the ontology and
   keeps the samples whose x coordinate agrees with their hemisphere.

:func:`similarity_threshold` (optional) then drops samples whose expression profile is unlike
the others'. Mirrored copies share their original's ``sample_id``, so the index may repeat: it
stays the key into the microarray columns until probe selection is done.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Callable

import numpy as np
import pandas as pd

from .matrix import DonorMatrix, row_chunks
from .options import DEFAULTS

__all__ = [
    "HEMISPHERES",
    "MIRROR_METHODS",
    "STRUCTURE_CLASSES",
    "annotate_samples",
    "check_lr_mirror",
    "check_sim_threshold",
    "drop_mismatch_samples",
    "mirror_samples",
    "prepare_samples",
    "similarity_threshold",
    "structure_class",
    "update_coords",
]

#: Broad structure classes: AHBA ontology id of the class's root structure -> class name.
#: A structure belongs to the class of the deepest of these ids on its ``structure_id_path``.
STRUCTURE_CLASSES: dict[int, str] = {
    4008: "cortex",               # cerebral cortex
    4249: "subcortex/brainstem",  # hippocampal formation
    4275: "subcortex/brainstem",  # cerebral nuclei
    4391: "subcortex/brainstem",  # diencephalon
    4696: "cerebellum",
    9001: "subcortex/brainstem",  # mesencephalon
    9131: "subcortex/brainstem",  # pons
    9218: "white matter",
    9352: "other",                # sulci & spaces
    9512: "subcortex/brainstem",  # myelencephalon
}

#: Hemisphere codes: left, right, both (a structure without a hemisphere in the ontology).
HEMISPHERES = ("L", "R", "B")

_COORDS = ["mni_x", "mni_y", "mni_z"]
_VOXELS = ["mri_voxel_x", "mri_voxel_y", "mri_voxel_z"]
_ANNOTATION_RENAMES = {"ontology_structure_id": "structure_id",
                       "ontology_structure_acronym": "structure_acronym"}


# ---------------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------------
def as_table(obj, reader: str) -> pd.DataFrame:
    """A DataFrame given as itself, or read from a path with :mod:`ahba_app.io`'s ``reader``."""
    if isinstance(obj, pd.DataFrame):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        from . import io  # imported late: io is optional for callers passing frames

        return getattr(io, reader)(obj)
    raise TypeError(f"Expected a pandas DataFrame or a path for {reader[5:]}, "
                    f"got {type(obj).__name__}.")


def annotation_table(annotation) -> pd.DataFrame:
    annotation = as_table(annotation, "read_annotation")
    if any(col in annotation.columns for col in _ANNOTATION_RENAMES):
        annotation = annotation.rename(columns=_ANNOTATION_RENAMES)
    return annotation


def _ontology(ontology) -> pd.DataFrame:
    ontology = as_table(ontology, "read_ontology")
    missing = {"id", "acronym", "name", "hemisphere", "structure_id_path"} - set(ontology.columns)
    if missing:
        raise ValueError(f"The ontology table lacks the column(s) {sorted(missing)}: expected "
                         "an AHBA Ontology.csv (id, acronym, name, parent_structure_id, "
                         "hemisphere, graph_order, structure_id_path, color_hex_triplet).")
    return ontology


def _require(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"The {what} table lacks the column(s) {missing}.")


def check_lr_mirror(lr_mirror) -> str | None:
    """Validate ``lr_mirror``: None or a key of :data:`MIRROR_METHODS`.

    Booleans are accepted as abagen accepts them (True means ``'bidirectional'``, False means
    None), with a FutureWarning.
    """
    if isinstance(lr_mirror, (bool, np.bool_)):
        warnings.warn("lr_mirror=True/False is deprecated (as in abagen): use "
                      "lr_mirror='bidirectional' or lr_mirror=None.", FutureWarning, stacklevel=2)
        return "bidirectional" if lr_mirror else None
    if lr_mirror is None or lr_mirror in MIRROR_METHODS:
        return lr_mirror
    raise ValueError(f"Unknown lr_mirror {lr_mirror!r}: choose None or one of "
                     f"{list(MIRROR_METHODS)}.")


def check_sim_threshold(threshold) -> float | None:
    """Validate ``sim_threshold``: None (no filtering) or a finite number of SDs >= 0."""
    if threshold is None:
        return None
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float,
                                                                              np.number)):
        raise ValueError(f"sim_threshold must be None or a number of standard deviations "
                         f">= 0, got {threshold!r}.")
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"sim_threshold must be None or a finite number of standard "
                         f"deviations >= 0, got {threshold!r}.")
    return float(threshold)


# ---------------------------------------------------------------------------------------------
# coordinates
# ---------------------------------------------------------------------------------------------
def update_coords(annotation, corrected_mni: bool = DEFAULTS["corrected_mni"], native_affine=None,
                  coords: pd.DataFrame | None = None) -> pd.DataFrame:
    """Return a copy of ``annotation`` with updated ``mni_x/y/z`` columns.

    Parameters
    ----------
    annotation : DataFrame or path
        One donor's sample table.
    corrected_mni : bool
        Replace the coordinates with the alleninf corrected ones (joined on ``well_id``);
        with False the coordinates of SampleAnnot.csv are kept.
    native_affine : (4, 4) array_like, optional
        Affine of the donor's native T1w image: the ``mri_voxel_x/y/z`` columns are mapped
        through it and written to ``mni_x/y/z`` (for donor-native atlases). Applied after
        ``corrected_mni``, so it wins.
    coords : DataFrame, optional
        Corrected coordinates indexed by ``well_id`` with ``mni_x/y/z`` columns; defaults to
        :func:`ahba_app.datasets.load_corrected_mni`.
    """
    annotation = annotation_table(annotation).copy()
    if corrected_mni:
        _require(annotation, ["well_id"], "sample annotation")
        if coords is None:
            from .datasets import load_corrected_mni

            coords = load_corrected_mni()
        rows = coords.index.get_indexer(annotation["well_id"])
        if (rows < 0).any():
            unknown = annotation["well_id"].to_numpy()[rows < 0]
            shown = ", ".join(str(w) for w in unknown[:10])
            raise ValueError(
                f"{len(unknown)} sample(s) have well_id(s) missing from the corrected MNI "
                f"coordinates table ({shown}{', ...' if len(unknown) > 10 else ''}): check "
                "the SampleAnnot.csv file, or use corrected_mni=False to keep its own "
                "coordinates.")
        annotation[_COORDS] = coords[_COORDS].to_numpy(dtype=float)[rows]
    if native_affine is not None:
        affine = np.asarray(native_affine, dtype=float)
        if affine.shape != (4, 4):
            raise ValueError(f"native_affine must be a 4 x 4 matrix, got shape {affine.shape}.")
        _require(annotation, _VOXELS, "sample annotation")
        ijk = annotation[_VOXELS].to_numpy(dtype=float)
        annotation[_COORDS] = ijk @ affine[:3, :3].T + affine[:3, 3]
    return annotation


# ---------------------------------------------------------------------------------------------
# hemisphere and structure class
# ---------------------------------------------------------------------------------------------
def structure_class(structure_id_path) -> str | None:
    """Broad class of a structure from its ``structure_id_path`` (``'/4005/4006/.../'``).

    The deepest id of :data:`STRUCTURE_CLASSES` on the path decides; None when there is none.
    """
    if not isinstance(structure_id_path, str):
        return None
    found = None
    for part in structure_id_path.strip("/").split("/"):
        try:
            found = STRUCTURE_CLASSES.get(int(part), found)
        except ValueError:
            continue
    return found


def _ontology_lookup(ontology: pd.DataFrame, structure_ids) -> np.ndarray:
    """Row positions in ``ontology`` of each structure id (the first row of a repeated id).

    Unknown ids raise a ValueError naming them.
    """
    ids = ontology["id"].to_numpy()
    first = np.flatnonzero(~pd.Index(ids).duplicated())
    wanted = np.asarray(structure_ids)
    pos = pd.Index(ids[first]).get_indexer(wanted)
    if (pos < 0).any():
        unknown = sorted(set(wanted[pos < 0].tolist()))
        raise ValueError(f"Structure id(s) {unknown[:10]} of the sample annotation are not in "
                         "the ontology: check that Ontology.csv and SampleAnnot.csv come from "
                         "the same AHBA download.")
    return first[pos]


def _hemisphere_codes(ontology: pd.DataFrame) -> np.ndarray:
    """The ontology's hemisphere column as L/R/B strings (empty -> B)."""
    hemi = ontology["hemisphere"].to_numpy(dtype=object)
    return np.where(pd.isna(hemi), "B", hemi).astype(object)


def annotate_samples(annotation, ontology) -> pd.DataFrame:
    """Return ``annotation`` with ``hemisphere`` (L/R/B) and ``structure`` (class) columns.

    Both come from the ontology row of each sample's ``structure_id``; see
    :data:`STRUCTURE_CLASSES` for the classes (None when a structure has none).
    """
    annotation, ontology = annotation_table(annotation), _ontology(ontology)
    _require(annotation, ["structure_id"], "sample annotation")
    rows = _ontology_lookup(ontology, annotation["structure_id"])
    classes = np.array([structure_class(p) for p in ontology["structure_id_path"]],
                       dtype=object)
    return annotation.assign(hemisphere=_hemisphere_codes(ontology)[rows],
                             structure=classes[rows])


def drop_mismatch_samples(annotation, ontology) -> pd.DataFrame:
    """Annotate samples (:func:`annotate_samples`) and drop those whose x contradicts it.

    Kept are left samples with ``mni_x < 0``, right samples with ``mni_x > 0`` and samples of
    structures without a hemisphere (B) with ``mni_x == 0`` exactly -- abagen's rule, so the
    latter are almost always dropped. Row order is kept.
    """
    annot = annotate_samples(annotation, ontology)
    x = annot["mni_x"].to_numpy(dtype=float)
    hemi = annot["hemisphere"].to_numpy(dtype=object)
    keep = (((hemi == "L") & (x < 0)) | ((hemi == "R") & (x > 0))
            | ((hemi == "B") & (x == 0)))
    return annot.loc[keep]


# ---------------------------------------------------------------------------------------------
# mirroring
# ---------------------------------------------------------------------------------------------
def _mirror(annotation: pd.DataFrame, ontology: pd.DataFrame, side: str) -> pd.DataFrame:
    """Copies of the samples on one ``side`` ('L': x < 0, 'R': x > 0) across the midline.

    The copy's x is negated and its structure becomes the ontology structure with the same
    acronym in the other hemisphere (structures without a hemisphere keep theirs). Copies whose
    structure has no counterpart are left out (abagen stops with a KeyError there).
    """
    x = annotation["mni_x"].to_numpy(dtype=float)
    part = annotation.loc[x < 0 if side == "L" else x > 0].copy()
    if part.empty:
        return part
    rows = _ontology_lookup(ontology, part["structure_id"])
    hemi = _hemisphere_codes(ontology)[rows]
    target = np.where(hemi == "L", "R", np.where(hemi == "R", "L", hemi))

    # first ontology row of each (acronym, hemisphere) pair
    keys = pd.MultiIndex.from_arrays([ontology["acronym"].to_numpy(dtype=object),
                                      _hemisphere_codes(ontology)])
    first = ~keys.duplicated()
    table = keys[first]
    wanted = pd.MultiIndex.from_arrays([part["structure_acronym"].to_numpy(dtype=object),
                                        target])
    found = table.get_indexer(wanted)
    if (found < 0).any():
        lost = sorted(set(zip(wanted[found < 0].get_level_values(0),
                              wanted[found < 0].get_level_values(1))))
        warnings.warn(f"{int((found < 0).sum())} sample(s) could not be mirrored: the ontology "
                      f"has no structure {lost[:5]} (acronym, hemisphere) in the other "
                      "hemisphere; they are not duplicated.", RuntimeWarning, stacklevel=3)
        part = part.loc[found >= 0]
        found = found[found >= 0]
    onto_rows = np.flatnonzero(first)[found]
    part["structure_acronym"] = ontology["acronym"].to_numpy()[onto_rows]
    part["structure_id"] = ontology["id"].to_numpy()[onto_rows]
    part["structure_name"] = ontology["name"].to_numpy()[onto_rows]
    part["mni_x"] = -part["mni_x"]
    return part


def mirror_samples(annotation, ontology, swap: str = "bidirectional") -> pd.DataFrame:
    """Append mirrored copies of samples across the left/right midline.

    Parameters
    ----------
    annotation, ontology : DataFrame or path
        One donor's sample table (with x coordinates already final) and the AHBA ontology.
    swap : {'bidirectional', 'leftright', 'rightleft'}
        'leftright' copies samples with x < 0 to the right, 'rightleft' samples with x > 0 to
        the left, 'bidirectional' does both.

    Returns
    -------
    DataFrame
        The original rows, then the copies of left samples, then the copies of right samples
        (abagen's order). Copies keep the original ``sample_id`` (the index repeats) and get
        the mirrored structure's id, acronym and name and a negated ``mni_x``.
    """
    if swap not in MIRROR_METHODS:
        raise ValueError(f"Unknown mirroring {swap!r}: choose one of {list(MIRROR_METHODS)}.")
    annotation, ontology = annotation_table(annotation), _ontology(ontology)
    _require(annotation, ["structure_id", "structure_acronym", "structure_name", "mni_x"],
             "sample annotation")
    parts = [annotation]
    if swap in ("leftright", "bidirectional"):
        parts.append(_mirror(annotation, ontology, "L"))
    if swap in ("rightleft", "bidirectional"):
        parts.append(_mirror(annotation, ontology, "R"))
    return pd.concat(parts)


#: lr_mirror choices -> the function mirroring one donor's (annotation, ontology).
MIRROR_METHODS: dict[str, Callable[..., pd.DataFrame]] = {
    name: functools.partial(mirror_samples, swap=name)
    for name in ("bidirectional", "leftright", "rightleft")
}


# ---------------------------------------------------------------------------------------------
# similarity filter
# ---------------------------------------------------------------------------------------------
def _sample_similarity(matrix: "DonorMatrix", rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Row sums of the samples x samples correlation matrix, without forming it.

    With z_i sample i's profile over probes, centred and scaled to unit norm, the sum of its
    correlations is z_i . t with t = sum_j z_j (j over ``cols``, repeats included). Every
    column of the matrix is read (unused ones weigh 0), in two passes over probe chunks in
    float64: column moments, then t = X v - c and X't, with v the columns' weight / norm.
    """
    n_cols = matrix.shape[1]
    weight = np.bincount(cols, minlength=n_cols).astype(np.float64)
    chunks = list(row_chunks(len(rows), n_cols, 1 << 21))
    total = np.zeros(n_cols)
    sumsq = np.zeros(n_cols)
    for part in chunks:
        block = matrix.take(rows[part]).astype(np.float64, copy=False)
        total += block.sum(axis=0)
        sumsq += (block * block).sum(axis=0)
    mean = total / len(rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = 1.0 / np.sqrt(sumsq - len(rows) * mean * mean)
    scale[weight == 0] = 0.0  # unused columns (constant ones would give NaN)
    v = weight * scale
    shift = v @ mean
    cross = np.zeros(n_cols)
    t_sum = 0.0
    for part in chunks:
        block = matrix.take(rows[part]).astype(np.float64, copy=False)
        t = block @ v - shift
        cross += t @ block
        t_sum += t.sum()
    matrix.release()
    return (scale * (cross - mean * t_sum))[cols]


def similarity_threshold(microarray, annotation, probes, threshold: float = 5,
                         return_similarity: bool = False):
    """Drop samples whose expression is unlike that of the donor's other samples.

    Each sample's profile over the probes of ``probes`` is correlated with every other
    sample's (mirrored copies included); a sample is kept when the sum of its correlations is
    at least ``mean - threshold * SD`` (SD with ddof=1) of these sums.

    Parameters
    ----------
    microarray : DataFrame, ahba_app.io.CachedMatrix or path
        One donor's probes x samples expression (index probe_id, columns sample_id).
    annotation : DataFrame or path
        The donor's samples; its index (``sample_id``, may repeat) selects the columns.
    probes : DataFrame or path
        Probes to use (index probe_id), normally the (reannotated) probe table before the
        intensity filter.
    threshold : float >= 0
        Number of standard deviations.
    return_similarity : bool
        Also return the per-sample sums of correlations (array aligned with ``annotation``).
    """
    threshold = check_sim_threshold(threshold)
    if threshold is None:
        raise ValueError("similarity_threshold needs a threshold (a number of SDs >= 0).")
    annotation = annotation_table(annotation)
    probes = as_table(probes, "read_probes")
    microarray = DonorMatrix(microarray, "microarray")
    rows = microarray.probe_index.get_indexer(probes.index)
    if (rows < 0).any():
        raise ValueError(f"{int((rows < 0).sum())} probe(s) of the probe table are not in the "
                         "microarray (e.g. probe_id "
                         f"{probes.index[rows < 0][0]!r}): check that they come from the same "
                         "AHBA download.")
    cols = microarray.sample_index.get_indexer(annotation.index)
    if (cols < 0).any():
        raise ValueError(f"Sample id(s) {annotation.index[cols < 0][:10].tolist()} are not "
                         "columns of the microarray.")
    sim = _sample_similarity(microarray, rows, cols)
    if len(sim) < 2:
        kept = annotation
    else:
        cutoff = sim.mean() - threshold * sim.std(ddof=1)
        kept = annotation.loc[sim >= cutoff]
    return (kept, sim) if return_similarity else kept


# ---------------------------------------------------------------------------------------------
# the whole sample stage for one donor
# ---------------------------------------------------------------------------------------------
def prepare_samples(annotation, ontology, *, corrected_mni: bool = DEFAULTS["corrected_mni"],
                    lr_mirror=None, native_affine=None, coords: pd.DataFrame | None = None,
                    return_info: bool = False):
    """Coordinates, optional mirroring and hemisphere checks for one donor, in abagen's order.

    Returns the annotated sample table (with ``hemisphere`` and ``structure`` columns); with
    ``return_info=True`` also a dict of counts: ``n_samples`` (in SampleAnnot.csv),
    ``n_mirrored`` (copies added), ``n_mismatched`` (rows dropped because x contradicts the
    hemisphere) and ``n_kept``. The similarity filter is separate
    (:func:`similarity_threshold`) because it needs the expression data.
    """
    lr_mirror = check_lr_mirror(lr_mirror)
    ontology = _ontology(ontology)
    annot = update_coords(annotation, corrected_mni=corrected_mni,
                          native_affine=native_affine, coords=coords)
    n_samples = len(annot)
    unplaced = ~np.isfinite(annot[_COORDS].to_numpy(dtype=float)).all(axis=1)
    if unplaced.any():
        where = (os.fspath(annotation) if isinstance(annotation, (str, os.PathLike))
                 else "the sample table")
        warnings.warn(f"{int(unplaced.sum())} of {n_samples} samples of {where} have no MNI "
                      f"coordinates (empty mni_x/y/z, e.g. sample {annot.index[unplaced][0]}): "
                      "they are left out. Restore the file from the Allen download"
                      + ("." if not corrected_mni else
                         ", or check that its well ids are the Allen ones."), stacklevel=2)
    if lr_mirror is not None:
        annot = MIRROR_METHODS[lr_mirror](annot, ontology)
    n_rows = len(annot)
    annot = drop_mismatch_samples(annot, ontology)
    if not return_info:
        return annot
    info = {"n_samples": n_samples, "n_mirrored": n_rows - n_samples,
            "n_mismatched": n_rows - len(annot), "n_kept": len(annot)}
    return annot, info
