"""A normalization group's downstream variants computed together, on arrays.

The eight variants of a normalization group in the Markello grid (``missing`` none or
centroids x ``region_agg`` donors or samples x ``agg_metric`` mean or median) all reduce the
same samples: the matched samples of every donor, grouped by region. :func:`variant_tables`
gathers them once, sorted by (region, donor, row), into blocks, then reads every variant off
those blocks:

- a block is the samples of one donor in one region; a region's blocks are contiguous, so a
  region's pooled samples are the concatenation of its blocks;
- means by the API's own arithmetic (:mod:`ahba_app.aggregate`: Kahan sums in sample order,
  then a running mean over the donors in donor order) on the blocks (per-donor means) and on
  the regions (pooled means), so they are the API's bit for bit;
- medians per block and per region by :func:`block_medians`, and the median over donors is
  :func:`block_medians` of the blocks' medians;
- ``missing='centroids'`` only adds rows for regions without any sample (the same rows for
  every donor: :func:`ahba_app.matching.fill_missing`); every other region's value is the same
  for both ``missing`` values, so only the filled regions are computed again, from the fill
  rows, with the same functions.

Medians are those of :func:`ahba_app.aggregate.aggregate_samples` bit for bit too (the middle
value, or the two middle values added and halved): bit-identical tables keep the statistics'
ties (mirrored regions give exactly equal correlations), which Spearman's ranks see. The
tables equal ``get_expression_data``'s only when no normalized value is NaN (NaN values make
the API skip values and drop genes): :func:`variant_tables` returns None then, and the caller
aggregates those variants the API's way.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .._blocks import transpose_into
from ..aggregate import _group_mean, _RunningMean

__all__ = ["BLOCK_GENES", "GroupBlocks", "SampleBlocks", "Scratch", "block_medians",
           "blocked_tables", "gather_group", "variant_tables"]

#: Elements of the working blocks (gathered rows, medians): 32 MB.
_CHUNK_ELEMENTS = 1 << 22


class Scratch:
    """Working memory reused by the groups of a unit (one per unit, passed in: nothing is
    kept between units): each named buffer grows to the largest size asked for. Fresh large
    arrays cost page faults each time; reused ones do not."""

    def __init__(self):
        self._buffers: dict = {}

    def array(self, name: str, shape) -> np.ndarray:
        size = int(np.prod(shape))
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[name] = np.empty(size, dtype=np.float64)
        return buffer[:size].reshape(shape)


def _middle(ordered: np.ndarray, n: int) -> np.ndarray:
    """The median of each sorted last-axis run of ``n`` values: the middle one, or the two
    middle ones added and halved."""
    low, high = (n - 1) // 2, n // 2
    if low == high:
        return ordered[..., low]
    return (ordered[..., low] + ordered[..., high]) / 2


def block_medians(values: np.ndarray, starts, sizes, scratch: Scratch | None = None
                  ) -> np.ndarray:
    """The median of each block of columns of ``values`` (G, N) (block ``i``: ``sizes[i]``
    columns from ``starts[i]``, every size > 0), per row, as (G, n_blocks) float64.

    The median of n values is the middle one (n odd) or the two middle ones added and halved
    (n even), as pandas' and numpy's medians compute it. The blocks are gathered once, by
    size (one pass over ``values``), so that those of the same size make one (G, blocks, n)
    array, sorted along n together."""
    starts, sizes = np.asarray(starts, dtype=np.intp), np.asarray(sizes, dtype=np.intp)
    scratch = Scratch() if scratch is None else scratch
    out = np.empty((values.shape[0], len(starts)), dtype=np.float64)
    by_size = np.argsort(sizes, kind="stable")
    columns = np.repeat(starts[by_size], sizes[by_size])  # each block's columns, by size
    columns += np.arange(len(columns)) - np.repeat(np.cumsum(sizes[by_size]) - sizes[by_size],
                                                    sizes[by_size])
    size_of = sizes[by_size]
    kinds, first = np.unique(size_of, return_index=True)
    offsets = np.concatenate([[0], np.cumsum(size_of)])
    for rows in _row_chunks(values.shape[0], len(columns)):
        gathered = scratch.array("medians", (rows.stop - rows.start, len(columns)))
        np.take(values[rows], columns, axis=1, out=gathered, mode="clip")
        for n, at in zip(kinds, first):
            count = int(np.count_nonzero(size_of == n))
            block = gathered[:, offsets[at]:offsets[at] + n * count].reshape(
                len(gathered), count, n)
            if n > 2:
                block.sort(axis=-1)
            out[rows, by_size[at:at + count]] = _middle(block, n)
    return out


def _row_chunks(n_rows: int, n_cols: int):
    """Slices of rows holding about :data:`_CHUNK_ELEMENTS` elements of ``n_cols`` columns."""
    step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


class SampleBlocks:
    """The rows of several donors gathered into one (G, N) array ``values`` (genes x
    samples), ordered by region (regions of equal size together: ``regions``,
    ``region_starts``, ``region_sizes``), then donor, then row; a region's rows of one donor
    are a *block* (``block_starts``, ``block_sizes``, ``block_donor``; each region's blocks
    from ``region_blocks``, ``region_n_blocks`` of them).

    ``frames``: per donor, its (G, S_d) genes x samples array (the transpose of a samples x
    genes table); ``codes``: per donor, each sample's region position (-1: not aggregated).
    ``scratch``: working memory to reuse (:class:`Scratch`)."""

    def __init__(self, frames: Sequence[np.ndarray] | None, codes: Sequence[np.ndarray],
                 scratch: Scratch | None = None):
        self.scratch = Scratch() if scratch is None else scratch
        donor = np.concatenate([np.full(len(c), d, dtype=np.intp) for d, c in enumerate(codes)])
        row = np.concatenate([np.arange(len(c), dtype=np.intp) for c in codes])
        code = np.concatenate([np.asarray(c, dtype=np.intp) for c in codes])
        used = code >= 0
        donor, row, code = donor[used], row[used], code[used]
        region_size = np.bincount(code, minlength=int(code.max()) + 1 if code.size else 0)
        order = np.lexsort((row, donor, code, region_size[code]))
        donor, row, code = donor[order], row[order], code[order]
        # each gathered sample's position in the donors' rows laid end to end (:meth:`take`)
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in codes])]).astype(np.intp)
        self.source = offsets[donor] + row
        # the gathered samples: ``values`` genes x samples (medians), ``by_sample`` samples x
        # genes (means); one is made from the other when first asked for
        self._values = None if frames is None else self._gather(frames, donor, row)
        self._by_sample = None
        new_block = np.ones(len(code), dtype=bool)
        new_block[1:] = (code[1:] != code[:-1]) | (donor[1:] != donor[:-1])
        self.block_starts = np.flatnonzero(new_block)
        self.block_sizes = np.diff(np.append(self.block_starts, len(code)))
        self.block_region = code[self.block_starts]
        self.block_donor = donor[self.block_starts]
        new_region = np.ones(len(self.block_starts), dtype=bool)
        new_region[1:] = self.block_region[1:] != self.block_region[:-1]
        self.region_blocks = np.flatnonzero(new_region)
        self.region_n_blocks = np.diff(np.append(self.region_blocks, len(self.block_starts)))
        self.regions = self.block_region[self.region_blocks]
        self.region_starts = self.block_starts[self.region_blocks]
        self.region_sizes = np.diff(np.append(self.region_starts, len(code)))

    def _gather(self, frames, donor, row) -> np.ndarray:
        values = None
        for d in range(len(frames)):
            frame = frames[d]  # (taken out of its table as late as possible: see gather_group)
            if values is None:
                # fresh, not scratch memory: the largest array of a group, let go after it
                values = np.empty((frame.shape[0], len(row)), dtype=np.float64)
                n_genes = frame.shape[0]
            at = np.flatnonzero(donor == d)
            for rows in _row_chunks(n_genes, at.size) if at.size else ():
                part = self.scratch.array("gather", (rows.stop - rows.start, at.size))
                np.take(frame[rows], row[at], axis=1, out=part, mode="clip")
                values[rows, at] = part
            del frame
        if values is None:
            values = np.empty((0, len(row)), dtype=np.float64)
        return values

    def take(self, joined: np.ndarray) -> "SampleBlocks":
        """These blocks with their samples taken from ``joined`` (sum of the donors' rows,
        G'): the donors' samples x genes arrays stacked, in donor order (e.g. a block of
        genes). Returns self."""
        self._by_sample = np.take(joined, self.source, axis=0, mode="clip",
                                  out=self.scratch.array("by_sample",
                                                         (len(self.source), joined.shape[1])))
        self._values = None
        return self

    @property
    def values(self) -> np.ndarray:
        """The gathered samples, genes x samples (G, N) C-contiguous (samples contiguous per
        gene: the medians sort them in place)."""
        if self._values is None:
            self._values = self.scratch.array("values", self._by_sample.shape[::-1])
            transpose_into(self._values, self._by_sample)
            self._by_sample = None  # out of order once sorted
        return self._values

    @property
    def by_sample(self) -> np.ndarray:
        """The gathered samples, samples x genes (N, G): (a view of) :attr:`values`, or
        C-contiguous after :meth:`take` (the means then add whole rows of genes at a time,
        the quickest layout for them: the same sums, cell by cell)."""
        return self.values.T if self._by_sample is None else self._by_sample

    def has_nan(self) -> bool:
        return bool(np.isnan(self._values if self._by_sample is None
                             else self._by_sample).any())

    def tables(self, variants) -> dict:
        """``{(region_agg, agg_metric): (regions, (R', G) values)}`` for the regions with rows
        (``variants``: the ``(region_agg, agg_metric)`` pairs wanted). The pooled median
        sorts the regions' samples in place: ``values`` is no longer in sample order after."""
        out = {}
        n_blocks = len(self.block_starts)
        if not n_blocks:
            return out
        by_sample = self.by_sample  # (N, G)
        if ("donors", "mean") in variants:
            # each donor's region means, then their mean over the donors in donor order, as
            # the API's running mean adds them (Kahan, cell by cell)
            means = _group_mean(by_sample, np.arange(len(by_sample)),
                                np.repeat(np.arange(n_blocks), self.block_sizes), n_blocks)
            position = np.repeat(np.arange(len(self.regions)), self.region_n_blocks)
            running = _RunningMean((len(self.regions), by_sample.shape[1]))
            for donor in np.unique(self.block_donor):
                mine = np.flatnonzero(self.block_donor == donor)
                running.add(means[mine], rows=position[mine])
            out[("donors", "mean")] = running.mean()
        if ("samples", "mean") in variants:
            out[("samples", "mean")] = _group_mean(
                by_sample, np.arange(len(by_sample)),
                np.repeat(np.arange(len(self.regions)), self.region_sizes), len(self.regions))
        if ("donors", "median") in variants:
            per_block = block_medians(self.values, self.block_starts, self.block_sizes,
                                      self.scratch)
            out[("donors", "median")] = block_medians(per_block, self.region_blocks,
                                                      self.region_n_blocks, self.scratch).T
        if ("samples", "median") in variants:
            medians = np.empty((len(self.regions), self.values.shape[0]))
            for n in np.unique(self.region_sizes):
                which = np.flatnonzero(self.region_sizes == n)  # contiguous: equal sizes
                first = int(self.region_starts[which[0]])
                block = self.values[:, first:first + n * len(which)].reshape(
                    self.values.shape[0], len(which), n)
                if n > 2:
                    block.sort(axis=-1)
                medians[which] = _middle(block, n).T
            out[("samples", "median")] = medians
        return {key: (self.regions, table) for key, table in out.items()}


def _codes(labels: np.ndarray, every: np.ndarray) -> np.ndarray:
    """Each label's position in ``every`` (sorted), -1 for 0 and labels not in it."""
    labels = np.asarray(labels)
    at = np.searchsorted(every, labels)
    at = np.clip(at, 0, max(len(every) - 1, 0))
    found = (len(every) > 0) & (labels != 0)
    if len(every):
        found &= every[at] == labels
    return np.where(found, at, -1)


class GroupBlocks:
    """One normalization group's matched samples gathered (:class:`SampleBlocks`), from
    which :meth:`tables` computes its variants; made by :func:`gather_group`. Once made, the
    normalized frames are no longer needed (the caller may let them go: one copy fewer)."""

    def __init__(self, blocks: SampleBlocks, every: np.ndarray, columns, donors, scratch):
        self.blocks, self.every, self.columns = blocks, every, columns
        self.donors, self.scratch = donors, scratch

    def tables(self, variants, fills: Mapping | None = None) -> dict | None:
        """The region x gene table of each variant ``(missing, region_agg, agg_metric)`` (see
        :func:`variant_tables`); None when a fill row holds NaN or fills a region with
        samples. The gathered samples are reordered in place: call it once."""
        kinds = {(agg, metric) for _, agg, metric in variants}
        base = {key: _full(self.every, *value, self.columns)
                for key, value in self.blocks.tables(kinds).items()}
        if not kinds <= set(base):
            return None  # no sample, or a region_agg or agg_metric only the API computes
        with_rows = self.blocks.regions
        self.blocks = None  # the gathered samples are no longer needed
        filled = None
        if any(missing is not None for missing, _, _ in variants):
            filled = _fill_tables(fills or {}, self.donors, self.every, kinds, self.columns,
                                  self.scratch)
            if filled is False or _fills_sampled(filled, with_rows):
                return None  # NaN, or rows added to regions with samples
        return _variants(base, filled, variants)


def _fills_sampled(filled: Mapping, with_rows) -> bool:
    return any(np.isin(regions, with_rows).any() for regions, _ in filled.values())


def _variants(base: Mapping, filled: Mapping | None, variants) -> dict:
    """Each variant's table from the tables of the regions with samples (``base``, by
    ``(region_agg, agg_metric)``) and those of the regions ``missing='centroids'`` fills."""
    out = {}
    for missing, agg, metric in variants:
        table = base[(agg, metric)]
        if missing is not None:
            if missing != "centroids":
                raise ValueError(f"variant_tables computes missing=None or 'centroids', "
                                 f"not {missing!r}.")
            regions, values = filled.get((agg, metric), (np.zeros(0, np.intp), None))
            if len(regions):
                table = table.copy()
                table.iloc[regions] = values
        out[(missing, agg, metric)] = table
    return out


#: Genes per block in :func:`blocked_tables`: the block's gathered samples (3,702 of the full
#: data: 30 MB) and their working copies, instead of the group's whole table (600 MB) and its
#: gathered copy (measured quickest among 256 to 4,096 on the full data).
BLOCK_GENES = 1024


def blocked_tables(normalized_block: Callable, labels: Sequence, all_labels, columns,
                   variants, fill_block: Callable | None = None,
                   scratch: Scratch | None = None, block_genes: int = BLOCK_GENES,
                   known: dict | None = None) -> dict | None:
    """:func:`variant_tables` a block of genes at a time, from a function giving the
    normalized samples of a block of genes: every step after the gene normalization is per
    gene, so the group's normalized table is never whole in memory (nor its gathered copy).

    ``normalized_block(cols)``: the donors' normalized samples x genes arrays of the genes
    ``columns[cols]`` (a slice), in donor order; ``labels``: each donor's row regions, in that
    order; ``fill_block(arrays, cols)``: the rows ``missing='centroids'`` adds to each donor
    (frames indexed by region label, in donor order) for those genes, from that block's
    arrays, needed when a variant fills. The tables are
    :func:`variant_tables`' bit for bit (every step computes each gene from that gene's values
    alone, in the same order); None where it gives None (a NaN among the values used, no
    sample, fills of regions with samples).

    ``known``: tables of the regions with samples (frames by ``(region_agg, agg_metric)``)
    that another group computed from the same values of the same matched samples (one that
    differs only in ``norm_matched``, without gene normalization). Those it holds are used as
    they are, so that only the regions ``missing='centroids'`` fills are computed; when it
    lacks one, every table is computed and put in it."""
    scratch = Scratch() if scratch is None else scratch
    labels = [np.asarray(lab) for lab in labels]
    present = np.unique(np.concatenate(labels))
    every = np.union1d(present[present != 0], np.asarray(all_labels).ravel())
    every = every[every != 0]
    layout = SampleBlocks(None, [_codes(lab, every) for lab in labels], scratch)
    kinds = {(agg, metric) for _, agg, metric in variants}
    if not len(layout.block_starts):
        return None
    n_genes = len(columns)
    reuse = known is not None and kinds <= set(known)
    base = {kind: np.full((len(every), n_genes), np.nan) for kind in (() if reuse else kinds)}
    filling = any(missing is not None for missing, _, _ in variants)
    if reuse and not filling:
        return _variants(known, None, variants)
    filled: dict = {}
    donors = list(range(len(labels)))
    for start in range(0, n_genes, max(1, int(block_genes))):
        cols = slice(start, min(start + max(1, int(block_genes)), n_genes))
        arrays = normalized_block(cols)
        if not reuse:
            layout.take(np.concatenate(arrays, axis=0))
            if layout.has_nan():
                return None
            tables = layout.tables(kinds)
            if not kinds <= set(tables):
                return None  # a region_agg or agg_metric only the API computes
            for kind, (regions, table) in tables.items():
                base[kind][regions, cols] = table
        if filling:
            part = _fill_tables(dict(enumerate(fill_block(arrays, cols))), donors, every,
                                kinds, columns[cols], scratch)
            if part is False or _fills_sampled(part, layout.regions):
                return None
            for kind, (regions, table) in part.items():
                filled.setdefault(kind, (regions, np.empty((len(regions), n_genes))))
                filled[kind][1][:, cols] = table
        del arrays
    index = pd.Index(_as_labels(every), name="label")
    base = {kind: pd.DataFrame(table, index=index, columns=columns, copy=False)
            for kind, table in base.items()}
    if known is not None:
        if reuse:
            base = known
        else:
            known.update(base)
    return _variants(base, filled if filling else None, variants)


def gather_group(normalized: Mapping, labels: Mapping, all_labels,
                 scratch: Scratch | None = None, consume: bool = False
                 ) -> GroupBlocks | None:
    """The matched samples of one normalization group gathered by region and donor
    (:class:`GroupBlocks`), or None when one of them holds a NaN (see the module's
    docstring). ``normalized``, ``labels``, ``all_labels``: as :func:`variant_tables`.

    ``consume``: ``normalized`` is a dict the caller gives up: each donor's frame is removed
    from it once gathered, so that a donor's frame and its gathered copy are the only two
    copies in memory at a time (``normalized`` is empty afterwards)."""
    scratch = Scratch() if scratch is None else scratch
    donors = list(normalized)
    columns = normalized[donors[0]].columns
    present = np.unique(np.concatenate([np.asarray(labels[d]) for d in donors]))
    every = np.union1d(present[present != 0], np.asarray(all_labels).ravel())
    every = every[every != 0]
    codes = [_codes(labels[d], every) for d in donors]
    if consume:
        frames = _Frames(normalized, donors)
    else:  # genes x samples
        frames = [normalized[d].to_numpy().T for d in donors]
    blocks = SampleBlocks(frames, codes, scratch)
    if blocks.has_nan():
        return None
    return GroupBlocks(blocks, every, columns, donors, scratch)


def variant_tables(normalized: Mapping, labels: Mapping, all_labels, variants,
                   fills: Mapping | None = None, scratch: Scratch | None = None
                   ) -> dict | None:
    """The region x gene table of each variant ``(missing, region_agg, agg_metric)`` of one
    normalization group, as :func:`ahba_app.pipeline.aggregate_group` gives it with
    ``stability_threshold=None`` (rows: every region label, sorted, NaN rows for regions
    without data; index ``label``).

    ``normalized`` and ``labels``: per donor, the normalized samples x genes frame and each
    row's region (0: none); ``fills``: per donor, the rows ``missing='centroids'`` adds
    (:func:`ahba_app.pipeline.fill_missing_regions`), needed when a variant fills;
    ``scratch``: working memory shared by the groups of a unit (:class:`Scratch`). Returns
    None when a value the variants would use is NaN (see the module's docstring)."""
    group = gather_group(normalized, labels, all_labels, scratch)
    return None if group is None else group.tables(variants, fills)


class _Frames:
    """The donors' genes x samples arrays, each taken out of ``normalized`` when asked for."""

    def __init__(self, normalized: dict, donors):
        self.normalized, self.donors = normalized, donors

    def __len__(self):
        return len(self.donors)

    def __getitem__(self, d):
        return self.normalized.pop(self.donors[d]).to_numpy().T


def _fill_tables(fills: Mapping, donors, every, kinds, columns, scratch):
    """Tables of the filled regions only (from the fill rows), or False if one holds NaN."""
    rows = [fills.get(d) for d in donors]
    rows = [r if r is not None else pd.DataFrame(columns=columns, dtype=float) for r in rows]
    if not any(len(r) for r in rows):
        return {}
    arrays = [r.reindex(columns=columns).to_numpy(dtype=np.float64).T for r in rows]
    codes = [_codes(np.asarray(r.index), every) for r in rows]
    blocks = SampleBlocks(arrays, codes, scratch)
    if blocks.has_nan():
        return False
    return blocks.tables(kinds)


def _full(every, regions, values, columns) -> pd.DataFrame:
    table = np.full((len(every), len(columns)), np.nan)
    table[regions] = values
    return pd.DataFrame(table, index=pd.Index(_as_labels(every), name="label"),
                        columns=columns, copy=False)


def _as_labels(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f" and len(values) and np.all(np.mod(values, 1) == 0):
        return values.astype(np.int64)
    return values
