"""A fine volumetric parcellation for benchmarks: every Desikan-Killiany region cut into parts.

    python benchmarks/fine_atlas.py OUT_DIR [--regions 1000]

Each region of the bundled Desikan-Killiany volume (83 regions, 1 mm MNI) is split by k-means
on its voxels' coordinates into a number of parts proportional to its size (at least one),
about ``--regions`` in all. Everything is deterministic (farthest-point starting centres, a
fixed number of Lloyd iterations, ties to the lowest centre), so the same atlas is made on every
machine. Writes ``OUT_DIR/atlas-fine<N>.nii.gz`` (int16 labels 1..N) and ``atlas-fine<N>.csv``
(``id,label,hemisphere,structure``, each part inheriting its region's hemisphere and structure,
abagen's atlas-info format), and returns their paths.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

ITERATIONS = 25


def _farthest_points(points: np.ndarray, k: int) -> np.ndarray:
    """k starting centres: the point nearest the mean, then each time the farthest point from
    the centres chosen so far (the first such point on ties)."""
    first = int(np.argmin(((points - points.mean(axis=0)) ** 2).sum(axis=1)))
    chosen = [first]
    nearest = ((points - points[first]) ** 2).sum(axis=1)
    for _ in range(1, k):
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, ((points - points[nxt]) ** 2).sum(axis=1))
    return points[chosen].astype(np.float64)


def _kmeans(points: np.ndarray, k: int) -> np.ndarray:
    """Cluster of every point (0..k-1), numbered in order of first appearance."""
    if k <= 1:
        return np.zeros(len(points), dtype=np.int64)
    points = points.astype(np.float64)
    centres = _farthest_points(points, k)
    for _ in range(ITERATIONS):
        dist = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        assign = np.argmin(dist, axis=1)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, points)
        sizes = np.bincount(assign, minlength=k)
        keep = sizes > 0
        centres[keep] = sums[keep] / sizes[keep, None]
    _, first = np.unique(assign, return_index=True)
    relabel = np.empty(k, dtype=np.int64)
    relabel[assign[np.sort(first)]] = np.arange(len(first))
    return relabel[assign]


def make_fine_atlas(out_dir, n_regions: int = 1000) -> tuple[Path, Path]:
    """Write the fine atlas and its info table into ``out_dir`` (once); return their paths."""
    import ahba_app

    out_dir = Path(out_dir)
    image_path = out_dir / f"atlas-fine{n_regions}.nii.gz"
    info_path = out_dir / f"atlas-fine{n_regions}.csv"
    if image_path.exists() and info_path.exists():
        return image_path, info_path
    dk = ahba_app.fetch_desikan_killiany()
    img = nib.load(dk["image"])
    labels = np.asarray(img.dataobj).astype(np.int64)
    info = pd.read_csv(dk["info"]).set_index("id")
    ids = np.array(sorted(int(v) for v in np.unique(labels) if v != 0))
    sizes = np.array([(labels == i).sum() for i in ids])
    parts = np.maximum(1, np.round(sizes / sizes.sum() * n_regions)).astype(int)
    fine = np.zeros(labels.shape, dtype=np.int16)
    rows, next_id = [], 1
    for region, k in zip(ids, parts):
        ijk = np.argwhere(labels == region)  # C order: deterministic
        cluster = _kmeans(ijk, int(k))
        for c in range(cluster.max() + 1):
            where = ijk[cluster == c]
            fine[tuple(where.T)] = next_id
            rows.append({"id": next_id, "label": f"{info.loc[region, 'label']}_{c + 1}",
                         "hemisphere": info.loc[region, "hemisphere"],
                         "structure": info.loc[region, "structure"]})
            next_id += 1
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_image = image_path.with_name(f".{image_path.name}.{os.getpid()}.tmp.nii.gz")
    tmp_info = info_path.with_name(f".{info_path.name}.{os.getpid()}.tmp")
    nib.save(nib.Nifti1Image(fine, img.affine), tmp_image)
    pd.DataFrame(rows).to_csv(tmp_info, index=False)
    os.replace(tmp_info, info_path)
    os.replace(tmp_image, image_path)
    return image_path, info_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--regions", type=int, default=1000)
    args = parser.parse_args(argv)
    image, info = make_fine_atlas(args.out_dir, args.regions)
    print(f"{image}\n{info} ({len(pd.read_csv(info))} regions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
