"""The synthetic AHBA generator: layout, formats, determinism, anatomy, abagen on its output."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ahba_app import synthetic
from ahba_app.datasets import DONORS, RNASEQ_DONORS, load_corrected_mni, load_reannotated

CLASS_IDS = {"4008": "cortex", "4249": "subcortex", "4275": "subcortex", "4391": "subcortex",
             "9001": "brainstem", "9131": "brainstem", "9512": "brainstem",
             "4696": "cerebellum", "9218": "white matter", "9352": "other"}


def donor_dir(root: Path, donor: str) -> Path:
    return root / "microarray" / f"normalized_microarray_donor{donor}"


def read_matrix(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, header=None, index_col=0)


def header(path: Path) -> list[str]:
    return path.read_text().split("\n", 1)[0].split(",")


def annotated_samples(root: Path, donor: str) -> pd.DataFrame:
    """SampleAnnot with the ontology's hemisphere and broad class of each sample."""
    folder = donor_dir(root, donor)
    annot = pd.read_csv(folder / "SampleAnnot.csv")
    onto = pd.read_csv(folder / "Ontology.csv", dtype={"hemisphere": str}).set_index("id")
    paths = onto.loc[annot["structure_id"], "structure_id_path"].str.strip("/").str.split("/")
    annot["klass"] = [next(CLASS_IDS[i] for i in reversed(p) if i in CLASS_IDS) for p in paths]
    annot["hemisphere"] = onto.loc[annot["structure_id"], "hemisphere"].to_numpy()
    return annot


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- layout, headers, shapes

def test_microarray_layout_headers_and_shapes(ahba_small):
    probes_ref = None
    for donor in DONORS:
        folder = donor_dir(ahba_small, donor)
        # hidden entries are other modules' caches (ahba_app.io writes .ahba-cache/)
        files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        assert files == sorted(synthetic.MICROARRAY_FILES)
        assert header(folder / "Probes.csv") == synthetic.PROBE_COLUMNS
        assert header(folder / "SampleAnnot.csv") == synthetic.ANNOT_COLUMNS
        assert header(folder / "Ontology.csv") == synthetic.ONTOLOGY_COLUMNS

        probes = pd.read_csv(folder / "Probes.csv", dtype={"entrez_id": "Int64"})
        annot = pd.read_csv(folder / "SampleAnnot.csv")
        expr = read_matrix(folder / "MicroarrayExpression.csv")
        pacall = read_matrix(folder / "PACall.csv")
        # the same probes, in Probes.csv order, and one column per annotated sample
        assert expr.shape == pacall.shape == (len(probes), len(annot))
        assert (expr.index == probes["probe_id"]).all() and (pacall.index == expr.index).all()
        assert probes["probe_id"].is_unique and probes["probe_id"].is_monotonic_increasing
        assert all(dt == np.float64 for dt in expr.dtypes)
        assert expr.to_numpy().min() >= 1.5 and expr.to_numpy().max() <= 18.4
        assert set(np.unique(pacall.to_numpy())) == {0, 1}
        assert annot["well_id"].is_unique
        for col in ("structure_id", "slab_num", "well_id", "polygon_id",
                    "mri_voxel_x", "mri_voxel_y", "mri_voxel_z"):
            assert annot[col].dtype == np.int64, col
        # Probes.csv and Ontology.csv are the same for every donor, as in the real download
        if probes_ref is None:
            probes_ref = (folder / "Probes.csv").read_bytes()
            onto_ref = (folder / "Ontology.csv").read_bytes()
        assert (folder / "Probes.csv").read_bytes() == probes_ref
        assert (folder / "Ontology.csv").read_bytes() == onto_ref

    manifest = json.loads((ahba_small / "synthetic.json").read_text())
    assert manifest["generator_version"] == synthetic.GENERATOR_VERSION
    assert manifest["n_probes"] == 2000
    for donor, n in manifest["samples"].items():
        assert max(50, round(DONORS[donor].n_samples / 6)) == n


def test_small_values_are_float32_exact_enough(ahba_small):
    """Six decimals: a float32 reader stays within 1e-7 of a float64 one."""
    path = donor_dir(ahba_small, "12876") / "MicroarrayExpression.csv"
    first = path.read_text().split("\n", 1)[0].split(",")[1:]
    assert all(len(v.split(".")[-1]) <= 6 for v in first)
    values = read_matrix(path).to_numpy()
    assert np.max(np.abs(values.astype(np.float32) - values) / values) < 1e-7


def test_probes_mix_reannotated_and_other_probes(ahba_small):
    probes = pd.read_csv(donor_dir(ahba_small, "9861") / "Probes.csv",
                         dtype={"entrez_id": "Int64"})
    table = load_reannotated().set_index("probe_name")
    known = probes["probe_name"].isin(table.index)
    assert 0.6 < known.mean() < 0.95  # most probes are in the reannotation table, not all
    assert probes["entrez_id"].isna().sum() >= 10
    # a table probe without Entrez id is in, and the table's gene usually agrees with Allen's
    in_table = probes[known].set_index("probe_name")
    assert table.loc[in_table.index, "entrez_id"].isna().any()
    agree = (in_table["gene_symbol"] == table.loc[in_table.index, "gene_symbol"]).mean()
    assert 0.8 < agree < 1.0
    # many genes are measured by several probes, before and after reannotation
    assert (probes.groupby("gene_symbol").size() > 1).sum() >= 150
    assert (table.loc[in_table.index].groupby("gene_symbol").size() > 1).sum() >= 150


def test_intensity_filter_keeps_about_half_to_two_thirds(ahba_small):
    pacall = pd.concat([read_matrix(donor_dir(ahba_small, d) / "PACall.csv") for d in DONORS],
                       axis=1)
    kept = (pacall.mean(axis=1) >= 0.5).mean()
    assert 0.5 <= kept <= 0.7


def test_probes_of_one_gene_differ_in_quality(ahba_small):
    """Probes of a gene share its signal to different degrees, so selection methods disagree."""
    folder = donor_dir(ahba_small, "9861")
    probes = pd.read_csv(folder / "Probes.csv")
    expr = read_matrix(folder / "MicroarrayExpression.csv")
    table = load_reannotated().set_index("probe_name")["gene_symbol"]
    genes = probes["probe_name"].map(table)
    multi = genes[genes.map(genes.value_counts()) == 2].dropna()
    corr = []
    for _, rows in multi.groupby(multi):
        a, b = expr.loc[probes.loc[rows.index, "probe_id"]].to_numpy()
        corr.append(np.corrcoef(a, b)[0, 1])
    corr = np.array(corr)
    assert np.median(corr) > 0.3          # shared signal
    assert (corr < 0.2).mean() > 0.05     # but some probes see little of it


def test_rnaseq_layout(ahba_small):
    for donor in RNASEQ_DONORS:
        folder = ahba_small / "rnaseq" / f"rnaseq_donor{donor}"
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == \
            sorted(synthetic.RNASEQ_FILES)
        assert header(folder / "Genes.csv") == synthetic.GENES_COLUMNS
        assert header(folder / "SampleAnnot.csv") == synthetic.RNA_ANNOT_COLUMNS
        genes = pd.read_csv(folder / "Genes.csv", index_col=0)
        annot = pd.read_csv(folder / "SampleAnnot.csv")
        tpm = read_matrix(folder / "RNAseqTPM.csv")
        counts = read_matrix(folder / "RNAseqCounts.csv")
        assert tpm.shape == counts.shape == (len(genes), len(annot))
        assert (tpm.index == genes.index).all() and genes.index.is_unique
        assert (tpm.to_numpy() >= 0).all() and ((tpm > 0) == (counts > 0)).all().all()
        # RNA-seq samples are microarray samples of the same donor (same well and structure)
        micro = pd.read_csv(donor_dir(ahba_small, donor) / "SampleAnnot.csv").set_index("well_id")
        assert annot["well_id"].isin(micro.index).all()
        assert (micro.loc[annot["well_id"], "structure_id"].to_numpy()
                == annot["ontology_structure_id"].to_numpy()).all()
        assert (folder / "Ontology.csv").read_bytes() == \
            (donor_dir(ahba_small, donor) / "Ontology.csv").read_bytes()


def test_rnaseq_follows_microarray_signal(ahba_small):
    donor = RNASEQ_DONORS[0]
    folder = ahba_small / "rnaseq" / f"rnaseq_donor{donor}"
    tpm = read_matrix(folder / "RNAseqTPM.csv")
    wells = pd.read_csv(folder / "SampleAnnot.csv")["well_id"]
    micro_dir = donor_dir(ahba_small, donor)
    micro_annot = pd.read_csv(micro_dir / "SampleAnnot.csv")
    columns = micro_annot.index[micro_annot["well_id"].isin(wells)] + 1
    order = micro_annot.set_index("well_id").index.get_indexer(wells) + 1
    expr = read_matrix(micro_dir / "MicroarrayExpression.csv")[order]
    probes = pd.read_csv(micro_dir / "Probes.csv")
    table = load_reannotated().set_index("probe_name")["gene_symbol"]
    genes = probes["probe_name"].map(table)
    single = genes[genes.map(genes.value_counts()) == 1].dropna()
    single = single[single.isin(tpm.index)]
    a = expr.loc[probes.loc[single.index, "probe_id"]].to_numpy()
    b = np.log2(tpm.loc[single.to_numpy()].to_numpy() + 1)
    keep = b.std(axis=1) > 0
    r = [np.corrcoef(x, y)[0, 1] for x, y in zip(a[keep], b[keep])]
    assert len(columns) == len(wells)
    assert np.median(r) > 0.3


# ---------------------------------------------------------------- anatomy

def test_wells_are_real_and_only_two_donors_have_right_samples(ahba_small):
    corrected = load_corrected_mni()
    seen = []
    for donor in DONORS:
        annot = pd.read_csv(donor_dir(ahba_small, donor) / "SampleAnnot.csv")
        assert annot["well_id"].isin(corrected.index).all()
        true = corrected.loc[annot["well_id"]].to_numpy()
        recorded = annot[["mni_x", "mni_y", "mni_z"]].to_numpy()
        shift = np.linalg.norm(recorded - true, axis=1)
        # a perturbation of a few mm, so corrected and recorded coordinates differ
        assert 0.5 < shift.mean() < 6 and shift.max() < 15
        assert (np.sign(recorded[:, 0]) == np.sign(true[:, 0])).all()
        right = (recorded[:, 0] > 0).sum() + (true[:, 0] > 0).sum()
        if donor in ("9861", "10021"):
            assert (recorded[:, 0] > 0).mean() > 0.3
        else:
            assert right == 0
        seen.extend(annot["well_id"])
    assert len(seen) == len(set(seen))  # a well belongs to one donor


def test_structures_match_coordinates(ahba_small):
    mismatched = 0
    for donor in DONORS:
        annot = annotated_samples(ahba_small, donor)
        side = np.where(annot["mni_x"] < 0, "L", "R")
        wrong = annot["hemisphere"] != side
        mismatched += wrong.sum()
        # the few contradicting samples sit near the midline, as in the real data
        assert wrong.mean() < 0.05
        assert (annot.loc[wrong, "mni_x"].abs() < 15).all()
        assert {"cortex", "subcortex", "brainstem", "cerebellum"} <= set(annot["klass"])
        cerebellum = annot[annot["klass"] == "cerebellum"]
        assert (cerebellum["mni_y"] < -30).all() and (cerebellum["mni_z"] < 0).all()
        if donor in ("9861", "10021"):
            assert {"L", "R"} == set(annot["hemisphere"])
    assert mismatched >= 2


def test_mri_voxels_lie_in_the_donor_native_regions(ahba_small):
    """Each sample's ``mri_voxel_*`` is a voxel of its donor's raw T1w grid (the donor-native
    Desikan-Killiany volume's): on a voxel of its own region when that region is in the native
    volume (the DK label at its corrected MNI position), else on an unlabelled voxel; and the
    native position follows the MNI one (a near-rigid fit, not a shuffle)."""
    import nibabel as nib

    from ahba_app.datasets import fetch_desikan_killiany

    group = nib.load(fetch_desikan_killiany()["image"])
    group_labels = np.asarray(group.dataobj)
    corrected = load_corrected_mni()
    for donor in DONORS:
        annot = pd.read_csv(donor_dir(ahba_small, donor) / "SampleAnnot.csv")
        img = nib.load(fetch_desikan_killiany(native=True)["image"][donor])
        labels = np.asarray(img.dataobj)
        voxels = annot[["mri_voxel_x", "mri_voxel_y", "mri_voxel_z"]].to_numpy()
        assert ((voxels >= 0) & (voxels < labels.shape)).all()
        native = labels[tuple(voxels.T)]
        mni = corrected.loc[annot["well_id"]].to_numpy()
        ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(group.affine), mni)).astype(int)
        at_mni = group_labels[tuple(ijk.T)]
        # samples directly on a DK region that the native volume has sit on that region there
        direct = np.isin(at_mni, np.unique(labels[labels > 0])) & (at_mni > 0)
        assert direct.sum() > 10
        np.testing.assert_array_equal(native[direct], at_mni[direct])
        assert (native > 0).mean() > 0.5
        # the native position is the MNI one carried by the donor's MNI -> scanner fit, moved a
        # few mm at most onto its region
        scanner = nib.affines.apply_affine(img.affine, voxels)
        fitted = nib.affines.apply_affine(synthetic.mni_to_native(donor), mni)
        assert np.median(np.linalg.norm(scanner - fitted, axis=1)) < 2
        assert np.corrcoef(scanner[:, 0], mni[:, 0])[0, 1] > 0.9


def test_ontology_tree(ahba_small):
    onto = pd.read_csv(donor_dir(ahba_small, "9861") / "Ontology.csv",
                       dtype={"hemisphere": str})
    assert onto["id"].is_unique
    ids = set(onto["id"])
    assert {4005, 4008, 4249, 4275, 4391, 4696, 9001, 9131, 9218, 9352, 9512} <= ids
    parents = onto["parent_structure_id"].dropna().astype(int)
    assert parents.isin(onto["id"]).all()
    for _, row in onto.iterrows():
        path = [int(i) for i in row["structure_id_path"].strip("/").split("/")]
        assert row["structure_id_path"].startswith("/4005/") and path[-1] == row["id"]
    # every leaf exists in both hemispheres under one acronym (needed for mirroring)
    leaves = onto.dropna(subset=["hemisphere"])
    assert set(leaves["hemisphere"]) == {"L", "R"}
    assert (leaves.groupby("acronym")["hemisphere"].apply(set) == {"L", "R"}).all()


# ---------------------------------------------------------------- determinism, atomicity, CLI

def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = synthetic.generate(tmp_path / "a", size="small", seed=5)
    b = synthetic.generate(tmp_path / "b", size="small", seed=5)
    c = synthetic.generate(tmp_path / "c", size="small", seed=6)
    assert file_digests(a) == file_digests(b)
    digests_c = file_digests(c)
    name = "microarray/normalized_microarray_donor9861/MicroarrayExpression.csv"
    assert digests_c[name] != file_digests(a)[name]
    # the ontology does not depend on the seed
    onto = "microarray/normalized_microarray_donor9861/Ontology.csv"
    assert digests_c[onto] == file_digests(a)[onto]


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_donor_rnaseq", boom)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path / "out", size="small", seed=0)
    assert list(tmp_path.iterdir()) == []


def test_work_folders_of_killed_runs_are_cleaned_up(tmp_path):
    dead = tmp_path / ".out.partial-999999999"   # beyond any pid_max: no such process
    alive = tmp_path / f".out.partial-{os.getppid()}"  # another run still at work
    for folder in (dead, alive):
        (folder / "microarray").mkdir(parents=True)
    synthetic.generate(tmp_path / "out", size="small", seed=0)
    assert not dead.exists() and alive.exists()


def test_regenerating_replaces_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    synthetic.generate(out, size="small", seed=0)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'huge'.*full.*small"):
        synthetic.generate(tmp_path / "x", size="huge")


def test_command_line(tmp_path, capsys):
    assert synthetic.main([str(tmp_path / "cli"), "--size", "small", "--seed", "3"]) == 0
    manifest = json.loads((tmp_path / "cli" / "synthetic.json").read_text())
    assert manifest["seed"] == 3 and manifest["size"] == "small"
    assert "Wrote small" in capsys.readouterr().err


def test_zips_hold_the_files_at_top_level(ahba_small_zips):
    mirror = ahba_small_zips / "mirror" / "api" / "v2" / "well_known_file_download"
    for donor, info in DONORS.items():
        archives = [(info.microarray_zip_id, donor_dir(ahba_small_zips, donor),
                     synthetic.MICROARRAY_FILES)]
        if info.rnaseq_zip_id is not None:
            archives.append((info.rnaseq_zip_id,
                             ahba_small_zips / "rnaseq" / f"rnaseq_donor{donor}",
                             synthetic.RNASEQ_FILES))
        for zip_id, folder, names in archives:
            with zipfile.ZipFile(mirror / str(zip_id)) as archive:
                assert sorted(archive.namelist()) == sorted(names)
                for name in names:
                    assert archive.read(name) == (folder / name).read_bytes()


# ---------------------------------------------------------------- abagen runs on it

@pytest.mark.oracle
def test_abagen_runs_on_small(ahba_small, tmp_path):
    from oracle import run_abagen

    snippet = """
    import os
    atlas = abagen.fetch_desikan_killiany()
    save('default', abagen.get_expression_data(atlas['image'], atlas['info'],
                                               data_dir=PARAMS['data_dir'], donors='all'))
    # abagen's rnaseq selection looks for <ABAGEN_DATA>/rnaseq/rnaseq_donor<N>/ on its own
    os.environ['ABAGEN_DATA'] = PARAMS['data_dir']
    save('rnaseq', abagen.get_expression_data(atlas['image'], atlas['info'],
                                              data_dir=PARAMS['data_dir'], donors='all',
                                              probe_selection='rnaseq'))
    """
    out = run_abagen(snippet, tmp_path, data_dir=str(ahba_small))
    for name in ("default", "rnaseq"):
        expr = out[name]
        assert expr.shape[0] == 83 and expr.shape[1] > 500
        assert expr.notna().all(axis=1).sum() >= 60  # most DK regions get samples
    # the two selections see the same genes but pick different probes for some of them
    common = out["default"].columns.intersection(out["rnaseq"].columns)
    assert len(common) > 500
    assert not np.allclose(out["default"][common].to_numpy(), out["rnaseq"][common].to_numpy(),
                           equal_nan=True)


@pytest.mark.oracle
def test_abagen_fetchers_unzip_our_archives(ahba_small_zips, tmp_path):
    """abagen's own unzip step, fed our archive, leaves the files where its fetcher looks."""
    from oracle import run_abagen

    snippet = """
    import shutil
    from abagen.datasets.utils import _uncompress_file
    found = {}
    for kind, zip_id, folder in PARAMS['archives']:
        target = OUT.parent / 'unzipped' / folder
        target.mkdir(parents=True)
        shutil.copy(zip_id, target / 'donor.zip')
        _uncompress_file(str(target / 'donor.zip'), verbose=0)
        found[folder] = sorted(p.name for p in target.iterdir())
    save('found', pd.Series(found))
    """
    mirror = ahba_small_zips / "mirror" / "api" / "v2" / "well_known_file_download"
    archives = [("microarray", str(mirror / str(d.microarray_zip_id)),
                 f"normalized_microarray_donor{d.id}") for d in DONORS.values()]
    archives += [("rnaseq", str(mirror / str(DONORS[d].rnaseq_zip_id)), f"rnaseq_donor{d}")
                 for d in RNASEQ_DONORS]
    found = run_abagen(snippet, tmp_path, archives=archives)["found"]
    for _, _, folder in archives:
        expected = synthetic.RNASEQ_FILES if folder.startswith("rnaseq") \
            else synthetic.MICROARRAY_FILES
        assert found[folder] == sorted(expected)


@pytest.mark.oracle
def test_abagen_probe_selections_make_different_choices(ahba_small, tmp_path):
    """Probes of one gene differ in quality, so abagen's selection methods disagree."""
    from oracle import run_abagen

    snippet = """
    import os
    from abagen import io, probes_, datasets
    from abagen.utils import flatten_dict
    os.environ['ABAGEN_DATA'] = PARAMS['data_dir']  # where its rnaseq selection looks
    files = datasets.fetch_microarray(data_dir=PARAMS['data_dir'], donors='all', verbose=0)
    annotation = flatten_dict(files, 'annotation')
    info = probes_.reannotate_probes(io.read_probes(files['9861']['probes']))
    info = probes_.filter_probes(flatten_dict(files, 'pacall'), annotation,
                                 info.dropna(subset=['entrez_id']))
    per_gene = info.groupby('gene_symbol').size()
    multi = per_gene[per_gene > 1].index
    for method in PARAMS['methods']:
        expr = probes_.collapse_probes(flatten_dict(files, 'microarray'), annotation, info,
                                       method=method)
        save(method, expr['9861'][multi])
    """
    methods = ["max_intensity", "max_variance", "pc_loading", "corr_intensity",
               "corr_variance", "diff_stability", "rnaseq"]
    picks = run_abagen(snippet, tmp_path, data_dir=str(ahba_small), methods=methods)
    genes = picks["max_intensity"].columns
    assert len(genes) >= 60  # multi-probe genes surviving the intensity filter
    agreement = pd.DataFrame(
        [[np.mean([np.allclose(picks[a][g], picks[b][g]) for g in genes]) for b in methods]
         for a in methods], index=methods, columns=methods)
    off_diagonal = agreement.to_numpy()[~np.eye(len(methods), dtype=bool)]
    assert off_diagonal.max() < 0.97 and off_diagonal.mean() < 0.8
