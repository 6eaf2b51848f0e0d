"""fetch_raw_mri, fetch_freesurfer and fetch_fsnative against a server on 127.0.0.1 that serves
synthetic files in the real layouts (tests/conftest.py::ahba_anatomy)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ahba_app import datasets, fetch
from test_fetch import closed_port_url, server  # noqa: F401  (the server fixture)

pytestmark = pytest.mark.network

MRI_IDS = {d: (datasets.DONORS[d].t1w_id, datasets.DONORS[d].t2w_id) for d in ("12876", "15496")}
FS_PATH = "bitstream/handle/1810/265272/donor{}.zip"


def entries(folder: Path) -> list[str]:
    """What a fetch left in ``folder`` besides its lock file (no archives, parts or scratch)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != ".ahba-app.lock")


@pytest.fixture
def published(server, ahba_anatomy):  # noqa: F811
    """The anatomy downloads of both donors on the test server."""
    shutil.copytree(ahba_anatomy / "mirror", server.root, dirs_exist_ok=True)
    return server


def test_raw_mri_download(published, tmp_path, ahba_anatomy):
    files = fetch.fetch_raw_mri(data_dir=tmp_path, donors=["15496", "H0351.1009"], verbose=0,
                                n_proc=2)
    assert list(files) == ["12876", "15496"]
    for donor, paths in files.items():
        assert paths == {"t1w": str(tmp_path / "mri" / f"mri_donor{donor}" / "T1.nii.gz"),
                         "t2w": str(tmp_path / "mri" / f"mri_donor{donor}" / "T2.nii.gz")}
        source = ahba_anatomy / "mri" / f"mri_donor{donor}"
        assert Path(paths["t1w"]).read_bytes() == (source / "T1.nii.gz").read_bytes()
        assert Path(paths["t2w"]).read_bytes() == (source / "T2.nii.gz").read_bytes()
    assert entries(tmp_path / "mri") == ["mri_donor12876", "mri_donor15496"]
    hits = len(published.hits)
    assert fetch.fetch_raw_mri(data_dir=tmp_path, donors="12876", verbose=0) == \
        {"12876": files["12876"]}
    assert len(published.hits) == hits           # on disk: no request at all
    assert datasets.fetch_raw_mri is fetch.fetch_raw_mri


def test_freesurfer_download_and_fsnative(published, tmp_path):
    folders = fetch.fetch_freesurfer(data_dir=tmp_path, donors="12876", verbose=0)
    folder = tmp_path / "freesurfer" / "donor12876"
    assert folders == {"12876": str(folder)}
    assert (folder / "mri" / "orig.mgz").is_file() and (folder / "surf" / "rh.white").is_file()
    assert entries(tmp_path / "freesurfer") == ["donor12876"]
    brain = datasets.fetch_fsnative("12876", data_dir=tmp_path, verbose=0)
    atlas = datasets.fetch_desikan_killiany(native=True, surface=True)["image"]["12876"]
    for hemi, path in zip(brain, atlas):
        with gzip.open(path) as handle:
            labels = nib.GiftiImage.from_bytes(handle.read()).agg_data()
        assert hemi.vertices.shape == (len(labels), 3) and hemi.faces.shape[1] == 3
    paths = datasets.fetch_fsnative(["12876"], surf="white", load=False, data_dir=tmp_path)
    assert paths.lh == str(folder / "surf" / "lh.white")
    # donors=None is donor 12876, as in abagen: nothing else is fetched
    assert datasets.fetch_fsnative(None, load=False, data_dir=tmp_path).rh == \
        str(folder / "surf" / "rh.pial")
    assert entries(tmp_path / "freesurfer") == ["donor12876"]
    with pytest.raises(ValueError, match="surface 'midthickness'"):
        datasets.fetch_fsnative("12876", surf="midthickness", data_dir=tmp_path)


def test_cut_download_resumes(published, tmp_path):
    published.cuts = 2
    files = fetch.fetch_freesurfer(data_dir=tmp_path, donors="15496", verbose=0)
    assert Path(files["15496"], "surf", "lh.pial").is_file()
    ranges = [rng for path, rng, _ in published.hits if path.endswith("donor15496.zip")]
    assert ranges[0] is None and all(r.startswith("bytes=") for r in ranges[1:])
    assert len(ranges) == 3


def test_bad_archive_and_bad_image_leave_nothing(published, tmp_path):
    (published.root / FS_PATH.format("12876")).write_bytes(b"not an archive" * 100)
    with pytest.raises(fetch.AHBAArchiveError, match="is not a zip or tar archive.*deleted"):
        fetch.fetch_freesurfer(data_dir=tmp_path, donors="12876", verbose=0)
    assert entries(tmp_path / "freesurfer") == []
    t1w = published.root / "api/v2/well_known_file_download" / str(MRI_IDS["12876"][0])
    t1w.write_bytes(gzip.compress(b"\0" * 400))
    with pytest.raises(fetch.AHBAArchiveError, match="not a gzipped NIfTI"):
        fetch.fetch_raw_mri(data_dir=tmp_path, donors="12876", verbose=0)
    assert entries(tmp_path / "mri") == []


def test_archive_lacking_the_reconstruction(published, tmp_path):
    import zipfile

    with zipfile.ZipFile(published.root / FS_PATH.format("12876"), "w") as handle:
        handle.writestr("donor12876/surf/lh.pial", b"x")
    with pytest.raises(fetch.AHBAArchiveError, match="lacks mri/orig.mgz, surf/rh.pial"):
        fetch.fetch_freesurfer(data_dir=tmp_path, donors="12876", verbose=0)
    assert entries(tmp_path / "freesurfer") == []


def test_offline_fails_at_once_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("AHBA_APP_MIRROR", closed_port_url())
    with pytest.raises(fetch.AHBADownloadError) as err:
        fetch.fetch_freesurfer(data_dir=tmp_path, donors="12876", verbose=0)
    text = str(err.value)
    assert "FreeSurfer files of donor 12876 are missing" in text
    assert "could not be reached" in text and "--freesurfer" in text
    assert "bitstream/handle/1810/265272/donor<N>.zip" in text
    assert entries(tmp_path / "freesurfer") == []


def test_well_known_ids_as_abagen():
    ids = datasets.WELL_KNOWN_IDS
    assert ids.t1w["9861"] == "157722636" and ids.t2w["H0351.1015"] == "162021644"
    assert ids.subj["H0351.1012"] == "14380" and ids.url["15697"] == "178236545"
    assert fetch.freesurfer_url("9861").endswith("/1810/265272/donor9861.zip")


def test_command_line_fetches_mri(published, tmp_path, capsys):
    assert fetch.main(["--data-dir", str(tmp_path), "--mri", "--donors", "12876", "-q"]) == 0
    assert capsys.readouterr().out.split() == ["12876", str(tmp_path / "mri" / "mri_donor12876")]
    assert np.asarray(nib.load(tmp_path / "mri/mri_donor12876/T1.nii.gz").dataobj).any()
