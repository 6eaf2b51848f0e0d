"""Mouse genes: what the Allen API knows about them."""

from __future__ import annotations

import pandas as pd

from . import rma

__all__ = ["available_gene_info", "get_gene_info"]

#: Fields of the Allen API's Gene model that :func:`get_gene_info` can return.
GENE_ATTRIBUTES = (
    "acronym", "alias_tags", "chromosome_id", "ensembl_id", "entrez_id",
    "genomic_reference_update_id", "homologene_id", "id", "legacy_ensembl_gene_id", "name",
    "organism_id", "original_name", "original_symbol", "reference_genome_id", "sphinx_id",
    "version_status",
)
#: The mouse brain in-situ hybridization product of the Allen API.
MOUSE_BRAIN_PRODUCT = "products[id$eq1]"


def available_gene_info() -> list:
    """The attributes :func:`get_gene_info` can return (a new list each call)."""
    return list(GENE_ATTRIBUTES)


def wanted_attributes(attributes, available: tuple, field: str, lister: str) -> list:
    """The requested attributes (all when None), checked, without ``field`` (the index)."""
    if attributes is None:
        attributes = list(available)
    elif isinstance(attributes, str):
        attributes = [attributes]
    else:
        attributes = list(attributes)
    bad = [a for a in attributes if a not in available]
    if bad:
        raise ValueError(f"Unknown attribute(s) {', '.join(map(repr, bad))}: "
                         f"ahba_app.mouse.{lister}() lists the valid ones.")
    return [a for a in dict.fromkeys(attributes) if a != field]


def info_table(kind: str, model: str, scope: str, available: tuple, lister: str, id, acronym,
               name, attributes, verbose: bool, api_url: str | None) -> pd.DataFrame:
    """Rows of ``model`` for the genes or structures given, indexed by the field given."""
    field, values = rma.identifiers(id, acronym, name, kind=kind)
    wanted = wanted_attributes(attributes, available, field, lister)
    found = []
    for part in rma.chunks(values):
        query = rma.Query(model, criteria=(rma.match(field, part), scope),
                          only=tuple(wanted) + (field,), order=f"{model_table(model)}.id")
        found += rma.rows(query, url=api_url, verbose=verbose)
    lost = rma.missing(values, (row.get(field) for row in found))
    if lost:
        raise rma.not_found(kind, field, lost)
    table = pd.DataFrame(found).set_index(field)
    return table[wanted].sort_index()


def model_table(model: str) -> str:
    return {"Gene": "genes", "Structure": "structures", "SectionDataSet": "data_sets"}[model]


def get_gene_info(id=None, acronym=None, name=None, attributes=None, verbose=False, *,
                  api_url=None) -> pd.DataFrame:
    """Information about mouse genes from the Allen API.

    Parameters
    ----------
    id, acronym, name : int or str, or a list of them
        The genes, by numerical id, short symbol or full name (case sensitive); the first
        given is used.
    attributes : str or list, optional
        Attributes to return (see :func:`available_gene_info`); all when None.
    verbose : bool
        Print each query.
    api_url : str, optional
        The Allen API server (default ``$AHBA_APP_ALLEN_API``, else the Allen Institute's).

    Returns
    -------
    pandas.DataFrame
        One row per gene, indexed (and sorted) by the identifier given, one column per
        attribute.

    Raises
    ------
    AllenNotFoundError (a ValueError)
        A gene is not in the Allen API; ValueError for an unknown attribute.
    """
    return info_table("gene", "Gene", MOUSE_BRAIN_PRODUCT, GENE_ATTRIBUTES,
                      "available_gene_info", id, acronym, name, attributes, verbose, api_url)
