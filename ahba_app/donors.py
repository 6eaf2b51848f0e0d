"""The six AHBA donors: their numbers, Allen uids and the Allen ids of their downloads.

Below :mod:`ahba_app.datasets` (which re-exports these names, as abagen's ``datasets`` does)
and :mod:`ahba_app.fetch`, which both use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .options import DEFAULTS
__all__ = ["DONORS", "RNASEQ_DONORS", "Donor", "check_donors"]


@dataclass(frozen=True)
class Donor:
    """One AHBA donor: its number, its Allen uid and the Allen ids of its downloads."""

    id: str
    uid: str
    microarray_zip_id: int
    rnaseq_zip_id: int | None
    n_samples: int
    t1w_id: int   # the raw T1-weighted MRI (a gzipped NIfTI, Allen "well known file")
    t2w_id: int   # the raw T2-weighted MRI


#: The six AHBA donors in the order the Allen Institute lists them.
DONORS: dict[str, Donor] = {
    d.id: d
    for d in (
        Donor("9861", "H0351.2001", 178238387, 278447594, 946, 157722636, 157722638),
        Donor("10021", "H0351.2002", 178238373, 278448166, 893, 157723301, 157723303),
        Donor("12876", "H0351.1009", 178238359, None, 363, 157722290, 157722292),
        Donor("14380", "H0351.1012", 178238316, None, 529, 157721937, 157721939),
        Donor("15496", "H0351.1015", 178238266, None, 470, 162021642, 162021644),
        Donor("15697", "H0351.1016", 178236545, None, 501, 157682966, 157682968),
    )
}

#: Donors with RNA-seq data (used by ``probe_selection='rnaseq'``).
RNASEQ_DONORS = tuple(d.id for d in DONORS.values() if d.rnaseq_zip_id is not None)

_UID_TO_ID = {d.uid: d.id for d in DONORS.values()}


def check_donors(donors: str | int | Iterable[str | int] | None = DEFAULTS["donors"],
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
