"""CIFTI grayordinates: cortex on the surface, subcortex in the volume, one atlas.

A ``dlabel.nii`` in the HCP layout (91k grayordinates) holds cortical vertices of both
hemispheres and subcortical voxels (thalamus, caudate, ..., cerebellum, brainstem) in one label
map. :func:`ahba_app.atlas.check_atlas` loads it as a :class:`GrayordinateAtlas`: an
:class:`~ahba_app.atlas.AtlasTree` of the surfaces and one of the voxels. Cortical samples are
matched on the surface and the others in the volume, each exactly as that part alone would
match them, so a run with the CIFTI atlas gives the table that a run with the surface pair and a
run with the subcortical volume give when their rows are put together (with the same samples
normalized, i.e. ``norm_matched=False``, and the same donors and genes). Filling empty regions
(``missing=``) works part by part too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .geometry import sample_frame
from .options import DEFAULTS

__all__ = ["CiftiVolume", "GrayordinateAtlas", "structure_of"]


def structure_of(cifti_name: str) -> tuple[str, str]:
    """(hemisphere, structure class) of a CIFTI brain structure name, e.g.
    ``CIFTI_STRUCTURE_THALAMUS_LEFT`` -> ('L', 'subcortex/brainstem')."""
    name = cifti_name.upper()
    hemi = "L" if name.endswith("_LEFT") else "R" if name.endswith("_RIGHT") else "B"
    if "CORTEX" in name and "CEREBELL" not in name:
        return hemi, "cortex"
    if "CEREBELL" in name:
        return hemi, "cerebellum"
    return hemi, "subcortex/brainstem"


@dataclass
class CiftiVolume:
    """The voxel part of a dlabel CIFTI: a label volume and the structure of each label."""

    labels: np.ndarray  # (I, J, K) int64
    affine: np.ndarray
    structures: dict  # label -> CIFTI structure name

    @classmethod
    def from_models(cls, voxels, shape, affine) -> "CiftiVolume":
        """From ``[(structure name, (N, 3) voxel indices, N labels), ...]``."""
        volume = np.zeros(tuple(shape), dtype=np.int64)
        structures: dict = {}
        for name, ijk, values in voxels:
            ijk = np.asarray(ijk, dtype=np.int64)
            volume[tuple(ijk.T)] = values
            for label in np.unique(values[values != 0]).tolist():
                structures.setdefault(int(label), set()).add(str(name))
        return cls(volume, np.asarray(affine, dtype=float), structures)


class GrayordinateAtlas:
    """A surface :class:`~ahba_app.atlas.AtlasTree` and a volume one, used as one atlas.

    ``parts`` is ``(surface, volume)``; their labels must differ. Samples of structure
    'cortex' are matched on the surface, the others in the volume (without a structure column
    a sample takes its volume label, else its surface one).
    """

    volumetric = False
    triangles = None
    graph = None

    def __init__(self, surface, volume, source: str | None = None, space: str = "fslr"):
        shared = np.intersect1d(surface.labels, volume.labels)
        if len(shared):
            raise ValueError(f"{source}: label(s) {shared[:10].tolist()} are used both on the "
                             "cortical surface and by subcortical voxels: each region needs its "
                             "own label.")
        self.parts = (surface, volume)
        self.source = source or surface.source
        self.space = space
        self._group_atlas = surface.group_atlas

    def __repr__(self):
        surface, volume = self.parts
        return (f"{type(self).__name__}[n_rois={len(self.labels)}, "
                f"n_vertex={len(surface.atlas)}, n_voxel={len(volume.atlas)}]")

    @property
    def group_atlas(self) -> bool:
        return self._group_atlas

    @group_atlas.setter
    def group_atlas(self, value: bool) -> None:
        self._group_atlas = bool(value)
        for part in self.parts:
            part.group_atlas = bool(value)

    @property
    def native_affine(self):
        return None

    @property
    def labels(self) -> np.ndarray:
        return np.union1d(self.parts[0].labels, self.parts[1].labels)

    @property
    def centroids(self) -> dict:
        return {**self.parts[0].centroids, **self.parts[1].centroids}

    @property
    def affine(self):
        return None

    def label_volume(self):
        return None

    @property
    def atlas_info(self):
        infos = [part.atlas_info for part in self.parts]
        if any(info is None for info in infos):
            return None
        return pd.concat(infos).sort_index()

    @atlas_info.setter
    def atlas_info(self, info) -> None:
        if info is None:
            for part in self.parts:
                part.atlas_info = None
            return
        # checked once against every label (the parts' own check, given all labels), then
        # each part takes its rows
        checked = self.parts[0].check_info(info, self.labels, source=self.source)
        for part in self.parts:
            part.atlas_info = checked.loc[part.labels]

    def _split(self, frame: pd.DataFrame) -> np.ndarray:
        """Whether each sample is cortical (None when the frame has no structure)."""
        if "structure" not in frame.columns:
            return None
        return np.asarray(frame["structure"] == "cortex")

    def label_samples(self, annotation, tolerance: float = DEFAULTS["tolerance"]
                      ) -> pd.DataFrame:
        """Region of every sample: cortical ones on the surface, the others in the volume."""
        frame = sample_frame(annotation, copy=False)
        surface, volume = self.parts
        cortex = self._split(frame)
        labels = np.zeros(len(frame), dtype=np.int64)
        if cortex is None:
            in_volume = np.asarray(volume.label_samples(frame, tolerance)["label"])
            on_surface = np.asarray(surface.label_samples(frame, tolerance)["label"])
            labels = np.where(in_volume != 0, in_volume, on_surface)
        else:
            for part, rows in ((surface, np.flatnonzero(cortex)),
                               (volume, np.flatnonzero(~cortex))):
                if len(rows):
                    labels[rows] = np.asarray(part.label_samples(frame.iloc[rows],
                                                                 tolerance)["label"])
        return pd.DataFrame({"label": labels.astype(int)}, index=frame.index)
