"""The six AHBA donors and the data files bundled with ahba-app.

Nothing here touches the network: the downloads live in :mod:`ahba_app.fetch`.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, NamedTuple

import pandas as pd


@dataclass(frozen=True)
class Donor:
    """One AHBA donor: its number, its Allen uid and the Allen ids of its zip archives."""

    id: str
    uid: str
    microarray_zip_id: int
    rnaseq_zip_id: int | None
    n_samples: int


#: The six AHBA donors in the order the Allen Institute lists them.
DONORS: dict[str, Donor] = {
    d.id: d
    for d in (
        Donor("9861", "H0351.2001", 178238387, 278447594, 946),
        Donor("10021", "H0351.2002", 178238373, 278448166, 893),
        Donor("12876", "H0351.1009", 178238359, None, 363),
        Donor("14380", "H0351.1012", 178238316, None, 529),
        Donor("15496", "H0351.1015", 178238266, None, 470),
        Donor("15697", "H0351.1016", 178236545, None, 501),
    )
}

#: Donors with RNA-seq data (used by ``probe_selection='rnaseq'``).
RNASEQ_DONORS = tuple(d.id for d in DONORS.values() if d.rnaseq_zip_id is not None)

_UID_TO_ID = {d.uid: d.id for d in DONORS.values()}


def check_donors(donors: str | int | Iterable[str | int] | None = "all",
                 default: str | Iterable[str] = "all",
                 valid: Iterable[str] | None = None) -> list[str]:
    """Return donor numbers (as strings) for ``donors``, which may mix numbers and uids.

    ``'all'`` (or ``None``, which means ``default``) gives every donor in ``valid``
    (all six by default). An unknown donor raises a ValueError naming it and the valid ones.
    """
    valid = list(DONORS) if valid is None else [str(v) for v in valid]
    if donors is None:
        donors = default
    if isinstance(donors, (str, int)):
        donors = [donors]
    donors = [str(d) for d in donors]
    if "all" in donors:
        return list(valid)
    out = []
    for donor in donors:
        donor_id = _UID_TO_ID.get(donor, donor)
        if donor_id not in valid:
            choices = ", ".join(f"{v} ({DONORS[v].uid})" for v in valid)
            raise ValueError(f"Unknown AHBA donor {donor!r}: valid donors are {choices}, or 'all'.")
        if donor_id not in out:
            out.append(donor_id)
    return out


def data_path(*parts: str) -> Path:
    """Path of a file bundled in ``ahba_app/data``."""
    return Path(str(resources.files("ahba_app").joinpath("data", *parts)))


def fetch_desikan_killiany(native: bool = False, surface: bool = False) -> dict:
    """The bundled Desikan-Killiany atlas: ``{'image': ..., 'info': ...}``.

    ``image`` is a NIfTI path; with ``surface=True`` a (left, right) pair of GIFTI label paths;
    with ``native=True`` a dict of donor id to the donor-native image (or GIFTI pair).
    ``info`` is the CSV with ``id, label, hemisphere, structure``.
    """
    info = data_path("atlas-desikankilliany.csv")
    if native:
        def one(donor):
            folder = data_path("native_dk", donor)
            if surface:
                return (folder / "atlas-desikankilliany-lh.label.gii.gz",
                        folder / "atlas-desikankilliany-rh.label.gii.gz")
            return folder / "atlas-desikankilliany.nii.gz"
        image = {donor: one(donor) for donor in DONORS}
    elif surface:
        image = (data_path("atlas-desikankilliany-lh.label.gii.gz"),
                 data_path("atlas-desikankilliany-rh.label.gii.gz"))
    else:
        image = data_path("atlas-desikankilliany.nii.gz")
    return {"image": image, "info": info}


def fetch_donor_info() -> pd.DataFrame:
    """Demographics of the six donors: donor, uid, age, sex, ethnicity, medical_conditions, PMI."""
    return pd.read_csv(data_path("donor_info.csv"), dtype={"donor": str})


def fetch_gene_group(group: str) -> list[str]:
    """Gene symbols of one of the Burt et al. (2018) groups."""
    with gzip.open(data_path("burt2018_natneuro.csv.gz"), "rt") as handle:
        table = pd.read_csv(handle)
    groups = sorted(table["group"].unique())
    if group.lower() not in groups:
        raise ValueError(f"Unknown gene group {group!r}: choose one of {groups}.")
    return table.loc[table["group"] == group.lower(), "acronym"].tolist()


class Surface(NamedTuple):
    vertices: object
    faces: object


class Hemispheres(NamedTuple):
    lh: object
    rh: object


def fetch_fsaverage5(load: bool = True) -> Hemispheres:
    """The bundled fsaverage5 pial surfaces, as paths or (vertices, faces) per hemisphere."""
    paths = Hemispheres(data_path("fsaverage5-pial-lh.surf.gii.gz"),
                        data_path("fsaverage5-pial-rh.surf.gii.gz"))
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
