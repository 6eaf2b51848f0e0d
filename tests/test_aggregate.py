"""Aggregation of samples into regions and across donors, checked against abagen 0.1.3."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest

from ahba_app import aggregate
from ahba_app.aggregate import (AGG_METRICS, REGION_AGGS, MetricError, aggregate_donors,
                                aggregate_regions, aggregate_samples, check_metric,
                                group_by_label, incomplete_genes)
from oracle import run_abagen

pytestmark = pytest.mark.filterwarnings("ignore:numpy.core:DeprecationWarning")

SEED = 7102
N_GENES = 8
ALL_LABELS = list(range(1, 13))  # 10, 11 and 12 get no sample from any donor
DONOR_IDS = ["9861", "10021", "12876"]
NAN_IN_ONE_DONOR = 2   # gene NaN for every sample of donor 1 (its normalization failed)
NAN_ONE_CELL = 4       # gene with one NaN sample in donor 2
ONLY_IN_DONOR_1 = 9    # region only donor 1 sampled
INCOMPLETE = [f"G{NAN_IN_ONE_DONOR}", f"G{NAN_ONE_CELL}"]


def _donors():
    rng = np.random.default_rng(SEED)
    arrays, labels = [], []
    for n, size in enumerate((40, 30, 25)):
        lab = rng.integers(0, 9, size)           # 0 = sample matched to no region
        if n == 1:
            lab[:3] = ONLY_IN_DONOR_1
        values = rng.normal(0.5, 0.2, size=(size, N_GENES))
        values[5] = np.nan                        # an empty sample
        if n == 1:
            values[:, NAN_IN_ONE_DONOR] = np.nan
        if n == 2:
            values[7, NAN_ONE_CELL] = np.nan
        arrays.append(values)
        labels.append(lab)
    return arrays, labels


def _frames(arrays, labels):
    columns = pd.Index([f"G{g}" for g in range(N_GENES)], name="gene_symbol")
    return [pd.DataFrame(v, index=pd.Index(lab, name="label"), columns=columns)
            for v, lab in zip(arrays, labels)]


def q75(x, axis=None):
    return np.percentile(x, 75, axis=axis)


SNIPPET = r'''
from abagen import samples_

columns = pd.Index([f"G{g}" for g in range(PARAMS["n_genes"])], name="gene_symbol")
frames = [pd.DataFrame(np.load(v), index=pd.Index(np.load(l), name="label"), columns=columns)
          for v, l in zip(PARAMS["values"], PARAMS["labels"])]
clean = [f.dropna(axis=0, how="all").drop(columns=PARAMS["incomplete"]) for f in frames]
def q75(x, axis=None):
    return np.percentile(x, 75, axis=axis)
metrics = {"mean": "mean", "median": "median", "q75": q75, "npmean": np.mean}
for name, metric in metrics.items():
    for region_agg in ("donors", "samples"):
        for lab in ("none", "all"):
            labels = None if lab == "none" else PARAMS["all_labels"]
            data = clean if name == "q75" else frames
            save(f"{name}-{region_agg}-{lab}",
                 samples_.aggregate_samples(data, labels=labels, region_agg=region_agg,
                                            agg_metric=metric))
    save(f"{name}-return_donors",
         samples_.aggregate_samples(dict(zip(PARAMS["donors"], frames)),
                                    labels=PARAMS["all_labels"], agg_metric=metric,
                                    return_donors=True))
'''


@pytest.fixture(scope="module")
def data():
    return _donors()


@pytest.fixture(scope="module")
def oracle(data, tmp_path_factory):
    work = tmp_path_factory.mktemp("oracle-aggregate")
    arrays, labels = data
    values_paths, label_paths = [], []
    for n, (v, lab) in enumerate(zip(arrays, labels)):
        np.save(work / f"values{n}.npy", v)
        np.save(work / f"labels{n}.npy", lab)
        values_paths.append(str(work / f"values{n}.npy"))
        label_paths.append(str(work / f"labels{n}.npy"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(work))
        return run_abagen(SNIPPET, work, values=values_paths, labels=label_paths,
                          n_genes=N_GENES, incomplete=INCOMPLETE, all_labels=ALL_LABELS,
                          donors=DONOR_IDS)


def assert_same(ours: pd.DataFrame, theirs: pd.DataFrame):
    assert list(ours.index) == list(theirs.index)
    assert ours.index.name == theirs.index.name == "label"
    assert ours.index.dtype == np.int64
    assert list(ours.columns) == list(theirs.columns)
    assert ours.columns.name == theirs.columns.name == "gene_symbol"
    assert (ours.dtypes == np.float64).all()
    a, b = ours.to_numpy(), theirs.to_numpy(dtype=float)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12, equal_nan=True)


METRICS = {"mean": "mean", "median": "median", "q75": q75, "npmean": np.mean}


@pytest.mark.oracle
@pytest.mark.parametrize("metric", list(METRICS))
@pytest.mark.parametrize("region_agg", ["donors", "samples"])
@pytest.mark.parametrize("labels", ["none", "all"])
def test_aggregate_samples_matches_abagen(metric, region_agg, labels, data, oracle):
    frames = _frames(*data)
    if metric == "q75":  # a NaN-propagating callable: feed it the complete genes only
        frames = [f.dropna(axis=0, how="all").drop(columns=INCOMPLETE) for f in frames]
    ours = aggregate_samples(frames, labels=None if labels == "none" else ALL_LABELS,
                             region_agg=region_agg, agg_metric=METRICS[metric])
    assert_same(ours, oracle[f"{metric}-{region_agg}-{labels}"])


@pytest.mark.oracle
@pytest.mark.parametrize("metric", list(METRICS))
def test_return_donors_matches_abagen(metric, data, oracle):
    frames = dict(zip(DONOR_IDS, _frames(*data)))
    ours = aggregate_samples(frames, labels=ALL_LABELS, agg_metric=METRICS[metric],
                             return_donors=True)
    theirs = oracle[f"{metric}-return_donors"]
    assert isinstance(ours, dict) and list(ours) == DONOR_IDS == list(theirs)
    for donor in DONOR_IDS:
        assert_same(ours[donor], theirs[donor])


def test_gene_dropping_and_count(data, caplog):
    frames = _frames(*data)
    tables = aggregate_regions(frames, labels=ALL_LABELS)
    assert isinstance(tables, list) and len(tables) == 3
    with caplog.at_level(logging.WARNING, logger="ahba_app.aggregate"):
        merged, dropped = aggregate_donors(tables)
    # G2 is NaN in every sample of donor 1, the only donor with region 9: dropped. G4 has one
    # NaN sample, which the NaN-skipping mean covers.
    assert list(dropped) == [f"G{NAN_IN_ONE_DONOR}"]
    assert "Dropping 1 of 8 genes" in caplog.text
    assert f"G{NAN_ONE_CELL}" in merged.columns
    assert merged.loc[[10, 11, 12]].isna().all().all()
    pd.testing.assert_frame_equal(merged, aggregate_samples(frames, labels=ALL_LABELS))
    assert list(incomplete_genes(tables[1])) == [f"G{NAN_IN_ONE_DONOR}"]
    # the donors' tables keep every gene, as abagen's return_donors does
    assert all(t.shape[1] == N_GENES for t in aggregate_samples(frames, return_donors=True))


def test_label_zero_and_unsorted_labels(data):
    frame = _frames(*data)[0]
    out = group_by_label(frame, labels=[12, 3, 0, 1])
    assert 0 not in out.index and list(out.index) == sorted(set(out.index))
    assert {1, 3, 12} <= set(out.index) and out.loc[12].isna().all()
    expected = frame.loc[frame.index == 3].mean(axis=0)
    np.testing.assert_allclose(out.loc[3].to_numpy(), expected.to_numpy())


def test_median_matches_nanmedian_with_blocks(data, monkeypatch):
    rng = np.random.default_rng(3)
    values = rng.normal(size=(200, 37))
    values[rng.random(values.shape) < 0.2] = np.nan
    values[:, 5] = np.round(values[:, 5])  # ties
    labels = rng.integers(1, 15, 200)
    frame = pd.DataFrame(values, index=pd.Index(labels, name="label"))
    monkeypatch.setattr(aggregate, "_BLOCK_ELEMENTS", 500)
    out = group_by_label(frame, agg_metric="median")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.vstack([np.nanmedian(values[labels == lab], axis=0)
                              for lab in out.index])
    np.testing.assert_allclose(out.to_numpy(), expected, equal_nan=True)
    mean = group_by_label(frame, agg_metric="mean")
    np.testing.assert_allclose(mean.to_numpy(), frame.groupby(level="label").mean().to_numpy())


def test_float32_input_and_multiindex(data):
    frame = _frames(*data)[0]
    sample = frame.set_index(pd.Index(np.arange(len(frame)), name="well_id"), append=True)
    out32 = group_by_label(sample.astype(np.float32))
    assert (out32.dtypes == np.float64).all()
    np.testing.assert_allclose(out32.to_numpy(), group_by_label(frame).to_numpy(), rtol=1e-6,
                               equal_nan=True)
    with pytest.raises(ValueError, match="'label' level"):
        group_by_label(sample.droplevel("label").set_index(
            pd.Index(np.zeros(len(frame)), name="x"), append=True))


def test_registry_and_bad_options(data):
    assert list(AGG_METRICS) == ["mean", "median"] and REGION_AGGS == ("donors", "samples")
    assert check_metric(np.median) == "median" and check_metric(np.nanmean) == "mean"
    assert check_metric(q75) is q75
    frames = _frames(*data)
    with pytest.raises(ValueError, match="'mode'.*'mean', 'median'"):
        aggregate_samples(frames, agg_metric="mode")
    with pytest.raises(ValueError, match="'regions'.*'donors', 'samples'"):
        aggregate_samples(frames, region_agg="regions")
    with pytest.raises(ValueError, match="return_donors"):
        aggregate_samples(frames, region_agg="samples", return_donors=True)
    for bad in (lambda x: np.mean(x),            # no axis keyword
                lambda x, axis=0: np.mean(x, axis=axis),  # never reduces to a scalar
                lambda x, axis=None: x,          # does not reduce
                42):
        with pytest.raises(MetricError):
            check_metric(bad)
        with pytest.raises(TypeError):  # abagen raised TypeError: still caught
            check_metric(bad)
    for bad in (np.ones((3, 3)), [], {}):
        with pytest.raises(ValueError, match="DataFrame"):
            aggregate_samples(bad)


# --------------------------------------------------------------------------------------------
# the quick paths give pandas' numbers bit for bit
# --------------------------------------------------------------------------------------------
def _pandas_group_mean(values, rows, codes, n_groups):
    block = pd.DataFrame(np.asarray(values[rows], dtype=np.float64))
    return block.groupby(codes, sort=True).mean().to_numpy()


@pytest.mark.parametrize("threads", ["1", "3"])
def test_group_mean_is_pandas_groupby_mean_bit_for_bit(monkeypatch, threads):
    monkeypatch.setenv("AHBA_APP_THREADS", threads)
    monkeypatch.setattr(aggregate, "_KAHAN_ELEMENTS", 64)  # several blocks of columns
    rng = np.random.default_rng(3)
    for trial in range(6):
        values = np.round(rng.normal(0.5, 0.2, size=(60, 40)), 3 if trial % 2 else 12)
        values[rng.random(values.shape) < 0.1] = np.nan
        values[:, 0] = np.nan                       # a gene no sample has
        values[2, 3], values[5, 4], values[9, 5] = np.inf, -np.inf, -0.0
        if trial > 2:
            values = np.asfortranarray(values)      # the layout normalized tables have
        rows = np.sort(rng.choice(60, 50, replace=False))
        codes = np.unique(rng.integers(0, 7, size=50), return_inverse=True)[1].ravel()
        expected = _pandas_group_mean(values, rows, codes, codes.max() + 1)
        got = aggregate._group_mean(values, rows, codes, codes.max() + 1)
        assert np.array_equal(got, expected, equal_nan=True), trial


@pytest.mark.parametrize("threads", ["1", "3"])
def test_group_mean_without_nan_is_pandas_bit_for_bit(monkeypatch, threads):
    """Blocks without NaN or infinity take the one-pass first step and divide by the row
    counts; -0.0 first rows (0.0 in pandas' sums) and one-row groups included, compared bit
    by bit (array_equal takes -0.0 for 0.0)."""
    monkeypatch.setenv("AHBA_APP_THREADS", threads)
    monkeypatch.setattr(aggregate, "_KAHAN_ELEMENTS", 64)  # several blocks of columns
    rng = np.random.default_rng(5)
    for trial in range(8):
        values = np.round(rng.normal(0.5, 0.2, size=(60, 40)), 3 if trial % 2 else 12)
        values[rng.random(values.shape) < 0.2] = -0.0
        if trial in (2, 6):
            values[7, 30] = np.nan                  # one block takes the counted path
        if trial > 3:
            values = np.asfortranarray(values)
        rows = np.sort(rng.choice(60, 50, replace=False))
        codes = np.unique(rng.integers(0, 30, size=50), return_inverse=True)[1].ravel()
        expected = _pandas_group_mean(values, rows, codes, codes.max() + 1)
        got = aggregate._group_mean(values, rows, codes, codes.max() + 1)
        assert np.array_equal(got.view(np.int64), expected.view(np.int64)), trial


@pytest.mark.parametrize("layout", ["C", "F"])
def test_group_mean_compensations_of_groups_going_on(monkeypatch, layout):
    """Groups of one to six rows whose sums need their compensations (values of very
    different sizes): the compensations kept only for the groups adding a later row, and
    the second row added as it is after a one-pass first step, give pandas' bits."""
    monkeypatch.setattr(aggregate, "_KAHAN_ELEMENTS", 96)  # several blocks of columns
    rng = np.random.default_rng(17)
    sizes = np.repeat(np.arange(1, 7), 5)
    codes = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    scale = 10.0 ** rng.integers(-8, 17, size=(len(codes), 50))
    values = rng.normal(0, 1, size=scale.shape) * scale
    values[rng.random(values.shape) < 0.05] = -0.0
    values = np.asarray(values, order=layout)
    rows = np.arange(len(codes))
    expected = _pandas_group_mean(values, rows, codes, len(sizes))
    got = aggregate._group_mean(values, rows, codes, len(sizes))
    assert np.array_equal(got.view(np.int64), expected.view(np.int64))


def test_running_mean_first_table_is_pandas_bit_for_bit(monkeypatch):
    """The first table added into zero sums (one pass when its pieces are finite): -0.0 in
    rows no later table has gives pandas' 0.0, bit for bit; a piece with NaN or infinity
    takes the counted path."""
    monkeypatch.setattr(aggregate, "_KAHAN_ELEMENTS", 24)  # several pieces
    rng = np.random.default_rng(13)
    shape = (12, 8)
    first = np.round(rng.normal(0.5, 0.2, size=shape), 12)
    first[rng.random(shape) < 0.3] = -0.0
    first[9, 4] = np.inf                                   # one piece not finite
    second = np.round(rng.normal(0.5, 0.2, size=shape), 12)
    second[:6] = np.nan                                    # rows 0-5: the first table only
    running = aggregate._RunningMean(shape)
    for table in (first, second):
        running.add(table)
    stacked = pd.DataFrame(np.vstack([first, second]))
    expected = stacked.groupby(np.tile(np.arange(shape[0]), 2)).mean().to_numpy()
    assert np.array_equal(running.mean().view(np.int64), expected.view(np.int64))


def _stacked(frames, extra, labels):
    """What mean_over_donors stands for: extra rows appended, tables stacked and grouped."""
    with_rows = [f if r is None else pd.concat([f, r]) for f, r in zip(frames, extra)]
    tables = [group_by_label(f, labels=labels) for f in with_rows]
    return group_by_label(aggregate._concat(tables))


def test_donor_by_donor_means_equal_stacking_the_donors(data):
    frames = _frames(*data)
    columns = frames[0].columns
    extra = [pd.DataFrame([[0.25] * N_GENES, [-0.0] * N_GENES], columns=columns,
                          index=pd.Index([10, 11], name="label")),
             None,
             pd.DataFrame([np.linspace(0, 1, N_GENES)], columns=columns,
                          index=pd.Index([12], name="label"))]
    stacked = _stacked(frames, extra, ALL_LABELS)
    dropped = incomplete_genes(stacked)
    expected = stacked.drop(columns=dropped)
    got, got_dropped = aggregate.mean_over_donors(frames, labels=ALL_LABELS, extra=extra)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert list(got_dropped) == list(dropped)
    # a filled row of a region the donor sampled is added to its samples (no shortcut)
    clash = [None, pd.DataFrame([[0.5] * N_GENES], index=pd.Index([1], name="label"),
                                columns=columns), None]
    clashed = _stacked(frames, clash, ALL_LABELS)
    pd.testing.assert_frame_equal(
        aggregate.mean_over_donors(frames, labels=ALL_LABELS, extra=clash)[0],
        clashed.drop(columns=incomplete_genes(clashed)), check_exact=True)
    # donors with different genes are stacked as they are
    fewer = [frames[0], frames[1].iloc[:, :-2], frames[2]]
    stacked = _stacked(fewer, [None] * 3, ALL_LABELS)
    pd.testing.assert_frame_equal(aggregate.mean_over_donors(fewer, labels=ALL_LABELS)[0],
                                  stacked.drop(columns=incomplete_genes(stacked)),
                                  check_exact=True)


@pytest.mark.parametrize("first_labels", ["int64", "float64"])
def test_a_first_table_of_its_own_regions_is_widened_when_folded(data, first_labels):
    """Region tables made apart (first=False: each donor's own regions, e.g. by the command
    line's normalize node) and folded give the table of folding the first one made with
    every region (first=True, as the Python API does), bit for bit, whatever the order of
    the donors and the dtype of the atlas's labels."""
    frames = _frames(*data)
    labels = np.asarray(ALL_LABELS, dtype=first_labels)
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        chosen = [frames[k] for k in order]
        reference = aggregate.DonorMeans(labels)
        for k, frame in enumerate(chosen):
            reference.fold(reference.table(frame, first=k == 0))
        apart = aggregate.DonorMeans(labels)
        tables = [aggregate.DonorMeans(None).table(frame, first=False) for frame in chosen]
        assert len(tables[0]) < len(labels)  # (a donor misses regions: widening is tested)
        for table in tables:
            apart.fold(table)
        expected, expected_dropped = reference.result()
        got, got_dropped = apart.result()
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
        assert list(got_dropped) == list(expected_dropped)
        assert got.index.tolist() == ALL_LABELS  # the regions no donor sampled are rows


def test_merging_same_shaped_tables_equals_stacking(data):
    tables = aggregate_regions(_frames(*data), labels=ALL_LABELS)
    merged, _ = aggregate_donors(tables)
    stacked = group_by_label(aggregate._concat(tables))
    pd.testing.assert_frame_equal(merged, stacked.drop(columns=incomplete_genes(stacked)),
                                  check_exact=True)


@pytest.mark.parametrize("threads", ["1", "3"])
def test_running_mean_skips_empty_rows_and_equals_pandas(monkeypatch, threads):
    """Tables added one by one give pandas' mean of the stacked tables bit for bit, with
    rows empty in some tables (regions a donor has no sample in), NaN first met in a later
    table, and infinities."""
    monkeypatch.setenv("AHBA_APP_THREADS", threads)
    monkeypatch.setattr(aggregate, "_KAHAN_ELEMENTS", 24)  # several pieces per run of rows
    rng = np.random.default_rng(11)
    shape = (17, 9)
    tables = []
    for k in range(5):
        table = np.round(rng.normal(0.5, 0.2, size=shape), 12)
        table[rng.choice(shape[0], 4, replace=False)] = np.nan   # empty regions
        if k >= 2:                                                 # NaN only from table 3 on
            table[rng.random(shape) < 0.1] = np.nan
        tables.append(table)
    tables[1][3, 2], tables[4][5, 1], tables[0][0, 0] = np.inf, -np.inf, -0.0
    tables[3][:, :] = np.nan                                       # a donor with nothing
    running = aggregate._RunningMean(shape)
    for table in tables:
        running.add(table)
    stacked = pd.DataFrame(np.vstack(tables))
    expected = stacked.groupby(np.tile(np.arange(shape[0]), len(tables))).mean().to_numpy()
    assert np.array_equal(running.mean(), expected, equal_nan=True)
    # the same tables given as their non-empty rows only, each with its row numbers
    compact = aggregate._RunningMean(shape)
    for table in tables:
        rows = np.flatnonzero(~np.isnan(table).all(axis=1))
        compact.add(table[rows], rows=rows)
    assert np.array_equal(compact.mean(), expected, equal_nan=True)
    with pytest.raises(ValueError, match="rows"):
        compact.add(tables[0][:3], rows=[0, 1])
    # no NaN anywhere: the counts are kept per row only
    clean = aggregate._RunningMean(shape)
    for table in tables[:2]:
        clean.add(np.nan_to_num(table, nan=0.125))
    assert clean.seen is None
    stacked = pd.DataFrame(np.vstack([np.nan_to_num(t, nan=0.125) for t in tables[:2]]))
    expected = stacked.groupby(np.tile(np.arange(shape[0]), 2)).mean().to_numpy()
    assert np.array_equal(clean.mean(), expected, equal_nan=True)

