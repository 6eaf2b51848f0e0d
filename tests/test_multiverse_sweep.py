"""The in-process sweep engine: rows equal the statistics of get_expression_data's tables."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest

from ahba_app import api
from ahba_app.datasets import fetch_desikan_killiany
from ahba_app.images import check_atlas
from ahba_app.multiverse.grid import parse_grid
from ahba_app.multiverse.planner import plan
from ahba_app.multiverse.stats import STATISTICS, table_statistics
from ahba_app.multiverse.sweep import COLUMNS, ProgressLine, RowWriter, format_value, sweep

DK = fetch_desikan_killiany()

SMALL_GRID = {"grid": {
    "lr_mirror": ["none", "leftright"],
    "sample_norm": ["srs", "zscore"],
    "gene_norm": ["srs", "none"],
    "norm_structures": [False, True],
    "missing": ["none", "centroids"],
    "region_agg": ["donors", "samples"],
    "agg_metric": ["mean", "median"],
}}


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"pipeline_id": str}, keep_default_na=False,
                       na_values=["n/a"])


@pytest.fixture(scope="module")
def swept(ahba_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "pipelines.tsv"
    grid = parse_grid(SMALL_GRID)
    result = plan(grid)
    labels = check_atlas(DK["image"], DK["info"]).labels
    region_map = pd.Series(np.cos(np.asarray(labels, dtype=float)), index=labels)
    log = io.StringIO()
    sweep(result, DK["image"], DK["info"], out, data_dir=ahba_small, region_map=region_map,
          progress=ProgressLine(result.n_pipelines, log, interval=0))
    return grid, result, _read(out), region_map, log.getvalue()


def test_sweep_writes_one_row_per_pipeline(swept):
    grid, result, rows, _, log = swept
    assert list(rows.columns) == list(COLUMNS)
    assert len(rows) == grid.n_pipelines == 2 ** 7
    assert sorted(rows["pipeline_id"]) == sorted(p.id for p in grid.pipelines())
    # norm_structures without gene normalization shares the upstream result
    assert len(result.groups) == 2 * 2 * 3
    # pipelines that differ only by an idle option have equal statistics
    idle = rows[rows["gene_norm"] == "none"]
    pairs = idle.groupby([c for c in COLUMNS[1:] if c not in ("norm_structures",)
                          and c not in STATISTICS], dropna=False)
    assert all(len(g) == 2 and g[list(STATISTICS)].nunique(dropna=False).max() == 1
               for _, g in pairs)
    # the statistics vary with the options and are defined
    assert rows["n_regions"].nunique() > 1 and rows["cge_distance_rho"].notna().all()
    assert rows["map_rho"].notna().all() and rows["pc1_variance"].between(0, 1).all()
    lines = log.strip().splitlines()
    assert lines[-1].startswith(f"multiverse: 128/128 pipelines (100.0%)")
    assert all("\r" not in line for line in lines)


def _sample(rows: pd.DataFrame) -> pd.DataFrame:
    # every downstream variant and both values of every upstream option, in 8 pipelines
    picks = [0, 19, 38, 45, 66, 85, 108, 127]
    return rows.iloc[picks]


def test_rows_equal_statistics_of_get_expression_data(swept, ahba_small):
    grid, _, rows, region_map, _ = swept
    sample = _sample(rows)
    for option in SMALL_GRID["grid"]:
        assert sample[option].nunique() == 2, option
    centroids = check_atlas(DK["image"], DK["info"]).centroids
    by_id = {p.id: p for p in grid.pipelines()}
    for _, row in sample.iterrows():
        options = by_id[row["pipeline_id"]].kwargs()
        expression = api.get_expression_data(DK["image"], DK["info"], data_dir=ahba_small,
                                             **options)
        expected = table_statistics(expression, centroids, region_map)
        for name in STATISTICS:
            got, want = row[name], expected[name]
            if isinstance(want, float) and math.isnan(want):
                assert math.isnan(got), (name, options)
            else:
                assert got == pytest.approx(want, abs=1e-9), (name, options)


# ---------------------------------------------------------------------------------------------
# the row writer
# ---------------------------------------------------------------------------------------------
def _rows(n):
    base = {name: None for name in COLUMNS}
    out = []
    for i in range(n):
        row = dict(base, pipeline_id=f"{i:016x}", ibf_threshold=0.25 * (i % 3),
                   probe_selection="max_intensity", donor_probes="common", tolerance=2.0,
                   sample_norm="zscore", norm_matched=bool(i % 2), norm_structures=False,
                   region_agg="donors", agg_metric="mean", corrected_mni=True,
                   reannotated=False, donors=("9861", "10021"), n_genes=100 + i,
                   n_regions=80, cge_distance_rho=-0.1 - i / 3, pc1_variance=1 / 3,
                   map_rho=float("nan"))
        out.append(row)
    return out


def test_row_writer_tsv_and_parquet_round_trip(tmp_path):
    rows = _rows(25)
    with RowWriter(tmp_path / "rows.tsv", flush_rows=7) as writer:
        for row in rows:
            writer.write(row)
    with RowWriter(tmp_path / "rows.parquet", parquet=True, flush_rows=7) as writer:
        for row in rows:
            writer.write(row)
    assert writer.n_rows == 25
    tsv = _read(tmp_path / "rows.tsv")
    parquet = pd.read_parquet(tmp_path / "rows.parquet")
    assert list(tsv.columns) == list(parquet.columns) == list(COLUMNS)
    for frame in (tsv, parquet):
        assert len(frame) == 25
        assert frame["cge_distance_rho"].tolist() == [r["cge_distance_rho"] for r in rows]
        assert frame["map_rho"].isna().all()
        assert frame["donors"].iloc[0] == "9861,10021"
        assert frame["norm_matched"].tolist() == [r["norm_matched"] for r in rows]
    assert tsv["lr_mirror"].iloc[0] == "none" and parquet["lr_mirror"].isna().all()
    assert not list(tmp_path.glob(".*tmp"))


def test_row_writer_leaves_nothing_when_interrupted(tmp_path):
    with pytest.raises(RuntimeError):
        with RowWriter(tmp_path / "rows.tsv", flush_rows=2) as writer:
            for row in _rows(5):
                writer.write(row)
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_format_value():
    assert format_value(None) == "none" and format_value(float("nan")) == "n/a"
    assert format_value(True) == "true" and format_value(0.1) == "0.1"
    assert float(format_value(1 / 3)) == 1 / 3
    assert format_value(("9861", "10021")) == "9861,10021"


def test_progress_line_for_batch_logs():
    now = [0.0]
    log = io.StringIO()
    progress = ProgressLine(100, log, interval=10, clock=lambda: now[0])
    progress.update(0)     # t=0: the first line
    now[0] = 5.0
    progress.update(20)    # too soon after it
    now[0] = 20.0
    progress.update(50)    # printed
    now[0] = 21.0
    progress.update(100)   # the end: always printed
    assert log.getvalue().splitlines() == [
        "multiverse: 0/100 pipelines (0.0%), 0.00 pipelines/s, unknown time left",
        "multiverse: 50/100 pipelines (50.0%), 2.50 pipelines/s, 0m20s left",
        "multiverse: 100/100 pipelines (100.0%), 4.76 pipelines/s, 0m00s left"]


def test_a_sweep_reads_each_cache_checksum_once(ahba_small, tmp_path, monkeypatch):
    """The units of one sweep share the run's record of checked caches (io.remembering_checks):
    a cache is read whole for its checksum once, not once a unit."""
    from ahba_app import io as ahba_io

    grid = parse_grid({"grid": {"lr_mirror": ["none", "leftright"]}})
    result = plan(grid)
    assert len(list(result.units())) == 2
    checked = []
    crc32 = ahba_io._file_crc32

    def counting(handle, *args, **kwargs):
        checked.append(handle.name)
        return crc32(handle, *args, **kwargs)

    api.get_expression_data(DK["image"], DK["info"], data_dir=ahba_small)  # caches built
    monkeypatch.setattr(ahba_io, "_file_crc32", counting)
    sweep(result, DK["image"], DK["info"], tmp_path / "rows.tsv", data_dir=ahba_small)
    assert checked and len(checked) == len(set(checked))
    assert len(_read(tmp_path / "rows.tsv")) == 2


class _Marker:
    """An object the collector tracks (a class instance), to see whether it is set aside."""


def _set_aside(obj) -> bool:
    """Whether ``obj`` is frozen (gc.freeze): the collector's generations no longer list it."""
    import gc

    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


@pytest.mark.parametrize("caller_froze", [False, True])
def test_a_unit_leaves_the_callers_frozen_objects_as_they_were(ahba_small, tmp_path,
                                                              caller_froze):
    """A unit sets aside what exists while it runs (gc.freeze) and hands it back after; objects
    its caller had set aside stay set aside (gc.unfreeze alone would hand those back too)."""
    import gc

    assert gc.get_freeze_count() == 0
    marker = _Marker()
    if caller_froze:
        gc.freeze()
    try:
        assert _set_aside(marker) == caller_froze
        sweep(plan(parse_grid({"grid": {"lr_mirror": ["none"]}})), DK["image"], DK["info"],
              tmp_path / "rows.tsv", data_dir=ahba_small)
        assert _set_aside(marker) == caller_froze
        assert (gc.get_freeze_count() > 0) == caller_froze
    finally:
        gc.unfreeze()
    assert len(_read(tmp_path / "rows.tsv")) == 1
