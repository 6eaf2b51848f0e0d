"""Every gene accounted for: what became of each gene symbol of the AHBA probe table.

:func:`gene_fates` takes what the stages produced (the probe table before and after
reannotation, the share of samples above background of every probe, the probes kept by the
intensity filter, the probes chosen per donor, the genes aggregation dropped, the differential
stability when a threshold was applied, the final table's genes) and gives one row per gene
symbol: ``kept``, or the first stage that dropped it, with the numbers that decided it. The
kept genes are exactly the final table's columns (it is an error otherwise), so the table
answers "why is my gene missing?" for every gene of the array.

Fates, in stage order (:data:`FATES`):

``no_annotated_probe``
    No probe is assigned to the symbol after reannotation (Arnatkeviciute et al. 2019 moved
    or dropped its probes), or, with ``reannotated=False``, none has an Entrez id.
``intensity_filter``
    Every probe of the gene is above background in fewer than ``ibf_threshold`` of the
    samples (``best_share_above_background`` is its best probe's share).
``probe_selection``
    No probe could be chosen for it in some donor(s) (``donors_without_probe``).
``incomplete``
    Dropped at aggregation: it has no value in some region that has data, typically because
    its normalization is undefined there (constant in a donor's samples).
``stability_threshold``
    Its differential stability across donors is below ``stability_threshold``.
``kept``
    A column of the expression table.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from .options import DEFAULTS

__all__ = ["ANSWERS", "FATES", "COLUMNS", "explain", "gene_fates", "search_context", "summarize"]

FATES = ("no_annotated_probe", "intensity_filter", "probe_selection", "incomplete",
         "stability_threshold", "kept")
#: Columns of the genes table (``..._genes.tsv``), in order.
COLUMNS = ("gene_symbol", "fate", "n_probes_array", "n_probes_annotated",
           "n_probes_above_threshold", "best_share_above_background", "ibf_threshold",
           "donors_without_probe", "differential_stability", "stability_threshold", "reason")


class _Positions:
    """Where texts are among the gene symbols: by Arrow's hash look-up (no Python object per
    text), or, for values Arrow does not hold as texts (numbers, mixed objects), by a plain
    object Index (built once)."""

    def __init__(self, symbols: pd.Index):
        import pyarrow as pa

        self.symbols = symbols
        self.texts = pa.array(symbols.to_numpy(dtype=object), type=pa.large_string())
        self._lookup = None

    def __call__(self, values) -> np.ndarray:
        """The position of each of ``values`` among the symbols, -1 where none equals it."""
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            found = pa.array(values)
            if pa.types.is_string(found.type) or pa.types.is_large_string(found.type):
                return pc.index_in(found, value_set=self.texts).fill_null(-1) \
                    .to_numpy(zero_copy_only=False).astype(np.intp)
        except (pa.ArrowException, TypeError):  # (not all texts: equal to no symbol)
            pass
        if self._lookup is None:
            self._lookup = pd.Index(self.symbols.to_numpy(dtype=object), dtype=object)
        return self._lookup.get_indexer(np.asarray(values, dtype=object))


def _counts(positions: _Positions, probes: pd.DataFrame | None) -> np.ndarray:
    """The number of probes of ``probes`` of each gene symbol (int64)."""
    n_genes = len(positions.symbols)
    if probes is None or not len(probes):
        return np.zeros(n_genes, dtype=np.int64)
    at = positions(probes["gene_symbol"])
    return np.bincount(at[at >= 0], minlength=n_genes).astype(np.int64)


def gene_fates(raw_probes: pd.DataFrame, annotated: pd.DataFrame, filtered: pd.DataFrame,
               selection: pd.DataFrame, expression_genes: Iterable, *,
               share: pd.Series | None = None, ibf_threshold: float | None = None,
               dropped_incomplete: Iterable = (), stability: pd.Series | None = None,
               stability_threshold: float | None = None, donors: Iterable | None = None,
               reannotated: bool = DEFAULTS["reannotated"]) -> pd.DataFrame:
    """One row per gene symbol (of Probes.csv and of the annotated probe table): its fate.

    Parameters
    ----------
    raw_probes : DataFrame
        Probes.csv (``gene_symbol`` per probe).
    annotated : DataFrame
        The probe table after reannotation (or after dropping probes without Entrez id).
    filtered : DataFrame
        The probes kept by the intensity filter.
    selection : DataFrame
        The chosen probes (``donor``, ``gene_symbol``), as ``ahba_app.probes.select_probes``
        returns it (``donor`` 'all' when one choice serves every donor).
    expression_genes : iterable
        The columns of the final expression table.
    share : Series, optional
        Share of samples above background of every probe of ``annotated`` (by probe id).
    dropped_incomplete : iterable
        Genes dropped at aggregation (NaN in a region that has data).
    stability : Series, optional
        Differential stability by gene, when ``stability_threshold`` was applied.
    donors : iterable, optional
        The donors of the run (for ``donors_without_probe``).
    """
    expression_genes = pd.Index(expression_genes).astype(str)
    symbols = pd.Index(raw_probes["gene_symbol"].dropna().astype(str).unique()) \
        .union(pd.Index(annotated["gene_symbol"].dropna().astype(str).unique()))
    genes = symbols.tolist()
    n_genes = len(genes)
    # (an Arrow-backed Index converted its texts at every get_indexer; its isin went value
    # by value)
    positions = _Positions(symbols)
    # the stages' facts as arrays over ``symbols`` (a Python loop over the 28,000 genes, with
    # a set or dict look-up per gene and stage, cost 0.25 s an atlas)
    raw_count, annotated_count, filtered_count = (
        _counts(positions, probes) for probes in (raw_probes, annotated, filtered))
    best = np.full(n_genes, np.nan)
    if share is not None and len(annotated):
        at = positions(annotated["gene_symbol"].astype(str))
        per_probe = pd.Series(np.asarray(share.reindex(annotated.index), dtype=float))
        maxima = per_probe.groupby(at).max()  # (pandas' max: NaN skipped, NaN for none)
        found = maxima.index.to_numpy() >= 0
        best[maxima.index.to_numpy()[found]] = maxima.to_numpy()[found]

    chosen = selection.loc[selection["probe_id"].notna()] if "probe_id" in selection and \
        selection["probe_id"].notna().any() else selection
    keys = [str(d) for d in pd.unique(chosen["donor"])] if len(chosen) else []
    if donors is not None and keys and "all" not in keys:
        keys = [str(d) for d in donors]
    keys = list(dict.fromkeys(keys))  # (a donor named twice is one donor)
    chosen_donors = chosen["donor"].astype(str) if len(keys) else None
    # whether each gene has a probe chosen in each donor (keys x genes)
    has_probe = np.zeros((len(keys), n_genes), dtype=bool)
    for row, key in enumerate(keys):
        at = positions(chosen.loc[chosen_donors == key, "gene_symbol"].astype(str))
        has_probe[row, at[at >= 0]] = True
    n_missing = len(keys) - np.count_nonzero(has_probe, axis=0)
    dropped, in_table = np.zeros(n_genes, dtype=bool), np.zeros(n_genes, dtype=bool)
    for found, texts in ((dropped, [str(g) for g in dropped_incomplete]),
                         (in_table, expression_genes)):
        at = positions(texts)
        found[at[at >= 0]] = True
    ds = np.full(n_genes, np.nan)
    if stability is not None:
        stabilities = dict(zip(stability.rename(index=str).index.tolist(), stability.tolist()))
        ds = np.array([float(stabilities[g]) if g in stabilities else np.nan for g in genes],
                      dtype=float)

    # each gene's fate: the first stage that dropped it (FATES order), else kept
    stage = np.full(n_genes, -1)
    passed = np.ones(n_genes, dtype=bool)
    for fate, dropped_here in (
            ("no_annotated_probe", annotated_count == 0),
            ("intensity_filter", filtered_count == 0),
            ("probe_selection", n_missing > 0 if keys else np.ones(n_genes, dtype=bool)),
            ("incomplete", dropped),
            ("stability_threshold", ~in_table if stability_threshold is not None
             else np.zeros(n_genes, dtype=bool)),
            ("kept", in_table)):
        now = passed & dropped_here
        stage[now] = FATES.index(fate)
        passed &= ~now
    if passed.any():
        gene = genes[int(np.flatnonzero(passed)[0])]
        raise ValueError(f"Gene {gene!r} passed every stage but is not in the expression "
                         "table: the stage outputs given do not belong to one run.")

    reasons = np.empty(n_genes, dtype=object)
    missing_text = np.full(n_genes, "", dtype=object)
    here = np.flatnonzero(stage == FATES.index("no_annotated_probe"))
    for n in np.unique(raw_count[here]).tolist():  # reason by number of probes (few numbers)
        reasons[here[raw_count[here] == n]] = (
            f"none of its {n} probe(s) on the array is assigned to it after reannotation "
            "(Arnatkeviciute et al. 2019)" if reannotated
            else f"none of its {n} probe(s) has an Entrez id")
    here = np.flatnonzero(stage == FATES.index("intensity_filter"))
    if ibf_threshold is not None:
        reasons[here] = [f"its best probe is above background in {value:.1%} of the samples, "
                         f"below the threshold of {ibf_threshold:.0%}" if np.isfinite(value)
                         else "every probe failed the intensity-based filter"
                         for value in best[here].tolist()]
    else:
        reasons[here] = "every probe failed the intensity-based filter"
    here = np.flatnonzero(stage == FATES.index("probe_selection"))
    everywhere_missing = (n_missing[here] == len(keys))
    reasons[here[everywhere_missing]] = "no probe could be chosen for it"
    for at in here.tolist():
        missing_in = [key for row, key in enumerate(keys) if not has_probe[row, at]]
        missing_text[at] = ",".join(missing_in)
        if n_missing[at] != len(keys):
            reasons[at] = f"no probe could be chosen for it in donor(s) {', '.join(missing_in)}"
    reasons[stage == FATES.index("incomplete")] = (
        "it has no value in some region that has samples (its normalization is undefined "
        "there, e.g. constant across a donor's samples)")
    here = np.flatnonzero(stage == FATES.index("stability_threshold"))
    reasons[here] = [f"its differential stability ({value:.3f}) is below the threshold of "
                     f"{stability_threshold:g}" for value in ds[here].tolist()]
    reasons[stage == FATES.index("kept")] = "in the expression table"

    # built column by column from lists (as Python objects: the same column types whatever
    # the number of genes), the symbols as they are
    table = pd.DataFrame(dict(zip(COLUMNS, [
        symbols.array if n_genes else genes, np.asarray(FATES, dtype=object)[stage].tolist(),
        raw_count.tolist(), annotated_count.tolist(), filtered_count.tolist(), best.tolist(),
        [ibf_threshold] * n_genes, missing_text.tolist(), ds.tolist(),
        [stability_threshold] * n_genes, reasons.tolist()])))
    extra = expression_genes.difference(symbols[stage == FATES.index("kept")])
    if len(extra):
        raise ValueError(f"The expression table has gene(s) {extra[:5].tolist()} that no stage "
                         "output accounts for: the stage outputs given do not belong to one run.")
    table["fate"] = pd.Categorical(table["fate"], categories=FATES)
    return table.sort_values(["gene_symbol"], kind="stable").reset_index(drop=True)


#: The answers to "what became of GENE?" (the report's search box uses the same ones).
ANSWERS = {
    "unknown": "{gene} is not a gene symbol of the AHBA probe table.",
    "kept": "{gene} is kept: it is a column of the expression table.",
    "dropped": "{gene} was dropped at stage '{fate}': {reason}.",
}


def explain(table: pd.DataFrame, gene: str) -> str:
    """One sentence: what became of ``gene`` (case-insensitive), from a :func:`gene_fates`
    table."""
    rows = table.loc[table["gene_symbol"].str.upper() == str(gene).strip().upper()]
    if not len(rows):
        return ANSWERS["unknown"].format(gene=str(gene).strip())
    row = rows.iloc[0]
    kind = "kept" if row["fate"] == "kept" else "dropped"
    return ANSWERS[kind].format(gene=row["gene_symbol"], fate=row["fate"], reason=row["reason"])


def search_context(table: pd.DataFrame, file: str | None = None) -> dict:
    """What the report's search box needs: the fate and reason of every gene as JSON (safe
    inside a ``<script>`` element), the answers' wording, the counts per fate and an example
    of a dropped gene."""
    import json

    genes = {str(g): [str(f)] if f == "kept" else [str(f), str(r)]  # lists: no Arrow scalars
             for g, f, r in zip(table["gene_symbol"].tolist(), table["fate"].tolist(),
                                table["reason"].tolist())}
    dropped = table.loc[table["fate"] != "kept", "gene_symbol"]
    context = {"answers": ANSWERS, "genes": genes}
    text = _compact_json(context) if _printable_ascii(genes) else \
        json.dumps(context, separators=(",", ":"))
    return {"json": text.replace("</", "<\\/"), "counts": summarize(table), "file": file,
            "example": str(dropped.iloc[0]) if len(dropped) else
            (str(table["gene_symbol"].iloc[0]) if len(table) else "")}


def _printable_ascii(genes: dict) -> bool:
    """Whether every text of ``genes`` (keys and listed strings) and of :data:`ANSWERS` is
    printable ASCII (space to ``~``), where orjson's compact JSON is ``json.dumps``'s with
    ``separators=(",", ":")`` character for character (both escape only ``"`` and ``\\``)."""
    text = " ".join([" ".join(genes), *(" ".join(v) for v in genes.values()), *ANSWERS.values()])
    return text.isascii() and text.isprintable()


def _compact_json(value) -> str:
    """``json.dumps(value, separators=(",", ":"))`` for printable-ASCII content, by orjson
    (about ten times quicker on the search box's 28,000 genes)."""
    import orjson

    return orjson.dumps(value).decode("ascii")


def summarize(table: pd.DataFrame) -> Mapping[str, int]:
    """Number of genes per fate, in stage order."""
    counts = table["fate"].value_counts()
    return {fate: int(counts.get(fate, 0)) for fate in FATES}
