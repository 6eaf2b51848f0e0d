"""The multiverse report: option impact, summary, and the self-contained HTML page."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from ahba_app.multiverse import _options
from ahba_app.multiverse.grid import pipeline_id
from ahba_app.multiverse.report import (histogram, option_impact, read_rows, summary_table,
                                        write_report)
from ahba_app.multiverse.stats import STATISTICS
from ahba_app.multiverse.sweep import COLUMNS, RowWriter


def _rows():
    """12 pipelines: sample_norm in {srs, zscore} x tolerance in {0, 1, 2}, x missing in
    {none, centroids}, with statistics that are known functions of the options."""
    defaults = _options.defaults()
    rows = []
    for sample_norm in ("scaled_robust_sigmoid", "zscore"):
        for tolerance in (0.0, 1.0, 2.0):
            for missing in (None, "centroids"):
                options = dict(defaults, sample_norm=sample_norm, tolerance=tolerance,
                               missing=missing)
                s = 1.0 if sample_norm == "zscore" else 0.0
                m = 1.0 if missing else 0.0
                stats = {"n_genes": 100 + 10 * s, "n_regions": 70 + tolerance + 5 * m,
                         "cge_distance_rho": -0.2 + 0.1 * s * tolerance,
                         "pc1_variance": 0.3, "map_rho": float("nan")}
                if sample_norm == "zscore" and tolerance == 2.0 and missing is None:
                    stats["cge_distance_rho"] = float("nan")  # undefined: left out of pairs
                rows.append(dict(options, pipeline_id=pipeline_id(options), **stats))
    return rows


def _write(rows, path, parquet=False):
    with RowWriter(path, parquet=parquet) as writer:
        for row in rows:
            writer.write({name: row[name] for name in COLUMNS})
    return path


@pytest.fixture(params=["tsv", "parquet"])
def table(request, tmp_path):
    path = tmp_path / f"atlas-x_desc-multiverse_pipelines.{request.param}"
    return _write(_rows(), path, parquet=request.param == "parquet")


def test_option_impact_is_the_mean_change_over_pairs_differing_in_one_option(table):
    rows = read_rows(table)
    assert len(rows) == 12
    impact = option_impact(rows)
    assert sorted(impact.index) == ["missing", "sample_norm", "tolerance"]
    assert impact.loc["sample_norm", "n_genes"] == 10
    assert impact.loc["missing", "n_regions"] == 5 and impact.loc["missing", "n_genes"] == 0
    # tolerance pairs (0,1), (0,2), (1,2): changes 1, 2, 1 for n_regions
    assert impact.loc["tolerance", "n_regions"] == pytest.approx(4 / 3)
    # cge: zscore pairs change 0.1 * |t1 - t2|, srs pairs nothing; the NaN pipeline drops
    # its two pairs (zscore, missing none: (0,2) and (1,2)); 10 pairs remain
    changes = [0] * 6 + [0.1, 0.2, 0.1] + [0.1]
    assert impact.loc["tolerance", "cge_distance_rho"] == pytest.approx(np.mean(changes))
    # sample_norm pairs: 6 (one per tolerance x missing), one has the NaN: 5 left
    assert impact.loc["sample_norm", "cge_distance_rho"] == pytest.approx(
        np.mean([0.0, 0.1, 0.2, 0.0, 0.1]))
    assert math.isnan(impact.loc["tolerance", "map_rho"])
    assert impact.loc["missing", "pc1_variance"] == 0


def test_summary_places_the_reference_pipeline(table):
    rows = read_rows(table)
    reference = dict(_options.defaults())  # srs, tolerance 2, missing none
    summary = summary_table(rows, reference).set_index("statistic")
    assert summary.loc["n_regions", "reference"] == 72
    # n_regions values: 70, 75, 71, 76, 72, 77 (twice each): 6 of 12 at or below 72
    assert summary.loc["n_regions", "reference_percentile"] == pytest.approx(50.0)
    assert summary.loc["cge_distance_rho", "n_defined"] == 11
    assert summary.loc["n_genes", "impact_sample_norm"] == 10
    absent = summary_table(rows, dict(reference, tolerance=3.0)).set_index("statistic")
    assert summary.loc["n_genes", "median"] == 105 and absent["reference"].isna().all()


def test_report_page_is_self_contained_and_shows_the_reference(table, tmp_path):
    html, tsv = tmp_path / "report.html", tmp_path / "summary.tsv"
    written = write_report(table, html, reference=_options.defaults(), summary_path=tsv)
    assert written == [html, tsv]
    page = html.read_text()
    assert "a multiverse of 12 pipelines" in page
    for name in ("n_genes", "n_regions", "cge_distance_rho", "pc1_variance"):
        assert f'id="stat-{name}"' in page
    assert 'id="stat-map_rho"' not in page and "map_rho needs --multiverse-map" in page
    assert page.count('class="reference"') == 4
    assert "reference: 72 (50th percentile)" in page
    assert pipeline_id(_options.defaults()) in page
    # self-contained: nothing fetched, no script
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page
    summary = pd.read_csv(tsv, sep="\t", na_values=["n/a"])
    assert list(summary["statistic"]) == list(STATISTICS)
    assert "impact_tolerance" in summary.columns
    assert not list(tmp_path.glob(".*tmp"))


def test_report_without_the_reference_in_the_grid(table, tmp_path):
    html = tmp_path / "report.html"
    write_report(table, html, reference=dict(_options.defaults(), tolerance=3.0))
    page = html.read_text()
    assert "is not one of the grid" in page
    assert 'class="reference"' not in page


def test_histogram_marks_the_reference():
    svg = histogram([1.0, 2.0, 2.0, 3.0], 2.0, bins=2)
    assert svg.count("<rect") == 2 and 'class="reference"' in svg
    assert "3 pipelines" in svg and "undefined" in histogram([np.nan])
