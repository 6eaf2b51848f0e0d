"""Probes: reannotation, intensity-based filtering and the choice of one probe per gene.

The stage, in abagen 0.1.3's order:

1. :func:`prepare_probes` -- the probe table: the Arnatkeviciute et al. (2019) reannotation
   (default) or Probes.csv as is, keeping probes with an Entrez id;
2. :func:`filter_probes` -- intensity-based filter: keep probes whose signal is above background
   in at least ``threshold`` of all samples (all donors together, mirrored copies included);
3. :func:`collapse_probes` -- one column per gene for every donor, by a method of
   :data:`SELECTION_METHODS` applied as :data:`DONOR_PROBES` says.

Per-donor inputs are dicts keyed by donor: microarray and PACall frames (probes x samples, index
``probe_id``, columns ``sample_id``) and the sample tables from :mod:`ahba_app.samples` whose
index (``sample_id``, repeated for mirrored copies) selects the columns.

How it computes: probes are sorted by gene once, and genes with the same number of probes are
laid side by side, so each gene size is one (genes, probes, samples) stack and every statistic
(means, variances, within-gene correlations, per-gene PCA via batched ``eigh``) is a few array
operations per size; per-gene argmax is one ``np.lexsort``; Spearman correlations reuse one
argsort per donor for every pair of donors. Data are read from the (float32) source matrix in
chunks of about 16 MB and accumulated in float64, so the full matrix is never copied, in float64
or otherwise; only the chosen probes are gathered for the output.

Ties between probes of a gene go to the probe listed first in the probe table (the reannotated
table is sorted by probe id), as abagen's ``idxmax``/``argmax`` do.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from ._blocks import own_copy, thread_map
from .exact import kahan_add
from .matrix import DonorMatrix, as_array, row_chunks
from .options import DEFAULTS
from .samples import annotation_table, as_table

__all__ = [
    "AGGREGATE_ONLY",
    "COLLAPSE_METHODS",
    "ChosenProbes",
    "DONOR_PROBES",
    "SELECTION_ALIASES",
    "SELECTION_METHODS",
    "SampleTable",
    "UNSTORED_METHODS",
    "check_donor_probes",
    "check_ibf_threshold",
    "check_probe_selection",
    "chosen_file_order",
    "collapse_probes",
    "count_probes",
    "filter_probes",
    "prepare_probes",
    "probe_summary",
    "read_chosen_probes",
    "reannotate_probes",
    "select_probes",
]

LOGGER = logging.getLogger(__name__)

# float64 values per working chunk (16 MB): chunks are read from the source matrix as needed,
# so no full float64 (or even full gathered float32) copy of the data is ever made
_CHUNK = 1 << 21
# values per block of the region means (2 MB): the block and its running sums stay in cache
_KAHAN_CHUNK = 1 << 18
# rank codes per block of rows in differential stability: the histograms stay in cache
_RANK_CHUNK = 1 << 18
# ranks over a donor's regions shared with another donor are derived from the ranks over all
# its regions when at most this many are not shared (cheaper than counting again)
_MAX_LEFT_OUT = 12


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def check_probe_selection(method) -> str:
    """The canonical name of a probe selection method (aliases resolved); ValueError if unknown."""
    name = SELECTION_ALIASES.get(method, method) if isinstance(method, str) else method
    if name not in SELECTION_METHODS:
        choices = list(SELECTION_METHODS) + list(SELECTION_ALIASES)
        raise ValueError(f"Unknown probe_selection {method!r}: choose one of {choices}.")
    return name


def check_donor_probes(donor_probes, method: str = DEFAULTS["probe_selection"]) -> str:
    """Validate ``donor_probes``; methods of :data:`AGGREGATE_ONLY` force 'aggregate' (warning)."""
    if donor_probes not in DONOR_PROBES:
        raise ValueError(f"Unknown donor_probes {donor_probes!r}: choose one of "
                         f"{list(DONOR_PROBES)}.")
    method = check_probe_selection(method)
    if method in AGGREGATE_ONLY and donor_probes != "aggregate":
        warnings.warn(f"probe_selection={method!r} works on all donors together: "
                      f"donor_probes={donor_probes!r} is replaced by 'aggregate' (as abagen "
                      "does).", UserWarning, stacklevel=2)
        return "aggregate"
    return donor_probes


def check_ibf_threshold(threshold) -> float:
    """Validate the intensity filter threshold: a share of samples in [0, 1]."""
    ok = (not isinstance(threshold, (bool, np.bool_))
          and isinstance(threshold, (int, float, np.number)) and 0 <= threshold <= 1)
    if not ok:
        raise ValueError(f"ibf_threshold must be a share of samples between 0 and 1, got "
                         f"{threshold!r}.")
    return float(threshold)


# ---------------------------------------------------------------------------------------------
# probe table
# ---------------------------------------------------------------------------------------------
def reannotate_probes(probes, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Gene assignments of Arnatkeviciute et al. (2019) for the probes of ``probes``.

    Parameters
    ----------
    probes : DataFrame or path
        Probes.csv (index ``probe_id``, with a ``probe_name`` column).
    table : DataFrame, optional
        Reannotation table (``probe_name, gene_symbol, entrez_id``); defaults to the bundled one
        (:func:`ahba_app.datasets.load_reannotated`).

    Returns
    -------
    DataFrame
        Index ``probe_id`` (sorted), columns ``probe_name, gene_symbol, entrez_id`` (int64).
        Table rows without an Entrez id, or whose probe is not in ``probes``, are left out
        (abagen crashes on the latter).
    """
    probes = as_table(probes, "read_probes")
    if table is None:
        from .datasets import load_reannotated

        table = load_reannotated()
    entrez = pd.to_numeric(table["entrez_id"], errors="coerce")
    columns = (probes["probe_name"], table["probe_name"], table["gene_symbol"])
    if all(column.dtype == "str" for column in columns):
        out = _reannotated_arrow(probes, table, entrez)
        if out is not None:
            return out
    names = pd.Index(probes["probe_name"])
    first = ~names.duplicated()
    pos = pd.Index(names[first]).get_indexer(table["probe_name"])
    keep = (pos >= 0) & entrez.notna().to_numpy()
    ids = probes.index.to_numpy()[np.flatnonzero(first)[pos[keep]]]
    out = pd.DataFrame({"probe_name": table["probe_name"].to_numpy()[keep],
                        "gene_symbol": table["gene_symbol"].to_numpy()[keep],
                        "entrez_id": entrez.to_numpy()[keep].astype(np.int64)},
                       index=pd.Index(ids, name="probe_id"))
    return out.sort_index(kind="stable")


def _arrow_strings(column: pd.Series):
    """The pyarrow array of a column of pandas' default strings, in one piece."""
    import pyarrow as pa

    values = pa.array(column)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _reannotated_arrow(probes: pd.DataFrame, table: pd.DataFrame, entrez: pd.Series
                       ) -> pd.DataFrame | None:
    """:func:`reannotate_probes` (the same table) for names held as pandas' default string
    type (pyarrow-backed, NaN for missing): looked up and taken by pyarrow, without turning
    some 100,000 names into Python strings and back (a third of the time, on the main thread
    of every run). None when a column taken holds no name (the general path then gives such
    a column the type pandas infers for it)."""
    import pyarrow.compute as pc

    wanted = _arrow_strings(table["probe_name"])
    # the position of each name's first probe (missing names match a missing one, as
    # pandas' get_indexer does)
    pos = pc.index_in(wanted, value_set=_arrow_strings(probes["probe_name"]).cast(wanted.type))
    pos = pos.to_numpy(zero_copy_only=False)
    keep = np.flatnonzero(~np.isnan(pos) & entrez.notna().to_numpy())
    ids = probes.index.to_numpy()[pos[keep].astype(np.intp)]
    order = np.argsort(ids, kind="stable")
    rows = keep[order]
    names, symbols = (table[column].array.take(rows) for column in ("probe_name", "gene_symbol"))
    if names.isna().all() or symbols.isna().all():
        return None
    return pd.DataFrame({"probe_name": names, "gene_symbol": symbols,
                         "entrez_id": entrez.to_numpy()[rows].astype(np.int64)},
                        index=pd.Index(ids[order], name="probe_id"))


def prepare_probes(probes, reannotated: bool = DEFAULTS["reannotated"]) -> pd.DataFrame:
    """The probe table the pipeline uses: reannotated (default) or Probes.csv, with Entrez ids."""
    probes = as_table(probes, "read_probes")
    if reannotated:
        return reannotate_probes(probes)
    return probes.loc[probes["entrez_id"].notna().to_numpy()]


def count_probes(probes: pd.DataFrame) -> dict:
    """Numbers of probes and of distinct gene symbols in a probe table."""
    return {"n_probes": len(probes), "n_genes": int(probes["gene_symbol"].nunique())}


def probe_summary(steps: Mapping[str, pd.DataFrame | Mapping]) -> pd.DataFrame:
    """Tidy table ``step, n_probes, n_genes`` from probe tables (or count dicts) named by step.

    For instance ``{'Probes.csv': raw, 'reannotated': prepared, 'intensity filter':
    filtered}``; a dict value (``{'n_probes': .., 'n_genes': ..}``) is taken as is, e.g. the
    counts after selection.
    """
    rows = []
    for step, value in steps.items():
        counts = dict(value) if isinstance(value, Mapping) else count_probes(value)
        rows.append({"step": step, **counts})
    return pd.DataFrame(rows, columns=["step", "n_probes", "n_genes"])


# ---------------------------------------------------------------------------------------------
# intensity-based filter
# ---------------------------------------------------------------------------------------------
def _indexers(matrix: DonorMatrix, probe_ids, sample_ids, what: str):
    rows = matrix.probe_index.get_indexer(probe_ids)
    if (rows < 0).any():
        raise ValueError(f"{int((rows < 0).sum())} probe(s) are not rows of the {what} (e.g. "
                         f"probe_id {pd.Index(probe_ids)[rows < 0][0]!r}): check that the "
                         "probe table and the data come from the same AHBA download.")
    cols = matrix.sample_index.get_indexer(sample_ids)
    if (cols < 0).any():
        raise ValueError(f"Sample id(s) {pd.Index(sample_ids)[cols < 0][:10].tolist()} are "
                         f"not columns of the {what}.")
    return rows, cols


def filter_probes(pacall: Mapping, annotation: Mapping, probes,
                  threshold: float = 0.5, return_share: bool = False):
    """Keep the probes whose signal exceeds background in at least ``threshold`` of the samples.

    The share is taken over the samples of every donor together, each sample counted once per
    row of its donor's ``annotation`` (so mirrored copies count twice, as in abagen).

    Parameters
    ----------
    pacall : dict of DataFrame, ahba_app.io.CachedMatrix or path
        Donor -> PACall (probes x samples, boolean or 0/1).
    annotation : dict of DataFrame
        Donor -> sample table; its index selects the columns.
    probes : DataFrame or path
        Probe table (index ``probe_id``).
    threshold : float in [0, 1]
    return_share : bool
        Also return the share of samples above background of every probe (Series).
    """
    threshold = check_ibf_threshold(threshold)
    probes = as_table(probes, "read_probes")
    signal = np.zeros(len(probes), dtype=np.int64)
    n_samples = 0
    for donor, frame in pacall.items():
        if donor not in annotation:
            raise ValueError(f"No sample table for donor {donor!r} of the PACall data.")
        matrix = DonorMatrix(frame, "pacall")
        annot = annotation_table(annotation[donor])
        rows, cols = _indexers(matrix, probes.index, annot.index, f"PACall of donor {donor}")
        signal += matrix.count_true(rows, cols)
        matrix.release()
        n_samples += len(cols)
    if n_samples == 0:
        raise ValueError("No samples left for the intensity-based filter: every donor's sample "
                         "table is empty.")
    share = signal / n_samples
    kept = probes.loc[share >= threshold]
    if return_share:
        return kept, pd.Series(share, index=probes.index, name="share_above_background")
    return kept


# ---------------------------------------------------------------------------------------------
# genes and data blocks
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Batch:
    """Genes with the same number of probes, stored side by side in the layout order."""

    genes: np.ndarray  # gene numbers
    offset: int        # first layout column of the batch
    size: int          # probes per gene

    @property
    def stop(self) -> int:
        return self.offset + len(self.genes) * self.size

    def positions(self, starts: np.ndarray) -> np.ndarray:
        """Sorted probe positions, genes x probes."""
        return starts[self.genes][:, None] + np.arange(self.size)


@dataclass
class _Genes:
    """Probes sorted by gene symbol (stable: table order within a gene), and a layout.

    The layout orders the probes by the size of their gene, so that all genes with ``k``
    probes form one contiguous run of rows that reshapes to (genes, k, samples).
    """

    symbols: np.ndarray    # (G,) sorted unique gene symbols
    probe_ids: np.ndarray  # (P,) probe ids in sorted order
    names: np.ndarray      # (P,) probe names or None
    gene_of: np.ndarray    # (P,) gene number of every sorted probe
    starts: np.ndarray     # (G,) first sorted position of each gene
    sizes: np.ndarray      # (G,) number of probes of each gene
    batches: list = None   # _Batch per gene size, ascending
    layout: np.ndarray = None  # (P,) sorted positions in layout order

    def __post_init__(self):
        batches, parts, offset = [], [], 0
        for size in np.unique(self.sizes):
            genes = np.flatnonzero(self.sizes == size)
            batch = _Batch(genes, offset, int(size))
            batches.append(batch)
            parts.append(batch.positions(self.starts).ravel())
            offset = batch.stop
        self.batches = batches
        self.layout = (np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp))

    @classmethod
    def from_probes(cls, probes: pd.DataFrame) -> "_Genes":
        if "gene_symbol" not in probes.columns:
            raise ValueError("The probe table has no gene_symbol column.")
        coded = _sorted_codes(probes["gene_symbol"])
        if coded is None:
            symbols = probes["gene_symbol"].to_numpy(dtype=object)
            usable = np.flatnonzero(~pd.isna(symbols))
            # numpy strings sort by code point, as Python's (and abagen's sort_index) do
            unique, gene_of = np.unique(symbols[usable].astype(str), return_inverse=True)
            unique = unique.astype(object)
        else:
            unique, gene_of, usable = coded
        order = np.argsort(gene_of, kind="stable")
        sizes = np.bincount(gene_of, minlength=len(unique))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        names = (probes["probe_name"].to_numpy(dtype=object)[usable][order]
                 if "probe_name" in probes.columns else np.full(len(order), None))
        return cls(unique, probes.index.to_numpy()[usable][order], names,
                   gene_of[order].astype(np.intp), starts, sizes.astype(np.intp))

    @property
    def n_probes(self) -> int:
        return len(self.probe_ids)

    def multi(self, min_size: int = 2) -> list:
        return [b for b in self.batches if b.size >= min_size]

    def to_sorted(self, values: np.ndarray) -> np.ndarray:
        """Per-probe values from layout order to sorted order."""
        out = np.empty_like(values)
        out[self.layout] = values
        return out


def _sorted_codes(symbols: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """What ``np.unique(symbols[usable].astype(str), return_inverse=True)`` gives (the distinct
    symbols sorted by code point, as Python strings, and each symbol's number), with
    ``usable`` the positions of the symbols not missing, for symbols held as pandas' default
    strings (pyarrow): encoded and sorted by pyarrow (UTF-8 bytes sort in code point order),
    without numpy's fixed-width copy of every symbol. None for other types, and for symbols
    holding a NUL character (numpy's strings drop trailing ones)."""
    if symbols.dtype != "str":
        return None
    import pyarrow.compute as pc

    column = _arrow_strings(symbols)
    if pc.any(pc.match_substring(column, "\x00")).as_py():
        return None
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    coded = pc.dictionary_encode(column.filter(valid))
    by_symbol = pc.sort_indices(coded.dictionary).to_numpy()
    rank = np.empty(len(by_symbol), dtype=np.intp)
    rank[by_symbol] = np.arange(len(by_symbol))
    gene_of = rank[coded.indices.to_numpy(zero_copy_only=False)]
    unique = coded.dictionary.take(by_symbol).to_numpy(zero_copy_only=False)
    return unique, gene_of, np.flatnonzero(valid)


class _Data:
    """The per-donor data, read as probes x samples blocks (C order, input dtype).

    Each donor's matrix is a :class:`ahba_app.matrix.DonorMatrix`: from the cache, only the
    blocks asked for are read and decoded; :meth:`release` gives a finished donor's pages back.
    """

    def __init__(self, microarray: Mapping, annotation: Mapping, genes: _Genes):
        missing = [d for d in microarray if d not in annotation]
        if missing:
            raise ValueError(f"No sample table for donor(s) {missing}: microarray and "
                             "annotation must have the same donors.")
        self.genes = genes
        self.donors = list(microarray)
        self.matrices, self.rows, self.cols, self.annotation = {}, {}, {}, {}
        for donor in self.donors:
            matrix = DonorMatrix(microarray[donor], "microarray")
            annot = annotation_table(annotation[donor])
            self.rows[donor], self.cols[donor] = _indexers(
                matrix, genes.probe_ids, annot.index, f"microarray of donor {donor}")
            self.matrices[donor], self.annotation[donor] = matrix, annot

    def block(self, donor, positions=None, sample_order=None, transposed=False, out=None
              ) -> np.ndarray:
        """Sorted probes ``positions`` (all by default) x samples (in ``sample_order``), or
        samples x probes with ``transposed``: a new array (or ``out``, filled)."""
        rows = self.rows[donor] if positions is None else self.rows[donor][positions]
        cols = self.cols[donor] if sample_order is None else self.cols[donor][sample_order]
        return self.matrices[donor].take(rows, cols, transposed=transposed, out=out)

    def release(self, donor) -> None:
        self.matrices[donor].release()

    def stacks(self, donor, batches):
        """(batch, genes slice, float64 genes x probes x samples stack) over ``batches``.

        Read chunk by chunk from the source matrix, so only one chunk is ever in float64.
        """
        n_samples = len(self.cols[donor])
        for batch in batches:
            for gs, rows in _gene_chunks(batch, n_samples):
                positions = self.genes.layout[rows]
                x = self.block(donor, positions=positions).astype(np.float64, copy=False)
                yield batch, gs, x.reshape(-1, batch.size, n_samples)
        self.release(donor)

    def dtype(self):
        kinds = [self.matrices[d].dtype for d in self.donors]
        return np.result_type(*kinds) if kinds else np.dtype(np.float64)


def _gene_chunks(batch: _Batch, n_samples: int):
    """(genes slice, layout rows slice) pieces of a batch, about 16 MB of float64 each."""
    step = max(1, _CHUNK // max(batch.size * n_samples, 1))
    for g0 in range(0, len(batch.genes), step):
        g1 = min(g0 + step, len(batch.genes))
        yield slice(g0, g1), slice(batch.offset + g0 * batch.size, batch.offset + g1 * batch.size)


def _probe_mean(stack: np.ndarray) -> np.ndarray:
    """Mean over each gene's probes: genes x samples (explicit sums; k is small)."""
    total = stack[:, 0].copy()
    for a in range(1, stack.shape[1]):
        total += stack[:, a]
    return total / stack.shape[1]


# ---------------------------------------------------------------------------------------------
# per-probe statistics
# ---------------------------------------------------------------------------------------------
@dataclass
class _Moments:
    """Pooled sample count, probe means and centred sums of squares (sorted order), and
    centred within-gene cross products per gene size (genes x size x size)."""

    n: int
    mean: np.ndarray
    css: np.ndarray
    cross: dict


def _moments(data: _Data, donors, cross: bool) -> _Moments:
    """Moments over the samples of ``donors`` pooled (as if their columns were concatenated).

    Each donor's block is centred on its own means; blocks are combined with the exact
    between-donor correction, so everything stays in float64 on centred data.
    """
    genes = data.genes
    parts = []
    for donor in donors:
        n = len(data.cols[donor])
        mean = np.zeros(genes.n_probes)
        css = np.zeros(genes.n_probes)
        prods = {b.size: np.zeros((len(b.genes), b.size, b.size)) for b in genes.multi()
                 } if cross else {}
        for batch, gs, x in data.stacks(donor, genes.batches):
            rows = slice(batch.offset + gs.start * batch.size,
                         batch.offset + gs.stop * batch.size)
            m = x.mean(axis=2, keepdims=True) if n else np.zeros(x.shape[:2] + (1,))
            x -= m
            mean[rows] = m.ravel()
            css[rows] = (x * x).sum(axis=2).ravel()
            if cross and batch.size > 1:
                prods[batch.size][gs] = np.einsum("gas,gbs->gab", x, x, optimize=True)
        parts.append((n, mean, css, prods))
    n_total = sum(p[0] for p in parts)
    mean = sum(p[0] * p[1] for p in parts) / max(n_total, 1)
    css = np.zeros(genes.n_probes)
    prods = {}
    for n, m, c, pr in parts:
        shift = m - mean
        css += c + n * shift ** 2
        for batch in genes.multi() if cross else []:
            s = shift[batch.offset:batch.stop].reshape(-1, batch.size)
            term = pr[batch.size] + n * s[:, :, None] * s[:, None, :]
            prods[batch.size] = prods[batch.size] + term if batch.size in prods else term
    return _Moments(n_total, genes.to_sorted(mean), genes.to_sorted(css), prods)


def _group_argmax(genes: _Genes, score: np.ndarray, nan_is_max: bool = False) -> np.ndarray:
    """Sorted position of the best probe of every gene (-1 when none), first one on ties.

    NaN scores are skipped (pandas ``idxmax``: a gene with only NaN gets -1) or, with
    ``nan_is_max``, win (``np.argmax``).
    """
    score = np.asarray(score, dtype=np.float64)
    if nan_is_max:
        score = np.where(np.isnan(score), np.inf, score)
    order = np.lexsort((np.arange(genes.n_probes), -score, genes.gene_of))
    best = order[genes.starts]
    return np.where(np.isnan(score[best]), -1, best)


@dataclass
class _Choice:
    """One probe per gene: sorted positions (-1 = gene dropped) and the criterion's values."""

    position: np.ndarray
    score: np.ndarray  # (G,) criterion of the chosen probe (NaN when none)
    criterion: str


def _choice(genes: _Genes, score: np.ndarray, criterion: str, nan_is_max=False) -> _Choice:
    best = _group_argmax(genes, score, nan_is_max)
    values = np.where(best >= 0, np.asarray(score, dtype=float)[np.maximum(best, 0)], np.nan)
    return _Choice(best, values, criterion)


# ---------------------------------------------------------------------------------------------
# selection methods: each takes (data, donors pooled, context) and returns a _Choice
# ---------------------------------------------------------------------------------------------
def _max_intensity(data: _Data, donors, **_) -> _Choice:
    """The probe with the highest mean over all samples."""
    return _choice(data.genes, _moments(data, donors, cross=False).mean, "mean")


def _sd(mom: _Moments) -> np.ndarray:
    if mom.n < 2:
        return np.full(len(mom.css), np.nan)
    return np.sqrt(mom.css / (mom.n - 1))


def _max_variance(data: _Data, donors, **_) -> _Choice:
    """The probe with the highest variance over all samples (SD with ddof=1 reported)."""
    return _choice(data.genes, _sd(_moments(data, donors, cross=False)), "sd")


def _correlation(data: _Data, donors, fallback: str) -> _Choice:
    """Highest mean of (r + 1) / 2 with the gene's probes (>2 probes); ``fallback`` for 2.

    Scores are compared as ``np.argmax`` does: a NaN (a constant probe) wins.
    """
    genes = data.genes
    mom = _moments(data, donors, cross=True)
    score = np.zeros(genes.n_probes)
    for batch in genes.batches:
        pos = batch.positions(genes.starts)
        if batch.size == 2:
            score[pos] = (mom.mean if fallback == "mean" else _sd(mom))[pos]
        elif batch.size > 2:
            prods = mom.cross[batch.size]
            diag = np.sqrt(np.einsum("gii->gi", prods))
            with np.errstate(invalid="ignore", divide="ignore"):
                corr = np.clip(prods / (diag[:, :, None] * diag[:, None, :]), -1, 1)
            score[pos] = ((corr + 1) / 2).mean(axis=2)
    best = _group_argmax(genes, score, nan_is_max=True)
    report = np.where(genes.sizes[genes.gene_of] == 1, np.nan, score)
    values = np.where(best >= 0, report[np.maximum(best, 0)], np.nan)
    return _Choice(best, values, f"mean_corr ({'mean' if fallback == 'mean' else 'sd'} "
                                 "with 2 probes)")


def _corr_intensity(data: _Data, donors, **_) -> _Choice:
    return _correlation(data, donors, "mean")


def _corr_variance(data: _Data, donors, **_) -> _Choice:
    return _correlation(data, donors, "variance")


def _pc_loading(data: _Data, donors, **_) -> _Choice:
    """The probe with the highest score on the first principal component of its gene.

    For each gene the data (probes x samples) are centred on each sample's mean over the
    gene's probes; the scores are the first left singular vector times its singular value,
    signed so that the largest-magnitude entry of the right singular vector is positive.
    Genes are processed as (genes, probes, samples) stacks, one per gene size.
    """
    genes = data.genes
    batches = genes.multi()
    score = np.zeros(genes.n_probes)
    if not batches:
        return _choice(genes, score, "pc1_score")

    def centred_stacks(donor):
        for batch, gs, x in data.stacks(donor, batches):
            x -= _probe_mean(x)[:, None, :]
            yield batch, gs, x

    gram = {b.size: np.zeros((len(b.genes), b.size, b.size)) for b in batches}
    for donor in donors:
        for batch, gs, x in centred_stacks(donor):
            gram[batch.size][gs] += np.einsum("gas,gbs->gab", x, x, optimize=True)

    vectors, scale = {}, {}
    for batch in batches:
        values, vecs = np.linalg.eigh(gram[batch.size])
        u = vecs[:, :, -1]
        vectors[batch.size] = u - u.mean(axis=1, keepdims=True)
        scale[batch.size] = np.sqrt(np.maximum(values[:, -1], 0))

    # sign: that of the right singular vector's largest-magnitude entry over all samples
    best_abs = {b.size: np.full(len(b.genes), -1.0) for b in batches}
    sign = {b.size: np.ones(len(b.genes)) for b in batches}
    for donor in donors:
        for batch, gs, x in centred_stacks(donor):
            k = batch.size
            right = np.einsum("gas,ga->gs", x, vectors[k][gs])
            where = np.abs(right).argmax(axis=1)
            value = right[np.arange(len(right)), where]
            better = np.abs(value) > best_abs[k][gs]
            best_abs[k][gs] = np.where(better, np.abs(value), best_abs[k][gs])
            sign[k][gs] = np.where(better, np.sign(value), sign[k][gs])
    for batch in batches:
        k = batch.size
        score[batch.positions(genes.starts)] = vectors[k] * (sign[k] * scale[k])[:, None]
    best = _group_argmax(genes, score, nan_is_max=True)
    values = np.where((best >= 0) & (genes.sizes > 1), score[np.maximum(best, 0)], np.nan)
    return _Choice(best, values, "pc1_score")


def _region_order(structure_ids):
    """Sample order grouping structures, the sorted structures, and where each group starts."""
    sid = np.asarray(structure_ids)
    regions, inverse = np.unique(sid, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(regions))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    return order, regions, starts, counts


def _region_means(read, n_rows: int, positions: np.ndarray, starts, counts) -> np.ndarray:
    """Means over groups of samples: rows x groups, reading rows with ``read``.

    ``positions`` lists the samples to average, group by group (``starts`` and ``counts`` say
    where each group begins and how many samples it has). ``read(rows, samples)`` returns the
    given samples (positions, in that order, repeats allowed) x the rows of the slice ``rows``.
    Each group's values are summed in that order with Kahan compensation and divided by the
    count, which is how pandas' groupby mean (abagen's ``_groupby_structure_id``) computes
    them: for data without NaN (the AHBA's) the means are the same bit for bit, so two regions
    tie exactly when they tie in abagen (ties decide Spearman ranks).
    """
    n_groups = len(starts)
    out = np.empty((n_rows, n_groups))
    if len(positions) == 0 or n_rows == 0:
        return out
    # groups by size, largest first: the groups still adding a sample at step k are a prefix;
    # the samples are read step after step, so that each step is a slice of what was read
    by_size = np.argsort(-np.asarray(counts), kind="stable")
    sizes = np.asarray(counts)[by_size]
    firsts = np.asarray(starts)[by_size]
    active = [int(np.count_nonzero(sizes > k)) for k in range(int(sizes[0]))]
    samples = np.concatenate([np.asarray(positions)[firsts[:n] + k]
                              for k, n in enumerate(active)])
    offsets = np.concatenate([[0], np.cumsum(active)])
    for rows in row_chunks(n_rows, len(samples), _KAHAN_CHUNK):
        values = read(rows, samples)            # samples (step by step) x rows
        total = values[:active[0]] + 0.0        # 0 + x: the first step of the sum
        carry = total - values[:active[0]]      # (t - 0) - x, i.e. 0 unless x is -0.0 or inf
        y = np.empty_like(total)
        t = np.empty_like(total)
        for k in range(1, len(active)):
            n = active[k]
            kahan_add(total[:n], carry[:n], None, values[offsets[k]:offsets[k] + n],
                      finite=True, scratch=(y[:n], t[:n]))
        total /= sizes[:, None]
        out[rows, by_size] = total.T
    return out


class _Ranker:
    """Average ranks of every row of a matrix over any subset of its columns.

    Each row's values are replaced once by dense codes (equal values share a code, codes grow
    with the values). Over a subset of columns, a value's average rank is the number of subset
    values with a smaller code plus half of (those with its code, plus one): one histogram of
    codes per row (a ``bincount``) and its cumulative sum give every rank, ties included,
    without sorting again. Ranks are returned doubled, as integers, by :meth:`doubled_ranks`.
    """

    def __init__(self, values: np.ndarray):
        values = np.asarray(values)
        self.shape = values.shape
        self.codes = _dense_codes(values)

    def doubled_ranks(self, columns: np.ndarray, rows=slice(None)) -> np.ndarray:
        """Twice the average rank (1-based) of ``rows`` over ``columns``: (rows, k) float64
        holding integers."""
        codes = self.codes[rows][:, columns]
        n_rows, k = codes.shape
        n_cols = self.shape[1]
        keys = codes + (np.arange(n_rows, dtype=np.int64) * n_cols)[:, None]
        keys = keys.ravel()
        counts = np.bincount(keys, minlength=n_rows * n_cols)
        # running count over the flattened rows: each row holds k values, so row i starts at
        # i * k; twice the average rank is 2 * (smaller + (equal + 1) / 2) with
        # smaller + equal the running count within the row
        table = np.cumsum(counts).astype(np.float64)
        table *= 2
        table -= counts
        table = table.reshape(n_rows, n_cols)
        table -= (np.arange(n_rows, dtype=np.float64) * (2 * k) - 1)[:, None]
        return table.ravel()[keys].reshape(n_rows, k)

    def doubled_ranks_without(self, columns: np.ndarray, rows, full: np.ndarray
                              ) -> np.ndarray:
        """:meth:`doubled_ranks` over ``columns`` from ``full``, the doubled ranks of ``rows``
        over every column: each column left out lowers a doubled rank by 2 when its value is
        smaller and by 1 when it is equal. Quicker when few columns are left out."""
        codes = self.codes[rows]
        left_out = np.ones(self.shape[1], dtype=bool)
        left_out[columns] = False
        # per column left out: sign(kept - other) + 1 is 2 (smaller), 1 (equal) or 0
        step = codes[:, columns][:, None, :] - codes[:, left_out][:, :, None]
        np.clip(step, -1, 1, out=step)
        lower = step.sum(axis=1, dtype=np.int16) + np.int16(left_out.sum())
        return full[:, columns] - lower

    def ranks(self, columns: np.ndarray) -> np.ndarray:
        """Average ranks (1-based, ties averaged) of every row over ``columns``: float64."""
        return self.doubled_ranks(columns) / 2.0


def _dense_codes(values: np.ndarray) -> np.ndarray:
    """Per row, the position of each value among the row's distinct values (equal values, and
    only they, share a code; NaN values each get their own, after every number, in column
    order)."""
    n_rows, n_cols = values.shape
    index = np.int16 if n_cols < np.iinfo(np.int16).max else np.int64
    codes = np.zeros((n_rows, n_cols), dtype=index)
    if n_cols == 0 or n_rows == 0:
        return codes
    for rows in row_chunks(n_rows, n_cols, _RANK_CHUNK):  # small temporaries, in cache
        part = values[rows]
        order = np.argsort(part, axis=1)  # equal values end up side by side in any order
        if part.dtype.kind == "f":
            with_nan = np.flatnonzero(np.isnan(part).any(axis=1))
            if with_nan.size:  # NaN != NaN: their codes follow their (stable) order
                order[with_nan] = np.argsort(part[with_nan], axis=1, kind="stable")
        ordered = np.sort(part, axis=1)  # the values in ``order``'s order
        step = np.zeros(part.shape, dtype=index)
        np.not_equal(ordered[:, 1:], ordered[:, :-1], out=step[:, 1:])
        np.cumsum(step, axis=1, out=step)
        order += (np.arange(len(part), dtype=order.dtype) * n_cols)[:, None]
        codes[rows].ravel()[order.ravel()] = step.ravel()
    return codes


def _rank_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching rows of two doubled-rank arrays (Spearman's rho).

    Equal to :func:`_row_corr` of the ranks bit for bit: ranks are multiples of 1/2 that sum to
    k (k + 1) / 2, so their mean is exactly (k + 1) / 2 and every centred sum of products is
    an exact multiple of 1/4, whatever the order of summation. Those sums are computed here in
    exact integer-valued float64, then combined by the same final expression.
    """
    k = a.shape[1]
    if k == 0:
        return np.full(a.shape[0], np.nan)
    a = a.astype(np.float64, copy=False)
    b = b.astype(np.float64, copy=False)
    base = float(k * (k + 1) ** 2)  # sum of (2 r)(2 s) minus the centred part, for mean k + 1
    cross = (np.einsum("ij,ij->i", a, b) - base) / 4
    a_sq = (np.einsum("ij,ij->i", a, a) - base) / 4
    b_sq = (np.einsum("ij,ij->i", b, b) - base) / 4
    with np.errstate(invalid="ignore", divide="ignore"):
        return cross / np.sqrt(a_sq * b_sq)


def _row_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching rows (NaN when a row is constant or too short)."""
    if a.shape[1] == 0:
        return np.full(a.shape[0], np.nan)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def _donor_regions(data: _Data, donor) -> tuple[np.ndarray, np.ndarray]:
    """Sorted structure ids of a donor's samples and the probes x structures mean expression."""
    order, regions, starts, counts = _region_order(data.annotation[donor]["structure_id"])
    matrix = data.matrices[donor]
    # rows in the order of the file: each block reads neighbouring pages, then lets them go
    in_file = np.argsort(data.rows[donor], kind="stable")
    source_rows = data.rows[donor][in_file]

    scratch = []  # one array for every chunk's values (fresh pages per chunk cost time)

    def read(rows, samples):
        n = (rows.stop - rows.start) * len(samples)
        if not scratch or scratch[0].size < n:
            scratch[:] = [np.empty(n)]
        block = matrix.take(source_rows[rows], samples, transposed=True,
                            out=scratch[0][:n].reshape(len(samples), -1))
        # the pages just read leave this process's memory (a coded cache's take has done it:
        # releasing them again cost ~3 % of a run choosing the probes anew)
        if not matrix.releases_rows:
            matrix.release(source_rows[rows])
        return block

    means = np.empty((data.genes.n_probes, len(regions)))
    means[in_file] = _region_means(read, data.genes.n_probes, data.cols[donor][order], starts,
                                   counts)
    data.release(donor)
    return regions, means


def _diff_stability(data: _Data, donors, **_) -> _Choice:
    """The probe whose regional pattern agrees best between donors (differential stability).

    For every pair of donors, each probe's mean expression per structure is Spearman-correlated
    over the structures both donors sampled; the correlations are averaged over pairs.
    """
    if len(donors) < 2:
        raise ValueError("probe_selection='diff_stability' needs at least two donors; got "
                         f"{list(donors)}. Use more donors or another method.")
    def donor_ranks(donor):
        regions, means = _donor_regions(data, donor)
        return regions, _Ranker(means)

    done = dict(zip(donors, thread_map(donor_ranks, donors)))
    regions = {donor: done[donor][0] for donor in donors}
    rankers = {donor: done[donor][1] for donor in donors}
    pairs = [(a, b) for i, a in enumerate(donors) for b in donors[i + 1:]]
    shared = [np.intersect1d(regions[a], regions[b], return_indices=True)[1:] for a, b in pairs]
    corr = np.empty((data.genes.n_probes, len(pairs)))
    widest = max(len(r) for r in regions.values())

    def correlate(rows):
        full = {}  # doubled ranks over all of a donor's regions, for the donors that need them

        def ranks(donor, columns):
            ranker = rankers[donor]
            if ranker.shape[1] - len(columns) > _MAX_LEFT_OUT:
                return ranker.doubled_ranks(columns, rows)
            if donor not in full:
                full[donor] = ranker.doubled_ranks(np.arange(ranker.shape[1]), rows)
            return ranker.doubled_ranks_without(columns, rows, full[donor])

        for n, ((a, b), (ia, ib)) in enumerate(zip(pairs, shared)):
            corr[rows, n] = _rank_corr(ranks(a, ia), ranks(b, ib))

    thread_map(correlate, row_chunks(data.genes.n_probes, widest, _RANK_CHUNK))
    return _choice(data.genes, corr.mean(axis=1), "diff_stability")


def _rnaseq_donors(rnaseq: Mapping, donors) -> list:
    """(RNA-seq key, microarray key) for the donors with both, in donor-number order."""
    from .datasets import RNASEQ_DONORS, check_donors

    by_id = {}
    for key in donors:
        try:
            by_id[check_donors(key)[0]] = key
        except ValueError:
            continue
    pairs = []
    for key in rnaseq:
        donor_id = check_donors(key, valid=RNASEQ_DONORS)[0]  # ValueError for others
        if donor_id in by_id:
            pairs.append((int(donor_id), key, by_id[donor_id]))
    return [(rkey, mkey) for _, rkey, mkey in sorted(pairs)]


def _rnaseq(data: _Data, donors, rnaseq: Mapping | None = None, **_) -> _Choice:
    """The probe whose regional pattern best matches RNA-seq of its gene (donors 9861, 10021).

    For each donor with RNA-seq data, mean microarray expression per structure is
    Spearman-correlated with mean TPM per structure over the structures both sampled (genes with
    constant TPM are left out); correlations are averaged over those donors.
    """
    from .datasets import RNASEQ_DONORS

    if rnaseq is None:
        raise ValueError("probe_selection='rnaseq' needs the RNA-seq data of donors "
                         f"{list(RNASEQ_DONORS)}: pass rnaseq={{donor: {{'tpm': ..., "
                         "'annotation': ...}}}} (see ahba_app.fetch.fetch_rnaseq).")
    pairs = _rnaseq_donors(rnaseq, donors)
    if not pairs:
        raise ValueError(f"probe_selection='rnaseq' needs a donor with RNA-seq data among the "
                         f"selected donors {list(donors)}: only {list(RNASEQ_DONORS)} have it "
                         f"(RNA-seq given for {list(rnaseq)}).")
    genes = data.genes
    corr = np.full((genes.n_probes, len(pairs)), np.nan)
    for n, (rkey, donor) in enumerate(pairs):
        tpm = as_table(rnaseq[rkey]["tpm"], "read_tpm")
        annot = annotation_table(rnaseq[rkey]["annotation"])
        if tpm.shape[1] != len(annot):
            raise ValueError(f"RNA-seq of donor {rkey}: the TPM table has {tpm.shape[1]} "
                             f"samples but its sample table {len(annot)}.")
        unique_rows = np.flatnonzero(~pd.Index(tpm.index).duplicated())
        order, rna_regions, starts, counts = _region_order(annot["structure_id"])
        values = as_array(tpm)
        rna = _region_means(
            lambda rows, samples: np.array(values[unique_rows[rows]][:, samples].T,
                                           dtype=np.float64, order="C"),
            len(unique_rows), order, starts, counts)
        rna_genes = tpm.index.to_numpy(dtype=object)[unique_rows]
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            varying = ~np.isclose(np.std(rna, axis=1, ddof=1), 0)
        rna, rna_genes = rna[varying], rna_genes[varying]
        micro_regions, micro = _donor_regions(data, donor)
        _, im, ir = np.intersect1d(micro_regions, rna_regions, return_indices=True)
        gene_row = pd.Index(rna_genes).get_indexer(genes.symbols[genes.gene_of])
        mask = gene_row >= 0
        rna_ranks = _Ranker(rna).ranks(ir)
        micro_ranks = _Ranker(micro[mask]).ranks(im)
        corr[mask, n] = _row_corr(micro_ranks, rna_ranks[gene_row[mask]])
    valid = ~np.isnan(corr)
    counts = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(counts > 0, np.where(valid, corr, 0).sum(axis=1) / counts, np.nan)
    return _choice(genes, score, "rnaseq_corr")


def _average(data: _Data, donors=None, **_) -> dict:
    """Mean over the probes of each gene, per donor and sample (float64 sums).

    Unlike the other methods this collapses probes: it returns the per-donor frames.
    """
    genes = data.genes
    dtype = data.dtype()
    columns = pd.Index(genes.symbols, name="gene_symbol", dtype=object)
    out = {}
    for donor in data.donors if donors is None else donors:
        means = np.empty((len(genes.symbols), len(data.cols[donor])), dtype=dtype)
        for batch, gs, x in data.stacks(donor, genes.batches):
            means[batch.genes[gs]] = _probe_mean(x)
        out[donor] = pd.DataFrame(means.T, index=data.annotation[donor].index,
                                  columns=columns, copy=False)
    return out


#: probe_selection name -> method, called as ``method(data, donors, **context)``. Selecting
#: methods return the chosen probe of every gene for ``donors`` pooled together; the methods of
#: :data:`COLLAPSE_METHODS` return the per-donor samples x genes frames themselves.
SELECTION_METHODS: dict[str, Callable] = {
    "average": _average,
    "max_intensity": _max_intensity,
    "max_variance": _max_variance,
    "pc_loading": _pc_loading,
    "corr_intensity": _corr_intensity,
    "corr_variance": _corr_variance,
    "diff_stability": _diff_stability,
    "rnaseq": _rnaseq,
}
#: Other accepted names for the methods above.
SELECTION_ALIASES: dict[str, str] = {"mean": "average"}
#: Methods that only work on all donors together (donor_probes is forced to 'aggregate').
AGGREGATE_ONLY = ("average", "diff_stability", "rnaseq")
#: Methods that combine all probes of a gene instead of choosing one.
COLLAPSE_METHODS = ("average",)


# ---------------------------------------------------------------------------------------------
# donor_probes modes: each returns {donor: _Choice}
# ---------------------------------------------------------------------------------------------
def _aggregate(data: _Data, method: Callable, **kwargs) -> dict:
    """One choice for all donors, computed on their samples pooled."""
    choice = method(data, data.donors, **kwargs)
    return {"all": choice}


def _independent(data: _Data, method: Callable, **kwargs) -> dict:
    """A separate choice for every donor, on its own samples."""
    return {donor: method(data, [donor], **kwargs) for donor in data.donors}


def _common(data: _Data, method: Callable, **kwargs) -> dict:
    """Every donor chooses on its own samples; the probe chosen most often wins.

    Ties go to the smallest probe id (abagen takes ``scipy.stats.mode``). Donors that chose
    nothing for a gene do not vote; a gene nobody chose is dropped.
    """
    genes = data.genes
    own = [method(data, [donor], **kwargs).position for donor in data.donors]
    chosen = np.vstack(own)  # donors x genes, sorted positions or -1
    valid = chosen >= 0
    ids = np.where(valid, genes.probe_ids[np.maximum(chosen, 0)], 0)
    votes = ((ids[:, None, :] == ids[None, :, :]) & valid[None, :, :]).sum(axis=1)
    best = np.full(chosen.shape[1], -1)
    best_id = np.zeros(chosen.shape[1], dtype=ids.dtype)
    best_votes = np.zeros(chosen.shape[1], dtype=int)
    for d in range(chosen.shape[0]):  # a handful of donors
        better = valid[d] & ((votes[d] > best_votes)
                             | ((votes[d] == best_votes) & (ids[d] < best_id)))
        best = np.where(better, chosen[d], best)
        best_id = np.where(better, ids[d], best_id)
        best_votes = np.where(better, votes[d], best_votes)
    return {"all": _Choice(best, np.where(best >= 0, best_votes, np.nan).astype(float),
                           "votes")}


#: donor_probes name -> how the selection is applied across donors.
DONOR_PROBES: dict[str, Callable] = {
    "aggregate": _aggregate,
    "independent": _independent,
    "common": _common,
}


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
def _gene_columns(genes: _Genes, which: np.ndarray) -> pd.Index:
    return pd.Index(genes.symbols[which], name="gene_symbol", dtype=object)


def collapse_probes(microarray: Mapping, annotation: Mapping, probes,
                    method: str = DEFAULTS["probe_selection"],
                    donor_probes: str = DEFAULTS["donor_probes"], rnaseq: Mapping | None = None,
                    return_info: bool = False):
    """Reduce every donor's probes x samples data to samples x genes.

    Parameters
    ----------
    microarray : dict of DataFrame, ahba_app.io.CachedMatrix or path
        Donor -> MicroarrayExpression (probes x samples; float32 is fine and kept). From the
        cache (a CachedMatrix, or a path) only the probes needed are read.
    annotation : dict of DataFrame
        Donor -> sample table; its index (``sample_id``, may repeat) selects and orders the
        samples, and ``structure_id`` defines the regions of 'diff_stability' and 'rnaseq'.
    probes : DataFrame or path
        Probes to use (index ``probe_id``, column ``gene_symbol``), normally the output of
        :func:`filter_probes`. Within a gene, ties go to the probe listed first.
    method : str
        A key of :data:`SELECTION_METHODS` or :data:`SELECTION_ALIASES`.
    donor_probes : {'aggregate', 'independent', 'common'}
        See :data:`DONOR_PROBES`; methods of :data:`AGGREGATE_ONLY` force 'aggregate' with a
        warning.
    rnaseq : dict, optional
        For method 'rnaseq': donor -> {'tpm': RNAseqTPM frame or path, 'annotation':
        SampleAnnot frame or path} for donors 9861 and/or 10021.
    return_info : bool
        Also return a tidy table of the selection: one row per donor ('all' when shared) and
        gene with ``probe_id``, ``probe_name``, ``n_probes`` (the gene's candidates),
        ``criterion`` and ``score`` (the chosen probe's value: differential stability, mean,
        SD, correlation, PC1 score, RNA-seq correlation, or number of donor votes).

    Returns
    -------
    dict of DataFrame
        Donor -> samples x genes (index as ``annotation``'s, columns ``gene_symbol`` sorted),
        in the microarray's dtype.
    """
    chosen, info = select_probes(microarray, annotation, probes, method=method,
                                 donor_probes=donor_probes, rnaseq=rnaseq)
    out = {donor: chosen.frame(donor) for donor in chosen.donors}
    return (out, info) if return_info else out


class ChosenProbes:
    """The probes chosen for every donor; each donor's samples x genes table is read on demand.

    Returned by :func:`select_probes`. :meth:`frame` reads a donor's chosen probes from its
    microarray (for the cache: only those rows, and only the samples asked for), so a caller
    going donor by donor never holds every donor's table at once.
    """

    def __init__(self, data: _Data, choices: dict | None = None, frames: dict | None = None):
        self._data, self._choices, self._frames = data, choices, frames
        self.donors = list(data.donors)

    def columns(self, donor) -> pd.Index:
        """The donor's gene columns (sorted gene symbols)."""
        if self._frames is not None:
            return self._frames[donor].columns
        return _gene_columns(self._data.genes, np.flatnonzero(self._position(donor) >= 0))

    def _position(self, donor) -> np.ndarray:
        choices = self._choices
        return choices.get(donor, choices.get("all")).position

    def cached_matrix(self, donor):
        """The donor's microarray as a cache (:class:`ahba_app.io.CachedMatrix`), or None when
        it was given as a table."""
        return self._data.matrices[donor].cached

    def probe_table(self, donor) -> pd.DataFrame | None:
        """The probe chosen for each of the donor's genes (index ``probe_id``, column
        ``gene_symbol``, genes in column order): what :func:`read_chosen_probes` reads. None
        when genes combine several probes (method 'average')."""
        if self._frames is not None:
            return None
        genes = self._data.genes
        position = self._position(donor)
        which = np.flatnonzero(position >= 0)
        return pd.DataFrame({"gene_symbol": genes.symbols[which]},
                            index=pd.Index(genes.probe_ids[position[which]], name="probe_id"))

    def file_order(self, donor) -> np.ndarray | None:
        """Positions of the donor's genes (columns) that put their chosen probes in the order
        of its microarray's rows: read in that order (``frame(columns=...)``), the rows need
        no reordering after decoding. None when the donor's table was given as a frame."""
        if self._frames is not None:
            return None
        position = self._position(donor)
        rows = self._data.rows[donor][position[position >= 0]]
        return np.argsort(rows, kind="stable")

    def frame(self, donor, samples=None, order: str = "F", buffer=None, columns=None
              ) -> pd.DataFrame:
        """Samples x genes of ``donor``: every row of its sample table, or the positions
        ``samples`` of them; a new frame each call.

        ``order`` is the memory layout of its values: 'F' (samples contiguous per gene, what
        :func:`collapse_probes` returns) or 'C'. ``buffer`` (optional): a 1-D float64 array at
        least as large as the table, whose memory the table then uses. ``columns``
        (optional): positions of the donor's genes to read, in that order (by default all,
        sorted by symbol). A caller that overwrites the values asks :meth:`read` instead.
        """
        if self._frames is not None:  # kept in memory: a view, not a copy
            frame = self._frames[donor]
            frame = frame if columns is None else frame.iloc[:, columns]
            return frame if samples is None else frame.iloc[samples]
        return self.read(donor, samples, order, buffer, columns).frame()

    def read(self, donor, samples=None, order: str = "F", buffer=None, columns=None
             ) -> "SampleTable":
        """:meth:`frame`'s table with the array its values were read into, the caller's to
        overwrite: in ``buffer``'s memory when given (and float64), else new; laid out in
        ``order``."""
        data = self._data
        if self._frames is not None:
            frame = self.frame(donor, samples, columns=columns)
            return SampleTable(own_copy(frame.to_numpy(), order, buffer), frame.index,
                               frame.columns)
        position = self._position(donor)
        which = np.flatnonzero(position >= 0)
        if columns is not None:
            which = which[columns]
        index = data.annotation[donor].index
        sample_order = None
        if samples is not None:
            sample_order = np.arange(len(index))[samples]
            index = index[sample_order]
        out = None
        if buffer is not None and data.dtype() == np.float64:
            shape = (len(index), len(which)) if order == "C" else (len(which), len(index))
            out = buffer[:shape[0] * shape[1]].reshape(shape)
        values = data.block(donor, positions=position[which], sample_order=sample_order,
                            transposed=order == "C", out=out)
        data.release(donor)
        values = values.astype(data.dtype(), copy=False)
        return SampleTable(values if order == "C" else values.T, index,
                           _gene_columns(data.genes, which))


@dataclass(frozen=True, eq=False)
class SampleTable:
    """A donor's samples x genes table as read (:meth:`ChosenProbes.read`): ``values``
    (samples, genes), the reader's caller's to overwrite (pandas shows a frame's values
    read-only), the samples' ``index`` and the genes' ``columns``."""

    values: np.ndarray
    index: pd.Index
    columns: pd.Index

    def frame(self) -> pd.DataFrame:
        """The table as a DataFrame over the same memory."""
        return pd.DataFrame(self.values, index=self.index, columns=self.columns, copy=False)


def read_chosen_probes(microarray, annotation, chosen: pd.DataFrame, samples=None,
                       order: str = "F", buffer=None, columns=None) -> SampleTable:
    """Samples x genes of one donor for the probes of ``chosen`` (a
    :meth:`ChosenProbes.probe_table`): the table :meth:`ChosenProbes.read` gives, read again
    later from the donor's ``microarray`` (for the cache: only those rows and samples).

    ``annotation`` is the donor's sample table; ``samples``, ``order``, ``buffer`` and
    ``columns`` are those of :meth:`ChosenProbes.read`.
    """
    return _given(microarray, annotation, chosen).read("donor", samples, order=order,
                                                       buffer=buffer, columns=columns)


def chosen_file_order(microarray, annotation, chosen: pd.DataFrame) -> np.ndarray:
    """:meth:`ChosenProbes.file_order` of the probes ``chosen`` in ``microarray`` (as
    :func:`read_chosen_probes` reads them): the positions of the genes that put their probes
    in the order of the microarray's rows."""
    return _given(microarray, annotation, chosen).file_order("donor")


def _given(microarray, annotation, chosen: pd.DataFrame) -> ChosenProbes:
    """The one-donor :class:`ChosenProbes` of the probes ``chosen`` (one per gene)."""
    genes = _Genes.from_probes(chosen)
    if (genes.sizes != 1).any():
        repeated = genes.symbols[np.flatnonzero(genes.sizes != 1)][:3].tolist()
        raise ValueError(f"The chosen probes must be one per gene; genes {repeated} have "
                         "several.")
    data = _Data({"donor": microarray}, {"donor": annotation}, genes)
    n_genes = len(genes.symbols)
    given = _Choice(np.arange(n_genes), np.full(n_genes, np.nan), "given")
    return ChosenProbes(data, choices={"all": given})


# ---------------------------------------------------------------------------------------------
# choices kept beside the matrix caches (see ahba_app.selection_cache)
# ---------------------------------------------------------------------------------------------
#: Methods whose choice is never stored: it depends on files the key does not digest.
UNSTORED_METHODS = ("rnaseq",)


def _choice_store(data: _Data, method: str, donor_probes: str, store
                  ) -> tuple[Path, str] | None:
    """(file, key) of this choice in ``store``, or None when it cannot be stored: a donor's
    microarray is not from a cache, or probe ids repeat."""
    from . import selection_cache

    donors = []
    for donor in data.donors:
        cached = data.matrices[donor].cached
        if cached is None or cached.cache is None or cached.content_id is None:
            return None
        annotation = data.annotation[donor]
        structures = (annotation["structure_id"].to_numpy()
                      if "structure_id" in annotation.columns else None)
        donors.append((str(donor), cached.content_id, data.cols[donor], structures))
    genes = data.genes
    if not pd.Index(genes.probe_ids).is_unique:
        return None
    key = selection_cache.choice_key(method, donor_probes, genes.probe_ids, genes.gene_of,
                                     genes.symbols, donors)
    folder = Path(data.matrices[data.donors[0]].cached.cache).parent
    return store.path(folder, key), key


def _load_choices(data: _Data, store, path: Path, key: str) -> dict | None:
    """The stored choices as :data:`DONOR_PROBES` returns them, or None (none stored, or they do
    not fit this probe table: every probe must exist and belong to its gene)."""
    genes = data.genes
    stored = store.load(path, key, len(genes.symbols))
    if stored is None:
        return None
    keys = {"all": "all", **{str(donor): donor for donor in data.donors}}
    position_of = pd.Index(genes.probe_ids)
    choices = {}
    for name, choice in stored.items():
        chosen = choice.probe_ids >= 0
        found = position_of.get_indexer(choice.probe_ids[chosen])
        if (name not in keys or (found < 0).any()
                or (genes.gene_of[found] != np.flatnonzero(chosen)).any()):
            LOGGER.info("Not using the stored probe choice %s (it does not fit the probe "
                        "table); choosing again", path)
            return None
        position = np.full(len(genes.symbols), -1, dtype=np.intp)
        position[chosen] = found
        choices[keys[name]] = _Choice(position, choice.scores, choice.criterion)
    LOGGER.info("Probe choice read from %s (made before on the same data and options)", path)
    return choices


def _save_choices(data: _Data, choices: dict, store, path: Path, key: str) -> None:
    from . import selection_cache

    ids = data.genes.probe_ids
    store.save(path, key, {
        str(name): selection_cache.StoredChoice(
            np.where(choice.position >= 0, ids[np.maximum(choice.position, 0)], -1),
            np.asarray(choice.score, dtype=np.float64), choice.criterion)
        for name, choice in choices.items()})


def select_probes(microarray: Mapping, annotation: Mapping, probes,
                  method: str = DEFAULTS["probe_selection"],
                  donor_probes: str = DEFAULTS["donor_probes"], rnaseq: Mapping | None = None,
                  store=None) -> tuple[ChosenProbes, pd.DataFrame]:
    """Choose the probes as :func:`collapse_probes` does, without reading the tables yet.

    Returns a :class:`ChosenProbes` (whose ``frame(donor)`` is ``collapse_probes``' table of
    that donor) and the selection table of ``return_info=True``. ``store`` (an
    :class:`ahba_app.selection_cache.ChoiceStore`) keeps the choice for later runs with the
    same inputs and reads it back; without one nothing is read or written.
    """
    method = check_probe_selection(method)
    donor_probes = check_donor_probes(donor_probes, method)
    probes = as_table(probes, "read_probes")
    genes = _Genes.from_probes(probes)
    data = _Data(microarray, annotation, genes)

    if method in COLLAPSE_METHODS:
        frames = SELECTION_METHODS[method](data, data.donors)
        info = pd.DataFrame({"donor": "all", "gene_symbol": genes.symbols,
                             "probe_id": pd.array([pd.NA] * len(genes.symbols), dtype="Int64"),
                             "probe_name": None, "n_probes": genes.sizes,
                             "criterion": method, "score": np.nan})
        return ChosenProbes(data, frames=frames), info

    where = (_choice_store(data, method, donor_probes, store)
             if store is not None and method not in UNSTORED_METHODS else None)
    choices = _load_choices(data, store, *where) if where is not None else None
    if choices is None:
        choices = DONOR_PROBES[donor_probes](data, SELECTION_METHODS[method], rnaseq=rnaseq)
        if where is not None:
            _save_choices(data, choices, store, *where)
    rows = []
    for key, choice in choices.items():
        which = np.flatnonzero(choice.position >= 0)
        pos = choice.position[which]
        rows.append(pd.DataFrame({
            "donor": str(key), "gene_symbol": genes.symbols[which],
            "probe_id": pd.array(genes.probe_ids[pos], dtype="Int64"),
            "probe_name": genes.names[pos], "n_probes": genes.sizes[which],
            "criterion": choice.criterion, "score": choice.score[which]}))
    return ChosenProbes(data, choices=choices), pd.concat(rows, ignore_index=True)
