"""BIDS input discovery and derivative writing (ahba_app.bids)."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ahba_app import bids, derivatives
from ahba_app.datasets import data_path, fetch_desikan_killiany

VOLUME = "tpl-MNI152NLin6Asym_res-01_atlas-DK_dseg.nii.gz"
TABLE = "tpl-MNI152NLin6Asym_res-01_atlas-DK_dseg.tsv"
GIFTI = "tpl-fsaverage_hemi-{}_den-10k_atlas-DK_dseg.label.gii"


def dk_table() -> pd.DataFrame:
    """The bundled DK table with BIDS column names (index, name, hemisphere, structure)."""
    table = pd.read_csv(fetch_desikan_killiany()["info"])
    return table.rename(columns={"id": "index", "label": "name"})


def make_bids_input(root, *, table=True, gifti=True):
    """A BIDS atlas dataset: the bundled DK volume with its TSV, and the fsaverage5 GIFTI pair."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fetch_desikan_killiany()["image"], root / VOLUME)
    if table:
        dk_table().to_csv(root / TABLE, sep="\t", index=False)
    if gifti:
        for hemi, src in zip("LR", ("lh", "rh")):
            with gzip.open(data_path(f"atlas-desikankilliany-{src}.label.gii.gz")) as handle:
                (root / GIFTI.format(hemi)).write_bytes(handle.read())
    return root


@pytest.fixture
def bids_input(tmp_path):
    return make_bids_input(tmp_path / "atlases")


# --------------------------------------------------------------------------------------------
def test_parse_entities_reads_names_pybids_does_not_know():
    ents = bids.parse_entities(
        "tpl-fsaverage_hemi-L_den-164k_atlas-Schaefer2018_seg-7n_scale-400_dseg.label.gii")
    assert ents == {"tpl": "fsaverage", "hemi": "L", "den": "164k", "atlas": "Schaefer2018",
                    "seg": "7n", "scale": "400", "suffix": "dseg", "extension": ".label.gii"}
    ents = bids.parse_entities("/x/tpl-fsLR_atlas-HCPMMP1_den-32k_dseg.dlabel.nii")
    assert ents["extension"] == ".dlabel.nii" and ents["tpl"] == "fsLR"
    assert bids.parse_entities("dataset_description.json") == {"suffix": "description",
                                                               "extension": ".json"}


def test_discovers_volume_with_table_and_gifti_pair(bids_input):
    atlases = bids.discover_atlases(bids_input)
    assert [a.key for a in atlases] == ["atlas-DK_space-MNI152NLin6Asym_res-01",
                                        "atlas-DK_space-fsaverage_den-10k"]
    volume, surface = atlases
    assert volume.kind == "volumetric"
    assert volume.image == str(bids_input / VOLUME)
    assert volume.info == str(bids_input / TABLE)
    assert volume.has_info
    assert volume.entities["tpl"] == "MNI152NLin6Asym" and volume.entities["res"] == "01"
    assert surface.kind == "surface"
    assert surface.image == [str(bids_input / GIFTI.format("L")),
                             str(bids_input / GIFTI.format("R"))]
    assert surface.info is None and not surface.has_info
    assert surface.space == "fsaverage5"
    assert volume.stem("abagendefaults") == \
        "atlas-DK_space-MNI152NLin6Asym_res-01_desc-abagendefaults"
    assert volume.stem("custom", donor="9861").startswith("sub-9861_atlas-DK_")


def test_own_parser_is_the_fallback_when_pybids_fails(bids_input, monkeypatch):
    expected = [a.as_dict() for a in bids.discover_atlases(bids_input)]
    monkeypatch.setattr(bids, "_pybids_files", lambda root: None)
    assert [a.as_dict() for a in bids.discover_atlases(bids_input)] == expected


def test_pybids_is_used_for_the_listing(bids_input, monkeypatch):
    calls = []
    real = bids._pybids_files

    def spy(root):
        calls.append(root)
        return real(root)
    monkeypatch.setattr(bids, "_pybids_files", spy)
    bids.discover_atlases(bids_input)
    assert calls and real(bids_input) is not None


def test_table_inheritance_prefers_the_most_specific(tmp_path):
    root = make_bids_input(tmp_path / "in", table=False, gifti=False)
    general = dk_table()[["index", "name"]]
    general.to_csv(root / "atlas-DK_dseg.tsv", sep="\t", index=False)
    (atlas,) = bids.discover_atlases(root)
    assert atlas.info == str(root / "atlas-DK_dseg.tsv") and not atlas.has_info
    dk_table().to_csv(root / "tpl-MNI152NLin6Asym_atlas-DK_dseg.tsv", sep="\t", index=False)
    (atlas,) = bids.discover_atlases(root)
    assert atlas.info.endswith("tpl-MNI152NLin6Asym_atlas-DK_dseg.tsv") and atlas.has_info


def test_atlas_desc_is_folded_into_the_output_label(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    name = "tpl-MNI152NLin6Asym_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.nii.gz"
    shutil.copyfile(fetch_desikan_killiany()["image"], root / name)
    (atlas,) = bids.discover_atlases(root)
    assert atlas.label == "Schaefer2018"
    assert atlas.name == "Schaefer2018400Parcels7Networks"
    assert atlas.stem("dense") == \
        "atlas-Schaefer2018400Parcels7Networks_space-MNI152NLin6Asym_desc-dense"
    assert bids.select_atlases([atlas], ["Schaefer2018"]) == [atlas]
    assert bids.select_atlases([atlas], ["atlas-Schaefer2018400Parcels7Networks"]) == [atlas]


def test_select_atlases_names_unknown_labels(bids_input):
    atlases = bids.discover_atlases(bids_input)
    assert bids.select_atlases(atlases, None) == atlases
    assert len(bids.select_atlases(atlases, ["dk"])) == 2
    with pytest.raises(bids.BIDSInputError, match="Schaefer.*available: DK"):
        bids.select_atlases(atlases, ["Schaefer"])


def test_native_atlases_need_every_donor(tmp_path):
    root = tmp_path / "in"
    native = fetch_desikan_killiany(native=True)["image"]
    for donor in ("9861", "10021"):
        (root / f"sub-{donor}" / "anat").mkdir(parents=True)
        shutil.copyfile(native[donor], root / f"sub-{donor}" / "anat" /
                        f"sub-{donor}_atlas-DK_dseg.nii.gz")
    (atlas,) = bids.discover_atlases(root, donors=["9861", "10021"])
    assert atlas.kind == "donor-native" and sorted(atlas.image) == ["10021", "9861"]
    assert atlas.key == "atlas-DK_space-native"
    with pytest.raises(bids.BIDSInputError, match="no file for donor.*12876"):
        bids.discover_atlases(root, donors=["9861", "12876"])


def test_images_without_atlas_entity_are_skipped(tmp_path, caplog):
    root = tmp_path / "in"
    root.mkdir()
    shutil.copyfile(fetch_desikan_killiany()["image"], root / "tpl-X_desc-aseg_dseg.nii.gz")
    assert bids.discover_atlases(root) == []
    assert "atlas-<label>" in caplog.text


def test_missing_input_folder(tmp_path):
    with pytest.raises(bids.BIDSInputError, match="does not exist"):
        bids.discover_atlases(tmp_path / "nope")


def test_gifti_pair_needs_both_hemispheres(tmp_path):
    root = make_bids_input(tmp_path / "in", gifti=True)
    (root / GIFTI.format("R")).unlink()
    with pytest.raises(bids.BIDSInputError, match="hemi-L and a hemi-R"):
        bids.discover_atlases(root)


# --------------------------------------------------------------------------------------------
def test_check_region_table(tmp_path):
    labels = np.arange(1, 84)
    path = tmp_path / "t.tsv"
    dk_table().to_csv(path, sep="\t", index=False)
    table = bids.check_region_table(str(path), labels, "the atlas")
    assert list(table.index) == list(labels) and "name" in table
    dk_table().iloc[:50].to_csv(path, sep="\t", index=False)
    with pytest.raises(bids.BIDSInputError, match=r"label\(s\) \[51, 52"):
        bids.check_region_table(str(path), labels, "the atlas")
    dk_table().drop(columns="index").to_csv(path, sep="\t", index=False)
    with pytest.raises(bids.BIDSInputError, match="no 'index' column"):
        bids.check_region_table(str(path), labels, "the atlas")
    path.write_text("")
    with pytest.raises(bids.BIDSInputError, match="Cannot read"):
        bids.check_region_table(str(path), labels, "the atlas")


def test_load_atlas_input_matches_pipeline_load_atlas(bids_input):
    from ahba_app import pipeline

    volume, surface = bids.discover_atlases(bids_input)
    trees, group = bids.load_atlas_input(volume, ["9861", "10021"])
    ref, _ = pipeline.load_atlas(volume.image, volume.info, ["9861", "10021"])
    assert group and set(trees) == {"9861", "10021"}
    np.testing.assert_array_equal(trees["9861"].labels, ref["9861"].labels)
    assert trees["9861"].atlas_info.equals(ref["9861"].atlas_info)
    trees, _ = bids.load_atlas_input(surface, ["9861"])
    assert len(trees["9861"].labels) == 68 and trees["9861"].atlas_info is not None


def test_a_hashed_group_atlas_is_loaded_once_per_run(bids_input, monkeypatch):
    from ahba_app import atlas as atlases

    loads = []
    real = atlases.coerce_atlas_to_dict
    monkeypatch.setattr(atlases, "coerce_atlas_to_dict",
                        lambda *a, **k: loads.append(a) or real(*a, **k))
    volume, surface = bids.discover_atlases(bids_input)
    for atlas in (volume, surface):
        hashed = bids.AtlasInput.from_dict(atlas.as_dict())
        hashed.checksums = {path: bids.sha256(path) for path in atlas.files()}
        bids.load_atlas_input(hashed, ["9861"])  # outside a run: nothing is kept
        bids.load_atlas_input(hashed, ["9861"])
    assert len(loads) == 4
    loads.clear()
    with bids.remembering_atlases(size=1):
        _loaded_once_within_a_run(volume, surface, loads)
    bids.load_atlas_input(volume, ["9861"])  # the run's memo went with it
    assert len(loads) == 7


def _loaded_once_within_a_run(volume, surface, loads):
    bids.load_atlas_input(volume, ["9861"])  # no checksums: never kept
    bids.load_atlas_input(volume, ["9861"])
    assert len(loads) == 2
    for atlas in (volume, surface):
        atlas.checksums = {path: bids.sha256(path) for path in atlas.files()}
    trees, group = bids.load_atlas_input(volume, ["9861"])
    again, group_again = bids.load_atlas_input(
        bids.AtlasInput.from_dict(json.loads(json.dumps(volume.as_dict()))), "all")
    assert len(loads) == 3 and group and group_again
    assert set(again) == {"9861", "10021", "12876", "14380", "15496", "15697"}
    assert all(tree is trees["9861"] for tree in again.values())
    bids.load_atlas_input(surface, ["9861"])  # the other atlas takes the only place
    bids.load_atlas_input(volume, ["9861"])
    assert len(loads) == 5
    edited = bids.AtlasInput.from_dict(volume.as_dict())
    edited.checksums = dict(volume.checksums, **{volume.info: "0" * 64})  # its table changed
    bids.load_atlas_input(edited, ["9861"])
    assert len(loads) == 6


def test_a_run_can_keep_every_atlas_it_checked(bids_input, monkeypatch):
    """remember_atlases widens the run's memo (never narrows it; nothing outside a run): the
    command line keeps the atlases it checked loaded for their nodes."""
    from ahba_app import atlas as atlases

    loads = []
    real = atlases.coerce_atlas_to_dict
    monkeypatch.setattr(atlases, "coerce_atlas_to_dict",
                        lambda *a, **k: loads.append(a) or real(*a, **k))
    found = bids.discover_atlases(bids_input)
    for atlas in found:
        atlas.checksums = {path: bids.sha256(path) for path in atlas.files()}
    bids.remember_atlases(5)  # outside a run: no effect, no error
    with bids.remembering_atlases(size=1) as memo:
        bids.remember_atlases(len(found))
        bids.remember_atlases(0)
        assert memo.size == len(found) == 2
        for _ in range(2):
            for atlas in found:
                bids.load_atlas_input(atlas, ["9861"])
        assert len(loads) == len(found)  # the second round found both still loaded


def test_atlas_input_round_trips_through_a_dict(bids_input):
    for atlas in bids.discover_atlases(bids_input):
        again = bids.AtlasInput.from_dict(json.loads(json.dumps(atlas.as_dict())))
        assert again == atlas
        assert again.files() == atlas.files()


def test_default_atlas_is_the_bundled_dk():
    atlas = bids.default_atlas()
    assert atlas.bundled and atlas.has_info and atlas.kind == "volumetric"
    assert atlas.key == "atlas-desikankilliany"


# --------------------------------------------------------------------------------------------
def test_write_tsv_is_exact_and_atomic(tmp_path):
    values = np.random.default_rng(0).random((4, 3))
    values[1, 2] = np.nan
    frame = pd.DataFrame(values, index=pd.Index([1, 2, 5, 7], name="label"),
                         columns=["A", "B", "C"])
    path = derivatives.write_tsv(frame.rename_axis("index"), tmp_path / "x" / "t.tsv")
    text = path.read_text()
    assert text.startswith("index\tA\tB\tC\n") and "n/a" in text
    back = pd.read_csv(path, sep="\t", index_col=0, na_values="n/a")
    assert np.array_equal(back.to_numpy(), values, equal_nan=True)  # bit for bit
    assert not list(path.parent.glob(".*tmp"))


def test_write_json_and_text(tmp_path):
    out = derivatives.write_json({"a": np.int64(3), "b": np.float32(0.5), "c": (1, 2)},
                          tmp_path / "a.json")
    assert json.loads(out.read_text()) == {"a": 3, "b": 0.5, "c": [1, 2]}
    assert derivatives.write_text("hi", tmp_path / "b.txt").read_text() == "hi"


def test_container_info():
    assert derivatives.container_info({}) is None
    env = {"AHBA_APP_CONTAINER": "docker:ahba-app/ahba-app:0.1.0"}
    assert derivatives.container_info(env) == {"Type": "docker", "Tag": "ahba-app/ahba-app:0.1.0"}
    env["APPTAINER_CONTAINER"] = "/images/ahba.sif"
    assert derivatives.container_info(env) == {"Type": "apptainer", "Tag": "ahba-app/ahba-app:0.1.0"}
    assert derivatives.container_info({"SINGULARITY_CONTAINER": "/images/ahba.sif"}) == \
        {"Type": "singularity", "Tag": "ahba.sif"}


def test_dataset_description(tmp_path):
    desc = derivatives.dataset_description(tmp_path, environ={})
    assert desc["DatasetType"] == "derivative"
    generated = desc["GeneratedBy"][0]
    assert generated["Name"] == "ahba-app" and generated["CodeURL"] == derivatives.CODE_URL
    assert "Version" in generated and "Container" not in generated
    desc = derivatives.dataset_description(environ={"AHBA_APP_CONTAINER": "docker:img:1"})
    assert desc["GeneratedBy"][0]["Container"] == {"Type": "docker", "Tag": "img:1"}


def test_derivative_path(tmp_path):
    atlas = bids.default_atlas()
    assert derivatives.derivative_path(tmp_path, atlas, "dense", "expression") == \
        tmp_path / "atlas-desikankilliany_desc-dense_expression.tsv"
    assert derivatives.derivative_path(tmp_path, atlas, "dense", "samples", donor="9861") == \
        tmp_path / "sub-9861" / "sub-9861_atlas-desikankilliany_desc-dense_samples.tsv"


def test_cifti_and_surface_atlases_find_their_surfaces(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for name in ("tpl-fsLR_atlas-HCPMMP1_den-32k_dseg.dlabel.nii",
                 "tpl-fsLR_hemi-L_den-32k_midthickness.surf.gii",
                 "tpl-fsLR_hemi-R_den-32k_midthickness.surf.gii",
                 "tpl-fsLR_hemi-L_den-32k_sphere.surf.gii",
                 "tpl-fsaverage_hemi-L_den-164k_atlas-Schaefer2018_seg-7n_scale-400_dseg.label.gii",
                 "tpl-fsaverage_hemi-R_den-164k_atlas-Schaefer2018_seg-7n_scale-400_dseg.label.gii",
                 "tpl-fsaverage_hemi-L_den-164k_pial.surf.gii",
                 "tpl-fsaverage_hemi-R_den-164k_pial.surf.gii"):
        (root / name).write_bytes(b"")
    (root / "tpl-fsLR_atlas-HCPMMP1_dseg.tsv").write_text(
        "index\tname\themisphere\tstructure\n1\tV1\tL\tcortex\n")
    cifti, surface = bids.discover_atlases(root)
    assert cifti.kind == "cifti" and cifti.space == "fslr" and cifti.has_info
    assert cifti.key == "atlas-HCPMMP1_space-fsLR_den-32k"
    assert [p.split("/")[-1] for p in cifti.geometry] == [
        "tpl-fsLR_hemi-L_den-32k_midthickness.surf.gii",
        "tpl-fsLR_hemi-R_den-32k_midthickness.surf.gii"]
    assert surface.kind == "surface" and surface.space == "fsaverage"
    assert surface.key == "atlas-Schaefer2018_space-fsaverage_den-164k_seg-7n_scale-400"
    assert surface.geometry[0].endswith("tpl-fsaverage_hemi-L_den-164k_pial.surf.gii")


def test_float_tables_are_written_as_pandas_writes_them(tmp_path):
    """The quick writer of region x gene tables gives pandas' bytes, edge values included."""
    from ahba_app.derivatives import _plain_float_table, write_tsv

    values = np.array([[0.1 + 0.2, 1e-5, 1e16, -0.0, np.nan],
                       [np.inf, -np.inf, 5e-324, 123456789012345680.0, 1.0],
                       [np.nan] * 5,
                       [2 / 3, -1e-300, 1e300, 0.5, 1e15]])
    genes = pd.Index(["A1BG", "NANOG", "nan", "C1orf43", "ZZZ3"], name="gene_symbol")
    for index in (pd.Index([1, 2, 30, 4], name="label"),
                  pd.Index(["lh_a", "rh b", "x", "y"], name=None)):
        frame = pd.DataFrame(values, index=index, columns=genes)
        assert _plain_float_table(frame, True)
        expected = frame.to_csv(sep="\t", na_rep="n/a", lineterminator="\n")
        assert write_tsv(frame, tmp_path / "t.tsv").read_text() == expected
        assert (write_tsv(frame, tmp_path / "u.tsv", index_label="region").read_text()
                == frame.to_csv(sep="\t", na_rep="n/a", lineterminator="\n",
                                index_label="region"))
    # other tables go through pandas
    assert not _plain_float_table(pd.DataFrame(np.ones((2, 3), dtype=np.float32)), True)
    assert not _plain_float_table(frame.rename(columns={"A1BG": 'a"b'}), True)
    assert not _plain_float_table(frame, False)
