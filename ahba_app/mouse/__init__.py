"""The Allen Mouse Brain Atlas through the Allen Brain Atlas API, as ``abagen.mouse``.

Ten functions with abagen 0.1.3's names, parameters, defaults and returns:

- gene information: :func:`available_gene_info`, :func:`get_gene_info`;
- structures: :func:`available_structure_info`, :func:`get_structure_info`,
  :func:`get_structure_coordinates`;
- expression: :func:`available_unionization_info`, :func:`get_unionization_from_gene`;
- lists: :func:`fetch_allenref_genes`, :func:`fetch_allenref_structures` (queried once, then
  kept in the data folder) and :func:`fetch_rubinov2015_structures` (shipped, offline).

Queries go to ``$AHBA_APP_ALLEN_API`` when set (a mirror), else to https://api.brain-map.org, or
to the ``api_url`` keyword each querying function takes; see :mod:`ahba_app.mouse.rma` for the
timeouts, retries, paging and errors. The sub-modules ``gene``, ``structure``, ``io`` and
``mouse`` have abagen's names, so ``from abagen.mouse import io`` carries over.
"""

from .gene import available_gene_info, get_gene_info
from .io import fetch_allenref_genes, fetch_allenref_structures, fetch_rubinov2015_structures
from .mouse import available_unionization_info, get_unionization_from_gene
from .rma import AllenAPIError, AllenNotFoundError, AllenQueryError
from .structure import (available_structure_info, get_structure_coordinates,
                        get_structure_info)

__all__ = [
    "available_gene_info", "get_gene_info", "available_structure_info", "get_structure_info",
    "get_structure_coordinates", "fetch_allenref_genes", "fetch_allenref_structures",
    "fetch_rubinov2015_structures", "get_unionization_from_gene",
    "available_unionization_info", "AllenAPIError", "AllenNotFoundError", "AllenQueryError",
]
