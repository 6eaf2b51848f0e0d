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


def _counts(probes: pd.DataFrame | None) -> pd.Series:
    if probes is None or not len(probes):
        return pd.Series(dtype=np.int64)
    return probes.groupby("gene_symbol", sort=False).size()


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
    n_raw, n_annotated, n_filtered = (_counts(raw_probes), _counts(annotated),
                                      _counts(filtered))
    symbols = pd.Index(raw_probes["gene_symbol"].dropna().astype(str).unique()) \
        .union(pd.Index(annotated["gene_symbol"].dropna().astype(str).unique()))
    best = pd.Series(np.nan, index=symbols)
    if share is not None and len(annotated):
        per_probe = pd.Series(np.asarray(share.reindex(annotated.index), dtype=float),
                              index=annotated["gene_symbol"].astype(str).to_numpy())
        best = per_probe.groupby(level=0).max().reindex(symbols)

    chosen = selection.loc[selection["probe_id"].notna()] if "probe_id" in selection and \
        selection["probe_id"].notna().any() else selection
    keys = [str(d) for d in pd.unique(chosen["donor"])] if len(chosen) else []
    if donors is not None and keys and "all" not in keys:
        keys = [str(d) for d in donors]
    by_donor = {key: set(chosen.loc[chosen["donor"].astype(str) == key, "gene_symbol"]
                         .astype(str).tolist()) for key in keys}
    dropped = set(map(str, dropped_incomplete))
    stability = None if stability is None else stability.rename(index=str)

    # plain dicts and sets: a Series lookup per gene and stage cost 1.4 s for 20,000 genes
    # (tolist: iterating text stored by Arrow value by value is slow)
    raw_count, annotated_count, filtered_count = (
        dict(zip(counts.index.tolist(), counts.tolist()))
        for counts in (n_raw, n_annotated, n_filtered))
    best_share = dict(zip(best.index.tolist(), best.tolist()))
    stabilities = None if stability is None else dict(zip(stability.index.tolist(),
                                                          stability.tolist()))
    in_table = set(expression_genes.tolist())
    # genes with a probe chosen in every donor (most): no donor to list
    everywhere = set.intersection(*by_donor.values()) if by_donor else set()
    unannotated = {}  # reason by number of probes (few distinct numbers)
    genes = symbols.tolist()
    fates, reasons, missing_text, stabilities_out = [], [], [], []
    for gene in genes:
        missing_in = [] if gene in everywhere else \
            [key for key, chosen_genes in by_donor.items() if gene not in chosen_genes]
        ds = float(stabilities[gene]) if stabilities is not None and gene in stabilities \
            else np.nan
        if gene not in annotated_count:
            fate = "no_annotated_probe"
            n = int(raw_count.get(gene, 0))
            reason = unannotated.get(n)
            if reason is None:
                reason = unannotated[n] = (
                    f"none of its {n} probe(s) on the array is assigned to it after "
                    "reannotation (Arnatkeviciute et al. 2019)" if reannotated
                    else f"none of its {n} probe(s) has an Entrez id")
        elif gene not in filtered_count:
            fate = "intensity_filter"
            reason = (f"its best probe is above background in {best_share[gene]:.1%} of the "
                      "samples, "
                      f"below the threshold of {ibf_threshold:.0%}" if ibf_threshold is not None
                      and np.isfinite(best_share[gene]) else
                      "every probe failed the intensity-based filter")
        elif missing_in and len(missing_in) == len(by_donor) or not by_donor:
            fate = "probe_selection"
            reason = "no probe could be chosen for it"
        elif missing_in:
            fate = "probe_selection"
            reason = f"no probe could be chosen for it in donor(s) {', '.join(missing_in)}"
        elif gene in dropped:
            fate = "incomplete"
            reason = ("it has no value in some region that has samples (its normalization is "
                      "undefined there, e.g. constant across a donor's samples)")
        elif gene not in in_table and stability_threshold is not None:
            fate = "stability_threshold"
            reason = (f"its differential stability ({ds:.3f}) is below the threshold of "
                      f"{stability_threshold:g}")
        elif gene in in_table:
            fate = "kept"
            reason = "in the expression table"
        else:
            raise ValueError(f"Gene {gene!r} passed every stage but is not in the expression "
                             "table: the stage outputs given do not belong to one run.")
        fates.append(fate)
        reasons.append(reason)
        missing_text.append(",".join(missing_in) if fate == "probe_selection" else "")
        stabilities_out.append(ds)
    # built column by column (a list of row tuples took twice as long to become a table)
    n_genes = len(genes)
    table = pd.DataFrame(dict(zip(COLUMNS, [
        genes, fates, [int(raw_count.get(g, 0)) for g in genes],
        [int(annotated_count.get(g, 0)) for g in genes],
        [int(filtered_count.get(g, 0)) for g in genes], [best_share[g] for g in genes],
        [ibf_threshold] * n_genes, missing_text, stabilities_out,
        [stability_threshold] * n_genes, reasons])))
    kept = pd.Index(table.loc[table["fate"] == "kept", "gene_symbol"])
    extra = expression_genes.difference(kept)
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
