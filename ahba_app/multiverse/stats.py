"""The statistics of one pipeline's region x gene table (pure functions over arrays).

Every statistic looks only at the *regions with data* (rows with at least one finite value) and
at the genes finite in all of them (aggregation already drops the others):

- ``n_genes``: genes (columns) of the table; ``n_regions``: regions with data;
- ``cge_distance_rho``: Spearman correlation, over region pairs i < j, between the Pearson
  correlation of the two regions' expression profiles (over genes) and the Euclidean distance
  between their centroids (mm, as :func:`ahba_app.check_atlas` gives them);
- ``pc1_variance``: the fraction of the variance explained by the first principal component
  (each gene centred over regions, not scaled);
- ``map_rho``: Spearman correlation between a value per region (e.g. a T1w/T2w map) and the
  first principal component's scores, whose sign is fixed so that they correlate positively
  with the regions' mean expression.

The principal components and the correlations are both read off the regions' R x R Gram
matrices (regions are few, genes many), so one pass over the table gives all statistics.
Undefined statistics (too few regions or genes, constant profiles) are NaN.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
from scipy.stats import rankdata

__all__ = ["STATISTICS", "TableStatistics", "centroid_array", "cge_distance_rho",
           "n_genes", "n_regions", "map_rho", "pc1_scores", "pc1_variance",
           "spearman", "table_statistics"]

#: Column names of the statistics, in the order rows are written.
STATISTICS = ("n_genes", "n_regions", "cge_distance_rho", "pc1_variance", "map_rho")


def _complete(table: pd.DataFrame) -> tuple[pd.Index, np.ndarray]:
    """The labels of the regions with data, and their values of the genes finite in all of
    them: a (regions, genes) array, C-ordered when the table's values are (those the sweep
    gives: numpy takes the rows and columns, quicker than pandas' ``iloc``), else as
    pandas leaves them."""
    values = table.to_numpy(dtype=float)
    finite = np.isfinite(values)
    rows = np.flatnonzero(finite.any(axis=1))
    cols = np.flatnonzero(finite[rows].all(axis=0))
    if not values.flags.c_contiguous:
        data = table.iloc[rows, cols]
        return data.index, data.to_numpy(dtype=float)
    if len(cols) < values.shape[1]:
        values = values[:, cols]
    if len(rows) < len(table):
        values = values[rows]
    return table.index[rows], np.ascontiguousarray(values)


def spearman(x, y) -> float:
    """Spearman's rank correlation of two vectors (average ranks for ties); NaN when either
    is constant or there are fewer than 3 pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 3:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / denom) if denom > 0 else float("nan")


def n_genes(table: pd.DataFrame) -> int:
    """Genes (columns) of the table."""
    return int(table.shape[1])


def n_regions(table: pd.DataFrame) -> int:
    """Regions (rows) with at least one finite value."""
    return int(np.isfinite(table.to_numpy(dtype=float)).any(axis=1).sum())


def centroid_array(centroids: Mapping, labels) -> np.ndarray:
    """(R, 3) centroids of ``labels`` from a ``{label: xyz}`` mapping
    (:attr:`ahba_app.atlas.AtlasTree.centroids`); KeyError naming a label without one."""
    missing = [label for label in labels if label not in centroids]
    if missing:
        raise KeyError(f"No centroid for region(s) {missing[:10]} of the table.")
    return np.asarray([centroids[label] for label in labels], dtype=float).reshape(-1, 3)


class TableStatistics:
    """Every statistic of one table, sharing the work (see the module's docstring).

    ``centroids`` (``{label: xyz}``) is needed for ``cge_distance_rho``, ``region_map``
    (a Series indexed by region label) for ``map_rho``; without them those are NaN.
    """

    def __init__(self, table: pd.DataFrame, centroids: Mapping | None = None,
                 region_map: pd.Series | None = None):
        self.n_genes = n_genes(table)
        self.labels, self.values = _complete(table)
        self.n_regions = len(self.labels)
        self.centroids = centroids
        self.region_map = region_map
        self._eig = None

    # the centred table's Gram matrix: its eigenvalues are the PCs' variances, its
    # eigenvectors (scaled) the PC scores
    def _pca(self):
        if self._eig is None:
            centred = self.values - self.values.mean(axis=0)
            gram = centred @ centred.T
            eigenvalues, eigenvectors = np.linalg.eigh(gram)
            self._eig = (eigenvalues[::-1], eigenvectors[:, ::-1])
        return self._eig

    def pc1_variance(self) -> float:
        if self.n_regions < 2 or self.values.shape[1] < 1:
            return float("nan")
        eigenvalues, _ = self._pca()
        total = eigenvalues.clip(min=0).sum()
        return float(eigenvalues[0] / total) if total > 0 else float("nan")

    def pc1_scores(self) -> pd.Series:
        """Scores of the regions with data on the first PC, positive with their mean."""
        if self.n_regions < 2 or self.values.shape[1] < 1:
            return pd.Series(np.nan, index=self.labels, dtype=float)
        eigenvalues, eigenvectors = self._pca()
        scores = eigenvectors[:, 0] * np.sqrt(max(eigenvalues[0], 0.0))
        mean = self.values.mean(axis=1)
        if np.dot(scores - scores.mean(), mean - mean.mean()) < 0:
            scores = -scores
        return pd.Series(scores, index=self.labels)

    def cge_distance_rho(self) -> float:
        if self.centroids is None or self.n_regions < 3 or self.values.shape[1] < 2:
            return float("nan")
        xyz = centroid_array(self.centroids, self.labels)
        centred = self.values - self.values.mean(axis=1, keepdims=True)
        norms = np.sqrt(np.einsum("ij,ij->i", centred, centred))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = (centred @ centred.T) / np.outer(norms, norms)
        upper = np.triu_indices(self.n_regions, k=1)
        diff = xyz[:, None, :] - xyz[None, :, :]
        distance = np.sqrt((diff ** 2).sum(axis=-1))[upper]
        corr = corr[upper]
        if not np.isfinite(corr).all():  # a constant profile has no correlation
            return float("nan")
        return spearman(corr, distance)

    def map_rho(self) -> float:
        if self.region_map is None:
            return float("nan")
        scores = self.pc1_scores()
        values = self.region_map.reindex(scores.index).to_numpy(dtype=float)
        keep = np.isfinite(values) & np.isfinite(scores.to_numpy())
        return spearman(values[keep], scores.to_numpy()[keep])

    def as_dict(self) -> dict:
        return {"n_genes": self.n_genes, "n_regions": self.n_regions,
                "cge_distance_rho": self.cge_distance_rho(),
                "pc1_variance": self.pc1_variance(), "map_rho": self.map_rho()}


def table_statistics(table: pd.DataFrame, centroids: Mapping | None = None,
                     region_map: pd.Series | None = None) -> dict:
    """Every statistic of :data:`STATISTICS` for one table, as a dict."""
    return TableStatistics(table, centroids, region_map).as_dict()


def cge_distance_rho(table: pd.DataFrame, centroids: Mapping) -> float:
    """See the module's docstring."""
    return TableStatistics(table, centroids).cge_distance_rho()


def pc1_variance(table: pd.DataFrame) -> float:
    """See the module's docstring."""
    return TableStatistics(table).pc1_variance()


def pc1_scores(table: pd.DataFrame) -> pd.Series:
    """First principal component's scores of the regions with data (sign: positive with the
    regions' mean expression)."""
    return TableStatistics(table).pc1_scores()


def map_rho(table: pd.DataFrame, region_map: pd.Series) -> float:
    """See the module's docstring."""
    return TableStatistics(table, region_map=region_map).map_rho()
