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
def _read(obj, reader: str) -> pd.DataFrame:
    """A DataFrame given as itself, or read from a path with :mod:`ahba_app.io`'s ``reader``."""
    if isinstance(obj, pd.DataFrame):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        from . import io  # imported late: io is optional for callers passing frames

        return getattr(io, reader)(obj)
    raise TypeError(f"Expected a pandas DataFrame or a path for {reader[5:]}, "
                    f"got {type(obj).__name__}.")


def _annotation(annotation) -> pd.DataFrame:
    annotation = _read(annotation, "read_annotation")
    if any(col in annotation.columns for col in _ANNOTATION_RENAMES):
        annotation = annotation.rename(columns=_ANNOTATION_RENAMES)
    return annotation


def _ontology(ontology) -> pd.DataFrame:
    ontology = _read(ontology, "read_ontology")
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
def update_coords(annotation, corrected_mni: bool = True, native_affine=None,
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
    annotation = _annotation(annotation).copy()
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
    annotation, ontology = _annotation(annotation), _ontology(ontology)
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
    annotation, ontology = _annotation(annotation), _ontology(ontology)
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
# array helpers (shared with ahba_app.probes)
# ---------------------------------------------------------------------------------------------
def _matrix(frame) -> np.ndarray:
    """The values of a probes x samples frame, without a copy when it is one block."""
    if isinstance(frame, pd.DataFrame):
        return frame.to_numpy(copy=False)
    return np.asarray(frame)


class _DonorMatrix:
    """One donor's probes x samples matrix (microarray or PACall), read a block at a time.

    Wraps a DataFrame (index ``probe_id``, columns ``sample_id``), an
    :class:`ahba_app.io.CachedMatrix`, or the path of a ``MicroarrayExpression.csv`` /
    ``PACall.csv`` (opened through the cache). From the cache only the rows (and samples) asked
    for are read and decoded, so the whole matrix is never copied; :meth:`release` hands the
    pages read back to the page cache, so that finished donors do not count in this process's
    memory.
    """

    def __init__(self, obj, kind: str):
        from . import io  # imported late: io is optional for callers passing frames

        if isinstance(obj, (str, os.PathLike)):
            obj = io.load_matrix(obj, kind)
        if isinstance(obj, io.CachedMatrix):
            self.cached, self.frame = obj, None
            self.probe_index = pd.Index(np.asarray(obj.probe_ids), name="probe_id")
            self.sample_index = pd.RangeIndex(1, obj.n_samples + 1, name="sample_id")
            self.dtype = obj.dtype
        elif isinstance(obj, pd.DataFrame):
            self.cached, self.frame = None, obj
            self.probe_index, self.sample_index = obj.index, obj.columns
            self.dtype = _matrix(obj).dtype
        else:
            raise TypeError(f"Expected a pandas DataFrame, an ahba_app.io.CachedMatrix or a "
                            f"path for the {kind} data, got {type(obj).__name__}.")

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.probe_index), len(self.sample_index))

    def take(self, rows=None, cols=None, transposed: bool = False, out=None) -> np.ndarray:
        """``values[rows][:, cols]`` as a new C-contiguous probes x samples array, or samples x
        probes with ``transposed`` (never a view of the source, so callers may modify it).

        ``rows`` and ``cols`` are positions (None: all); microarray values come out as the
        float64 the cache decodes them to, bit for bit. ``out`` (optional): a C-contiguous
        array of the result's shape and dtype to write into (and return).
        """
        if self.cached is not None and self.cached.codes is not None:
            from . import io

            rows = np.arange(self.shape[0]) if rows is None else rows
            return io.decode_rows(self.cached, rows, cols, transposed, out, release=True)
        if self.cached is None:
            values = _matrix(self.frame)
            block = _probes_by_samples(values, rows, cols)
            if transposed:
                block = np.array(block.T, order="C", copy=True)
            elif np.may_share_memory(block, values):
                block = block.copy()
        else:  # PACall bits, or microarray stored as float64
            from . import io

            block = io.select_rows(self.cached, rows, cols)
            block = np.ascontiguousarray(block.T) if transposed else block
        if out is None:
            return block
        out[...] = block
        return out

    def count_true(self, rows, cols) -> np.ndarray:
        """For PACall: per row, how many of the columns ``cols`` (repeats counted) are True.

        From the cache the packed bits are counted as they are (bitwise AND with one mask per
        repeat level, then popcount), never unpacked.
        """
        cached = self.cached
        if cached is None or not cached.packed:
            counts = np.zeros(len(rows), dtype=np.int64)
            for part in _row_chunks(len(rows), len(cols), 1 << 23):
                counts[part] = self.take(rows[part], cols).sum(axis=1, dtype=np.int64)
            return counts
        weight = np.bincount(np.asarray(cols, dtype=np.intp), minlength=cached.n_samples)
        masks = [np.packbits(weight >= level) for level in range(1, int(weight.max(initial=0)) + 1)]
        counts = np.zeros(len(rows), dtype=np.int64)
        packed = cached.values
        for part in _row_chunks(len(rows), packed.shape[1], 1 << 22):
            block = packed[rows[part]]
            for mask in masks:
                counts[part] += _popcount(block & mask).sum(axis=1, dtype=np.int64)
        return counts

    def release(self, rows=None) -> None:
        """Drop the cache pages mapped so far from this process, or those of the rows
        ``rows`` (positions): they stay in the page cache."""
        if self.cached is not None:
            from . import io

            io.release_rows(self.cached, rows)


_BIT_COUNTS = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint8 value."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(values)
    return _BIT_COUNTS[values]


def _release_pages(values: np.ndarray, rows=None) -> None:
    """``madvise(MADV_DONTNEED)`` on the read-only shared memory map behind ``values``: all of
    it, or the pages holding ``rows`` (positions: from the first to the last).

    Pages of a read-only file mapping count in the resident memory of every process that has
    touched them; dropping them costs nothing (the data stay in the page cache, and a later read
    maps them again). Copy-on-write or writable maps, and arrays not backed by a map, are left
    alone.
    """
    import mmap

    advice = getattr(mmap, "MADV_DONTNEED", None)
    base = values
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    if advice is None or base is None or getattr(base, "mode", None) != "r":
        return
    mapping = getattr(base, "_mmap", None)
    if not isinstance(mapping, mmap.mmap):
        return
    try:
        if rows is None:
            mapping.madvise(advice)
            return
        rows = np.asarray(rows)
        if rows.size == 0 or values.ndim != 2 or values.strides[0] <= 0:
            return
        # np.memmap maps the file from the granularity boundary below its offset
        offset = int(base.offset)
        first = offset - offset % mmap.ALLOCATIONGRANULARITY
        start = offset - first + (values.ctypes.data - base.ctypes.data)
        row_bytes = values.strides[0]
        lo = start + int(rows.min()) * row_bytes
        hi = min(len(mapping), start + (int(rows.max()) + 1) * row_bytes)
        lo -= lo % mmap.PAGESIZE
        if hi > lo:
            mapping.madvise(advice, lo, hi - lo)
    except (OSError, ValueError):  # closed, or not supported here: nothing to give back
        pass


def _probes_by_samples(values: np.ndarray, rows=None, cols=None) -> np.ndarray:
    """``values[rows][:, cols]`` as a C-contiguous probes x samples array (None means all).

    A probes-major array (e.g. the memory map of :mod:`ahba_app.io`) is gathered row by row; a
    samples-major one (what pandas keeps for a frame it built itself) is gathered along its
    contiguous axis first and transposed once.
    """
    if values.flags.f_contiguous and not values.flags.c_contiguous:
        out = values.T
        if rows is not None:
            out = np.take(out, rows, axis=1)
        if cols is not None and not _is_identity(cols, out.shape[0]):
            out = np.take(out, cols, axis=0)
        return np.ascontiguousarray(out.T)
    out = values
    if rows is not None:
        out = np.take(out, rows, axis=0)
    if cols is not None and not _is_identity(cols, out.shape[1]):
        out = np.take(out, cols, axis=1)
    return np.ascontiguousarray(out)


def _is_identity(index, n: int) -> bool:
    index = np.asarray(index)
    return len(index) == n and bool((index == np.arange(n)).all())


def _row_chunks(n_rows: int, n_cols: int, budget: int = 1 << 22):
    """Slices of rows whose float64 copy holds about ``budget`` values (32 MB)."""
    step = max(1, budget // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


# ---------------------------------------------------------------------------------------------
# similarity filter
# ---------------------------------------------------------------------------------------------
def _sample_similarity(matrix: "_DonorMatrix", rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Row sums of the samples x samples correlation matrix, without forming it.

    With z_i sample i's profile over probes, centred and scaled to unit norm, the sum of its
    correlations is z_i . t with t = sum_j z_j (j over ``cols``, repeats included). Every
    column of the matrix is read (unused ones weigh 0), in two passes over probe chunks in
    float64: column moments, then t = X v - c and X't, with v the columns' weight / norm.
    """
    n_cols = matrix.shape[1]
    weight = np.bincount(cols, minlength=n_cols).astype(np.float64)
    chunks = list(_row_chunks(len(rows), n_cols, 1 << 21))
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
    annotation = _annotation(annotation)
    probes = _read(probes, "read_probes")
    microarray = _DonorMatrix(microarray, "microarray")
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
def prepare_samples(annotation, ontology, *, corrected_mni: bool = True, lr_mirror=None,
                    native_affine=None, coords: pd.DataFrame | None = None,
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
