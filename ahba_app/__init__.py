"""ahba-app: Allen Human Brain Atlas microarray data to region x gene tables.

The public API mirrors abagen's, so that ``import ahba_app as abagen`` runs scripts written for
abagen. Importing this package has no side effects: no network, no configuration, no threads.
"""

from ._version import __version__
from .datasets import (DONORS, fetch_desikan_killiany, fetch_donor_info, fetch_fsaverage5,
                       fetch_gene_group)

__all__ = [
    "__version__",
    "DONORS",
    "fetch_desikan_killiany",
    "fetch_donor_info",
    "fetch_fsaverage5",
    "fetch_gene_group",
]
