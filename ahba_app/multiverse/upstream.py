"""What the normalization groups of one unit share, computed once: the stages of
:func:`ahba_app.pipeline.run` above normalization (data located and mapped, atlas, samples,
matching, probe filter and choice), then each group's normalization from them.

A unit's groups differ only in ``sample_norm``, ``gene_norm``, ``norm_matched`` and
``norm_structures`` (:mod:`.planner`), so the samples, their regions and the chosen probes are
the same for all of them: :class:`UnitUpstream` holds them, and :meth:`UnitUpstream.normalized`
gives a group's normalized donors as ``pipeline.run(..., aggregate=False)`` would (the same
stage functions, called in the same order with the same arguments; the tests compare every row
with ``get_expression_data``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .. import exact as _exact
from .. import io as _io
from .. import matching as _matching
from .. import normalize as _normalize
from .. import pipeline as _pipeline
from .. import probes as _probes
from .._blocks import n_threads
from ..geometry import weighted_mean_rows
from ..selection_cache import ChoiceStore
from . import variants as _variants

__all__ = ["UnitUpstream"]


class UnitUpstream:
    """The shared upstream result of a unit (``settings``: any of its pipelines')."""

    def __init__(self, atlas, atlas_info=None, *, settings, data_dir=None, n_proc: int = 1):
        p = _pipeline
        files, rnaseq = p.locate_data(data_dir, settings.donors,
                                      need_rnaseq=settings.probe_selection == "rnaseq",
                                      n_proc=n_proc)
        files = {donor: dict(paths, **{kind: _io.load_matrix(paths[kind], kind)
                                       for kind in ("pacall", "microarray")})
                 for donor, paths in files.items()}
        atlases, group_atlas = p.load_atlas(atlas, atlas_info, settings.donors,
                                            data_dir=data_dir)
        p.check_atlas_settings(group_atlas, settings)
        affines = p.native_affines(atlases, group_atlas, data_dir)
        raw_probes = _io.read_probes(next(iter(files.values()))["probes"])
        probes = _probes.prepare_probes(raw_probes, reannotated=settings.reannotated)
        annotations = {}
        for donor, donor_files in files.items():
            annotations[donor], _ = p.prepare_donor_samples(
                donor_files, probes, corrected_mni=settings.corrected_mni,
                lr_mirror=settings.lr_mirror, sim_threshold=settings.sim_threshold,
                native_affine=affines.get(donor))
        match_labels, renumbered = {}, {}
        for donor in files:
            renumbered[donor] = p.renumbered(annotations[donor])
            match_labels[donor] = p.match_donor_samples(atlases[donor], renumbered[donor],
                                                        tolerance=settings.tolerance)
        p.check_matched({d: int((m != 0).sum()) for d, m in match_labels.items()},
                        {d: len(m) for d, m in match_labels.items()},
                        tolerance=settings.tolerance)
        filtered = p.filter_probe_table(files, annotations, probes,
                                        ibf_threshold=settings.ibf_threshold)
        # Mirrored copies (lr_mirror) repeat their original's sample id, and a sample's values
        # are read by its id: a copy's row is its original's. ``source``: each row's place
        # among the donor's distinct samples (``unique_rows``: where each is first).
        self.source, self.unique_rows = {}, {}
        for donor in files:
            codes, _ = pd.factorize(annotations[donor].index)
            self.source[donor] = codes.astype(np.intp)
            self.unique_rows[donor] = np.unique(codes, return_index=True)[1]
        # Probes combined in memory ('average') make tables held whole: of each distinct
        # sample once (each sample's values are its own probes', whichever others are there).
        self._collapsed = settings.probe_selection in _probes.COLLAPSE_METHODS
        chosen_from = annotations
        if self._collapsed:
            chosen_from = {d: a.iloc[self.unique_rows[d]] for d, a in annotations.items()}
        expressions, _ = p.select_donor_probes(
            files, chosen_from, filtered, probe_selection=settings.probe_selection,
            donor_probes=settings.donor_probes, rnaseq_files=rnaseq, store=ChoiceStore())
        p.check_genes(expressions.n_genes(next(iter(expressions))), n_probes=len(filtered),
                      ibf_threshold=settings.ibf_threshold)
        self.atlases = atlases
        self.all_labels = next(iter(atlases.values())).labels
        self.donors = list(files)
        self.expressions = expressions
        self.match_labels = match_labels
        self.annotations = renumbered
        self._columns: dict = {}  # donor -> the genes' names (from sample_normalized)

    def _frame(self, donor, rows, order: str) -> pd.DataFrame:
        """The donor's samples x genes table of its sample table's rows ``rows`` (None: each
        distinct sample once, in the order of ``unique_rows``)."""
        return self.expressions.frame(donor, self._table_rows(donor, rows), order=order)

    def _table_rows(self, donor, rows):
        """The rows of the donor's table of chosen probes that hold its sample table's rows
        ``rows`` (see :meth:`_frame`); None for all of them."""
        if rows is None:
            if self._collapsed or len(self.unique_rows[donor]) == len(self.source[donor]):
                return None
            return self.unique_rows[donor]
        return self.source[donor][rows] if self._collapsed else rows

    def _kept(self, donor, settings, kept: dict, labels: dict):
        """The positions of the donor's samples a group normalizes (``norm_matched``); their
        sample table and region labels go into ``kept`` and ``labels``."""
        keep = _pipeline.normalized_rows(self.match_labels[donor],
                                         norm_matched=settings.norm_matched)
        kept[donor] = self.annotations[donor].iloc[keep]
        labels[donor] = self.match_labels[donor][keep]
        return keep

    def normalized(self, settings) -> tuple[dict, dict, dict]:
        """One group's normalized donors, their kept sample tables and region labels (as
        :class:`ahba_app.pipeline.PipelineResult`'s ``expression``, ``annotations`` and
        ``labels``)."""
        order = _pipeline.read_order(settings.sample_norm)
        normalized, kept, labels = {}, {}, {}
        for donor in self.donors:
            keep = self._kept(donor, settings, kept, labels)
            structures = kept[donor][["structure"]] if settings.norm_structures else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                normalized[donor] = _normalize.normalize_donor(
                    self._frame(donor, keep, order)
                    .set_axis(kept[donor].index, axis=0),
                    sample_norm=settings.sample_norm, gene_norm=settings.gene_norm,
                    structures=structures)
        return normalized, kept, labels

    def sample_values(self) -> dict | None:
        """Every donor's distinct samples x genes values as read (donor -> (U, G) array, each
        distinct sample once, samples contiguous per gene: 'F'), for
        :meth:`sample_normalized`; None when a donor's table holds a NaN (see there)."""
        out = {}
        for donor in self.donors:
            out[donor] = self._values(donor)
            if out[donor] is None:
                return None
        return out

    def _values(self, donor) -> np.ndarray | None:
        """One donor's :meth:`sample_values`, or None when it holds a NaN."""
        # read into memory of our own, written over by the normalizations that can
        size = len(self.unique_rows[donor]) * self.expressions.n_genes(donor)
        table = self.expressions.read(donor, self._table_rows(donor, None), order="F",
                                      buffer=np.empty(size))
        self._columns[donor] = table.columns
        values = table.values
        del table
        if values.dtype.kind == "f" and np.isnan(values).any():
            return None
        return values

    def sample_normalized(self, sample_norm, values: dict | None = None) -> dict | None:
        """Every sample of every donor normalized across genes by ``sample_norm`` (donor ->
        (U, G) array: each distinct sample once, mirrored copies not repeated; row ``r`` of the
        donor's sample table is row ``source[donor][r]``), for :meth:`normalized_from`; None
        when a donor's table holds a NaN.

        Each sample is normalized over its genes alone, so a group's samples are these rows,
        whichever samples the group keeps (``norm_matched``): the normalization runs once per
        ``sample_norm`` for the unit's groups, not once per group. With a NaN in the table the
        genes that take part could depend on the samples kept: then None, and the groups are
        normalized one by one (:meth:`normalized`).

        ``values``: :meth:`sample_values`, which the caller gives up (read once for several
        passes: decoding the tables was most of a pass): without normalization they are the
        result; a normalization whose numbers do not depend on the layout is written over
        them (in their memory: no fresh 0.6 GB); any other reads them as they are."""
        name = _normalize.resolve_norm(sample_norm)
        if name is None:
            return self.sample_values() if values is None else values
        in_place = name in _exact.LAYOUT_FREE_NORMS
        out = {}
        for donor in self.donors:
            # one donor's values at a time besides the results
            table = self._values(donor) if values is None else values.pop(donor)
            if table is None:
                return None
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                out[donor] = _normalize.normalize_array(table, name, axis=1,
                                                        out=table if in_place else None)
            del table
        return out

    def normalized_from(self, sampled: dict, settings) -> tuple[dict, dict, dict]:
        """:meth:`normalized` from the unit's :meth:`sample_normalized` arrays of
        ``settings.sample_norm``: the kept rows of each donor, then each gene normalized across
        them (``gene_norm``, within structures with ``norm_structures``). The numbers are those
        of :meth:`normalized` (the gene normalization reads the same values in the same
        layout: tested)."""
        gene_name = _normalize.resolve_norm(settings.gene_norm)
        normalized, kept, labels = {}, {}, {}
        for donor in self.donors:
            keep = self._kept(donor, settings, kept, labels)
            values = _gene_normalized(sampled[donor], self.source[donor][keep], gene_name,
                                      _classes(kept[donor], settings, gene_name))
            normalized[donor] = pd.DataFrame(values, index=kept[donor].index,
                                             columns=self._columns[donor], copy=False)
        return normalized, kept, labels

    def group_tables(self, sampled: dict, settings, variants, scratch=None,
                     block_genes: int | None = None, shared: dict | None = None
                     ) -> dict | None:
        """The tables of one group's ``variants`` (``(missing, region_agg, agg_metric)``) from
        the unit's :meth:`sample_normalized` arrays of ``settings.sample_norm``: each block
        of genes normalized as :meth:`normalized_from` normalizes it (every gene on its own)
        and aggregated by :func:`~.variants.blocked_tables`, so that neither the group's
        normalized table nor its gathered copy is ever whole in memory. None where
        :func:`~.variants.variant_tables` gives None (then :meth:`normalized_from` and the
        API's aggregation). ``block_genes``: genes per block (default
        :data:`~.variants.BLOCK_GENES`).

        ``shared``: a dict the groups of one ``sample_norm`` pass along. Without gene
        normalization a matched sample's values are its sample-normalized row whichever samples
        the group keeps (``norm_matched``), so the tables of the regions with samples are the
        same for those groups: the second one computes only what ``missing='centroids'``
        fills."""
        gene_name = _normalize.resolve_norm(settings.gene_norm)
        kept, labels, keeps, classes = {}, {}, {}, {}
        for donor in self.donors:
            keeps[donor] = self.source[donor][self._kept(donor, settings, kept, labels)]
            classes[donor] = _classes(kept[donor], settings, gene_name)

        scratch = _variants.Scratch() if scratch is None else scratch
        sources = [sampled[donor].T for donor in self.donors]  # genes x samples
        n_rows = sum(len(keeps[donor]) for donor in self.donors)

        def normalized_block(cols):
            if gene_name in _kernels().GENE_NORMS:
                # compiled, straight into the stacked rows the aggregation reads
                width = cols.stop - cols.start
                out = scratch.array("normalized", (n_rows, width))
                if _kernels().gene_normalized(
                        gene_name, sources, [keeps[d] for d in self.donors],
                        [classes[d] for d in self.donors], cols.start, cols.stop, out,
                        n_threads(), scratch.array("normalizing", (width, n_rows))):
                    return out
            if gene_name is None:  # the kept rows as they are, stacked as the kernels read them
                out = scratch.array("normalized", (n_rows, cols.stop - cols.start))
                at = 0
                for donor in self.donors:
                    rows = keeps[donor]
                    np.take(sampled[donor][:, cols], rows, axis=0, out=out[at:at + len(rows)],
                            mode="clip")
                    at += len(rows)
                return out
            return [_gene_normalized(sampled[donor][:, cols], keeps[donor], gene_name,
                                     classes[donor]) for donor in self.donors]

        fill_block = None
        if any(missing is not None for missing, _, _ in variants):
            fill_block = self._centroid_fills(kept, labels)
        columns = self._columns[self.donors[0]]
        known = None
        if shared is not None and gene_name is None:
            known = shared.setdefault(("no gene_norm", _normalize.resolve_norm(
                settings.sample_norm)), {})
        return _variants.blocked_tables(normalized_block, [labels[d] for d in self.donors],
                                        self.all_labels, columns, variants, fill_block,
                                        scratch, block_genes or _variants.BLOCK_GENES, known)

    def _centroid_fills(self, kept: dict, labels: dict):
        """``fill_block`` for :func:`~.variants.blocked_tables`: the rows
        ``missing='centroids'`` adds (:func:`ahba_app.pipeline.fill_missing_regions`) for a
        block of genes. Which sample of each donor is closest to an empty region's centroid
        depends on the samples' places only: it is found once, by matching a table of row
        positions; each block then combines those samples' values of its genes as the API
        combines whole rows (:func:`ahba_app.matching.combine_centroids`, gene by gene)."""
        chosen = {}
        for donor in self.donors:
            coords = _pipeline.atlas_coordinates(self.atlases[donor], kept[donor])
            positions = pd.DataFrame(np.arange(len(kept[donor]), dtype=np.float64)[:, None],
                                     index=kept[donor].index)
            rows, dist = _matching.match_centroids(self.atlases[donor], labels[donor],
                                                   positions, coords)
            chosen[donor] = (rows.iloc[:, 0], dist)
        # combine_centroids' choices made once: the regions empty in every donor, each donor's
        # row for each (-1: none, a NaN row) and their weights
        common = sorted(set.intersection(*[set(at.index) for at, _ in chosen.values()]))
        where = np.asarray([[_row_at(chosen[d][0], label) for d in self.donors]
                            for label in common], dtype=np.intp
                           ).reshape(len(common), len(self.donors))
        weights = [_matching.inverse_distance_weights(np.asarray(
            [chosen[d][1].loc[label] for d in self.donors], dtype=float)[:, None])[:, 0]
            for label in common]
        filled = np.asarray(common, dtype=np.int64)

        def fill_block(arrays, cols):
            width = cols.stop - cols.start
            nan = np.full(width, np.nan)
            rows = np.empty((len(common), width))
            for j in range(len(common)):
                # the donors' rows stacked and combined as combine_centroids does
                values = np.stack([arrays[d][at] if at >= 0 else nan
                                   for d, at in enumerate(where[j])])
                rows[j] = weighted_mean_rows(values, weights[j])
            return [(filled, rows)] * len(self.donors)

        return fill_block


def _row_at(at: pd.Series, label) -> int:
    """The row a donor's centroid match chose for ``label`` (-1: none)."""
    value = at.loc[label]
    return -1 if np.isnan(value) else int(value)


def _kernels():
    from . import _kernels  # numba: imported by the multiverse only, when first needed

    return _kernels


def _classes(kept: pd.DataFrame, settings, gene_name):
    """The structure of each kept sample when the gene normalization runs within structures
    (``norm_structures``), else None."""
    if gene_name is None or not settings.norm_structures:
        return None
    return kept["structure"].to_numpy(dtype=object)


def _gene_normalized(sampled: np.ndarray, keep, gene_name, classes) -> np.ndarray:
    """The rows ``keep`` of a donor's sample-normalized (S, G) array, samples contiguous per
    gene (F) as the sample normalization of those rows alone leaves them, each gene then
    normalized across them by ``gene_name`` (within ``classes`` if given; None: as they are)."""
    values = np.take(sampled.T, keep, axis=1).T
    if gene_name is None:
        return values
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return _normalize.normalize_array(values, gene_name, axis=0, groups=classes)
