"""TemplateFlow atlases and surfaces, read offline from a synthetic TemplateFlow home."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ahba_app import bids, synthetic_templateflow as stf
from ahba_app import templateflow as tf
from ahba_app.atlas import check_atlas


def _snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture(scope="session")
def tf_home(tmp_path_factory) -> Path:
    """A synthetic TemplateFlow home (MNI152NLin6Asym res-01 and res-02, fsaverage 3k-164k,
    fsLR 32k), made read-only."""
    home = stf.generate(tmp_path_factory.mktemp("templateflow") / "home")
    _read_only(home)
    return home


@pytest.fixture
def offline(monkeypatch, tf_home):
    """TEMPLATEFLOW_HOME set, every network connection refused, and the home unchanged."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tf_home))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "1")  # must not matter: nothing is fetched
    before = _snapshot(tf_home)
    yield tf_home
    assert _snapshot(tf_home) == before, "the TemplateFlow home was modified"


def test_volumetric_atlas_resolves_with_its_table(offline):
    finest = tf.resolve_atlas("Schaefer2018", "400Parcels7Networks")
    assert "_res-01_" in finest.image  # the finest by default
    atlas = tf.resolve_atlas("Schaefer2018", "400Parcels7Networks", res=2)
    assert atlas.kind == "volumetric"
    assert Path(atlas.image).name == ("tpl-MNI152NLin6Asym_res-02_atlas-Schaefer2018_desc-"
                                      "400Parcels7Networks_dseg.nii.gz")
    assert Path(atlas.info).name == ("tpl-MNI152NLin6Asym_atlas-Schaefer2018_desc-"
                                     "400Parcels7Networks_dseg.tsv")
    assert atlas.key == "atlas-Schaefer2018400Parcels7Networks_space-MNI152NLin6Asym_res-02"
    same = tf.resolve_atlas("Schaefer2018", "400Parcels7Networks", space="mni152nlin6asym",
                            res="02")
    assert same.image == atlas.image
    trees, group = bids.load_atlas_input(atlas, ["9861", "10021"])
    tree = next(iter(trees.values()))
    assert group and len(tree.labels) == 400
    bids.check_region_table(atlas.info, tree.labels, "the atlas")


def test_fsaverage_atlas_at_a_coarser_density_uses_the_nested_mesh(offline, tf_home):
    """fsaverage6 (den-41k) from the 164k label files: their first 40,962 vertices, on the
    41k pial surfaces of the same home; the medial wall shared by both hemispheres is 0."""
    atlas = tf.resolve_atlas("Schaefer2018", "400Parcels7Networks", space="fsaverage",
                             den="41k")
    assert atlas.kind == "surface" and atlas.space == "fsaverage6"
    assert [Path(p).name for p in atlas.geometry] == [
        f"tpl-fsaverage_hemi-{h}_den-41k_pial.surf.gii" for h in "LR"]
    assert "den-164k" in Path(atlas.image[0]).name
    assert atlas.key == "atlas-Schaefer2018_space-fsaverage_den-41k_seg-7n_scale-400"
    trees, _ = bids.load_atlas_input(atlas, ["9861", "10021"])
    tree = next(iter(trees.values()))
    full = [np.asarray(nib.load(p).darrays[0].data) for p in atlas.image]
    n = 40962
    expected = np.concatenate([np.where(f[:n] == stf.MEDIAL_WALL[0], 0, f[:n]) for f in full])
    assert len(tree._full_coords) == 2 * n
    assert np.array_equal(tree._full_labels(), expected)
    assert stf.MEDIAL_WALL[0] not in tree.labels
    # a table row per region: the hemisphere comes from the pair
    assert set(tree.atlas_info["hemisphere"]) == {"L", "R"}


def test_fsaverage_at_the_density_templateflow_has(offline):
    atlas = tf.resolve_atlas("Schaefer2018", "400Parcels7Networks", space="fsaverage",
                             den="164k")
    assert atlas.space == "fsaverage"
    assert all("den-164k_pial" in p for p in atlas.geometry)


def test_several_densities_need_den(offline, tmp_path, monkeypatch, tf_home):
    home = tmp_path / "home"
    shutil.copytree(tf_home, home)
    for path in [home, *home.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    for hemi in "LR":
        src = next((home / "tpl-fsaverage").glob(f"*hemi-{hemi}_den-164k_atlas-*"))
        shutil.copy(src, str(src).replace("den-164k", "den-41k"))
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    with pytest.raises(tf.TemplateFlowError, match=r"several densities \(41k, 164k\).*--den"):
        tf.resolve_atlas("Schaefer2018", "400Parcels7Networks", space="fsaverage")


@pytest.mark.parametrize("kwargs, message", [
    (dict(atlas="Schaefer2018", desc="100Parcels7Networks"),
     r"desc-100Parcels7Networks in MNI152NLin6Asym is not in TEMPLATEFLOW_HOME=.*variants: "
     r"desc: 400Parcels7Networks.*api.get\('MNI152NLin6Asym', atlas='Schaefer2018', "
     r"desc='100Parcels7Networks', suffix='dseg'\)"),
    (dict(atlas="Schaefer2018", desc="400Parcels7Networks", res=3),
     r"has no resolution 3 \(res: 01, 02\).*resolution=3"),
    (dict(atlas="Schaefer2018", space="MNI152NLin2009cAsym"),
     r"has no template 'MNI152NLin2009cAsym' \(it has: MNI152NLin6Asym, fsLR, fsaverage\)"),
    (dict(atlas="Glasser", space="fsLR", den="32k"),
     r"atlas-Glasser in fsLR den-32k is not in TEMPLATEFLOW_HOME.*no such atlas there"),
])
def test_missing_atlas_is_one_clear_error(offline, kwargs, message):
    with pytest.raises(tf.TemplateFlowError, match=message):
        tf.resolve_atlas(**kwargs)


def test_placeholder_file_is_named_with_how_to_get_it(tmp_path, monkeypatch, tf_home):
    """The client's skeleton holds empty files for what has not been downloaded."""
    home = tmp_path / "home"
    shutil.copytree(tf_home, home)
    image = next((home / "tpl-MNI152NLin6Asym").glob("*res-01*_dseg.nii.gz"))
    image.chmod(0o644)
    image.write_bytes(b"")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    with pytest.raises(tf.TemplateFlowError) as err:
        tf.resolve_atlas("Schaefer2018", "400Parcels7Networks")
    text = str(err.value)
    assert str(image) in text and "empty placeholder" in text
    assert "api.get('MNI152NLin6Asym', atlas='Schaefer2018', desc='400Parcels7Networks', " \
           "resolution=1, suffix='dseg')" in text
    assert "never downloads" in text


@pytest.mark.parametrize("value", [None, "", "missing", "empty"])
def test_unusable_home_is_an_error(tmp_path, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("TEMPLATEFLOW_HOME", raising=False)
    elif value == "":
        monkeypatch.setenv("TEMPLATEFLOW_HOME", "")
    else:
        folder = tmp_path / "tf"
        if value == "empty":
            folder.mkdir()
        monkeypatch.setenv("TEMPLATEFLOW_HOME", str(folder))
    with pytest.raises(tf.TemplateFlowError, match="TEMPLATEFLOW_HOME"):
        tf.resolve_atlas("Schaefer2018")


def test_input_folder_cifti_gets_its_surfaces_from_templateflow(offline, tmp_path):
    path = stf.write_cifti_atlas(tmp_path / "tpl-fsLR_atlas-Synth_den-32k_dseg.dlabel.nii")
    (atlas,) = bids.discover_atlases(tmp_path)
    assert atlas.kind == "cifti" and atlas.geometry is None
    tf.add_geometry(atlas)
    assert [Path(p).name for p in atlas.geometry] == [
        f"tpl-fsLR_den-32k_hemi-{h}_midthickness.surf.gii" for h in "LR"]
    tree = check_atlas(str(path), geometry=tuple(atlas.geometry), space=atlas.space)
    assert len(tree.labels) > 300


def test_input_folder_fsaverage6_gifti_gets_pial_surfaces(offline, tmp_path):
    for hemi in "LR":
        shutil.copy(next((offline / "tpl-fsaverage").glob(f"*hemi-{hemi}_den-164k_atlas-*")),
                    tmp_path / f"tpl-fsaverage6_hemi-{hemi}_atlas-Mine_dseg.label.gii")
    (atlas,) = bids.discover_atlases(tmp_path)
    tf.add_geometry(atlas)
    assert atlas.space == "fsaverage6"
    assert all("den-41k_pial" in p for p in atlas.geometry)


def test_meshes_are_nested():
    """The synthetic fsaverage meshes keep FreeSurfer's nesting: coarsening a subdivision
    gives the mesh back, and the bundled fsaverage5 coarsens to a closed mesh."""
    (vertices, faces), _ = stf.mesh("10k")
    fine_v, fine_f = stf.subdivide(vertices, faces)
    assert np.array_equal(fine_v[: len(vertices)], vertices)
    back_v, back_f = stf.coarsen(fine_v, fine_f)
    assert np.array_equal(back_v, vertices)
    assert {tuple(sorted(f)) for f in back_f.tolist()} == \
        {tuple(sorted(f)) for f in np.asarray(faces).tolist()}
    coarse_v, coarse_f = stf.coarsen(vertices, faces)
    assert len(coarse_v) == 2562 and len(coarse_f) == 2 * 2562 - 4


def test_fsaverage_labels_longer_than_a_non_nested_mesh_are_an_error(tmp_path):
    (vertices, faces), (rv, rf) = stf.mesh("10k")
    labels = np.ones(10242 + 5, dtype=np.int32)
    with pytest.raises(ValueError, match="must be the same mesh"):
        check_atlas((labels, labels + 1), geometry=((vertices, faces), (rv, rf)),
                    space="fsaverage5")


def test_choose_atlases_prefers_the_input_folder(offline, tmp_path):
    """--atlas LABEL: the input folder's atlas of that label, else TemplateFlow's."""
    volume = next((offline / "tpl-MNI152NLin6Asym").glob("*res-02*_dseg.nii.gz"))
    shutil.copy(volume, tmp_path / "tpl-MNI152NLin6Asym_atlas-Mine_dseg.nii.gz")
    found = bids.discover_atlases(tmp_path)
    assert [a.label for a in tf.choose_atlases(found)] == ["Mine"]
    (mine,) = tf.choose_atlases(found, ["atlas-Mine"])
    assert mine.image == str(tmp_path / "tpl-MNI152NLin6Asym_atlas-Mine_dseg.nii.gz")
    both = tf.choose_atlases(found, ["Mine", "Schaefer2018"], res=2)
    assert [a.label for a in both] == ["Mine", "Schaefer2018"]
    assert both[1].image.startswith(str(offline))
    assert both[1].entities["desc"] == "400Parcels7Networks"  # the only one there
    with pytest.raises(tf.TemplateFlowError, match="give its name with --atlas"):
        tf.choose_atlases(found, None, space="fsaverage")
    with pytest.raises(tf.TemplateFlowError, match="atlas-Nope in MNI152NLin6Asym is not in"):
        tf.choose_atlases(found, ["Nope"])


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
DONORS = ["9861", "10021", "12876", "14380", "15496", "15697"]


def _cli(args, capsys):
    from ahba_app.cli import run as cli_run

    code = cli_run.main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture
def cli_env(monkeypatch):
    for var in ("NIPYPE_CONFIG_DIR", "MPLCONFIGDIR", "AHBA_APP_CONTAINER"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_cli_runs_a_templateflow_atlas_offline(offline, tmp_path, ahba_small, capsys, cli_env):
    import pandas as pd

    import ahba_app

    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    code, err = _cli([tmp_path / "in", out, "group", "--ahba-dir", ahba_small,
                      "-w", tmp_path / "work", "--atlas", "Schaefer2018", "--atlas-desc",
                      "400Parcels7Networks", "--space", "MNI152NLin6Asym", "--res", "2"], capsys)
    assert code == 0, err
    stem = "atlas-Schaefer2018400Parcels7Networks_space-MNI152NLin6Asym_res-02_desc-abagendefaults"
    table = pd.read_csv(out / f"{stem}_expression.tsv", sep="\t", index_col=0, na_values="n/a")
    image = next((offline / "tpl-MNI152NLin6Asym").glob("*res-02*_dseg.nii.gz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ahba_app.get_expression_data(str(image), data_dir=str(ahba_small))
    np.testing.assert_allclose(table.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)
    sidecar = json.loads((out / f"{stem}_expression.json").read_text())
    assert str(image) in json.dumps(sidecar)


def test_cli_exit_codes(tmp_path, ahba_small, capsys, cli_env, tf_home):
    (tmp_path / "in").mkdir()
    base = [tmp_path / "in", tmp_path / "out", "group", "--ahba-dir", ahba_small,
            "-w", tmp_path / "work"]
    cli_env.delenv("TEMPLATEFLOW_HOME", raising=False)
    code, err = _cli(base + ["--atlas", "Schaefer2018"], capsys)
    assert code == 18 and "TEMPLATEFLOW_HOME is not set" in err and "Traceback" not in err
    cli_env.setenv("TEMPLATEFLOW_HOME", str(tf_home))
    code, err = _cli(base + ["--atlas", "Schaefer2018", "--atlas-desc", "100Parcels7Networks"],
                     capsys)
    assert code == 66 and "api.get(" in err
    code, err = _cli([tmp_path / "nope"] + base[1:], capsys)
    assert code == 66 and "does not exist" in err
    assert not (tmp_path / "out").exists()


def _readme_commands() -> list[list[str]]:
    """The ahba-app commands of the README's TemplateFlow section."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### Atlases from TemplateFlow, offline", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines()
            if line.strip().startswith("ahba-app ")]


def test_readme_templateflow_commands_run(offline, tmp_path, ahba_small, capsys, cli_env):
    """The README's Schaefer 400 volume, Glasser fsLR CIFTI and Schaefer fsaverage6 runs, on
    the synthetic TemplateFlow home and a synthetic HCPMMP1-like CIFTI."""
    commands = _readme_commands()
    assert len(commands) == 3
    glasser = tmp_path / "glasser"
    stf.write_cifti_atlas(glasser / "tpl-fsLR_atlas-HCPMMP1_den-32k_dseg.dlabel.nii")
    stf.write_region_table(glasser / "tpl-fsLR_atlas-HCPMMP1_dseg.tsv")
    (tmp_path / "atlases").mkdir()
    paths = {"/data/atlases": tmp_path / "atlases", "/data/glasser": glasser,
             "/data/ahba": ahba_small}
    expected = ["atlas-Schaefer2018400Parcels7Networks_space-MNI152NLin6Asym_res-01",
                "atlas-HCPMMP1_space-fsLR_den-32k",
                "atlas-Schaefer2018_space-fsaverage_den-41k_seg-7n_scale-400"]
    for n, (command, stem) in enumerate(zip(commands, expected)):
        args = [str(paths.get(a, a)) for a in command[1:]]
        out = tmp_path / f"out{n}"
        args[args.index("out")] = str(out)
        code, err = _cli(args + ["-w", tmp_path / f"work{n}"], capsys)
        assert code == 0, err
        table = out / f"{stem}_desc-abagendefaults_expression.tsv"
        counts = np.loadtxt(out / f"{stem}_desc-abagendefaults_counts.tsv", skiprows=1,
                            delimiter="\t")[:, 1:]
        assert table.is_file() and counts.sum() > 0
        citation = (out / "CITATION.md").read_text()
        # the CIFTI's methods text describes its subcortical voxels too
        assert ("drawn as voxels" in citation) == (stem == expected[1])
