"""Per-pipeline statistics against straightforward reference implementations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from ahba_app.multiverse import stats


def _table(seed=0, regions=30, genes=200, empty=(3, 17)):
    rng = np.random.default_rng(seed)
    # a gradient along x plus noise, so the statistics are far from 0 and from ties
    xyz = rng.uniform(-60, 60, size=(regions, 3))
    values = np.outer(xyz[:, 0], rng.normal(size=genes)) / 60 + rng.normal(size=(regions, genes))
    values += rng.normal(size=(1, genes)) * 3
    labels = np.arange(1, regions + 1) * 2
    table = pd.DataFrame(values, index=pd.Index(labels, name="label"),
                         columns=[f"G{i}" for i in range(genes)])
    table.iloc[list(empty)] = np.nan
    centroids = {label: xyz[i] for i, label in enumerate(labels)}
    return table, centroids


def _reference_cge(table, centroids):
    data = table.dropna(how="all")
    labels = list(data.index)
    corr, dist = [], []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            corr.append(sstats.pearsonr(data.iloc[i], data.iloc[j])[0])
            dist.append(np.linalg.norm(np.asarray(centroids[labels[i]])
                                       - np.asarray(centroids[labels[j]])))
    return sstats.spearmanr(corr, dist)[0]


def _reference_pca(table):
    data = table.dropna(how="all").to_numpy()
    centred = data - data.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    scores = u[:, 0] * s[0]
    if sstats.pearsonr(scores, data.mean(axis=1))[0] < 0:
        scores = -scores
    return s[0] ** 2 / (s ** 2).sum(), pd.Series(scores, index=table.dropna(how="all").index)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_equal_reference_implementations(seed):
    table, centroids = _table(seed)
    variance, scores = _reference_pca(table)
    region_map = pd.Series(np.random.default_rng(seed + 10).normal(size=len(table)),
                           index=table.index) + scores.reindex(table.index).fillna(0) / 10
    got = stats.table_statistics(table, centroids, region_map)
    assert got["n_genes"] == 200 and got["n_regions"] == 28
    assert got["cge_distance_rho"] == pytest.approx(_reference_cge(table, centroids), abs=1e-12)
    assert got["pc1_variance"] == pytest.approx(variance, abs=1e-12)
    assert stats.pc1_scores(table).to_numpy() == pytest.approx(scores.to_numpy(), abs=1e-9)
    expected_map = sstats.spearmanr(region_map.reindex(scores.index), scores)[0]
    assert got["map_rho"] == pytest.approx(expected_map, abs=1e-12)
    # the statistics are not trivial on these tables
    assert got["cge_distance_rho"] < -0.2 and 0.1 < got["pc1_variance"] < 1
    assert abs(got["map_rho"]) > 0.1
    assert list(got) == list(stats.STATISTICS)


def test_pc1_sign_follows_the_mean_expression():
    table, _ = _table(4)
    scores = stats.pc1_scores(table)
    data = table.dropna(how="all")
    assert np.corrcoef(scores, data.mean(axis=1))[0, 1] > 0
    # flipping every gene's sign flips the mean: the scores flip with it
    flipped = stats.pc1_scores(-table)
    assert flipped.to_numpy() == pytest.approx(-scores.to_numpy(), abs=1e-9)
    # map_rho uses those scores: a map equal to the mean correlates positively
    assert stats.map_rho(table, data.mean(axis=1)) > 0
    assert stats.map_rho(-table, data.mean(axis=1)) < 0


def test_map_rho_uses_only_regions_present_in_both():
    table, _ = _table(5)
    scores = stats.pc1_scores(table)
    region_map = scores.copy()
    region_map.iloc[:4] = np.nan              # regions without a map value
    region_map.loc[999] = 5.0                 # a region the table does not hold
    keep = region_map.reindex(scores.index).notna()
    expected = sstats.spearmanr(region_map.reindex(scores.index)[keep], scores[keep])[0]
    assert stats.map_rho(table, region_map) == pytest.approx(expected, abs=1e-12) == 1.0


def test_undefined_statistics_are_nan_and_missing_centroids_are_errors():
    table, centroids = _table(6, regions=4, empty=(0, 1))
    got = stats.table_statistics(table, centroids)
    assert got["n_regions"] == 2
    assert np.isnan(got["cge_distance_rho"]) and np.isnan(got["map_rho"])
    assert got["pc1_variance"] == pytest.approx(1.0)  # two regions: one component
    empty = table.iloc[:0]
    assert stats.n_regions(empty) == 0 and np.isnan(stats.pc1_variance(empty))
    full, cents = _table(7, empty=())
    del cents[full.index[5]]
    with pytest.raises(KeyError, match=str(full.index[5])):
        stats.cge_distance_rho(full, cents)
    constant = full.copy()
    constant.iloc[2] = 1.0  # a region whose profile is constant has no correlation
    assert np.isnan(stats.cge_distance_rho(constant, _table(7, empty=())[1]))


def test_spearman_handles_ties_like_scipy():
    x = [1, 2, 2, 3, 5, 5, 5, 8]
    y = [3, 1, 4, 1, 5, 9, 2, 6]
    assert stats.spearman(x, y) == pytest.approx(sstats.spearmanr(x, y)[0], abs=1e-15)
    assert np.isnan(stats.spearman([1, 1, 1], [1, 2, 3]))
