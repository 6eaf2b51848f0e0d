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
- medians per block and per region, and the median over donors is the median of the blocks'
  medians; means and medians are computed by the compiled kernels of :mod:`._kernels`, one
  pass over each region's rows (numpy's cost per call made the many small groups slow);
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

from .._blocks import n_threads, transpose_into

__all__ = ["BLOCK_GENES", "GroupBlocks", "SampleBlocks", "Scratch", "blocked_tables",
           "gather_group", "variant_tables"]

#: Elements of the working blocks (gathered rows, medians): 32 MB.
_CHUNK_ELEMENTS = 1 << 22


class Scratch:
    """Working memory reused by the groups of a unit (one per unit, passed in: nothing is
    kept between units): each named buffer grows to the largest size asked for. Fresh large
    arrays cost page faults each time; reused ones do not."""

    def __init__(self):
        self._buffers: dict = {}
        #: median networks by size (:func:`._kernels.networks`): the same for every group
        self.networks: dict = {}

    def array(self, name: str, shape) -> np.ndarray:
        size = int(np.prod(shape))
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[name] = np.empty(size, dtype=np.float64)
        return buffer[:size].reshape(shape)


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
        # the gathered samples, genes x samples (from ``frames``), or the rows :meth:`take`
        # was given, read where they are
        self._values = None if frames is None else self._gather(frames, donor, row)
        self._joined = None
        self._nets = None  # the median networks (:func:`._kernels.networks`)
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
        self._joined, self._values = joined, None
        return self

    def has_nan(self) -> bool:
        """Whether a gathered value is NaN (after :meth:`take`, the compiled kernels find
        NaN themselves: :meth:`tables` gives None)."""
        return self._values is not None and bool(np.isnan(self._values).any())

    def tables(self, variants) -> dict | None:
        """``{(region_agg, agg_metric): (regions, (R', G) values)}`` for the regions with rows
        (``variants``: the ``(region_agg, agg_metric)`` pairs wanted; the compiled kernels of
        :mod:`._kernels` compute the four of the grid), or None when a value used is NaN."""
        if not len(self.block_starts):
            return {}
        from . import _kernels  # numba: imported by the multiverse only, when first needed

        if self._nets is None:  # the same for every block of genes
            self._nets = _kernels.networks(np.concatenate(
                [self.block_sizes, self.region_sizes, self.region_n_blocks]),
                self.scratch.networks)
        layout = (self.block_starts, self.block_sizes, self.region_blocks,
                  self.region_n_blocks, variants, self._nets, n_threads())
        if self._joined is not None:
            tables = _kernels.region_tables(self._joined, self.source, *layout)
        else:  # gathered genes x samples: samples x genes a block of genes at a time
            values = self._values
            pieces = []
            for rows in _row_chunks(values.shape[0], values.shape[1]):
                part = self.scratch.array("by_sample", (values.shape[1],
                                                        rows.stop - rows.start))
                transpose_into(part, values[rows])
                pieces.append(_kernels.region_tables(part, np.arange(len(part)), *layout))
                if pieces[-1] is None:
                    return None
            if not pieces:  # no gene
                pieces.append(_kernels.region_tables(np.empty((values.shape[1], 0)),
                                                     np.arange(values.shape[1]), *layout))
            tables = {key: np.concatenate([piece[key] for piece in pieces], axis=1)
                      for key in pieces[0]}
        if tables is None:
            return None
        return {key: (self.regions, table) for key, table in tables.items()}


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
        computed = self.blocks.tables(kinds)
        if computed is None:
            return None  # a NaN value
        base = {key: _full(self.every, *value, self.columns) for key, value in computed.items()}
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
            if len(regions):  # (numpy's copy and row writes: quicker than pandas')
                copied = table.to_numpy(dtype=np.float64, copy=True)
                copied[regions] = values
                table = pd.DataFrame(copied, index=table.index, columns=table.columns,
                                     copy=False)
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
    ``columns[cols]`` (a slice), in donor order (or one array of them stacked); ``labels``: each donor's row regions, in that
    order; ``fill_block(arrays, cols)``: the rows ``missing='centroids'`` adds to each donor
    (in donor order, ``(region labels, (n, genes) rows)``) for those genes, from that
    block's arrays, needed when a variant fills. The tables are
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
    # every block writes every column of the regions with samples: only the others' rows
    # are filled (NaN) beforehand
    base = {kind: np.empty((len(every), n_genes)) for kind in (() if reuse else kinds)}
    empty_rows = np.setdiff1d(np.arange(len(every)), layout.regions)
    for table in base.values():
        table[empty_rows] = np.nan
    filling = any(missing is not None for missing, _, _ in variants)
    if reuse and not filling:
        return _variants(known, None, variants)
    filled: dict = {}
    for start in range(0, n_genes, max(1, int(block_genes))):
        cols = slice(start, min(start + max(1, int(block_genes)), n_genes))
        arrays = normalized_block(cols)
        if isinstance(arrays, np.ndarray):  # the donors' rows already stacked
            joined = arrays
            arrays = np.split(joined, np.cumsum([len(lab) for lab in labels])[:-1])
        else:
            joined = np.concatenate(arrays, axis=0)
        if not reuse:
            layout.take(joined)
            if layout.has_nan():
                return None
            tables = layout.tables(kinds)
            if tables is None or not kinds <= set(tables):
                return None  # a region_agg or agg_metric only the API computes
            for kind, (regions, table) in tables.items():
                base[kind][regions, cols] = table
        if filling:
            part = _fill_arrays(fill_block(arrays, cols), every, kinds, scratch)
            if part is False or _fills_sampled(part, layout.regions):
                return None
            for kind, (regions, table) in part.items():
                filled.setdefault(kind, (regions, np.empty((len(regions), n_genes))))
                filled[kind][1][:, cols] = table
        del arrays, joined
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
    """Tables of the filled regions only (from the fill rows: frames by donor), or False if
    one holds NaN."""
    rows = [fills.get(d) for d in donors]
    rows = [r if r is not None else pd.DataFrame(columns=columns, dtype=float) for r in rows]
    return _fill_arrays([(np.asarray(r.index), r.reindex(columns=columns).to_numpy(
        dtype=np.float64)) for r in rows], every, kinds, scratch)


def _fill_arrays(fills, every, kinds, scratch):
    """:func:`_fill_tables` from each donor's ``(region labels, rows)`` (in donor order)."""
    if not any(len(labels) for labels, _ in fills):
        return {}
    arrays = [np.asarray(rows, dtype=np.float64).T for _, rows in fills]
    codes = [_codes(np.asarray(labels), every) for labels, _ in fills]
    blocks = SampleBlocks(arrays, codes, scratch)
    if blocks.has_nan():
        return False
    tables = blocks.tables(kinds)
    return False if tables is None else tables


def _full(every, regions, values, columns) -> pd.DataFrame:
    table = np.full((len(every), len(columns)), np.nan)
    table[regions] = values
    return pd.DataFrame(table, index=pd.Index(_as_labels(every), name="label"),
                        columns=columns, copy=False)


def _as_labels(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f" and len(values) and np.all(np.mod(values, 1) == 0):
        return values.astype(np.int64)
    return values
