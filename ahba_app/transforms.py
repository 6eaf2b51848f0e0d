"""Coordinate conversions between voxel indices and world (mm) coordinates, under abagen's
``transforms`` names."""

from __future__ import annotations

import nibabel as nib
import numpy as np

__all__ = ["ijk_to_xyz", "xyz_to_ijk"]


def ijk_to_xyz(coords, affine) -> np.ndarray:
    """World coordinates (N, 3) of voxel indices ``coords`` under ``affine``."""
    return nib.affines.apply_affine(np.asarray(affine), np.atleast_2d(coords))


def xyz_to_ijk(coords, affine, floor: bool = True) -> np.ndarray:
    """Voxel indices (N, 3) of world coordinates ``coords``: rounded down to int unless
    ``floor=False``."""
    ijk = nib.affines.apply_affine(np.linalg.inv(np.asarray(affine)), np.atleast_2d(coords))
    return np.floor(ijk).astype(int) if floor else ijk
