"""A command-line run over several atlases (a batch) gives each atlas the tables a run over that
atlas alone gives, byte for byte, while the atlases that keep the same samples share their
donors' normalization (interfaces._files.SharedTables)."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from ahba_app.cli import run as cli_run
from ahba_app.datasets import fetch_desikan_killiany
from ahba_app.interfaces._files import SharedTables, read_frame

from test_bids import dk_table

DONORS = ["9861", "10021"]
SPACE = "tpl-MNI152NLin6Asym_res-01"


def _atlas(folder, label, image, table):
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{SPACE}_atlas-{label}_dseg"
    nib.save(image, str(stem) + ".nii.gz")
    table.to_csv(str(stem) + ".tsv", sep="\t", index=False)


def _atlases():
    """DK; DK renumbered (the same samples matched: the same normalization); DK without the
    left cortex (other samples kept: a normalization of its own)."""
    dk = nib.load(fetch_desikan_killiany()["image"])
    data = np.asarray(dk.dataobj).astype(np.int32)
    table = dk_table()
    shifted = np.where(data > 0, data + 100, 0).astype(np.int32)
    left_cortex = table.loc[(table["hemisphere"] == "L") & (table["structure"] == "cortex"),
                            "index"].to_numpy()
    cut = np.where(np.isin(data, left_cortex), 0, data).astype(np.int32)
    return {
        "DK": (nib.Nifti1Image(data, dk.affine), table),
        "DKshift": (nib.Nifti1Image(shifted, dk.affine), table.assign(index=table["index"] + 100)),
        "DKcut": (nib.Nifti1Image(cut, dk.affine),
                  table[~table["index"].isin(left_cortex)].reset_index(drop=True)),
    }


def _run(inp, out, work, ahba_small):
    code = cli_run.main([str(inp), str(out), "group", "--ahba-dir", str(ahba_small), "-w",
                         str(work), "--participant-label", *DONORS])
    assert code == 0


@pytest.fixture(scope="module")
def batch(tmp_path_factory, ahba_small):
    base = tmp_path_factory.mktemp("batch")
    atlases = _atlases()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(base / "home"))
        for var in ("NIPYPE_CONFIG_DIR", "AHBA_DATA", "ABAGEN_DATA"):
            mp.delenv(var, raising=False)
        for label, (image, table) in atlases.items():
            _atlas(base / "all", label, image, table)
            _atlas(base / f"in-{label}", label, image, table)
            _run(base / f"in-{label}", base / f"out-{label}", base / f"work-{label}", ahba_small)
        _run(base / "all", base / "out-all", base / "work-all", ahba_small)
    return base, list(atlases)


def test_a_batch_writes_the_tables_of_separate_runs_byte_for_byte(batch):
    base, labels = batch
    compared = 0
    for label in labels:
        alone = sorted((base / f"out-{label}").glob("*.tsv"))
        assert {p.name.split("_desc-")[1] for p in alone} >= {
            "abagendefaults_expression.tsv", "abagendefaults_counts.tsv",
            "abagendefaults_probes.tsv", "abagendefaults_genes.tsv"}
        for path in alone:
            assert (base / "out-all" / path.name).read_bytes() == path.read_bytes(), path.name
            compared += 1
    assert compared == 4 * len(labels)


def test_atlases_keeping_the_same_samples_share_their_normalization(batch):
    base, labels = batch
    shared = base / "work-all" / "ahba_wf" / "shared_normalized"
    entries = sorted(p for p in shared.iterdir() if not p.name.startswith("."))
    # DK and DKshift keep the same samples of each donor, DKcut others
    assert len(entries) == 2 * len(DONORS)
    for entry in entries:
        assert sorted(p.stem for p in entry.iterdir()) == ["annotation", "normalized"]
    used = {}
    for label in labels:
        flow = next((base / "work-all" / "ahba_wf").glob(f"atlas_{label}_*_wf"))
        from nipype.utils.filemanip import loadpkl

        result = loadpkl(next((flow / "normalize").glob("result_*.pklz")))
        used[label] = list(result.outputs.expression)
    assert used["DK"] == used["DKshift"]
    assert not set(used["DK"]) & set(used["DKcut"])
    assert all(str(shared) in path for paths in used.values() for path in paths)


def test_shared_tables_key_on_content_options_and_arrays(tmp_path):
    import pandas as pd

    store = SharedTables(tmp_path / "store")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("[1]")
    b.write_text("[1]")
    key = store.key(files=[a], arrays=[np.arange(3)], options={"gene_norm": "srs"})
    assert key == store.key(files=[b], arrays=[np.arange(3)], options={"gene_norm": "srs"})
    assert key != store.key(files=[a], arrays=[np.arange(4)], options={"gene_norm": "srs"})
    assert key != store.key(files=[a], arrays=[np.arange(3)], options={"gene_norm": None})
    b.write_text("[2]")
    assert key != store.key(files=[b], arrays=[np.arange(3)], options={"gene_norm": "srs"})
    assert store.find(key) is None
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    found = store.add(key, {"normalized": frame})
    assert list(found) == ["normalized"]
    pd.testing.assert_frame_equal(read_frame(found["normalized"]), frame)
    # a second writer of the same entry keeps the first one, and leaves nothing behind
    assert store.add(key, {"normalized": frame}) == found
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [key]
    shutil.rmtree(tmp_path / "store")
