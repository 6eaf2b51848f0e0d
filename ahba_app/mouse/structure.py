"""Mouse brain structures of the Allen Reference Atlas: information and coordinates."""

from __future__ import annotations

import pandas as pd

from . import rma
from .gene import info_table

__all__ = ["available_structure_info", "get_structure_coordinates", "get_structure_info"]

#: Fields of the Allen API's Structure model that :func:`get_structure_info` can return.
STRUCTURE_ATTRIBUTES = (
    "acronym", "atlas_id", "color_hex_triplet", "depth", "graph_id", "graph_order",
    "hemisphere_id", "id", "name", "neuro_name_structure_id", "neuro_name_structure_id_path",
    "ontology_id", "parent_structure_id", "safe_name", "sphinx_id", "structure_id_path", "weight",
)
#: The Allen Mouse Brain Atlas ontology.
MOUSE_ONTOLOGY = "ontology[id$eq1]"
#: Reference space of each slicing direction.
REFERENCE_SPACES = {"sagittal": 10, "coronal": 9}


def available_structure_info() -> list:
    """The attributes :func:`get_structure_info` can return (a new list each call)."""
    return list(STRUCTURE_ATTRIBUTES)


def get_structure_info(id=None, acronym=None, name=None, attributes=None, verbose=False, *,
                       api_url=None) -> pd.DataFrame:
    """Information about structures of the Allen Mouse Brain Atlas from the Allen API.

    As :func:`ahba_app.mouse.get_gene_info`, for structures: ``id``, ``acronym`` or ``name``
    (one or a list, case sensitive) name them; ``attributes`` are those of
    :func:`available_structure_info` (all when None). Returns one row per structure, indexed
    (and sorted) by the identifier given; an unknown structure raises AllenNotFoundError (a
    ValueError).
    """
    return info_table("structure", "Structure", MOUSE_ONTOLOGY, STRUCTURE_ATTRIBUTES,
                      "available_structure_info", id, acronym, name, attributes, verbose,
                      api_url)


def get_structure_coordinates(id=None, acronym=None, name=None, reference_space="sagittal",
                              verbose=False, *, api_url=None) -> pd.DataFrame:
    """Centre coordinates of structures in the sagittal or coronal reference space.

    Parameters
    ----------
    id, acronym, name : int or str, or a list of them
        The structures (the first given is used).
    reference_space : {'sagittal', 'coronal'}
        The reference space (Allen reference spaces 10 and 9).
    verbose : bool
        Print each query.
    api_url : str, optional
        The Allen API server.

    Returns
    -------
    pandas.DataFrame
        Columns ``structure_id, x, y, z`` (micrometres), one row per centre, by structure id.

    Raises
    ------
    AllenNotFoundError (a ValueError)
        A structure is unknown or has no centre in this reference space.
    """
    if reference_space not in REFERENCE_SPACES:
        raise ValueError(f"reference_space {reference_space!r} is not one of "
                         f"{list(REFERENCE_SPACES)}.")
    space = REFERENCE_SPACES[reference_space]
    field, values = rma.identifiers(id, acronym, name, kind="structure")
    found = []
    for part in rma.chunks(values):
        query = rma.Query("Structure", include=("structure_centers",),
                          criteria=(rma.match(field, part), MOUSE_ONTOLOGY,
                                    f"structure_centers[reference_space_id$eq{space}]"),
                          only=(f"structures.{field}", "structure_centers",
                                "structure_centers.structure_id", "structure_centers.x",
                                "structure_centers.y", "structure_centers.z"),
                          order="structures.id")
        found += rma.rows(query, url=api_url, verbose=verbose)
    lost = rma.missing(values, (row.get(field) for row in found))
    if lost:
        raise rma.not_found("structure", field, lost,
                            f" with a centre in the {reference_space} reference space")
    centres = [c for row in found for c in row.get("structure_centers") or []]
    table = pd.DataFrame(centres, columns=["structure_id", "x", "y", "z"])
    return table.sort_values("structure_id", kind="stable").reset_index(drop=True)
