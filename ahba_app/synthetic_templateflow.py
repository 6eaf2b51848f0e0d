"""A small synthetic TemplateFlow home, in TemplateFlow's layout, for tests and examples.

``generate(out_dir)`` writes a folder that ``TEMPLATEFLOW_HOME`` can point at::

    tpl-MNI152NLin6Asym/  res-01 and res-02 Schaefer2018-like volumes (desc-400Parcels7Networks)
                          with the template's dseg.tsv (index, name, color)
    tpl-fsaverage/        Schaefer2018-like label GIFTIs at den-164k (seg-7n, scale-400, colour
                          indices as keys, the medial wall in both hemispheres) with their
                          dseg.tsv (index, hemi, name, color), and pial surfaces at den-3k, 10k,
                          41k and 164k
    tpl-fsLR/             midthickness surfaces at den-32k

Nothing here is a real template. The volumes cut the cortex of the bundled Desikan-Killiany
atlas into 400 parcels by nearest seed; the fsaverage meshes are the bundled fsaverage5 pial
surfaces (den-10k), made coarser (den-3k: its first 2,562 vertices, as FreeSurfer's icosahedra
are nested) and finer by midpoint subdivision (den-41k, den-164k: new vertices appended, so the
nesting holds as it does for the real meshes); the fsLR "32k" surface is fsaverage5 subdivided
once (40,962 vertices, not fsLR's 32,492). ``write_cifti_atlas`` makes a CIFTI dlabel on that
fsLR mesh with subcortical voxels (the HCP grayordinates layout) for input folders.

Command line: ``python -m ahba_app.synthetic_templateflow OUT_DIR [--cifti-input IN_DIR]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

#: TemplateFlow's MNI152NLin6Asym grids (res index -> shape, affine).
MNI_GRIDS = {
    1: ((182, 218, 182), np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])),
    2: ((91, 109, 91), np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])),
}
#: fsaverage density -> subdivision steps from fsaverage5 (negative: coarser).
FSAVERAGE_DENSITIES = {"3k": -1, "10k": 0, "41k": 1, "164k": 2}
MEDIAL_WALL = (65793, "Background+FreeSurfer_Defined_Medial_Wall")
N_PARCELS = 400


# ---------------------------------------------------------------------------------------------
# meshes
# ---------------------------------------------------------------------------------------------
def subdivide(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One midpoint subdivision: each triangle becomes four; the new vertices (edge midpoints)
    are appended after the old ones, so the old mesh is a prefix of the new one."""
    faces = np.asarray(faces, dtype=np.int64)
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    unique, inverse = np.unique(edges, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    mid = len(vertices) + inverse.reshape(3, -1).T  # midpoints of edges (01, 12, 20) per face
    new_vertices = np.vstack([vertices, (vertices[unique[:, 0]] + vertices[unique[:, 1]]) / 2])
    a, b, c = faces.T
    ab, bc, ca = mid.T
    new_faces = np.concatenate([np.column_stack(x) for x in
                                ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
    return new_vertices.astype(np.float32), new_faces.astype(np.int32)


def coarsen(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mesh one subdivision coarser, for nested icosahedral meshes (fsaverage*): its
    vertices are the first (N + 6) / 4; each new vertex's two old neighbours are the ends of
    the edge it split, which gives back the coarse triangles."""
    faces = np.asarray(faces, dtype=np.int64)
    n = (len(vertices) + 6) // 4
    parents: dict = {}
    for i in range(3):
        for j in range(3):
            if i != j:
                pick = (faces[:, i] >= n) & (faces[:, j] < n)
                for new, old in zip(faces[pick, i].tolist(), faces[pick, j].tolist()):
                    parents.setdefault(new, set()).add(old)
    coarse = []
    for face in faces[(faces < n).sum(axis=1) == 1]:
        k = int(np.flatnonzero(face < n)[0])
        corner, a, b = int(face[k]), int(face[(k + 1) % 3]), int(face[(k + 2) % 3])
        coarse.append((corner, next(iter(parents[a] - {corner})),
                       next(iter(parents[b] - {corner}))))
    coarse = np.asarray(coarse, dtype=np.int32)
    _, first = np.unique(np.sort(coarse, axis=1), axis=0, return_index=True)
    return np.asarray(vertices[:n], dtype=np.float32), coarse[np.sort(first)]


def _fsaverage5() -> list[tuple[np.ndarray, np.ndarray]]:
    from .atlas import load_geometry
    from .datasets import fetch_fsaverage5

    return [(np.asarray(v, dtype=np.float32), np.asarray(f, dtype=np.int32))
            for v, f in load_geometry(tuple(fetch_fsaverage5(load=True)))]


def mesh(density: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The synthetic fsaverage (left, right) meshes at a TemplateFlow density."""
    steps = FSAVERAGE_DENSITIES[density]
    out = []
    for vertices, faces in _fsaverage5():
        if steps < 0:
            vertices, faces = coarsen(vertices, faces)
        for _ in range(max(steps, 0)):
            vertices, faces = subdivide(vertices, faces)
        out.append((vertices, faces))
    return out


def write_surface(path: Path, vertices, faces) -> None:
    img = nib.GiftiImage(darrays=[
        nib.gifti.GiftiDataArray(np.asarray(vertices, dtype=np.float32),
                                 intent="NIFTI_INTENT_POINTSET", datatype="NIFTI_TYPE_FLOAT32"),
        nib.gifti.GiftiDataArray(np.asarray(faces, dtype=np.int32),
                                 intent="NIFTI_INTENT_TRIANGLE", datatype="NIFTI_TYPE_INT32")])
    nib.save(img, str(path))


def write_label_gifti(path: Path, labels: np.ndarray, names: dict) -> None:
    table = nib.gifti.GiftiLabelTable()
    for key, name in names.items():
        entry = nib.gifti.GiftiLabel(int(key), 0.5, 0.5, 0.5, 1.0)
        entry.label = name
        table.labels.append(entry)
    array = nib.gifti.GiftiDataArray(np.asarray(labels, dtype=np.int32),
                                     intent="NIFTI_INTENT_LABEL", datatype="NIFTI_TYPE_INT32")
    nib.save(nib.GiftiImage(darrays=[array], labeltable=table), str(path))


# ---------------------------------------------------------------------------------------------
# parcels
# ---------------------------------------------------------------------------------------------
def _parcels(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """0..n-1: the nearest of n seeds drawn among ``points``."""
    seeds = points[rng.choice(len(points), size=n, replace=False)]
    return cKDTree(seeds).query(points, k=1)[1]


def _dk_on_grid(shape, affine) -> np.ndarray:
    """The bundled Desikan-Killiany labels on a TemplateFlow MNI grid (nearest voxel)."""
    from .datasets import fetch_desikan_killiany

    img = nib.load(str(fetch_desikan_killiany()["image"]))
    data = np.asarray(img.dataobj)
    ijk = np.indices(shape).reshape(3, -1).T
    src = np.rint(nib.affines.apply_affine(np.linalg.inv(img.affine) @ affine, ijk)).astype(int)
    inside = np.all((src >= 0) & (src < np.array(data.shape)), axis=1)
    out = np.zeros(len(ijk), dtype=np.int64)
    out[inside] = data[tuple(src[inside].T)]
    return out.reshape(shape)


def _cortex_volume(shape, affine, seed: int) -> np.ndarray:
    """400 parcels over the cortex of the DK atlas: 1-200 left, 201-400 right (Schaefer's order)."""
    dk = _dk_on_grid(shape, affine)
    left, right = (dk >= 1) & (dk <= 34), (dk >= 42) & (dk <= 75)
    out = np.zeros(shape, dtype=np.int16)
    rng = np.random.default_rng(seed)
    for mask, offset in ((left, 0), (right, N_PARCELS // 2)):
        ijk = np.argwhere(mask)
        world = nib.affines.apply_affine(affine, ijk)
        out[tuple(ijk.T)] = offset + 1 + _parcels(world, N_PARCELS // 2, rng)
    return out


def _parcel_names(hemi: str) -> list[str]:
    return [f"7Networks_{hemi}H_Synthetic_{k + 1}" for k in range(N_PARCELS // 2)]


# ---------------------------------------------------------------------------------------------
# the home
# ---------------------------------------------------------------------------------------------
def _description(folder: Path, identifier: str, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "template_description.json").write_text(json.dumps({
        "Identifier": identifier, "Name": f"{name} (SYNTHETIC: made by ahba-app's tests, not "
        "the real template)", "Authors": ["ahba-app"], "License": "CC0"}, indent=2))


def write_mni(home: Path, resolutions=(1, 2), seed: int = 0) -> None:
    folder = home / "tpl-MNI152NLin6Asym"
    _description(folder, "MNI152NLin6Asym", "MNI152NLin6Asym")
    stem = "tpl-MNI152NLin6Asym"
    for res in resolutions:
        shape, affine = MNI_GRIDS[res]
        img = nib.Nifti1Image(_cortex_volume(shape, affine, seed), affine)
        img.set_data_dtype(np.int16)
        nib.save(img, str(folder / f"{stem}_res-{res:02d}_atlas-Schaefer2018_desc-"
                                    f"400Parcels7Networks_dseg.nii.gz"))
    names = _parcel_names("L") + _parcel_names("R")
    pd.DataFrame({"index": np.arange(1, N_PARCELS + 1), "name": names,
                  "color": ["#781180"] * N_PARCELS}).to_csv(
        folder / f"{stem}_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.tsv", sep="\t",
        index=False)


def colour_key(hemi: str, k: int) -> int:
    """A TemplateFlow-style label key (an RGB colour as an integer), distinct per hemisphere."""
    return (100 + k) * 65536 + (17 if hemi == "L" else 18) * 256 + 128


def write_fsaverage(home: Path, seed: int = 0) -> None:
    folder = home / "tpl-fsaverage"
    _description(folder, "fsaverage", "fsaverage")
    for den in FSAVERAGE_DENSITIES:
        for hemi, (vertices, faces) in zip("LR", mesh(den)):
            write_surface(folder / f"tpl-fsaverage_hemi-{hemi}_den-{den}_pial.surf.gii",
                          vertices, faces)
    rng = np.random.default_rng(seed)
    rows = []
    for hemi, (vertices, _) in zip("LR", mesh("164k")):
        parcel = _parcels(vertices, N_PARCELS // 2, rng)
        keys = np.asarray([colour_key(hemi, k) for k in range(N_PARCELS // 2)])
        labels = keys[parcel]
        # the medial wall: the vertices nearest the midline, as in the real files
        x = np.abs(vertices[:, 0])
        labels[x < np.quantile(x, 0.08)] = MEDIAL_WALL[0]
        names = dict([MEDIAL_WALL] + list(zip(keys.tolist(), _parcel_names(hemi))))
        write_label_gifti(folder / f"tpl-fsaverage_hemi-{hemi}_den-164k_atlas-Schaefer2018_"
                                   f"seg-7n_scale-400_dseg.label.gii", labels, names)
        rows += [(key, hemi, name, "#781180ff") for key, name in names.items()]
    pd.DataFrame(rows, columns=["index", "hemi", "name", "color"]).to_csv(
        folder / "tpl-fsaverage_atlas-Schaefer2018_seg-7n_scale-400_dseg.tsv", sep="\t",
        index=False)


def fslr_mesh() -> list[tuple[np.ndarray, np.ndarray]]:
    return [subdivide(v, f) for v, f in _fsaverage5()]


def write_fslr(home: Path) -> None:
    folder = home / "tpl-fsLR"
    _description(folder, "fsLR", "fsLR")
    for hemi, (vertices, faces) in zip("LR", fslr_mesh()):
        write_surface(folder / f"tpl-fsLR_den-32k_hemi-{hemi}_midthickness.surf.gii",
                      vertices, faces)


def generate(out_dir, seed: int = 0, resolutions=(1, 2)) -> Path:
    """Write the synthetic TemplateFlow home into ``out_dir`` (created); returns it."""
    home = Path(out_dir)
    home.mkdir(parents=True, exist_ok=True)
    write_mni(home, resolutions=resolutions, seed=seed)
    write_fsaverage(home, seed=seed)
    write_fslr(home)
    return home


# ---------------------------------------------------------------------------------------------
# a CIFTI grayordinates atlas (cortex on the fsLR mesh, subcortex in the volume)
# ---------------------------------------------------------------------------------------------
#: DK subcortical labels -> CIFTI structure.
SUBCORTEX = {35: "THALAMUS_LEFT", 36: "CAUDATE_LEFT", 37: "PUTAMEN_LEFT", 38: "PALLIDUM_LEFT",
             39: "HIPPOCAMPUS_LEFT", 40: "AMYGDALA_LEFT", 41: "ACCUMBENS_LEFT",
             76: "THALAMUS_RIGHT", 77: "CAUDATE_RIGHT", 78: "PUTAMEN_RIGHT",
             79: "PALLIDUM_RIGHT", 80: "HIPPOCAMPUS_RIGHT", 81: "AMYGDALA_RIGHT",
             82: "ACCUMBENS_RIGHT", 83: "BRAIN_STEM"}


def cifti_parts(seed: int = 0, n_cortex: int = 180):
    """The pieces of a synthetic HCP-style grayordinates atlas on the fsLR mesh.

    Returns ``(surface, volume, names)``: per hemisphere (labels per vertex, 0 on the medial
    wall), the subcortical label volume (2 mm MNI152NLin6Asym grid: DK's subcortical
    structures, relabelled after the cortex) and ``{label: (name, hemisphere, structure)}``.
    Cortical labels are 1..n_cortex (left) and n_cortex+1..2*n_cortex (right).
    """
    rng = np.random.default_rng(seed)
    surface, names = [], {}
    for h, (hemi, (vertices, _)) in enumerate(zip("LR", fslr_mesh())):
        labels = 1 + h * n_cortex + _parcels(vertices, n_cortex, rng)
        x = np.abs(vertices[:, 0])
        labels[x < np.quantile(x, 0.08)] = 0
        surface.append(labels.astype(np.int32))
        for k in range(n_cortex):
            names[1 + h * n_cortex + k] = (f"{hemi}_Synthetic{k + 1}_ROI", hemi, "cortex")
    shape, affine = MNI_GRIDS[2]
    dk = _dk_on_grid(shape, affine)
    volume = np.zeros(shape, dtype=np.int32)
    for n, (dk_label, structure) in enumerate(SUBCORTEX.items()):
        label = 2 * n_cortex + 1 + n
        volume[dk == dk_label] = label
        hemi = "L" if structure.endswith("LEFT") else "R" if structure.endswith("RIGHT") else "B"
        names[label] = (structure, hemi, "subcortex/brainstem")
    return surface, (volume, affine), names


def write_cifti_atlas(path, seed: int = 0) -> Path:
    """A dlabel CIFTI with cortical surface models (fsLR mesh) and subcortical voxel models."""
    (lh, rh), (volume, affine), names = cifti_parts(seed)
    models = None
    data = []
    for hemi, labels in (("CIFTI_STRUCTURE_CORTEX_LEFT", lh), ("CIFTI_STRUCTURE_CORTEX_RIGHT", rh)):
        keep = np.flatnonzero(labels)
        axis = nib.cifti2.BrainModelAxis.from_mask(labels != 0, name=hemi)
        models = axis if models is None else models + axis
        data.append(labels[keep])
    for structure in SUBCORTEX.values():
        label = [k for k, v in names.items() if v[0] == structure][0]
        mask = volume == label
        if not mask.any():
            continue
        models = models + nib.cifti2.BrainModelAxis.from_mask(
            mask, name=f"CIFTI_STRUCTURE_{structure}", affine=affine)
        data.append(volume[mask])
    table = {0: ("???", (0.0, 0.0, 0.0, 0.0))}
    table.update({k: (v[0], (0.5, 0.5, 0.5, 1.0)) for k, v in names.items()})
    labels_axis = nib.cifti2.LabelAxis(["parcels"], [table])
    img = nib.Cifti2Image(np.concatenate(data)[None, :].astype(np.int32),
                          header=(labels_axis, models))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_region_table(path, seed: int = 0) -> Path:
    """The BIDS region table (index, name, hemisphere, structure) of the CIFTI atlas."""
    _, _, names = cifti_parts(seed)
    pd.DataFrame([(k, *v) for k, v in sorted(names.items())],
                 columns=["index", "name", "hemisphere", "structure"]).to_csv(
        path, sep="\t", index=False)
    return Path(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ahba_app.synthetic_templateflow",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write the TemplateFlow home into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cifti-input", metavar="DIR",
                        help="also write a BIDS atlas folder holding a synthetic HCPMMP1-like "
                             "fsLR 32k CIFTI atlas with subcortical structures")
    args = parser.parse_args(argv)
    generate(args.out_dir, seed=args.seed)
    if args.cifti_input:
        write_cifti_atlas(Path(args.cifti_input) / "tpl-fsLR_atlas-HCPMMP1_den-32k_dseg.dlabel.nii",
                          seed=args.seed)
        write_region_table(Path(args.cifti_input) / "tpl-fsLR_atlas-HCPMMP1_dseg.tsv",
                           seed=args.seed)
        Path(args.cifti_input, "dataset_description.json").write_text(json.dumps(
            {"Name": "synthetic atlases", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}))
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
