"""The vectorized variant aggregation and the shared sample normalization of a unit equal the
straightforward ones (ahba_app.pipeline.aggregate_group; UnitUpstream.normalized)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from ahba_app import pipeline
from ahba_app.datasets import fetch_desikan_killiany
from ahba_app.images import check_atlas
from ahba_app.multiverse.upstream import UnitUpstream
from ahba_app.aggregate import _group_mean, _RunningMean
from ahba_app.multiverse._kernels import (gene_normalized, median_network, region_tables,
                                          sorting_network)
from ahba_app.normalize import normalize_array
from ahba_app.multiverse.variants import gather_group, variant_tables

DK = fetch_desikan_killiany()
VARIANTS = [(missing, agg, metric) for missing in (None, "centroids")
            for agg in ("donors", "samples") for metric in ("mean", "median")]


def test_sorting_networks_sort_every_zero_one_input():
    # a comparator network sorts every input if it sorts every input of 0s and 1s
    for n in range(1, 13):
        pairs = sorting_network(n)
        bits = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(float)
        for low, high in pairs:
            bits[:, low], bits[:, high] = (np.minimum(bits[:, low], bits[:, high]),
                                           np.maximum(bits[:, low], bits[:, high]))
        assert (np.diff(bits, axis=1) >= 0).all(), n


def test_median_networks_put_the_middle_values_in_place():
    # a comparator network puts the k-th smallest value at position k for every input if it
    # does for every input of 0s and 1s (it commutes with monotone maps, as a sort does)
    for n in range(1, 13):
        pairs = median_network(n)
        bits = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(float)
        ordered = np.sort(bits, axis=1)
        for low, high in pairs:
            bits[:, low], bits[:, high] = (np.minimum(bits[:, low], bits[:, high]),
                                           np.maximum(bits[:, low], bits[:, high]))
        middle = [(n - 1) // 2, n // 2]
        assert np.array_equal(bits[:, middle], ordered[:, middle]), n
        assert len(pairs) <= len(sorting_network(n))
    assert len(median_network(64)) < 0.85 * len(sorting_network(64))


def test_region_tables_equal_numpy_and_pandas_bit_for_bit():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 9, size=40)       # blocks: a donor's samples in a region
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_blocks = np.array([1, 3, 2, 6, 4, 5, 1, 6, 2, 4, 6])  # blocks per region
    first = np.concatenate([[0], np.cumsum(n_blocks)[:-1]])
    values = rng.normal(size=(int(sizes.sum()), 300))
    values[3:5] = values[2]  # ties
    source = rng.permutation(len(values))  # the rows in any order in the array read
    joined = np.empty_like(values)
    joined[source] = values
    kinds = {(agg, metric) for agg in ("donors", "samples") for metric in ("mean", "median")}
    got = region_tables(joined, source, starts, sizes, first, n_blocks, kinds)
    region = np.repeat(np.arange(len(n_blocks)), n_blocks)
    codes = np.repeat(np.arange(len(sizes)), sizes)
    pooled = region[codes]
    frame = pd.DataFrame(values)
    assert np.array_equal(got[("samples", "median")], frame.groupby(pooled).median().to_numpy())
    assert np.array_equal(got[("samples", "median")],
                          np.stack([np.median(values[pooled == r], axis=0)
                                    for r in range(len(n_blocks))]))
    assert np.array_equal(got[("donors", "median")],
                          frame.groupby(codes).median().groupby(region).median().to_numpy())
    # the means: the API's arithmetic (abagen's pandas: Kahan sums in row order)
    rows = np.arange(len(values))
    assert np.array_equal(got[("samples", "mean")],
                          _group_mean(values, rows, pooled, len(n_blocks)))
    running = _RunningMean((len(n_blocks), values.shape[1]))
    means = _group_mean(values, rows, codes, len(sizes))
    for k in range(n_blocks.max()):  # the k-th donor of each region, in donor order
        mine = first[n_blocks > k] + k
        running.add(means[mine], rows=np.flatnonzero(n_blocks > k))
    assert np.array_equal(got[("donors", "mean")], running.mean())
    # a NaN among the values used: None (the caller aggregates the API's way)
    joined[source[5], 7] = np.nan
    assert region_tables(joined, source, starts, sizes, first, n_blocks, kinds) is None


def test_region_tables_medians_keep_signed_zeros_whatever_else_is_asked():
    # ties of -0.0 and 0.0: which one a network leaves in the middle depends on the order it
    # reads; the samples' median must not change when the donors' median is asked for too
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 9, size=60)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_blocks = np.full(10, 6)
    first = np.concatenate([[0], np.cumsum(n_blocks)[:-1]])
    values = rng.choice([-0.0, 0.0, 0.0, -0.0, 1.0, -1.0], size=(int(sizes.sum()), 64))
    source = np.arange(len(values))
    alone = region_tables(values, source, starts, sizes, first, n_blocks,
                          {("samples", "median")})[("samples", "median")]
    both = region_tables(values, source, starts, sizes, first, n_blocks,
                         {("samples", "median"), ("donors", "median")})
    assert np.signbit(alone).any() and not np.signbit(alone).all()
    assert np.array_equal(np.signbit(both[("samples", "median")]), np.signbit(alone))
    assert np.array_equal(both[("samples", "median")], alone)
    # without a -0.0 the blocks are reordered where they are: the same medians
    values = np.abs(values) + rng.integers(0, 3, size=values.shape)
    alone = region_tables(values, source, starts, sizes, first, n_blocks,
                          {("samples", "median")})[("samples", "median")]
    both = region_tables(values, source, starts, sizes, first, n_blocks,
                         {("samples", "median"), ("donors", "median")})
    assert np.array_equal(both[("samples", "median")], alone)


@pytest.mark.parametrize("name", ["scaled_robust_sigmoid", "zscore"])
def test_gene_normalized_equals_normalize_array_bit_for_bit(name):
    rng = np.random.default_rng(1)
    n_genes = 300
    sources, keeps, classes, want = [], [], [], []
    # donors: short and long columns (a sort, buckets), classes of 1, 2, 3 and many samples
    for n_samples, kept, n_classes in ((40, 25, None), (700, 650, None), (900, 800, 3),
                                       (60, 50, 5), (12, 9, 4)):
        values = rng.normal(size=(n_genes, n_samples))  # genes x samples
        values[1] = 0.5                                         # a constant gene
        values[2, ::2] = values[2, 0]                           # half its values tied
        values[3] = np.round(values[3], 1)                      # many ties
        values[4, :3] = 1e9                                     # outliers: one full bucket
        values[5] = rng.lognormal(sigma=3, size=n_samples)      # skewed
        keep = np.sort(rng.choice(n_samples, kept, replace=False))
        cls = (None if n_classes is None
               else rng.choice([f"s{k}" for k in range(n_classes)], size=kept).astype(object))
        if cls is not None:
            cls[:2] = "alone" if n_samples < 100 else cls[:2]   # a class of two samples
            cls[2] = "single"                                   # a class of one sample
        block = np.take(values, keep, axis=1).T  # kept samples x genes, as the groups have it
        sources.append(values)
        keeps.append(keep)
        classes.append(cls)
        want.append(block)
    for g0, g1 in ((0, n_genes), (17, 290)):
        expected = np.concatenate([normalize_array(block[:, g0:g1], name, axis=0, groups=cls)
                                   for block, cls in zip(want, classes)])
        got = np.full(expected.shape, -1.0)
        assert gene_normalized(name, sources, keeps, classes, g0, g1, got)
        assert np.isnan(expected).any() and not np.isnan(expected).all()
        assert np.array_equal(got.view(np.int64), expected.view(np.int64))  # NaN bits too
    # not finite, or a sample without a class: declined (the API's path then)
    out = np.empty((sum(map(len, keeps)), 10))
    sources[1][5, keeps[1][3]] = np.inf
    assert not gene_normalized(name, sources, keeps, classes, 0, 10, out)
    sources[1][5, keeps[1][3]] = 0.0
    assert gene_normalized(name, sources, keeps, classes, 0, 10, out)
    classes[2][4] = None
    assert not gene_normalized(name, sources, keeps, classes, 0, 10, out)


def test_order_statistics_and_sums_of_the_gene_normalization_kernels():
    # the selection gives what a sort puts at the positions wanted (runs of eight buckets
    # skipped, int32 counts), the bounds are the minimum and maximum (four running ones), and
    # the pairwise sum is numpy's to the bit (its stack given by the caller)
    from ahba_app.multiverse import _kernels as kernels

    rng = np.random.default_rng(7)
    stack, sums = np.empty((3, 64), np.intp), np.empty(64)
    found, got, bounds = np.empty((4, 6), np.intp), np.empty(6), np.empty(2)
    for n in (*range(1, 70), 127, 128, 129, 255, 300, 785, 1000, 3001):
        for kind in range(4):
            values = rng.normal(size=n)
            if kind == 1:
                values = np.round(values, 1)                   # many ties
            elif kind == 2:
                values[: max(1, n // 10)] = 1e12               # one bucket holds the top
            elif kind == 3:
                values = rng.lognormal(sigma=4, size=n)         # most values in few buckets
            order = np.sort(values)
            at = np.arange(n, dtype=np.intp)[::-1].copy()
            gathered = np.empty(n)
            assert kernels._gather_range(values, at, n, gathered, bounds)
            assert np.array_equal(gathered, values[::-1])
            assert (bounds[0], bounds[1]) == (order[0], order[-1])
            b25, b75 = int((n - 1) * 0.25), int((n - 1) * 0.75)
            want = np.sort(np.array([b25, min(b25 + 1, n - 1), max(n // 2 - 1, 0), n // 2,
                                     b75, min(b75 + 1, n - 1)], dtype=np.intp))
            kernels._select(values.copy(), n, bounds[0], bounds[1], want, got,
                            np.empty(n, np.int32), np.empty(n // 2 + 1, np.int32),
                            np.empty(n), found)
            assert np.array_equal(got, order[want]), (n, kind)
            expected = np.add.reduce(values)
            assert kernels._sum(values, n, True, stack, sums) == expected, (n, kind)
    values[5] = np.nan
    assert not kernels._gather_range(values, at, n, gathered, bounds)


def _centroid_fills(upstream, normalized, kept, labels):
    """The rows missing='centroids' adds to each donor, as the API computes them."""
    coords = {d: pipeline.atlas_coordinates(upstream.atlases[d], f) for d, f in kept.items()}
    return pipeline.fill_missing_regions("centroids", upstream.atlases, labels, normalized,
                                         coords)


@pytest.fixture(scope="module")
def unit(ahba_small):
    tree = check_atlas(DK["image"], DK["info"])
    settings = pipeline.Settings(lr_mirror="leftright", tolerance=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return UnitUpstream(tree, settings=settings, data_dir=ahba_small), settings


@pytest.mark.parametrize("sample_norm", ["srs", "zscore", None])
@pytest.mark.parametrize("gene_norm", ["srs", "zscore", None])
@pytest.mark.parametrize("norm_matched", [True, False])
def test_shared_sample_normalization_is_bit_identical(unit, sample_norm, gene_norm,
                                                      norm_matched):
    upstream, base = unit
    settings = pipeline.Settings(**dict(base.__dict__, sample_norm=sample_norm,
                                        gene_norm=gene_norm, norm_matched=norm_matched,
                                        norm_structures=True))
    want = upstream.normalized(settings)
    got = upstream.normalized_from(upstream.sample_normalized(sample_norm), settings)
    for donor in upstream.donors:
        a, b = got[0][donor], want[0][donor]
        assert a.index.equals(b.index) and a.columns.equals(b.columns)
        assert np.array_equal(a.to_numpy(), b.to_numpy(), equal_nan=True), donor
        assert np.array_equal(got[2][donor], want[2][donor])


@pytest.fixture(scope="module")
def mirrored_average(ahba_small):
    """A 'bidirectional' unit with probes combined in memory ('average'): every sample twice."""
    tree = check_atlas(DK["image"], DK["info"])
    settings = pipeline.Settings(lr_mirror="bidirectional", probe_selection="average",
                                 tolerance=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return UnitUpstream(tree, settings=settings, data_dir=ahba_small), settings


@pytest.mark.parametrize("probe_selection", ["average", "diff_stability"])
def test_mirrored_copies_are_held_once(unit, mirrored_average, probe_selection, ahba_small):
    # The unit's tables (the combined probes' and the sample-normalized ones) hold each
    # distinct sample once, and the copies' rows are their originals': the groups'
    # normalized tables are normalized()'s bit for bit.
    upstream, base = mirrored_average if probe_selection == "average" else unit
    sampled = upstream.sample_normalized("srs")
    for donor in upstream.donors:
        distinct = upstream.annotations[donor]  # renumbered: count the ids before that
        n_rows, n_distinct = len(distinct), len(upstream.unique_rows[donor])
        assert n_distinct < n_rows  # there are copies
        assert sampled[donor].shape[0] == n_distinct
        if probe_selection == "average":
            assert upstream.expressions.frame(donor).shape[0] == n_distinct
        assert upstream.source[donor].max() == n_distinct - 1
    for gene_norm in ("srs", None):
        settings = pipeline.Settings(**dict(base.__dict__, sample_norm="srs",
                                            gene_norm=gene_norm, norm_matched=False))
        want = upstream.normalized(settings)
        got = upstream.normalized_from(sampled, settings)
        if probe_selection == "average":  # the API's own run, copies read as rows of their own
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                api = pipeline.run(check_atlas(DK["image"], DK["info"]), settings=settings,
                                   data_dir=ahba_small, aggregate=False).expression
            for donor in upstream.donors:
                assert np.array_equal(api[donor].to_numpy(), want[0][donor].to_numpy(),
                                      equal_nan=True), (donor, gene_norm)
        for donor in upstream.donors:
            assert got[0][donor].index.equals(want[0][donor].index)
            assert np.array_equal(got[0][donor].to_numpy(), want[0][donor].to_numpy(),
                                  equal_nan=True), (donor, gene_norm)


@pytest.mark.parametrize("norm_matched", [True, False])
def test_variant_tables_equal_aggregate_group(unit, norm_matched):
    upstream, base = unit
    settings = pipeline.Settings(**dict(base.__dict__, norm_matched=norm_matched))
    normalized, kept, labels = upstream.normalized(settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fills = _centroid_fills(upstream, normalized, kept, labels)
        tables = variant_tables(normalized, labels, upstream.all_labels, VARIANTS, fills)
        assert any(len(rows) for rows in fills.values())  # some regions are filled
        for missing, agg, metric in VARIANTS:
            want = pipeline.aggregate_group(upstream.atlases, upstream.all_labels, normalized,
                                            kept, labels, missing=missing, region_agg=agg,
                                            agg_metric=metric)["expression"]
            got = tables[(missing, agg, metric)]
            assert got.index.equals(want.index) and got.columns.equals(want.columns)
            a, b = got.to_numpy(), want.to_numpy()
            assert np.array_equal(np.isnan(a), np.isnan(b))
            assert np.array_equal(a, b, equal_nan=True), (missing, agg, metric)


def test_variant_tables_decline_nan(unit):
    upstream, base = unit
    normalized, kept, labels = upstream.normalized(base)
    donor = upstream.donors[0]
    frame = normalized[donor].copy()
    row = int(np.flatnonzero(labels[donor] != 0)[0])
    frame.iloc[row, 0] = np.nan
    assert variant_tables(dict(normalized, **{donor: frame}), labels, upstream.all_labels,
                          VARIANTS[:4]) is None


def test_gather_group_consuming_the_frames_gives_the_same_tables(unit):
    upstream, base = unit
    normalized, kept, labels = upstream.normalized(base)
    want = variant_tables(normalized, labels, upstream.all_labels, VARIANTS[:4])
    given = dict(normalized)
    got = gather_group(given, labels, upstream.all_labels, consume=True).tables(VARIANTS[:4])
    assert given == {}  # every frame was taken
    for key in want:
        assert np.array_equal(got[key].to_numpy(), want[key].to_numpy(), equal_nan=True)


@pytest.mark.parametrize("gene_norm", ["srs", "zscore", None])
@pytest.mark.parametrize("norm_matched", [True, False])
@pytest.mark.parametrize("norm_structures", [True, False])
@pytest.mark.parametrize("block_genes", [7, 64])
def test_group_tables_by_blocks_of_genes_equal_variant_tables(unit, gene_norm, norm_matched,
                                                              norm_structures, block_genes):
    upstream, base = unit
    settings = pipeline.Settings(**dict(base.__dict__, sample_norm="srs", gene_norm=gene_norm,
                                        norm_matched=norm_matched,
                                        norm_structures=norm_structures))
    sampled = upstream.sample_normalized("srs")
    normalized, kept, labels = upstream.normalized_from(sampled, settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fills = _centroid_fills(upstream, normalized, kept, labels)
        want = variant_tables(normalized, labels, upstream.all_labels, VARIANTS, fills)
        got = upstream.group_tables(sampled, settings, VARIANTS, block_genes=block_genes)
    assert len(normalized[upstream.donors[0]].columns) > 2 * block_genes  # several blocks
    assert any(len(rows) for rows in fills.values())  # some regions are filled
    if want is None:  # a NaN (normalized within small structures of the small data)
        assert got is None
        assert gene_norm is not None and norm_structures
        return
    assert set(got) == set(want)
    for key in want:
        assert got[key].index.equals(want[key].index)
        assert got[key].columns.equals(want[key].columns)
        assert np.array_equal(got[key].to_numpy(), want[key].to_numpy(), equal_nan=True), key


def test_centroid_fills_without_a_region_empty_in_every_donor(unit):
    # one donor's samples in every region: nothing to fill (the full data's units with a
    # tolerance), and no error
    upstream, base = unit
    settings = pipeline.Settings(**dict(base.__dict__, sample_norm="srs", gene_norm=None))
    kept, labels = {}, {}
    for donor in upstream.donors:
        upstream._kept(donor, settings, kept, labels)
    every = np.asarray(upstream.all_labels)
    first = upstream.donors[0]
    labels[first] = every[np.arange(len(labels[first])) % len(every)]
    assert len(labels[first]) >= len(every)
    fill_block = upstream._centroid_fills(kept, labels)
    arrays = [np.zeros((len(labels[d]), 5)) for d in upstream.donors]
    fills = fill_block(arrays, slice(0, 5))
    assert len(fills) == len(upstream.donors)
    assert all(len(regions) == 0 and rows.shape == (0, 5) for regions, rows in fills)


def test_group_tables_decline_nan(unit):
    upstream, base = unit
    sampled = upstream.sample_normalized("srs")
    settings = pipeline.Settings(**dict(base.__dict__, sample_norm="srs", gene_norm=None))
    donor = upstream.donors[1]
    row = int(np.flatnonzero(upstream.match_labels[donor] != 0)[0])
    with_nan = dict(sampled, **{donor: sampled[donor].copy()})
    with_nan[donor][upstream.source[donor][row], 20] = np.nan  # a gene of the second block
    assert upstream.group_tables(sampled, settings, VARIANTS, block_genes=16) is not None
    assert upstream.group_tables(with_nan, settings, VARIANTS, block_genes=16) is None


def test_groups_without_gene_norm_share_the_tables_of_regions_with_samples(unit):
    upstream, base = unit
    sampled = upstream.sample_normalized("srs")
    matched, every = (pipeline.Settings(**dict(base.__dict__, sample_norm="srs", gene_norm=None,
                                               norm_matched=norm_matched))
                      for norm_matched in (True, False))
    shared: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = upstream.group_tables(sampled, matched, VARIANTS, shared=shared, block_genes=64)
        second = upstream.group_tables(sampled, every, VARIANTS, shared=shared, block_genes=64)
        alone = upstream.group_tables(sampled, every, VARIANTS, block_genes=64)
    assert shared  # the first group left its tables
    assert second[(None, "donors", "mean")] is first[(None, "donors", "mean")]  # reused
    for key in VARIANTS:
        assert np.array_equal(second[key].to_numpy(), alone[key].to_numpy(), equal_nan=True)
    # the filled regions differ: norm_matched=False offers unmatched samples to the centroids
    assert any(not np.array_equal(first[key].to_numpy(), second[key].to_numpy(),
                                  equal_nan=True) for key in VARIANTS if key[0] == "centroids")
