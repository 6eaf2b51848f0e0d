"""The six AHBA donors and the data files bundled with ahba-app.

Nothing here touches the network: the downloads live in :mod:`ahba_app.fetch`.
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import pandas as pd

# the donor registry and the mesh tuples live below this module (ahba_app.fetch uses them too);
# they are abagen's datasets names as well
from .donors import DONORS, RNASEQ_DONORS, Donor, _UID_TO_ID, check_donors  # noqa: F401
from .geometry import Hemispheres, Surface  # noqa: F401


def _well_known_ids():
    """abagen's ``WELL_KNOWN_IDS``: a nibabel Recoder from donor number or uid to
    ``subj`` (number), ``uid``, ``url`` (microarray archive id), ``t1w`` and ``t2w`` (raw MRI
    ids), all as str; e.g. ``WELL_KNOWN_IDS.t1w['H0351.2001'] == '157722636'``."""
    from nibabel.volumeutils import Recoder

    return Recoder([(d.id, d.uid, str(d.microarray_zip_id), str(d.t1w_id), str(d.t2w_id))
                    for d in DONORS.values()], fields=("subj", "uid", "url", "t1w", "t2w"))


# downloads live in ahba_app.fetch (above this module): reachable here, as in abagen
_FROM_FETCH = ("fetch_microarray", "fetch_rnaseq", "fetch_raw_mri", "fetch_freesurfer",
               "fetch_fsnative")


def _get_dataset_dir(dataset_name: str, data_dir=None, verbose: int = 1) -> str:
    """The folder ``dataset_name`` (e.g. ``"microarray"``) of the data folder, created if needed
    (abagen's ``datasets.utils._get_dataset_dir``). The data folder is ``data_dir``, else
    ``$AHBA_DATA``, ``$ABAGEN_DATA`` or ahba-app's per-user folder
    (:func:`ahba_app.fetch.get_data_dir`); a ``data_dir`` that already ends in ``dataset_name``
    is that folder."""
    from .fetch import get_data_dir

    base = get_data_dir(data_dir)
    folder = base if data_dir is not None and base.name == dataset_name else base / dataset_name
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def __getattr__(name):
    if name in _FROM_FETCH:
        from . import fetch
        return getattr(fetch, name)
    if name in ("fetchers", "utils"):
        # abagen's datasets package has these two modules; here one module holds both
        import sys
        return sys.modules[__name__]
    if name == "WELL_KNOWN_IDS":
        value = globals()["WELL_KNOWN_IDS"] = _well_known_ids()
        return value
    raise AttributeError(f"module 'ahba_app.datasets' has no attribute {name!r}")


def data_path(*parts: str) -> Path:
    """Path of a file bundled in ``ahba_app/data``."""
    return Path(str(resources.files("ahba_app").joinpath("data", *parts)))


def fetch_desikan_killiany(native: bool = False, surface: bool = False, *args, **kwargs) -> dict:
    """The bundled Desikan-Killiany atlas: ``{'image': ..., 'info': ...}``.

    ``image`` is a NIfTI path; with ``surface=True`` a (left, right) pair of GIFTI label paths;
    with ``native=True`` a dict of donor id to the donor-native image (or GIFTI pair).
    ``info`` is the CSV with ``id, label, hemisphere, structure``. Paths are str, as abagen's;
    further arguments are accepted and ignored, as abagen does.
    """
    info = str(data_path("atlas-desikankilliany.csv"))
    if native:
        def one(donor):
            folder = data_path("native_dk", donor)
            if surface:
                return (str(folder / "atlas-desikankilliany-lh.label.gii.gz"),
                        str(folder / "atlas-desikankilliany-rh.label.gii.gz"))
            return str(folder / "atlas-desikankilliany.nii.gz")
        image = {donor: one(donor) for donor in DONORS}
    elif surface:
        image = (str(data_path("atlas-desikankilliany-lh.label.gii.gz")),
                 str(data_path("atlas-desikankilliany-rh.label.gii.gz")))
    else:
        image = str(data_path("atlas-desikankilliany.nii.gz"))
    return {"image": image, "info": info}


def fetch_donor_info() -> pd.DataFrame:
    """Demographics of the six donors: donor, uid, age, sex, ethnicity, medical_conditions, PMI."""
    return pd.read_csv(data_path("donor_info.csv"), dtype={"donor": str})


def fetch_gene_group(group: str) -> list[str]:
    """Gene symbols of one of the Burt et al. (2018) groups, in alphabetical order."""
    with gzip.open(data_path("burt2018_natneuro.csv.gz"), "rt") as handle:
        table = pd.read_csv(handle)
    groups = sorted(table["group"].unique())
    if group.lower() not in groups:
        raise ValueError(f"Unknown gene group {group!r}: choose one of {groups}.")
    return sorted(table.loc[table["group"] == group.lower(), "acronym"])


def fetch_fsaverage5(load: bool = True) -> Hemispheres:
    """The bundled fsaverage5 pial surfaces, as paths or (vertices, faces) per hemisphere."""
    paths = Hemispheres(str(data_path("fsaverage5-pial-lh.surf.gii.gz")),
                        str(data_path("fsaverage5-pial-rh.surf.gii.gz")))
    if not load:
        return paths
    import nibabel as nib

    def read(path):
        vertices, faces = nib.load(path).agg_data()
        return Surface(vertices, faces)
    return Hemispheres(read(paths.lh), read(paths.rh))


def load_reannotated() -> pd.DataFrame:
    """The Arnatkeviciute et al. (2019) probe reannotation table, one row per probe name."""
    return pd.read_csv(data_path("reannotated.csv.gz"))


def load_corrected_mni() -> pd.DataFrame:
    """The alleninf corrected MNI coordinates, indexed by well_id (columns mni_x, mni_y, mni_z)."""
    coords = pd.read_csv(data_path("corrected_mni_coordinates.csv.gz"), index_col="well_id")
    return coords.rename(columns=lambda c: c.replace("corrected_", ""))
