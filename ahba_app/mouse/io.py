"""Lists of mouse genes and structures: the Allen reference lists (cached) and Rubinov 2015.

``fetch_allenref_genes`` and ``fetch_allenref_structures`` query the Allen API once and keep the
table as a CSV in ``<data folder>/allenmouse/`` (``reference_genes.csv``,
``reference_atlas.csv``, the names abagen uses, so abagen's folder is reused). Later calls read
the CSV and never touch the network; the folder may then be read-only. The data folder is the
``data_dir`` argument (or that folder itself when it is named ``allenmouse``), else
``$AHBA_DATA``, else ``$ABAGEN_DATA``, else ``~/.local/share/ahba-app``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pandas as pd

from .. import fetch
from ..atomic import replacing
from ..datasets import data_path
from . import rma
from .gene import MOUSE_BRAIN_PRODUCT
from .structure import MOUSE_ONTOLOGY

__all__ = ["fetch_allenref_genes", "fetch_allenref_structures", "fetch_rubinov2015_structures"]

ENTRIES = ("id", "acronym", "name")
RUBINOV2015 = "rubinov2015_pnas.csv.gz"


def _check_entry(entry_type) -> None:
    if entry_type is not None and entry_type not in ENTRIES:
        raise ValueError(f"entry_type {entry_type!r} is not one of {list(ENTRIES)} (or None "
                         f"for the whole table).")


def _select(table: pd.DataFrame, entry_type):
    return table if entry_type is None else table[entry_type].tolist()


def mouse_folder(data_dir=None) -> Path:
    """Where the reference tables are cached: ``<data folder>/allenmouse``."""
    if data_dir is not None and Path(os.fspath(data_dir)).name == "allenmouse":
        return Path(os.path.abspath(os.path.expanduser(os.fspath(data_dir))))
    return fetch.get_data_dir(data_dir) / "allenmouse"


def read_table(path: Path) -> pd.DataFrame:
    """An ``id, acronym, name`` CSV: ids as integers, every text as text (even 'NA')."""
    try:
        table = pd.read_csv(path, dtype={"id": "int64", "acronym": str, "name": str},
                            keep_default_na=False, na_values={"id": [""]})
        return table[list(ENTRIES)]
    except (ValueError, KeyError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path} is not a table of {', '.join(ENTRIES)} ({exc}): delete it, or "
                         f"call with cache=False to query the Allen API again.") from None


def _cached(kind: str, file_name: str, query: rma.Query, entry_type, cache, data_dir,
            verbose, api_url) -> pd.DataFrame:
    _check_entry(entry_type)
    path = mouse_folder(data_dir) / file_name
    if cache and path.is_file():
        return _select(read_table(path), entry_type)
    if verbose:
        print(f"Querying the Allen API for the list of {kind}s (once: it is then kept in "
              f"{path})...", file=sys.stderr, flush=True)
    found = rma.rows(query, url=api_url)
    table = pd.DataFrame(found, columns=list(ENTRIES))
    table = table.sort_values("id", kind="stable").reset_index(drop=True)
    try:
        with replacing(path) as tmp:
            table.to_csv(tmp, index=False)
    except OSError as exc:
        warnings.warn(f"Could not keep the Allen {kind} list in {path} ({exc}); it will be "
                      f"queried again next time. Give a writable data_dir to keep it.",
                      stacklevel=3)
    return _select(table, entry_type)


def fetch_allenref_genes(entry_type=None, cache=True, data_dir=None, verbose=True, *,
                         api_url=None):
    """All mouse genes of the Allen Mouse Brain Atlas (in-situ hybridization product).

    Parameters
    ----------
    entry_type : {'id', 'acronym', 'name'}, optional
        Return this column as a list; the whole table (``id, acronym, name``) when None.
    cache : bool
        Read the table kept in the data folder when it is there; False queries the Allen API
        again and replaces it.
    data_dir : str, optional
        The data folder (the table is kept in its ``allenmouse`` sub-folder).
    verbose : bool
        Say when the Allen API is queried.
    api_url : str, optional
        The Allen API server (default ``$AHBA_APP_ALLEN_API``, else the Allen Institute's).

    Returns
    -------
    list or pandas.DataFrame
        Sorted by id.
    """
    query = rma.Query("Gene", criteria=(MOUSE_BRAIN_PRODUCT,), only=ENTRIES, order="genes.id")
    return _cached("gene", "reference_genes.csv", query, entry_type, cache, data_dir, verbose,
                   api_url)


def fetch_allenref_structures(entry_type=None, cache=True, data_dir=None, verbose=True, *,
                              api_url=None):
    """All structures of the Allen Mouse Brain Atlas ontology.

    Parameters and returns as :func:`fetch_allenref_genes` (kept in ``reference_atlas.csv``).
    """
    query = rma.Query("Structure", criteria=(MOUSE_ONTOLOGY,), only=ENTRIES,
                      order="structures.id")
    return _cached("structure", "reference_atlas.csv", query, entry_type, cache, data_dir,
                   verbose, api_url)


def fetch_rubinov2015_structures(entry_type=None):
    """The 56 mouse brain structures of Rubinov et al. (2015), from a file shipped with ahba-app.

    Rubinov M, Ypma RJF, Watson C, Bullmore ET (2015). Wiring cost and topological
    participation of the mouse brain connectome. PNAS 112(32):10032-10037.

    Parameters
    ----------
    entry_type : {'id', 'acronym', 'name'}, optional
        Return this column as a list; the whole table (``id, acronym, name``) when None.
    """
    _check_entry(entry_type)
    return _select(read_table(data_path(RUBINOV2015)), entry_type)
