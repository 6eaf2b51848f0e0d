"""ahba-app as abagen: module names, types and defaults of abagen 0.1.3's documented API."""

from __future__ import annotations

import importlib
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import ahba_app
import ahba_app as abagen


def test_abagen_module_names_are_attributes():
    for name in ("allen", "correct", "datasets", "images", "io", "matching", "reporting",
                 "transforms", "utils"):
        assert getattr(abagen, name) is importlib.import_module(f"ahba_app.{name}")
    assert abagen.io.read_annotation is ahba_app.io.read_annotation
    assert abagen.allen.get_expression_data is ahba_app.get_expression_data
    assert abagen.allen.datasets is ahba_app.datasets
    from ahba_app.datasets import fetch_microarray, fetch_rnaseq, WELL_KNOWN_IDS  # noqa: F401
    assert fetch_microarray is ahba_app.fetch.fetch_microarray
    assert abagen.Report is abagen.reporting.Report
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        abagen.datasets.nonsense


def test_datasets_sub_module_names(tmp_path, monkeypatch):
    """abagen.datasets.fetchers and abagen.datasets.utils (what abagen's own tests import)."""
    from ahba_app.datasets import fetchers, utils

    assert fetchers.fetch_raw_mri is ahba_app.fetch.fetch_raw_mri
    assert fetchers.fetch_gene_group is ahba_app.datasets.fetch_gene_group
    monkeypatch.setenv("ABAGEN_DATA", str(tmp_path / "abagen"))
    folder = utils._get_dataset_dir("microarray", verbose=0)
    assert folder == str(tmp_path / "abagen" / "microarray") and (tmp_path / "abagen").is_dir()
    assert utils._get_dataset_dir("microarray", data_dir=folder) == folder
    monkeypatch.setenv("AHBA_DATA", str(tmp_path / "ahba"))   # ahba-app's variable first
    assert utils._get_dataset_dir("mri") == str(tmp_path / "ahba" / "mri")
    monkeypatch.delenv("AHBA_DATA")
    monkeypatch.delenv("ABAGEN_DATA")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert utils._get_dataset_dir("mri") == str(tmp_path / "xdg" / "ahba-app" / "mri")


def test_bundled_paths_are_str_and_extra_arguments_accepted():
    dk = abagen.fetch_desikan_killiany(False, False, "ignored", also="ignored")
    assert isinstance(dk["image"], str) and isinstance(dk["info"], str)
    native = abagen.fetch_desikan_killiany(native=True, surface=True)["image"]
    assert all(isinstance(p, str) for pair in native.values() for p in pair)
    assert all(isinstance(p, str) for p in abagen.fetch_fsaverage5(load=False))


def test_gene_groups_are_sorted():
    for group in ("brain", "neuron", "oligodendrocyte", "synaptome", "layers"):
        genes = abagen.fetch_gene_group(group)
        assert genes == sorted(genes) and len(genes) > 0


def test_utils_helpers():
    files = {"9861": {"probes": "a"}, "10021": {"probes": "b", "pacall": "c"}}
    assert abagen.utils.flatten_dict(files, "pacall") == {"9861": None, "10021": "c"}
    assert abagen.utils.first_entry(files, "probes") == "a"
    assert abagen.utils.first_entry(["x", "y"]) == "x"


def test_check_img_and_missing_paths():
    img = abagen.images.check_img(nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)))
    assert img.get_data_dtype() == np.int32
    with pytest.raises(ValueError, match="not integers|non-integer"):
        abagen.images.check_img(nib.Nifti1Image(np.full((3, 3, 3), 0.5), np.eye(4)))
    for call in (lambda: abagen.images.check_img("nope.nii.gz"),
                 lambda: abagen.check_atlas("nope.nii.gz")):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(FileNotFoundError, match="nope.nii.gz does not exist"):
        abagen.check_atlas("nope.nii.gz")


def test_annot_unlabelled_vertices_become_background(tmp_path):
    path = tmp_path / "lh.test.annot"
    ctab = np.array([[25, 5, 25, 0, 0], [200, 100, 40, 0, 0]])
    nib.freesurfer.write_annot(str(path), np.array([-1, 0, 1, 1, -1]), ctab,
                               [b"regiona", b"regionb"], fill_ctab=True)
    gii = abagen.images.annot_to_gifti(str(path))
    assert gii.agg_data().tolist() == [0, 1, 2, 2, 0]   # ids shifted to keep 0 for -1
    assert gii.labeltable.get_labels_as_dict()[1] == "regiona"


def test_majority_vote_with_atlas_info_and_plain_coordinates():
    """Two of the voxels around the sample are region 1, one is region 2, whose centroid is
    nearer: the majority wins, with or without atlas_info (abagen drops the vote with it)."""
    data = np.zeros((9, 9, 9), dtype=np.int32)
    data[5, 4, 4] = data[4, 5, 4] = 1
    data[8, 8, 8] = 1                    # pulls region 1's centroid away
    data[3, 4, 4] = 2
    tree = abagen.AtlasTree(nib.Nifti1Image(data, np.eye(4)), group_atlas=False)
    point = [[4.0, 4.0, 4.0]]
    assert tree.label_samples(point, tolerance=1)["label"].tolist() == [1]
    tree.atlas_info = pd.DataFrame({"id": [1, 2], "hemisphere": ["L", "L"],
                                    "structure": ["cortex", "cortex"]})
    assert tree.label_samples(point, tolerance=1)["label"].tolist() == [1]


def test_check_label_as_abagen():
    sample = pd.DataFrame({"hemisphere": ["R", "R", "L"], "structure": ["cortex"] * 3})
    atlas = pd.DataFrame({"hemisphere": ["R", "L", "B"], "structure": ["cortex"] * 3},
                         index=pd.Index([1, 2, 3], name="id"))
    assert abagen.matching._check_label([1, 2, 3], sample, atlas).tolist() == [1, 0, 3]
    assert abagen.matching._check_label([1, 2, 3], sample[["hemisphere"]], atlas).tolist() \
        == [1, 2, 3]


def test_report_methods_text_and_helpers():
    dk = abagen.fetch_desikan_killiany()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        body = abagen.reporting.Report(dk["image"], dk["info"], lr_mirror="bidirectional",
                                       missing="centroids").gen_report()
        surf = abagen.reporting.Report(*abagen.fetch_desikan_killiany(surface=True).values())
    assert "Desikan-Killiany atlas" in body and "(83 regions)" in body
    assert "mirrored" in body or "opposite hemisphere" in body
    assert "centroid" in body and "(68 regions)" in surf.body and surf.body != body
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        counted = abagen.reporting.Report(dk["image"], dk["info"], n_probes=1234, n_genes=987)
    assert "987" in counted.body and "1,234" in counted.body and "987" not in body
    assert abagen.reporting._sanitize_text("a\n\n<br> b\n  c ") == "a \n\nb c"
    demo = abagen.reporting._get_donor_demographics(["9861", "10021"])
    assert demo["n_donors"] == 2 and demo["n_female"] == 0 and demo["min"] == 24
    assert abagen.reporting._add_references("nothing cited") == ""
    assert "Arnatkevi" in abagen.reporting._add_references("as in [A2019N]")
