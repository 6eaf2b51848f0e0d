"""abagen's ``images`` module: checking and converting atlas images.

The atlas machinery lives in :mod:`ahba_app.atlas`; this module adds abagen's three lower-level
checks (:func:`check_img`, :func:`check_surface`, :func:`check_geometry`) on top of it.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np

from .atlas import (BACKGROUND, AtlasTree, _describe, _integer_labels, _surface_info,
                    _surface_labels, _to_mni, annot_to_gifti, check_atlas, check_atlas_info,
                    coerce_atlas_to_dict, leftify_atlas, load_geometry, relabel_gifti)

__all__ = ["BACKGROUND", "AtlasTree", "annot_to_gifti", "check_atlas", "check_atlas_info",
           "check_geometry", "check_img", "check_surface", "coerce_atlas_to_dict",
           "leftify_atlas", "relabel_gifti"]


def check_img(img) -> nib.spatialimages.SpatialImage:
    """A 3-D volume of int32 labels from a file name or a loaded image.

    Raises TypeError when ``img`` is neither an existing file nor a loaded image, ValueError
    when it is not 3-D or holds values that are not integers.
    """
    if isinstance(img, (str, os.PathLike)) and os.path.isfile(img):
        img = nib.load(os.fspath(img))
    elif not isinstance(img, nib.spatialimages.SpatialImage):
        raise TypeError(f"{_describe(img)} is neither an existing image file nor a loaded "
                        f"image (nibabel SpatialImage).")
    if len(img.shape) != 3:
        raise ValueError(f"{_describe(img)} has shape {img.shape}: an atlas must be one 3-D "
                         f"volume.")
    if img.get_data_dtype() == np.int32:
        return img
    data = _integer_labels(np.asarray(img.dataobj), _describe(img)).astype(np.int32)
    out = img.__class__(data, img.affine, header=img.header)
    out.set_data_dtype(np.int32)
    return out


def check_surface(atlas):
    """Labels and region table of a (left, right) pair of GIFTI label files.

    Returns ``(labels, info)``: the two hemispheres' labels end to end, and a table indexed by
    ``id`` with ``label`` (from the files' label tables), ``hemisphere`` and ``structure``
    (``'cortex'``). Anything that is not a pair (e.g. an array of labels) is returned as it is,
    with ``info`` None. A single file name, or files that are not GIFTI, raise TypeError.
    """
    if isinstance(atlas, (str, os.PathLike)):
        raise TypeError(f"{atlas} is one file: give the (left, right) pair of GIFTI label files.")
    if len(atlas) != 2:
        return atlas, None
    for hemi in atlas:
        if not isinstance(hemi, nib.GiftiImage) and not str(hemi).endswith((".gii", ".gii.gz")):
            raise TypeError(f"{_describe(hemi)} is not a GIFTI label file (.label.gii[.gz]).")
    (lh, lt), (rh, rt) = (_surface_labels(hemi, _describe(hemi)) for hemi in atlas)
    shared = np.intersect1d(lh[lh != 0], rh[rh != 0])
    if shared.size:
        raise ValueError(f"{_describe(atlas)}: both hemispheres use region ids "
                         f"{shared[:5].tolist()}: relabel them first with "
                         f"relabel_gifti(atlas) (ids must be unique across hemispheres).")
    return np.concatenate([lh, rh]), _surface_info((lt, rt), ("L", "R"), (lh, rh))


_SPACES = ("fsaverage", "fsnative", "fslr")


def check_geometry(surface, space, donor=None, data_dir=None):
    """MNI152 vertex coordinates and triangles of a (left, right) pair of surfaces.

    ``space`` is ``'fsaverage'`` (any density: moved to MNI152), ``'fslr'`` (taken as MNI152)
    or ``'fsnative'`` (moved to the donor's scanner space through its FreeSurfer ``orig.mgz``;
    needs ``donor``). Returns ``(coords, triangles)``, the right hemisphere's vertices after
    the left's.
    """
    if isinstance(surface, (str, os.PathLike)) or len(surface) != 2:
        raise TypeError(f"{_describe(surface)}: give a (left, right) pair of surfaces.")
    key = "fsaverage" if str(space).startswith("fsaverage") else space
    if key not in _SPACES:
        raise ValueError(f"Unknown surface space {space!r}: choose one of {_SPACES} (any "
                         f"fsaverage density).")
    if key == "fsnative" and donor is None:
        raise ValueError("space='fsnative' needs donor= (whose FreeSurfer reconstruction the "
                         "surfaces come from).")
    (lv, lf), (rv, rf) = load_geometry(surface)
    coords = np.vstack([_to_mni(v, key, donor, data_dir, "geometry") for v in (lv, rv)])
    return coords, np.vstack([lf, rf + len(lv)])
