"""Loading and checking atlases (parcellations) and their region information.

:func:`check_atlas` turns any supported atlas into an :class:`AtlasTree`:

- a NIfTI (or MGZ) volume of integer labels in MNI152 space (group atlas);
- a (left, right) pair of GIFTI label files (``.label.gii`` / ``.label.gii.gz``), FreeSurfer
  ``.annot`` files or label arrays, on fsaverage5 by default or on any mesh given with
  ``geometry=`` and ``space=`` (``fsaverage*``, ``fslr``, ``fsnative``, ``mni152``);
- a CIFTI-2 ``.dlabel.nii`` (cortex of both hemispheres) with its fsLR surfaces as ``geometry``;
- donor-native atlases (``donor=``), and dicts of them through :func:`coerce_atlas_to_dict`.

Region information (``atlas_info``: a CSV/TSV path or a DataFrame with ``id`` or BIDS
``index``, ``hemisphere`` and ``structure``) is validated by :func:`check_atlas_info`.
Helpers with abagen's names and behaviour: :func:`leftify_atlas`, :func:`annot_to_gifti`,
:func:`relabel_gifti`.
"""

from __future__ import annotations

import gzip
import os
import struct
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd

from . import geometry as _geometry
from .geometry import COORDS, INFO
from .grayordinates import CiftiVolume, GrayordinateAtlas, structure_of
from .options import DEFAULTS

# nibabel (a tenth of a second to import, and ~7,000 objects more for the interpreter's exit
# to walk) is imported where used: a warm run on a plain NIfTI-1 atlas never needs it
# (:func:`_plain_nifti1`)
if TYPE_CHECKING:
    import nibabel as nib

__all__ = [
    "AtlasTree",
    "BACKGROUND",
    "HEMISPHERES",
    "STRUCTURES",
    "annot_to_gifti",
    "check_atlas",
    "check_atlas_info",
    "coerce_atlas_to_dict",
    "leftify_atlas",
    "load_geometry",
    "relabel_gifti",
]

#: Hemisphere codes of atlas regions (left, right, bilateral).
HEMISPHERES = ("L", "R", "B")
#: Broad structural classes, as the AHBA ontology groups samples.
STRUCTURES = ("cortex", "subcortex/brainstem", "cerebellum", "white matter", "other")
#: Label names treated as background by :func:`relabel_gifti` (and for ``.annot`` atlases).
BACKGROUND = ["unknown", "corpuscallosum", "Background+FreeSurfer_Defined_Medial_Wall", "???"]

_HEMI_ALIASES = {"l": "L", "lh": "L", "left": "L", "r": "R", "rh": "R", "right": "R",
                 "b": "B", "bilateral": "B", "both": "B"}
_STRUCT_ALIASES = {"subcortex": "subcortex/brainstem", "brainstem": "subcortex/brainstem",
                   "subcortical": "subcortex/brainstem", "wm": "white matter",
                   "whitematter": "white matter"}

# FreeSurfer's MNI152 -> MNI305 (fsaverage) affine; fsaverage surfaces use its inverse.
_MNI152_TO_305 = np.array([[1.0022, 0.0071, -0.0177, 0.0528],
                           [-0.0146, 0.9990, 0.0027, -1.5519],
                           [0.0129, 0.0094, 1.0027, -1.2012],
                           [0.0000, 0.0000, 0.0000, 1.000]])
_MNI305_TO_152 = np.linalg.inv(_MNI152_TO_305)

# Where AHBA tissue samples lie in MNI152 space (bounds of the 3,702 corrected coordinates).
_BRAIN_BOX = np.array([[-71.4, -103.2, -69.7], [70.5, 64.3, 80.7]])
_SURFACE_SPACES = ("fsaverage", "fsaverage3", "fsaverage4", "fsaverage5", "fsaverage6",
                   "fslr", "fsnative", "mni152")
_FSAVERAGE5_VERTICES = 10242


# --------------------------------------------------------------------------------------------
# the atlas object
# --------------------------------------------------------------------------------------------
class AtlasTree:
    """A parcellation as labelled points (voxels or vertices) with a KD-tree for look-ups.

    Parameters
    ----------
    atlas : niimg-like, path or (N,) array_like
        A volume of integer labels, or the labels of N surface vertices (then ``coords``).
    coords : (N, 3) array_like, optional
        Vertex coordinates of a surface atlas (ignored, with a warning, for volumes).
    triangles : (F, 3) array_like, optional
        Mesh faces of a surface atlas: enables geodesic distances when filling regions.
    atlas_info : path or DataFrame, optional
        Region information (see :func:`check_atlas_info`).
    group_atlas : bool
        True for an MNI-space atlas shared by all donors (sample coordinates are moved to the
        atlas grid), False for a donor-native one.
    """

    def __init__(self, atlas, coords=None, *, triangles=None, atlas_info=None,
                 group_atlas=True, source=None, space=None):
        self.source = source or _describe(atlas)
        self.space = space
        self._graph = None
        self._tree = None
        self._affine = None
        self._grid = None
        self._full_coords = None
        self._triangles = None
        self._native_affine = None
        self._volume = None       # volumes: the label of every voxel of the grid
        self._on_grid = False     # whether ``_coords`` are still the voxels' own coordinates
        if _is_pathlike(atlas) or _is_nibabel(atlas, "SpatialImage"):
            if coords is not None:
                warnings.warn("A volumetric atlas was given with coords: the coordinates come "
                              "from the image, the coords are ignored.", UserWarning,
                              stacklevel=2)
            self._volume, affine = _load_volume(atlas, self.source, compact=True)
            self._shape = self._volume.shape
            self._affine = affine
            self._grid = _world_grid(affine, self._shape)
            # the labelled voxels in the order np.nonzero gives them (C order), which the
            # centroids' sums follow (found in a mask: a third of the time on the labels)
            flat = np.flatnonzero(self._volume.ravel() != 0)
            nz = np.unravel_index(flat, self._shape)
            self._nz = nz
            self._atlas = self._volume.ravel()[flat].astype(np.int64)
            self._coords = _grid_to_world(affine, nz)
            self._on_grid = True
        else:
            labels = np.asarray(atlas)
            if coords is None:
                raise ValueError("A surface atlas given as an array of labels needs coords= "
                                 "(the vertex coordinates).")
            coords = np.asarray(coords)
            if labels.ndim != 1:
                raise ValueError(f"Surface labels must be a 1-D array; got shape {labels.shape}.")
            if len(labels) != len(coords):
                raise ValueError(f"The atlas has {len(labels)} labels but coords has "
                                 f"{len(coords)} points: give one coordinate per vertex.")
            labels = _integer_labels(labels, self.source)
            self._shape = labels.shape
            self._full_coords = coords
            nz = np.flatnonzero(labels)
            self._nz = nz
            self._atlas = labels[nz].astype(np.int64)
            self._coords = np.asarray(coords[nz], dtype=float)
        self._labels = _geometry.unique_labels(self._atlas)
        self._centroid_cache = None
        self._centroids = _geometry.get_centroids(self._atlas, self._coords, self._labels)
        if not self.volumetric and len(self._labels):
            # a surface centroid is moved onto the surface: its nearest labelled vertex
            _, idx = self.tree.query(self._centroid_array(), k=1)
            self._centroids = dict(zip(self._labels.tolist(), self._coords[idx]))
            self._centroid_cache = None
        self.group_atlas = group_atlas
        self.triangles = triangles
        self._info = None
        self._info_cache = None
        self.atlas_info = atlas_info

    def __repr__(self):
        kind = "n_voxel" if self.volumetric else "n_vertex"
        return f"{type(self).__name__}[n_rois={len(self.labels)}, {kind}={len(self._atlas)}]"

    # properties with abagen's names ---------------------------------------------------------
    @property
    def tree(self) -> "scipy.spatial.cKDTree":
        """KD-tree of the labelled voxels / vertices."""
        if self._tree is None:
            # scipy.spatial is imported here, not with the module: volumes are matched on the
            # image grid (:meth:`_ball_labels`) and never need it
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self._coords)
        return self._tree

    @property
    def atlas(self) -> np.ndarray:
        """Label of every labelled voxel / vertex."""
        return self._atlas

    @property
    def volumetric(self) -> bool:
        """Whether the atlas is a volume."""
        return self._affine is not None

    @property
    def labels(self) -> np.ndarray:
        """The region labels, sorted."""
        return self._labels

    @property
    def centroids(self) -> dict:
        """``{label: centroid}``; on surfaces the labelled vertex closest to the mean."""
        return self._centroids

    @property
    def coords(self) -> np.ndarray:
        """Coordinates of the labelled voxels / vertices."""
        return self._coords

    @coords.setter
    def coords(self, pts):
        pts = np.asarray(pts, dtype=float)
        if pts.shape != self._coords.shape:
            raise ValueError(f"New coordinates must have shape {self._coords.shape}; got "
                             f"{pts.shape}.")
        if not np.allclose(pts, self._coords):
            self._coords = pts
            self._on_grid = False
            if self._full_coords is not None:
                self._full_coords = np.array(self._full_coords, dtype=float)
                self._full_coords[self._nz] = pts
            self._tree = None
            self._graph = None
            self._centroids = _geometry.get_centroids(self._atlas, pts, self._labels)
            self._centroid_cache = None

    @property
    def affine(self):
        """Voxel-to-world matrix of a volumetric atlas (None for surfaces)."""
        return self._affine

    @property
    def native_affine(self):
        """Voxel-to-world matrix mapping a donor's ``mri_voxel_x/y/z`` to the coordinates this
        donor-native atlas lives in (None for group atlases).

        A donor-native volume is taken to lie on its donor's T1w grid (as the bundled native
        Desikan-Killiany volumes do), so its own affine serves; for donor-native surfaces set
        it to the affine of the donor's T1w image.
        """
        if self.group_atlas:
            return None
        if self._native_affine is not None:
            return self._native_affine
        return self._affine

    @native_affine.setter
    def native_affine(self, affine):
        self._native_affine = None if affine is None else np.asarray(
            getattr(affine, "affine", affine), dtype=float)

    def _full_labels(self) -> np.ndarray:
        """The label of every voxel or vertex, 0 outside regions (a new int64 array)."""
        full = np.zeros(self._shape, dtype=np.int64)
        full[self._nz] = self._atlas
        return full

    def grid_labels(self) -> np.ndarray:
        """The label of every voxel of a volume's grid, 0 outside regions: the atlas's own
        read-only array, in the smallest integer type holding the labels (for look-ups;
        :meth:`label_volume` gives a new int64 copy)."""
        if self._volume is None:
            self._volume = _compact_labels(self._full_labels())
        return self._volume

    def _ball_labels(self, xyz: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """Each labelled voxel / vertex within ``radius`` of a point of ``xyz``, as the row of
        that point and the node's label: what ``tree.query_ball_point(xyz, r=radius)`` finds.

        A volume whose points are still its voxels' coordinates is searched on the image grid
        (building the KD-tree took longer than matching every sample): the voxels of a box of
        indices around each point that surely holds the ball, at their coordinates as
        :attr:`coords` has them (computed element by element, the same numbers), kept when
        their squared distance, summed axis by axis as the tree sums it, is at most
        ``radius ** 2`` (the tree's own test). Other atlases ask the tree.
        """
        xyz = np.asarray(xyz, dtype=float)
        if not (self._on_grid and self.volumetric) or not len(xyz) or not len(self._atlas):
            rows, nodes = _geometry._flatten_hits(self.tree.query_ball_point(xyz, r=radius))
            return rows, self._atlas[nodes]
        if not np.isfinite(xyz).all():  # as the tree refuses them
            raise ValueError(f"Sample coordinates must be finite to be matched to {self.source}; "
                             "got NaN or infinite values: check the samples' MNI coordinates.")
        volume = self.grid_labels()
        inverse = np.linalg.inv(self._affine)
        centre = np.rint(xyz @ inverse[:3, :3].T + inverse[:3, 3])
        # one voxel more than the radius in the smallest voxel step: rounding the centre moves
        # it by at most half a voxel along each axis
        step = float(np.linalg.svd(self._affine[:3, :3], compute_uv=False).min())
        half = int(np.ceil(radius / step)) + 1
        span = np.arange(-half, half + 1)
        offsets = np.stack(np.meshgrid(span, span, span, indexing="ij"), axis=-1).reshape(-1, 3)
        usable = np.flatnonzero(np.all(np.abs(centre) < np.iinfo(np.int32).max, axis=1))
        found_rows, found_labels = [], []
        per_block = max(1, 1_000_000 // len(offsets))  # candidates of a few MB at a time
        for start in range(0, len(usable), per_block):
            rows = usable[start:start + per_block]
            ijk = (centre[rows].astype(np.int64)[:, None, :] + offsets[None]).reshape(-1, 3)
            rows = np.repeat(rows, len(offsets))
            inside = np.all((ijk >= 0) & (ijk < volume.shape), axis=1)
            rows, ijk = rows[inside], ijk[inside]
            labels = volume.ravel()[np.ravel_multi_index(tuple(ijk.T), volume.shape)]
            labelled = labels != 0
            rows, ijk, labels = rows[labelled], ijk[labelled], labels[labelled]
            node_xyz = _voxel_to_world(self._affine, ijk)
            point = xyz[rows]
            squared = np.zeros(len(rows))
            for axis in range(3):  # summed in the tree's order
                diff = point[:, axis] - node_xyz[:, axis]
                squared += diff * diff
            near = squared <= radius * radius
            found_rows.append(rows[near])
            found_labels.append(labels[near].astype(np.int64))
        if not found_rows:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64)
        return np.concatenate(found_rows), np.concatenate(found_labels)

    def label_volume(self) -> np.ndarray | None:
        """The label of every voxel of a volumetric atlas's grid, 0 outside regions (a new
        int64 array; None for surfaces)."""
        return None if self._affine is None else self._full_labels()

    @property
    def voxel_size(self) -> np.ndarray:
        """Voxel edge lengths (zeros for surfaces)."""
        if self._affine is None:
            return np.zeros(3)
        return np.sqrt(np.sum(self._affine[:3, :3] ** 2, axis=0))

    @property
    def triangles(self):
        """Mesh faces (surfaces built with triangles), else None."""
        return self._triangles

    @triangles.setter
    def triangles(self, tris):
        self._graph = None
        if self.volumetric or tris is None:
            self._triangles = None
            return
        tris = np.asarray(tris, dtype=np.int64)
        if tris.ndim != 2 or tris.shape[1] != 3:
            raise ValueError(f"triangles must be an (F, 3) array; got shape {tris.shape}.")
        if tris.size and (tris.max() >= len(self._full_coords) or tris.min() < 0):
            raise ValueError(f"triangles index vertex {int(tris.max())} but the surface has "
                             f"{len(self._full_coords)} vertices.")
        self._triangles = tris

    @property
    def graph(self):
        """Sparse geodesic graph between labelled vertices (surfaces with triangles)."""
        if self._graph is None and self._triangles is not None:
            unlabelled = self._full_labels() == 0
            graph = _geometry.surface_graph(self._full_coords, self._triangles, unlabelled)
            self._graph = graph[self._nz][:, self._nz].tocsr()
        return self._graph

    @property
    def atlas_info(self):
        """Region information (index ``id``; hemisphere, structure, ...) or None."""
        return self._info

    @atlas_info.setter
    def atlas_info(self, info):
        self._info_cache = None
        self._info = None if info is None else check_atlas_info(info, self.labels,
                                                                source=self.source)

    @staticmethod
    def check_info(info, labels, source=None) -> pd.DataFrame:
        """:func:`check_atlas_info` (for atlases made of trees, which do not import this
        module)."""
        return check_atlas_info(info, labels, source=source)

    # internals used by ahba_app.matching ----------------------------------------------------
    def _info_arrays(self):
        if self._info_cache is None:
            info = self._info.loc[self.labels]
            self._info_cache = (np.asarray(info["hemisphere"], object),
                                np.asarray(info["structure"], object))
        return self._info_cache

    def _centroid_array(self) -> np.ndarray:
        if self._centroid_cache is None:
            self._centroid_cache = np.asarray([self._centroids[lab] for lab in
                                               self._labels.tolist()]).reshape(-1, 3)
        return self._centroid_cache

    def _nodes_of(self, labels) -> dict:
        order = np.argsort(self._atlas, kind="stable")
        sorted_labels = self._atlas[order]
        out = {}
        for lab in labels:
            lo, hi = np.searchsorted(sorted_labels, [lab, lab + 1])
            out[lab] = np.sort(order[lo:hi])
        return out

    def _snap_to_voxels(self, xyz: np.ndarray) -> np.ndarray:
        """Coordinates within 1e-6 voxel of a voxel centre become exactly that centre (as the
        tree computes it), so round-off of oblique affines cannot hide an exact hit."""
        ijk = _apply_affine(np.linalg.inv(self._affine), xyz)
        centre = np.round(ijk)
        on = np.all(np.abs(ijk - centre) < 1e-6, axis=1)
        if on.any():
            xyz = xyz.copy()
            xyz[on] = _voxel_to_world(self._affine, centre[on])
        return xyz

    def _floor_to_grid(self, xyz: np.ndarray) -> np.ndarray:
        """Move coordinates to the grid point just below them on every axis (group atlases)."""
        if self._grid is None:  # oblique grid: the voxel corner just below, in voxel space
            ijk = _apply_affine(np.linalg.inv(self._affine), xyz)
            near = np.abs(ijk - np.round(ijk)) < 1e-6
            return _voxel_to_world(self._affine, np.where(near, np.round(ijk) - 1,
                                                          np.ceil(ijk) - 1))
        out = xyz.copy()
        for axis, grid in enumerate(self._grid):
            pos = np.searchsorted(grid, xyz[:, axis]) - 1
            out[:, axis] = grid[np.clip(pos, 0, len(grid) - 1)]
        return out

    # matching ---------------------------------------------------------------------------------
    def label_samples(self, annotation, tolerance: float = DEFAULTS["tolerance"]) -> pd.DataFrame:
        """Region of every sample in ``annotation`` (see :func:`ahba_app.matching.label_samples`).

        Returns a frame with one integer column ``label`` (0 = unmatched), indexed like the
        annotation.
        """
        array_input = not isinstance(annotation, (pd.DataFrame, str, os.PathLike))
        frame = _geometry.sample_frame(annotation, copy=False)
        xyz = np.asarray(frame[COORDS], dtype=float)
        have = _geometry._has_info(frame)
        hemi = np.asarray(frame["hemisphere"], object) if have else None
        struct = np.asarray(frame["structure"], object) if have else None
        if self.volumetric:
            if self.group_atlas:
                xyz = self._floor_to_grid(xyz)
            xyz = self._snap_to_voxels(xyz)
            labels = _geometry._match_volume(self, xyz, hemi, struct, abs(tolerance))
        else:
            if array_input or "structure" not in frame.columns:
                cortex = np.ones(len(frame), dtype=bool)
            else:
                cortex = np.asarray(frame["structure"] == "cortex")
            labels = np.zeros(len(frame), dtype=np.int64)
            if cortex.any():
                labels[cortex] = _geometry._match_surface(
                    self, xyz[cortex], None if hemi is None else hemi[cortex],
                    None if struct is None else struct[cortex], tolerance)
        return pd.DataFrame({"label": labels.astype(int)}, index=frame.index)

    def match_closest_centroids(self, annotation, return_dist: bool = False):
        """Region whose centroid is closest to each sample (-1 when none is compatible).

        With atlas info and sample hemisphere/structure, only regions with exactly the
        sample's hemisphere and structure count.
        """
        frame = _geometry.sample_frame(annotation, copy=False)
        xyz = np.asarray(frame[COORDS], dtype=float)
        cents = self._centroid_array()
        if self._info is None or not _geometry._has_info(frame):
            best, dist = _geometry.closest_centroid(xyz, cents, return_dist=True)
            labels = self.labels[best]
        else:
            labels = np.full(len(frame), -1, dtype=int)
            dist = np.full(len(frame), np.inf)
            lab_hemi, lab_struct = self._info_arrays()
            groups = frame.reset_index(drop=True).groupby(["structure", "hemisphere"]).indices
            for (struct, hemi), rows in groups.items():
                same = np.flatnonzero((lab_hemi == hemi) & (lab_struct == struct))
                if len(same):
                    best, d = _geometry.closest_centroid(xyz[rows], cents[same], return_dist=True)
                    labels[rows], dist[rows] = self.labels[same[best]], d
        return (labels, dist) if return_dist else labels

    def fill_label(self, annotation, label, return_dist: bool = False):
        """The sample nearest to every node of region ``label`` (index values of annotation).

        Distances are Euclidean in volumes and geodesic on surfaces with triangles; with atlas
        info only samples compatible with ``label`` (and with their own nearest region) count.
        """
        return _geometry.fill_label_nodes(self, annotation, label, return_dist=return_dist)


# --------------------------------------------------------------------------------------------
# loading helpers
# --------------------------------------------------------------------------------------------
def _describe(obj) -> str:
    if isinstance(obj, (str, os.PathLike)):
        return str(obj)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return f"({_describe(obj[0])}, {_describe(obj[1])})"
    name = getattr(obj, "get_filename", lambda: None)()
    return str(name) if name else f"<in-memory {type(obj).__name__}>"


def _is_pathlike(obj) -> bool:
    return isinstance(obj, (str, os.PathLike))


def _is_nibabel(obj, kind: str) -> bool:
    """Whether ``obj`` is a nibabel ``kind`` ('SpatialImage', 'Cifti2Image', 'GiftiImage'):
    without importing nibabel, as an object can only be one once nibabel is imported."""
    nib = sys.modules.get("nibabel")
    if nib is None:
        return False
    return isinstance(obj, {"SpatialImage": nib.spatialimages.SpatialImage,
                            "Cifti2Image": nib.Cifti2Image, "GiftiImage": nib.GiftiImage}[kind])


def _apply_affine(affine, pts) -> np.ndarray:
    """``nibabel.affines.apply_affine(affine, pts)``: the same arithmetic (a product with the
    upper-left block, then the translation added), without importing nibabel."""
    affine, pts = np.asarray(affine), np.asarray(pts)
    shape = pts.shape
    pts = pts.reshape((-1, shape[-1]))
    return (pts @ affine[:-1, :-1].T + affine[:-1, -1][None, :]).reshape(shape)


class AtlasFileNotFoundError(FileNotFoundError, TypeError):
    """An atlas path that is not a file. Also a TypeError: abagen raises that for a string
    that names no file (it is then not an image), and scripts may catch it."""


def _require_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise AtlasFileNotFoundError(f"Atlas file {path} does not exist.")
    return path


def _integer_labels(data, source: str) -> np.ndarray:
    """``data`` as int64 labels; errors for non-integer or negative values."""
    data = np.asarray(data)
    if data.dtype.kind not in "iub":
        if data.dtype.kind != "f":
            raise ValueError(f"{source} holds {data.dtype} values: an atlas must hold integer "
                             f"region ids.")
        finite = np.isfinite(data)
        bad = ~finite | (data != np.round(np.where(finite, data, 0)))
        if bad.any():
            example = data[bad].ravel()[0]
            raise ValueError(f"{source} holds non-integer values (e.g. {example!r}): an atlas "
                             f"must hold integer region ids. If it was resampled, use "
                             f"nearest-neighbour interpolation.")
    if data.size and data.max() >= 2**63:  # uint64 or huge floats: int64 would wrap
        raise ValueError(f"{source} holds labels too large for region ids (e.g. "
                         f"{int(data.max())}; the largest allowed is {np.iinfo(np.int64).max}): "
                         "relabel the regions with small positive integers.")
    data = data.astype(np.int64)
    if data.size and data.min() < 0:
        negative = np.unique(data[data < 0])[:5].tolist()
        raise ValueError(f"{source} holds negative labels {negative}: region ids must be "
                         f"positive integers and 0 the background. Relabel them (e.g. set "
                         f"them to 0).")
    return data


def _load_volume(img, source: str, compact: bool = False):
    """Data (int64, 3-D; with ``compact``, as :func:`_compact_labels` gives them) and affine
    of a volumetric atlas."""
    plain = None
    if _is_pathlike(img):
        path = _require_file(img)
        inflated = _inflated(path)
        plain = _plain_nifti1(inflated) if inflated else None
        if plain is None:
            img = _read_image(path, inflated)
    if plain is not None:
        image_shape, values, affine = plain
    else:
        import nibabel as nib

        if isinstance(img, nib.Cifti2Image):
            raise TypeError(f"{source} is a CIFTI file: load it with check_atlas (which needs "
                            f"geometry=).")
        if not isinstance(img, nib.spatialimages.SpatialImage):
            raise TypeError(f"{source} is not a volumetric image.")
        image_shape, values, affine = img.shape, img.dataobj, img.affine
    shape = image_shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ValueError(f"{source} is a {len(shape)}-D image of shape {image_shape}: an atlas "
                         f"must be a single 3-D volume of integer labels. Pick one volume "
                         f"(e.g. img.slicer[..., 0]) or use a 3-D parcellation.")
    affine = np.asarray(affine, dtype=float)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{source} has an unusable affine (voxel to world mapping) "
                         f"{affine[:3].tolist()}: it must be finite and invertible. Fix the "
                         "image header (sform/qform), e.g. copy it from the template the atlas "
                         "was made on.")
    data = np.asarray(values).reshape(shape)
    if compact:
        return _compact_integer_labels(data, source), affine
    return _integer_labels(data, source), affine


def _inflated(path: Path) -> bytes:
    """The bytes of a gzipped NIfTI file (``.nii.gz``), inflated by isal (three times as fast
    as zlib: 20 of the 50 ms a 1-mm atlas took to load); empty for any other file, and for
    one that cannot be opened or is not a whole gzip stream (nibabel then reads it and names
    the problem). Any other error (out of memory, a fault of isal) is raised as it is."""
    if not str(path).endswith(".nii.gz"):
        return b""
    from isal import igzip, isal_zlib

    try:
        with open(path, "rb") as handle:
            return igzip.decompress(handle.read())
    # a file that cannot be opened or read (OSError), is not gzip (BadGzipFile, an OSError),
    # stops early or has trailing bytes (EOFError), has a bad deflate block (isal_zlib.error)
    except (OSError, EOFError, isal_zlib.error):
        return b""


def _read_image(path: Path, inflated: bytes | None = None):
    """``nib.load(path)``; a gzipped NIfTI file is read from its bytes inflated by isal
    (:func:`_inflated`; ``inflated``: those bytes, when already read): the same header and
    data. Anything else goes to nibabel, whose errors say what is wrong."""
    import nibabel as nib

    data = _inflated(path) if inflated is None else inflated
    # the single-file magics: "n+1" at byte 344 of NIfTI-1, "n+2" at byte 4 of NIfTI-2
    if data[344:348] == b"n+1\0":
        return nib.Nifti1Image.from_bytes(data)
    if data[4:8] == b"n+2\0":
        return nib.Nifti2Image.from_bytes(data)
    return nib.load(str(path))


#: NIfTI-1 datatype codes :func:`_plain_nifti1` reads -> numpy type (nibabel's, and the same
#: item size as the header's ``bitpix``)
_NIFTI1_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2",
                 768: "u4", 1024: "i8", 1280: "u8"}
#: valid NIfTI-1 qform and sform codes (unknown, scanner, aligned, Talairach, MNI, template)
_XFORM_CODES = range(6)


def _plain_nifti1(data: bytes):
    """``(shape, values, affine)`` of a single-file NIfTI-1 image held in ``data`` whose
    header nibabel takes as it is, read without nibabel: what ``Nifti1Image.from_bytes(data)``
    gives as ``shape``, ``np.asarray(dataobj)`` (read-only here) and ``affine``, the same
    numbers bit for bit. None for any other header, which nibabel then reads: one it would
    fix or warn about, an unknown data type, values scaled by ``scl_slope``/``scl_inter``,
    no sform (a qform or pixel sizes would give the affine), header extensions (nibabel
    parses them, and refuses damaged ones), data shorter than the header says, or
    FreeSurfer's oversized-vector dimensions."""
    if len(data) < 352 or data[344:348] != b"n+1\0" or data[348] != 0:
        return None
    # the byte order in which sizeof_hdr reads 348, as nibabel guesses it
    order = next((o for o in "<>" if struct.unpack_from(o + "i", data, 0)[0] == 348), None)
    if order is None:
        return None
    dim = struct.unpack_from(order + "8h", data, 40)
    datatype, bitpix = struct.unpack_from(order + "2h", data, 70)
    pixdim = struct.unpack_from(order + "8f", data, 76)
    vox_offset, slope, inter = struct.unpack_from(order + "3f", data, 108)
    qform_code, sform_code = struct.unpack_from(order + "2h", data, 252)
    code = _NIFTI1_TYPES.get(datatype)
    if code is None or bitpix != 8 * int(code[1]):
        return None
    shape = tuple(int(n) for n in dim[1:dim[0] + 1]) if 1 <= dim[0] <= 7 else ()
    # (as nibabel's header checks: qfac +-1, positive voxel sizes, an offset past the
    # header on a 16-byte boundary, known transform codes)
    if (not shape or min(shape) < 1 or shape[:3] == (27307, 1, 6)
            or pixdim[0] not in (-1.0, 1.0) or any(p <= 0 for p in pixdim[1:4])
            or vox_offset < 352 or vox_offset % 16
            or qform_code not in _XFORM_CODES or sform_code not in _XFORM_CODES[1:]):
        return None
    # slope 0 or not finite: no scaling; 1 and 0: scaling that changes nothing
    if not (slope == 0 or not np.isfinite(slope) or (slope == 1 and inter == 0)):
        return None
    offset, count = int(vox_offset), int(np.prod(shape))
    dtype = np.dtype(order + code)
    if offset + count * dtype.itemsize > len(data):
        return None
    values = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    affine = np.eye(4)
    affine[:3] = np.frombuffer(data, dtype=order + "f4", count=12, offset=280).reshape(3, 4)
    return shape, values.reshape(shape, order="F"), affine


def _compact_integer_labels(data: np.ndarray, source: str) -> np.ndarray:
    """:func:`_compact_labels` of :func:`_integer_labels` of ``data`` (the same labels, the
    same errors); integers of at most 32 bits go straight to the compact type, without the
    int64 copy of the whole grid in between."""
    if data.dtype.kind in "iu" and data.dtype.itemsize <= 4:
        if data.size and data.min() < 0:
            _integer_labels(data, source)  # (raises: negative labels)
        return _compact_labels(data)
    return _compact_labels(_integer_labels(data, source))


def _compact_labels(data: np.ndarray) -> np.ndarray:
    """A read-only copy of int64 labels in the smallest signed integer type holding them (the
    atlas keeps its grid for look-ups: a quarter or an eighth of the memory)."""
    top = int(data.max()) if data.size else 0
    dtype = next(t for t in (np.int8, np.int16, np.int32, np.int64) if top <= np.iinfo(t).max)
    out = np.array(data, dtype=dtype, order="C")  # C order: flat indices are views
    out.flags.writeable = False
    return out


def _grid_to_world(affine, nz: tuple) -> np.ndarray:
    """:func:`_voxel_to_world` of the voxels ``nz`` (a tuple of index arrays, as np.nonzero
    gives), the same numbers. On a grid aligned with the world axes each world coordinate
    depends on one index only (the other terms are products of a zero coefficient and an index
    >= 0: a zero of the coefficient's sign, whatever the index), so it is looked up in that
    axis's line of coordinates instead of computed for every voxel."""
    rzs = np.asarray(affine)[:3, :3]
    columns = [np.flatnonzero(rzs[row]) for row in range(3)]
    if any(len(c) != 1 for c in columns) or len({int(c[0]) for c in columns}) != 3:
        return _voxel_to_world(affine, np.column_stack(nz))
    # each axis's coordinates contiguous (Fortran order): written, and summed per region for
    # the centroids, without strided passes
    out = np.empty((len(nz[0]), 3), dtype=float, order="F")
    for row, (col,) in enumerate(columns):
        top = int(nz[col].max()) + 1 if len(nz[col]) else 0
        line = np.zeros((top, 3))
        line[:, col] = np.arange(top)
        out[:, row] = _voxel_to_world(affine, line)[:, row][nz[col]]
    return out


def _voxel_to_world(affine, ijk) -> np.ndarray:
    """World coordinates of voxel indices, computed element by element (no BLAS), so a voxel
    gets the same coordinates however many are converted at once."""
    ijk = np.asarray(ijk, dtype=float)
    out = np.empty(ijk.shape, dtype=float)
    for row in range(3):
        out[:, row] = (affine[row, 0] * ijk[:, 0] + affine[row, 1] * ijk[:, 1]
                       + affine[row, 2] * ijk[:, 2] + affine[row, 3])
    return out


def _world_grid(affine, shape):
    """World coordinates of the voxel grid along each world axis, sorted (None if oblique)."""
    rzs = affine[:3, :3]
    if np.count_nonzero(rzs) != 3 or np.any(np.count_nonzero(rzs, axis=1) != 1) \
            or np.any(np.count_nonzero(rzs, axis=0) != 1):
        return None
    grid = []
    for row in range(3):
        col = int(np.flatnonzero(rzs[row])[0])
        grid.append(np.sort(affine[row, 3] + rzs[row, col] * np.arange(shape[col])))
    return grid


def _check_mni_volume(shape, affine, source):
    """Error when a group volume's field of view hardly covers where AHBA samples lie."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], dtype=float)
    world = _apply_affine(affine, corners)
    lo, hi = world.min(axis=0), world.max(axis=0)
    overlap = np.clip(np.minimum(hi, _BRAIN_BOX[1]) - np.maximum(lo, _BRAIN_BOX[0]), 0, None)
    fraction = np.prod(overlap) / np.prod(_BRAIN_BOX[1] - _BRAIN_BOX[0])
    if fraction < 0.25:
        raise ValueError(
            f"{source} does not look like an MNI152-space image: its field of view "
            f"({np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()} mm) covers "
            f"{fraction:.0%} of the region where AHBA tissue samples lie "
            f"({_BRAIN_BOX[0].tolist()} to {_BRAIN_BOX[1].tolist()} mm). Check its affine, or "
            f"for a donor-native atlas pass donor= (or a dict of donor -> image).")


def _read_gifti(obj):
    import nibabel as nib

    if isinstance(obj, nib.GiftiImage):
        return obj
    path = _require_file(obj)
    if str(path).endswith(".gz"):
        with gzip.open(path, "rb") as handle:
            return nib.GiftiImage.from_bytes(handle.read())
    return nib.load(str(path))


def _surface_labels(obj, source):
    """Labels (int64) and label table ``{id: name}`` (or None) of one hemisphere."""
    if _is_pathlike(obj) and str(obj).endswith(".annot"):
        obj = annot_to_gifti(obj)
    if _is_nibabel(obj, "GiftiImage") or _is_pathlike(obj):
        if _is_pathlike(obj) and not (str(obj).endswith(".gii") or str(obj).endswith(".gii.gz")):
            raise TypeError(f"{source}: surface atlases must be GIFTI label files "
                            f"(.label.gii[.gz]) or FreeSurfer .annot files.")
        img = _read_gifti(obj)
        arrays = [np.asarray(d.data) for d in img.darrays]
        if len(arrays) != 1 or np.squeeze(arrays[0]).ndim != 1:
            raise ValueError(f"{source} holds {len(arrays)} data array(s) of shape(s) "
                             f"{[a.shape for a in arrays]}: a label file must hold exactly one "
                             f"vector of labels (one per vertex).")
        table = img.labeltable.get_labels_as_dict() if img.labeltable is not None else {}
        return _integer_labels(np.squeeze(arrays[0]), source), (table or None)
    data = np.asarray(obj)
    if data.ndim != 1:
        raise ValueError(f"{source}: surface labels must be one vector per hemisphere.")
    return _integer_labels(data, source), None


def _surface_info(tables, hemis, labels_by_hemi) -> pd.DataFrame:
    rows = []
    for table, hemi, labels in zip(tables, hemis, labels_by_hemi):
        for lab in np.unique(labels[labels != 0]).tolist():
            rows.append((lab, (table or {}).get(lab), hemi, "cortex"))
    info = pd.DataFrame(rows, columns=["id", "label", "hemisphere", "structure"])
    info = info.groupby("id", sort=True).agg(
        label=("label", "first"),
        hemisphere=("hemisphere", lambda h: h.iloc[0] if h.nunique() == 1 else "B"),
        structure=("structure", "first"))
    return info


def load_geometry(geometry, source="geometry"):
    """Vertices and faces of a (left, right) pair of surfaces.

    Each entry may be a GIFTI surface (``.surf.gii[.gz]``), a FreeSurfer surface (``lh.pial``),
    a GiftiImage or a ``(vertices, faces)`` pair. Returns two ``(vertices, faces)`` tuples.
    """
    import nibabel as nib

    if isinstance(geometry, (str, os.PathLike)) or len(geometry) != 2:
        raise TypeError(f"{source} must be a (left, right) pair of surfaces.")
    out = []
    for surf in geometry:
        if _is_pathlike(surf) and not (str(surf).endswith(".gii") or str(surf).endswith(".gz")):
            vertices, faces = nib.freesurfer.read_geometry(str(_require_file(surf)))
        elif _is_pathlike(surf) or isinstance(surf, nib.GiftiImage):
            img = _read_gifti(surf)
            try:
                vertices, faces = img.agg_data(("pointset", "triangle"))
            except Exception:
                vertices, faces = None, None
            if vertices is None or faces is None or np.ndim(vertices) != 2:
                raise ValueError(f"{_describe(surf)} is not a surface (it needs a pointset and "
                                 f"a triangle array).")
        else:
            vertices, faces = surf
        vertices, faces = np.asarray(vertices), np.asarray(faces, dtype=np.int64)
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise ValueError(f"{source}: vertices must be an (N, 3) array; got "
                             f"{vertices.shape}.")
        out.append((vertices, faces))
    return tuple(out)


def _freesurfer_folder(donor, data_dir):
    """The donor's FreeSurfer folder (with ``mri/orig.mgz``) under ``data_dir``."""
    from .datasets import check_donors
    from .fetch import get_data_dir

    donor = check_donors(donor)[0]
    roots = [get_data_dir(data_dir)]   # data_dir, else $AHBA_DATA, else $ABAGEN_DATA, ...
    candidates = []
    for root in roots:
        candidates += [root, root / f"donor{donor}", root / "freesurfer" / f"donor{donor}",
                       root / donor]
    for folder in candidates:
        if (folder / "mri" / "orig.mgz").exists():
            return folder
    raise FileNotFoundError(
        f"Donor-native (fsnative) surfaces of donor {donor} need that donor's FreeSurfer "
        f"reconstruction (mri/orig.mgz, surf/?h.pial); none found in "
        f"{[str(c) for c in candidates]}. It is not downloaded at run time: fetch it (the "
        f"University of Cambridge repository, handle 1810/265272) beforehand with ahba_app.datasets.fetch_freesurfer(data_dir=..., donors='{donor}') "
        f"or `python -m ahba_app.fetch --freesurfer --donors {donor}`, and pass that data "
        f"folder (data_dir= or $AHBA_DATA).")


def _to_mni(vertices, space, donor, data_dir, source):
    import nibabel as nib

    key = space_key(space, source)
    vertices = np.asarray(vertices)
    if key.startswith("fsaverage"):
        return nib.affines.apply_affine(_MNI305_TO_152, vertices)
    if key == "fsnative":
        if donor is None:
            raise ValueError(f"{source}: space='fsnative' needs donor= (whose FreeSurfer "
                             f"reconstruction the surfaces come from).")
        orig = nib.load(str(_freesurfer_folder(donor, data_dir) / "mri" / "orig.mgz"))
        torig = orig.header.get_vox2ras_tkr()
        voxels = nib.affines.apply_affine(np.linalg.inv(torig), vertices)
        return nib.affines.apply_affine(orig.affine, voxels)
    return vertices


#: TemplateFlow's fsaverage densities -> the FreeSurfer mesh name.
FSAVERAGE_DENSITIES = {"1k": "fsaverage3", "3k": "fsaverage4", "10k": "fsaverage5",
                       "41k": "fsaverage6", "164k": "fsaverage"}


def space_key(space, source=None, *, density=None, strict: bool = True):
    """The canonical name of a space (``fsaverage5``, ``fslr``, ``mni152``, ``fsnative``), from
    a ``space=`` argument or a TemplateFlow template name (with its ``den-`` density).

    None for no space; an unknown space is a ValueError naming ``source`` when ``strict``, else
    None (a BIDS file name may carry templates this module does not place).
    """
    if space is None or str(space) == "":
        return None
    key = str(space).lower().replace("_", "").replace("-", "")
    if key == "fsaverage" and density:
        return FSAVERAGE_DENSITIES.get(str(density).lower(), "fsaverage")
    if key.startswith("fsaverage"):
        return key
    if key.startswith("fslr"):
        return "fslr"
    if key.startswith("mni152") or (strict and key.startswith("mni")):
        return "mni152"  # a template name must say MNI152; a space= argument may say MNI
    if key in ("fsnative", "native", "t1w"):
        return "fsnative"
    if not strict:
        return None
    raise ValueError(f"{source}: unknown space {space!r}; choose one of {_SURFACE_SPACES} "
                     f"(fsaverage* surfaces are moved to MNI152, fslr and mni152 surfaces are "
                     f"taken as MNI152 coordinates, fsnative ones need donor=).")


def _check_surface_space(coords, space, source):
    """Error when most vertices lie far from the brain (e.g. a sphere or inflated surface)."""
    lo, hi = _BRAIN_BOX[0] - 20, _BRAIN_BOX[1] + 20
    inside = np.all((coords >= lo) & (coords <= hi), axis=1).mean()
    if inside < 0.95:
        raise ValueError(f"{source}: only {inside:.0%} of the geometry's vertices lie within "
                         f"20 mm of where AHBA tissue samples are in MNI152 space: is it a "
                         f"sphere or inflated surface, or not in space {space!r}? Give pial, "
                         f"white or midthickness surfaces in the stated space.")


def _surface_tree(lh, rh, tables, geometry, space, donor, data_dir, source, hemis=("L", "R")):
    """AtlasTree of per-hemisphere label vectors on the given (or bundled) geometry."""
    import nibabel as nib

    if geometry is None:
        if donor is not None:
            folder = _freesurfer_folder(donor, data_dir)
            geometry = (folder / "surf" / "lh.pial", folder / "surf" / "rh.pial")
            space = "fsnative"
        elif space is None or space_key(space, source) == "fsaverage5":
            from .datasets import fetch_fsaverage5
            if len(lh) != _FSAVERAGE5_VERTICES or len(rh) != _FSAVERAGE5_VERTICES:
                raise ValueError(
                    f"{source} has {len(lh)} + {len(rh)} vertices, not fsaverage5's "
                    f"{_FSAVERAGE5_VERTICES} per hemisphere: give the surfaces it is defined on "
                    f"with geometry=(left, right) and space= (e.g. 'fsaverage6', 'fslr').")
            geometry = tuple(fetch_fsaverage5(load=True))
            space = "fsaverage5"
        else:
            raise ValueError(f"{source}: a surface atlas in space {space!r} needs its "
                             f"geometry=(left, right) surfaces (only fsaverage5 is bundled).")
    elif space is None:
        raise ValueError(f"{source}: with geometry= also give space= (one of "
                         f"{_SURFACE_SPACES}).")
    (lv, lf), (rv, rf) = load_geometry(geometry)
    lh = _nested_fsaverage(lh, lv, space, source)
    rh = _nested_fsaverage(rh, rv, space, source)
    for name, labels, verts in (("left", lh, lv), ("right", rh, rv)):
        if len(labels) != len(verts):
            raise ValueError(f"{source}: the {name} hemisphere has {len(labels)} labelled "
                             f"vertices but its geometry has {len(verts)}: atlas and geometry "
                             f"must be the same mesh (space {space!r}).")
    coords = np.vstack([_to_mni(lv, space, donor, data_dir, source),
                        _to_mni(rv, space, donor, data_dir, source)])
    if space_key(space, source) != "fsnative":
        _check_surface_space(coords, space, source)
    faces = np.vstack([lf, rf + len(lv)])
    labels = np.concatenate([lh, rh])
    info = _surface_info(tables, hemis, (lh, rh))
    tree = AtlasTree(labels, coords=coords, triangles=faces, source=source, space=space,
                     group_atlas=donor is None)
    tree.atlas_info = info if len(info) else None
    if space_key(space, source) == "fsnative":
        # FreeSurfer keeps the input T1w's grid in mri/rawavg.mgz: samples' mri_voxel
        # coordinates go through its affine
        rawavg = _freesurfer_folder(donor, data_dir) / "mri" / "rawavg.mgz"
        if rawavg.exists():
            tree.native_affine = nib.load(str(rawavg)).affine
    return tree, info


def _load_cifti(img, source):
    """Left/right cortical labels (full vertex arrays) and label table of a dlabel CIFTI."""
    import nibabel as nib

    if _is_pathlike(img):
        img = nib.load(str(_require_file(img)))
    labels_axis, models = img.header.get_axis(0), img.header.get_axis(1)
    if not isinstance(models, nib.cifti2.BrainModelAxis) or \
            not isinstance(labels_axis, nib.cifti2.LabelAxis):
        raise ValueError(f"{source} is not a dlabel CIFTI (it needs a label axis and a "
                         f"brain-model axis).")
    data = np.asarray(img.dataobj)
    if data.shape[0] != 1:
        raise ValueError(f"{source} holds {data.shape[0]} label maps: an atlas must hold "
                         f"exactly one. Split it (e.g. wb_command -cifti-separate) first.")
    values = _integer_labels(data[0], source)
    hemis, ignored, voxels = {}, [], []
    for name, where, model in models.iter_structures():
        key = {"CIFTI_STRUCTURE_CORTEX_LEFT": "L", "CIFTI_STRUCTURE_CORTEX_RIGHT": "R"}.get(name)
        if key is None:
            if model.volume_mask.all():
                voxels.append((name, model.voxel, values[where]))
            else:
                ignored.append(name)
            continue
        full = np.zeros(model.nvertices[name], dtype=np.int64)
        full[model.vertex] = values[where]
        hemis[key] = full
    if set(hemis) != {"L", "R"}:
        raise ValueError(f"{source} lacks {'left' if 'L' not in hemis else 'right'} cortex "
                         f"(CIFTI_STRUCTURE_CORTEX_LEFT/RIGHT surface models).")
    if ignored:
        warnings.warn(f"{source}: only the cortical surfaces and subcortical voxels are used; "
                      f"ignoring {', '.join(ignored)}.", UserWarning, stacklevel=3)
    table = {int(k): v[0] for k, v in labels_axis.label[0].items()}
    volume = None
    if voxels:
        volume = CiftiVolume.from_models(voxels, models.volume_shape, models.affine)
    return hemis["L"], hemis["R"], table, volume


def _volume_tree(volume: CiftiVolume, table: dict, source: str, donor=None):
    """An :class:`~ahba_app.atlas.AtlasTree` of the CIFTI's voxels, with the hemisphere and
    structure of each label from its CIFTI structure(s) (several: bilateral 'B' when their
    hemispheres differ)."""
    import nibabel as nib

    img = nib.Nifti1Image(volume.labels.astype(np.int32), volume.affine)
    tree = AtlasTree(img, source=f"{source} (subcortical voxels)", group_atlas=donor is None)
    rows = []
    for label in tree.labels.tolist():
        found = [structure_of(n) for n in sorted(volume.structures.get(label, ()))]
        hemis = {h for h, _ in found}
        hemi = hemis.pop() if len(hemis) == 1 else "B"
        structure = found[0][1] if found else "subcortex/brainstem"
        rows.append((label, (table or {}).get(label), hemi, structure))
    tree.atlas_info = pd.DataFrame(rows, columns=["id", "label", "hemisphere", "structure"])
    return tree


def check_atlas_info(atlas_info, labels=None, source=None) -> pd.DataFrame:
    """Validate region information and return it indexed by ``id``.

    ``atlas_info`` is a CSV / TSV path or a DataFrame with an integer ``id`` (or BIDS
    ``index``) column, ``hemisphere`` (L/R/B; lh, left, ... are accepted) and ``structure``
    (one of :data:`STRUCTURES`; 'subcortex' and 'brainstem' mean 'subcortex/brainstem'); other
    columns (e.g. ``label``, ``name``) are kept. Every atlas label must be listed; listed ids
    absent from the atlas (and background id 0) are dropped with a warning.
    """
    where = source or "the atlas"
    name = str(atlas_info) if _is_pathlike(atlas_info) else "atlas_info"
    if _is_pathlike(atlas_info):
        path = Path(atlas_info)
        if not path.exists():
            raise FileNotFoundError(f"Atlas info file {path} does not exist.")
        sep = "\t" if path.name.endswith((".tsv", ".tsv.gz")) else ","
        info = pd.read_csv(path, sep=sep)
    elif isinstance(atlas_info, pd.DataFrame):
        info = atlas_info.copy()
    else:
        raise TypeError(f"atlas_info must be a CSV/TSV path or a pandas DataFrame; got "
                        f"{type(atlas_info).__name__}.")
    if "id" in info.columns:
        info = info.set_index("id")
    elif "index" in info.columns:
        info = info.set_index("index")
    elif info.index.name not in ("id", "index"):
        raise ValueError(f"{name} needs an 'id' (or BIDS 'index') column with the atlas "
                         f"labels; its columns are {list(info.columns)}.")
    info.index.name = "id"
    missing_cols = [c for c in INFO if c not in info.columns]
    if missing_cols:
        raise ValueError(f"{name} lacks column(s) {missing_cols}: every region needs a "
                         f"'hemisphere' ({'/'.join(HEMISPHERES)}) and a 'structure' (one of "
                         f"{list(STRUCTURES)}).")
    try:
        ids = pd.to_numeric(pd.Series(info.index), errors="raise")
        if not np.all(np.asarray(ids) == np.round(np.asarray(ids, dtype=float))):
            raise ValueError
    except (ValueError, TypeError):
        bad = [i for i in info.index if not str(i).lstrip("-").isdigit()][:5]
        raise ValueError(f"{name}: ids must be integers; found {bad}.") from None
    info.index = pd.Index(np.asarray(ids, dtype=np.int64), name="id")
    if info.index.has_duplicates:
        dup = info.index[info.index.duplicated()].unique().tolist()[:10]
        raise ValueError(f"{name} lists id(s) {dup} more than once: one row per region.")

    hemi = info["hemisphere"].map(lambda v: _HEMI_ALIASES.get(str(v).strip().lower(), v))
    bad = sorted(set(map(str, hemi[~hemi.isin(HEMISPHERES)])))
    if bad:
        raise ValueError(f"{name} has invalid hemisphere value(s) {bad}: use one of "
                         f"{list(HEMISPHERES)} (left, right, bilateral).")
    # the values as the caller's column holds them (object, or pandas' string dtype)
    keep = info["hemisphere"].dtype if pd.api.types.is_string_dtype(info["hemisphere"]) \
        else object
    info["hemisphere"] = hemi.astype(keep)

    def _struct(v):
        key = " ".join(str(v).strip().lower().replace("_", " ").split())
        return _STRUCT_ALIASES.get(key.replace(" ", ""), _STRUCT_ALIASES.get(key, key))
    struct = info["structure"].map(_struct)
    bad = sorted(set(map(str, info["structure"][~struct.isin(STRUCTURES)])))
    if bad:
        raise ValueError(f"{name} has invalid structure value(s) {bad}: use one of "
                         f"{list(STRUCTURES)}.")
    keep = info["structure"].dtype if pd.api.types.is_string_dtype(info["structure"]) \
        else object
    info["structure"] = struct.astype(keep)

    if labels is not None:
        labels = np.asarray(labels)
        absent = np.setdiff1d(labels, info.index)
        if len(absent):
            shown = absent[:20].tolist()
            raise ValueError(f"{name} does not describe label(s) {shown}"
                             f"{' ...' if len(absent) > 20 else ''} of {where}: add a row "
                             f"(id, hemisphere, structure) for every label in the atlas.")
        extra = np.setdiff1d(info.index, labels)
        extra_real = extra[extra != 0]
        if len(extra_real):
            warnings.warn(f"{name} lists {len(extra_real)} id(s) absent from {where} "
                          f"({extra_real[:20].tolist()}{' ...' if len(extra_real) > 20 else ''}"
                          f"): ignored.", UserWarning, stacklevel=3)
        info = info.loc[np.isin(info.index, labels)]
    return info


def check_atlas(atlas, atlas_info=None, geometry=None, space=None, donor=None,
                data_dir=None) -> AtlasTree:
    """Check ``atlas`` and return it as an :class:`AtlasTree`.

    Parameters
    ----------
    atlas : path, niimg-like, (left, right) pair, dlabel CIFTI or AtlasTree
        A volume of integer labels (MNI152 for group atlases), a pair of GIFTI label files /
        GiftiImages / FreeSurfer ``.annot`` files / label arrays, or a ``.dlabel.nii``.
        ``.annot`` pairs are relabelled like :func:`relabel_gifti` (their ids always repeat
        across hemispheres); GIFTI pairs must not share ids.
    atlas_info : path or DataFrame, optional
        Region information (:func:`check_atlas_info`); for surfaces it replaces what the label
        tables give (hemisphere from the pair, structure 'cortex').
    geometry : (left, right) pair of surfaces, optional
        The mesh of a surface atlas; default: the bundled fsaverage5 pial surfaces (or, with
        ``donor=``, the donor's FreeSurfer ``?h.pial`` found under ``data_dir``).
    space : str, optional
        Space of ``geometry``: ``fsaverage*`` (moved to MNI152), ``fslr``, ``mni152`` or
        ``fsnative`` (moved to the donor's scanner space through ``mri/orig.mgz``).
    donor : str, optional
        The donor a donor-native atlas belongs to: samples are then matched with native
        coordinates (no MNI-space check, no moving to the atlas grid).
    data_dir : path, optional
        Folder holding donors' FreeSurfer reconstructions (``donor<N>/mri/orig.mgz``), for
        fsnative surfaces.
    """
    if isinstance(atlas, (AtlasTree, GrayordinateAtlas)):
        if atlas_info is not None:
            atlas.atlas_info = atlas_info
        return atlas
    if isinstance(atlas, Mapping):
        raise TypeError("check_atlas takes one atlas; for donor-native atlases (a dict of "
                        "donor -> atlas) use coerce_atlas_to_dict.")
    source = _describe(atlas)
    cifti = _is_nibabel(atlas, "Cifti2Image") or (
        _is_pathlike(atlas) and str(atlas).endswith((".dlabel.nii", ".dlabel.nii.gz")))
    if cifti:
        if geometry is None:
            raise ValueError(f"{source} is a CIFTI dlabel file: give its surfaces with "
                             f"geometry=(left, right) (e.g. the fsLR 32k midthickness "
                             f"surfaces).")
        lh, rh, table, volume = _load_cifti(atlas, source)
        tree, _ = _surface_tree(lh, rh, (table, table), geometry, space or "fslr", donor,
                                data_dir, source)
        if volume is not None:  # grayordinates: subcortical voxels too
            tree = GrayordinateAtlas(tree, _volume_tree(volume, table, source, donor),
                                     source=source)
    elif _is_pathlike(atlas) or _is_nibabel(atlas, "SpatialImage"):
        if _is_pathlike(atlas) and str(atlas).endswith((".gii", ".gii.gz", ".annot")):
            raise TypeError(f"{source} is one hemisphere: surface atlases are given as a "
                            f"(left, right) pair of files.")
        tree = AtlasTree(atlas, source=source, group_atlas=donor is None, space=space)
        if donor is None:
            _check_mni_volume(tree._shape, tree.affine, source)
    elif isinstance(atlas, (tuple, list)) and len(atlas) == 2:
        annot = all(_is_pathlike(a) and str(a).endswith(".annot") for a in atlas)
        if annot:
            lh_img, rh_img = relabel_gifti(tuple(annot_to_gifti(a) for a in atlas))
            parts = [_surface_labels(img, source) for img in (lh_img, rh_img)]
        else:
            parts = [_surface_labels(hemi, _describe(hemi)) for hemi in atlas]
        (lh, lt), (rh, rt) = parts
        lh, rh = _drop_shared_background(lh, rh, lt, rt)
        shared = np.intersect1d(lh[lh != 0], rh[rh != 0])
        if len(shared):
            raise ValueError(
                f"{source}: label id(s) {shared[:10].tolist()}{' ...' if len(shared) > 10 else ''}"
                f" appear in both hemispheres. Each region needs its own id: relabel them, e.g. "
                f"atlas = ahba_app.atlas.relabel_gifti(atlas), which numbers regions "
                f"consecutively across hemispheres.")
        tree, _ = _surface_tree(lh, rh, (lt, rt), geometry, space, donor, data_dir, source)
    elif isinstance(atlas, np.ndarray) and atlas.ndim == 1:
        if geometry is None:
            raise ValueError("A surface atlas given as one label array needs geometry=.")
        (lv, lf), (rv, rf) = load_geometry(geometry)
        n_left = len(lv)
        return check_atlas((atlas[:n_left], atlas[n_left:]), atlas_info, geometry, space,
                           donor, data_dir)
    else:
        raise TypeError(f"Cannot read {source} as an atlas: give a NIfTI volume, a "
                        f"(left, right) pair of GIFTI label or .annot files, a .dlabel.nii "
                        f"with geometry=, or an AtlasTree.")
    if atlas_info is not None:
        surface_info = tree.atlas_info
        tree.atlas_info = atlas_info
        if surface_info is not None:
            _check_surface_hemispheres(tree.atlas_info, surface_info, source)
    return tree


def _drop_shared_background(lh, rh, lt, rt):
    """Zero the labels that both hemispheres share and both label tables name as background
    (:data:`BACKGROUND`, e.g. TemplateFlow's ``Background+FreeSurfer_Defined_Medial_Wall``)."""
    shared = np.intersect1d(lh[lh != 0], rh[rh != 0])
    background = [lab for lab in shared.tolist()
                  if (lt or {}).get(lab) in BACKGROUND and (rt or {}).get(lab) in BACKGROUND]
    if background:
        lh = np.where(np.isin(lh, background), 0, lh)
        rh = np.where(np.isin(rh, background), 0, rh)
    return lh, rh


def _nested_fsaverage(labels, vertices, space, source):
    """Labels of a denser fsaverage mesh cut to a coarser one's vertices.

    FreeSurfer's fsaverage meshes are nested icosahedra: fsaverage6's 40,962 vertices are the
    first 40,962 of fsaverage's 163,842, and so on down, so a label file of a denser fsaverage
    holds the coarser mesh's labels in its first vertices. Anything else is returned unchanged
    (and the vertex-count check reports it).
    """
    icosahedral = {10 * 4 ** level + 2 for level in range(10)}.__contains__  # 12, 42, ...
    if space is None or not space_key(space, source).startswith("fsaverage"):
        return labels
    n_labels, n_vertices = len(labels), len(vertices)
    if n_labels > n_vertices and icosahedral(n_labels) and icosahedral(n_vertices):
        return labels[:n_vertices]
    return labels


def _check_surface_hemispheres(info, from_surface, source):
    """Error when atlas info puts a surface region in the other hemisphere."""
    both = info.index.intersection(from_surface.index)
    theirs = info.loc[both, "hemisphere"]
    ours = from_surface.loc[both, "hemisphere"]
    wrong = both[(ours != "B") & (theirs != "B") & (ours != theirs)]
    if len(wrong):
        raise ValueError(f"Atlas info puts region(s) {wrong[:10].tolist()} in a different "
                         f"hemisphere than the surface file they are in ({source}): fix the "
                         f"'hemisphere' column or swap the (left, right) order.")


def coerce_atlas_to_dict(atlas, donors, atlas_info=None, data_dir=None, geometry=None,
                         space=None):
    """``{donor: AtlasTree}`` for ``donors`` and whether the atlas is one group atlas.

    ``atlas`` is one atlas (shared by all donors, matched with MNI coordinates) or a dict of
    donor id (or uid) -> donor-native atlas (matched with native coordinates). ``geometry``
    may likewise be a dict of donor -> (left, right) surfaces.
    """
    from .datasets import check_donors

    donors = check_donors(donors)
    if not isinstance(atlas, Mapping):
        tree = check_atlas(atlas, atlas_info, geometry=geometry, space=space)
        tree.group_atlas = True
        return {donor: tree for donor in donors}, True
    by_donor = {check_donors(key)[0]: value for key, value in atlas.items()}
    missing = [d for d in donors if d not in by_donor]
    if missing:
        raise ValueError(f"The donor-native atlas has no entry for donor(s) {missing}: give "
                         f"one atlas per requested donor (keys {sorted(by_donor)}).")
    first = by_donor[donors[0]]
    # as in abagen: one AtlasTree shared by every donor is a group atlas; a dict of files
    # (even the same file for every donor) holds donor-native atlases
    if isinstance(first, AtlasTree) and all(by_donor[d] is first for d in donors):
        tree = check_atlas(first, atlas_info, geometry=geometry, space=space)
        tree.group_atlas = True
        return {donor: tree for donor in donors}, True
    out = {}
    for donor in donors:
        geom = geometry.get(donor) if isinstance(geometry, Mapping) else geometry
        out[donor] = check_atlas(by_donor[donor], atlas_info, geometry=geom,
                                 space=space if geom is not None else None, donor=donor,
                                 data_dir=data_dir)
        out[donor].group_atlas = False
    return out, False


# --------------------------------------------------------------------------------------------
# utilities with abagen's names
# --------------------------------------------------------------------------------------------
def leftify_atlas(atlas):
    """Zero every voxel at or right of x = 0 (RAS+) of a volumetric atlas.

    The voxel holding x = 0 is zeroed too. Returns an image of the same class, orientation and
    affine.
    """
    import nibabel as nib

    img = nib.load(str(_require_file(atlas))) if _is_pathlike(atlas) else atlas
    original = nib.io_orientation(img.affine)
    ras = img.as_reoriented(nib.orientations.ornt_transform(
        original, nib.orientations.axcodes2ornt("RAS")))
    origin = nib.affines.apply_affine(np.linalg.inv(ras.affine), [0.0, 0.0, 0.0])
    data = np.asarray(ras.dataobj).copy()
    data[min(max(int(np.floor(origin[0])), 0), data.shape[0]):] = 0
    out = ras.__class__(data, ras.affine, header=ras.header)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), original)
    return out.as_reoriented(back)


def annot_to_gifti(atlas) -> nib.GiftiImage:
    """A FreeSurfer ``.annot`` file as an in-memory GIFTI label image.

    Labels are the annotation's colour-table indices; unlabelled vertices (-1) become 0 (when
    index 0 names a real, used region, every id is shifted up by one to keep 0 for them).
    """
    import nibabel as nib

    labels, ctab, names = nib.freesurfer.read_annot(str(_require_file(atlas)))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    labels = np.asarray(labels, dtype=np.int32)
    shift = 0
    if np.any(labels < 0):
        if np.any(labels == 0) and names and names[0] not in BACKGROUND:
            shift = 1
        labels = np.where(labels < 0, -shift, labels) + shift
    table = nib.gifti.GiftiLabelTable()
    if shift:
        background = nib.gifti.GiftiLabel(0, 0.0, 0.0, 0.0, 0.0)
        background.label = "???"
        table.labels.append(background)
    for key, name in enumerate(names):
        r, g, b = (ctab[key, :3] / 255.0).tolist()
        entry = nib.gifti.GiftiLabel(key + shift, r, g, b, 1.0 if key + shift else 0.0)
        entry.label = name
        table.labels.append(entry)
    array = nib.gifti.GiftiDataArray(labels, intent="NIFTI_INTENT_LABEL",
                                     datatype="NIFTI_TYPE_INT32")
    return nib.GiftiImage(darrays=[array], labeltable=table)


def relabel_gifti(atlas, background=BACKGROUND, offset=None):
    """Renumber a (left, right) pair of GIFTI label images consecutively across hemispheres.

    Regions named in ``background`` become 0; the others get 1..N (left) then N+1.. (right),
    keeping their order. ``offset`` sets the first right-hemisphere id instead. Label tables
    are renumbered alike. Returns a pair of GiftiImages.
    """
    import nibabel as nib

    out = []
    next_id = 1
    for n, hemi in enumerate(atlas):
        img = _read_gifti(hemi)
        data = _integer_labels(np.squeeze(img.darrays[0].data), _describe(hemi))
        table = img.labeltable.get_labels_as_dict() if img.labeltable is not None else {}
        colours = {lab.key: lab.rgba for lab in (img.labeltable.labels if img.labeltable
                                                 else [])}
        drop = [key for key, name in table.items() if background and name in background]
        data = np.where(np.isin(data, drop), 0, data)
        present = np.unique(data[data != 0])
        if n == 1 and offset is not None:
            next_id = int(offset)
        new_ids = np.arange(next_id, next_id + len(present))
        mapping = dict(zip(present.tolist(), new_ids.tolist()))
        relabelled = np.zeros_like(data)
        if len(present):
            relabelled[data != 0] = new_ids[np.searchsorted(present, data[data != 0])]
        next_id += len(present)
        new_table = nib.gifti.GiftiLabelTable()
        zero = nib.gifti.GiftiLabel(0, 0.0, 0.0, 0.0, 0.0)
        zero.label = next((table[k] for k in sorted(table) if k in drop or k == 0), "???")
        new_table.labels.append(zero)
        for old, new in mapping.items():
            rgba = colours.get(old) or (0.0, 0.0, 0.0, 1.0)
            entry = nib.gifti.GiftiLabel(new, *[0.0 if c is None else c for c in rgba])
            entry.label = table.get(old, str(old))
            new_table.labels.append(entry)
        array = nib.gifti.GiftiDataArray(relabelled.astype(np.int32),
                                         intent="NIFTI_INTENT_LABEL",
                                         datatype="NIFTI_TYPE_INT32")
        out.append(nib.GiftiImage(darrays=[array], labeltable=new_table))
    return tuple(out)


def native_affines(atlases: Mapping, group_atlas: bool, data_dir=None) -> dict:
    """Donor -> affine taking the donor's MRI voxels to its donor-native atlas's space.

    As in abagen, the donor's raw T1w scan (``mri/mri_donor<N>/T1.nii.gz`` in the data folder,
    fetched beforehand by :func:`ahba_app.fetch.fetch_raw_mri`; never downloaded here) gives
    it; without that file, the atlas's own ``native_affine`` (the bundled donor-native volumes
    lie on their donor's T1w grid). Empty for a group atlas. Each tree's ``native_affine``
    becomes the one found, so that matching uses it too.
    """
    if group_atlas:
        return {}
    import logging

    import nibabel as nib

    from .fetch import AHBADataNotFoundError, find_raw_mri

    out = {}
    for donor, tree in atlases.items():
        try:
            t1w = find_raw_mri(data_dir, donor)[donor]["t1w"]
        except AHBADataNotFoundError:
            logging.getLogger("ahba_app").info(
                "No raw T1w of donor %s in the data folder: its donor-native atlas's own "
                "affine maps the samples' MRI voxels.", donor)
            out[donor] = tree.native_affine
            continue
        out[donor] = nib.load(t1w).affine
        tree.native_affine = out[donor]
    return out
