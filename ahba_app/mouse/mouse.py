"""Mouse gene expression by structure: the Allen API's "structure unionizes".

Each in-situ hybridization experiment (an Allen "SectionDataSet") of a gene, cut in the sagittal
or coronal plane, has expression figures summed over every structure of the reference atlas.
:func:`get_unionization_from_gene` finds a gene's experiments in one plane and returns those
figures for the structures asked for, averaged over experiments or one row per experiment.
"""

from __future__ import annotations

import numbers
import warnings

import pandas as pd

from . import rma
from .gene import MOUSE_BRAIN_PRODUCT
from .io import fetch_allenref_structures, fetch_rubinov2015_structures

__all__ = ["available_unionization_info", "get_unionization_from_gene"]

#: The expression figures of one structure in one experiment.
_UNIONIZATION_ATTRIBUTES = (
    "expression_density", "expression_energy", "sum_expressing_pixel_intensity",
    "sum_expressing_pixels", "sum_pixel_intensity", "sum_pixels", "voxel_energy_cv",
    "voxel_energy_mean",
)
UNIONIZATION_ATTRIBUTES = _UNIONIZATION_ATTRIBUTES
DIRECTIONS = ("sagittal", "coronal")
#: Structure ids per unionization query.
STRUCTURES_PER_QUERY = 200


def available_unionization_info() -> list:
    """The attributes :func:`get_unionization_from_gene` can return (a new list each call)."""
    return list(UNIONIZATION_ATTRIBUTES)


def _check_direction(slicing_direction) -> None:
    if slicing_direction not in DIRECTIONS:
        raise ValueError(f"slicing_direction {slicing_direction!r} is not one of "
                         f"{list(DIRECTIONS)}.")


def _measures(attributes) -> list:
    if attributes is None:
        return ["expression_density"]
    if isinstance(attributes, str):
        attributes = list(UNIONIZATION_ATTRIBUTES) if attributes == "all" else [attributes]
    attributes = list(dict.fromkeys(attributes))
    bad = [a for a in attributes if a not in UNIONIZATION_ATTRIBUTES]
    if bad or not attributes:
        raise ValueError(f"Unknown unionization attribute(s) {', '.join(map(repr, bad))}: "
                         f"ahba_app.mouse.available_unionization_info() lists the valid ones "
                         f"('all' asks for every one).")
    return attributes


def structure_ids(structures=None, *, data_dir=None, api_url=None) -> list:
    """Structure ids of ``structures`` (ids, acronyms or names); Rubinov 2015's when None.

    Acronyms and names are looked up in :func:`fetch_allenref_structures` (kept in the data
    folder after the first query); one that matches nothing is an error.
    """
    if structures is None:
        return fetch_rubinov2015_structures(entry_type="id")
    if isinstance(structures, (str, numbers.Integral)):
        structures = [structures]
    structures = list(structures)
    if not structures:
        raise ValueError("structures= is empty: give structure ids, acronyms or names, or None "
                         "for the structures of Rubinov et al. (2015).")
    lookup: dict = {}
    if any(isinstance(s, str) for s in structures):
        table = fetch_allenref_structures(data_dir=data_dir, verbose=False, api_url=api_url)
        for column in ("acronym", "name"):
            for value, sid in zip(table[column], table["id"]):
                lookup.setdefault(value, []).append(int(sid))
    out, unknown = [], []
    for item in structures:
        if isinstance(item, str) and item in lookup:
            out += lookup[item]
        elif isinstance(item, str) and not item.strip().lstrip("-").isdigit():
            unknown.append(item)
        else:
            out.append(rma._as_id(item))
    if unknown:
        raise rma.not_found("structure", "acronym or name", unknown)
    return list(dict.fromkeys(out))


def _experiments(id, acronym, name, slicing_direction, verbose, api_url) -> list:
    """Ids of the experiments (not failed, mouse brain) of the genes given, in one plane."""
    _check_direction(slicing_direction)
    field, values = rma.identifiers(id, acronym, name, kind="gene")
    found = []
    for part in rma.chunks(values):
        query = rma.Query("SectionDataSet", include=("genes",),
                          criteria=("[failed$eqfalse]", MOUSE_BRAIN_PRODUCT,
                                    "genes" + rma.match(field, part),
                                    f"plane_of_section[name$eq{rma.literal(slicing_direction)}]"),
                          only=("data_sets.id", "genes", f"genes.{field}"), order="data_sets.id")
        found += rma.rows(query, url=api_url, verbose=verbose)
    genes = {gene.get(field) for row in found for gene in row.get("genes") or []}
    lost = rma.missing(values, genes)
    if len(lost) == len(values):
        raise rma.not_found("gene", field, lost, f" with {slicing_direction} experiments")
    if lost:
        warnings.warn(f"No {slicing_direction} experiments for the gene(s) with {field} "
                      f"{', '.join(map(repr, lost))} (unknown, or not cut in this plane): "
                      f"they are left out.", stacklevel=3)
    return list(dict.fromkeys(row["id"] for row in found))


def _get_experiments_from_gene(id=None, acronym=None, name=None, slicing_direction="sagittal",
                               verbose=False, *, api_url=None) -> list:
    """Ids of the Allen experiments of the genes given (one of ``id``, ``acronym``, ``name``)
    cut in ``slicing_direction``."""
    return _experiments(id, acronym, name, slicing_direction, verbose, api_url)


def _get_unionization_from_experiment(experiment_id, structures=None, attributes=None,
                                      average=True, verbose=False, *, data_dir=None,
                                      api_url=None) -> pd.DataFrame:
    """Unionization figures of experiment(s) ``experiment_id`` (see
    :func:`get_unionization_from_gene`)."""
    if isinstance(experiment_id, (str, numbers.Integral)):
        experiment_id = [experiment_id]
    experiments = list(dict.fromkeys(rma._as_id(e) for e in experiment_id))
    if not experiments:
        raise ValueError("experiment_id is empty.")
    wanted = structure_ids(structures, data_dir=data_dir, api_url=api_url)
    measures = _measures(attributes)
    per_experiment: dict = {}
    for exp_part in rma.chunks(experiments):
        for st_part in rma.chunks(wanted, STRUCTURES_PER_QUERY):
            query = rma.Query(
                "SectionDataSet", include=("structure_unionizes", "genes"),
                criteria=(rma.match("id", exp_part), MOUSE_BRAIN_PRODUCT,
                          "structure_unionizes" + rma.match("structure_id", st_part)),
                only=("data_sets.id", "genes", "genes.id", "structure_unionizes",
                      "structure_unionizes.structure_id",
                      *(f"structure_unionizes.{m}" for m in measures)),
                order="data_sets.id")
            for row in rma.rows(query, url=api_url, verbose=verbose):
                genes = row.get("genes") or [{}]
                _, unionizes = per_experiment.setdefault(row["id"], (genes[0].get("id"), []))
                unionizes += row.get("structure_unionizes") or []
    records = [{"gene_id": gene, "experiment_id": exp, **unionize}
               for exp, (gene, unionizes) in per_experiment.items() for unionize in unionizes]
    if not records:
        shown = ", ".join(map(str, experiments[:10]))
        raise rma.AllenNotFoundError(f"No unionization data in the Allen API for experiment(s) "
                                     f"{shown} in the structures asked for.")
    table = pd.DataFrame(records, columns=["gene_id", "experiment_id", "structure_id",
                                           *measures])
    absent = rma.missing(wanted, table["structure_id"].tolist())
    if absent:
        warnings.warn(f"No unionization data for structure(s) {', '.join(map(str, absent[:10]))}"
                      f"{' ...' if len(absent) > 10 else ''} in these experiments.",
                      stacklevel=3)
    if average:
        return table.groupby(["gene_id", "structure_id"])[measures].mean()
    return table.set_index(["gene_id", "experiment_id", "structure_id"])[measures]


def get_unionization_from_gene(id=None, acronym=None, name=None, slicing_direction="sagittal",
                               structures=None, attributes=None, average=True, verbose=False, *,
                               data_dir=None, api_url=None) -> pd.DataFrame:
    """Expression figures of mouse genes in brain structures (Allen "structure unionizes").

    Parameters
    ----------
    id, acronym, name : int or str, or a list of them
        The genes (the first given is used), case sensitive.
    slicing_direction : {'sagittal', 'coronal'}
        The plane of the experiments used.
    structures : list, optional
        Structure ids, acronyms or names (acronyms are not always unique: ids are safer); the
        56 structures of Rubinov et al. (2015) when None.
    attributes : str or list, optional
        Figures to return (see :func:`available_unionization_info`); ``'all'`` for every one;
        ``expression_density`` when None.
    average : bool
        Average the experiments of each gene (index ``gene_id, structure_id``); else one row
        per experiment (index ``gene_id, experiment_id, structure_id``).
    verbose : bool
        Print each query.
    data_dir : str, optional
        The data folder where the structure list used to look up acronyms and names is kept.
    api_url : str, optional
        The Allen API server (default ``$AHBA_APP_ALLEN_API``, else the Allen Institute's).

    Returns
    -------
    pandas.DataFrame
        One column per attribute.

    Raises
    ------
    AllenNotFoundError (a ValueError)
        None of the genes has experiments in this plane (genes of a list that have none are
        left out with a warning), or a structure acronym or name is unknown.
    """
    _check_direction(slicing_direction)
    wanted = structure_ids(structures, data_dir=data_dir, api_url=api_url)
    measures = _measures(attributes)
    experiments = _experiments(id, acronym, name, slicing_direction, verbose, api_url)
    return _get_unionization_from_experiment(experiments, structures=wanted, attributes=measures,
                                             average=average, verbose=verbose,
                                             data_dir=data_dir, api_url=api_url)
