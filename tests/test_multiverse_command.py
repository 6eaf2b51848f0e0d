"""The command line's multiverse run: inputs checked first, one message, nothing written."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from ahba_app.datasets import fetch_desikan_killiany
from ahba_app.images import check_atlas
from ahba_app.multiverse import command
from ahba_app.multiverse.command import MultiverseInputError, read_region_map
from ahba_app.multiverse.sweep import COLUMNS

DK = fetch_desikan_killiany()


@pytest.fixture(scope="module")
def dk_tree():
    return check_atlas(DK["image"], DK["info"])


def _map(path, labels, values=None, column="myelin"):
    values = np.linspace(0, 1, len(labels)) if values is None else values
    pd.DataFrame({"index": labels, column: values}).to_csv(path, sep="\t", index=False,
                                                           na_rep="n/a")
    return path


def test_region_map_is_read_by_atlas_index(tmp_path, dk_tree):
    labels = list(dk_tree.labels)
    values = np.arange(len(labels), dtype=float)
    values[3] = np.nan
    got = read_region_map(_map(tmp_path / "map.tsv", labels[::-1], values[::-1]), labels)
    assert list(got.index) == labels[::-1] and got.name == "myelin"
    assert got.loc[labels[0]] == 0.0 and np.isnan(got.loc[labels[3]])


@pytest.mark.parametrize("change, words", [
    (lambda t: t.iloc[:-1], ["are not listed", "83"]),
    (lambda t: pd.concat([t, pd.DataFrame({"index": [999], "myelin": [1.0]})]),
     ["999", "are not in"]),
    (lambda t: t.rename(columns={"index": "region"}), ["no 'index' column"]),
    (lambda t: t.assign(other=1.0), ["one value column"]),
    (lambda t: t.assign(myelin=["high"] * len(t)), ["non-numbers", "high"]),
    (lambda t: pd.concat([t, t.iloc[:1]]), ["twice"]),
    (lambda t: t.assign(index=t["index"] + np.r_[0.5, np.zeros(len(t) - 1)]),
     ["integer region indices"]),
    (lambda t: t.assign(index=["x"] + list(t["index"][1:])), ["integer region indices"]),
    (lambda t: t.assign(index=[None] + list(t["index"][1:])), ["integer region indices"]),
])
def test_bad_region_maps_are_one_message(tmp_path, dk_tree, change, words):
    labels = list(dk_tree.labels)
    path = tmp_path / "map.tsv"
    table = pd.DataFrame({"index": labels, "myelin": np.linspace(0, 1, len(labels))})
    change(table).to_csv(path, sep="\t", index=False)
    with pytest.raises(MultiverseInputError) as err:
        read_region_map(path, labels, where="atlas-DK")
    assert str(path) in str(err.value)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_prepare_checks_everything_before_running(tmp_path, dk_tree):
    grid = tmp_path / "grid.toml"
    grid.write_text("[grid]\nagg_metric = ['mean', 'median']\n")
    bad_map = _map(tmp_path / "map.tsv", list(dk_tree.labels)[:-2])
    with pytest.raises(MultiverseInputError, match="do not match atlas-DK"):
        command.prepare(grid, {}, {"atlas-DK": dk_tree}, map_path=bad_map)
    bad_grid = tmp_path / "bad.toml"
    bad_grid.write_text("[grid]\nagg_metric = ['mode']\n")
    with pytest.raises(MultiverseInputError, match="mode"):
        command.prepare(bad_grid, {}, {"atlas-DK": dk_tree})
    job = command.prepare(grid, {"gene_norm": "zscore"}, {"atlas-DK": dk_tree})
    assert job.plan.n_pipelines == 2 and not job.parquet
    assert all(p.options["gene_norm"] == "zscore" for p in job.grid.pipelines())
    assert command.prepare("markello2021", {}, {"atlas-DK": dk_tree}).parquet
    text = command.summary(job)
    assert "2 pipelines" in text and "1 normalization" in text and "estimated" in text
    assert sorted(tmp_path.iterdir()) == sorted([grid, bad_map, bad_grid])  # nothing written


def test_run_writes_one_table_per_atlas(tmp_path, dk_tree, ahba_small):
    grid = tmp_path / "grid.toml"
    grid.write_text("[grid]\nagg_metric = ['mean', 'median']\n")
    map_path = _map(tmp_path / "map.tsv", list(dk_tree.labels))
    job = command.prepare(grid, {"sample_norm": "zscore"},
                          {"atlas-DK": dk_tree, "atlas-DKcopy": dk_tree}, map_path=map_path)
    out = tmp_path / "out"
    out.mkdir()
    log = io.StringIO()
    written = command.run(job, out, data_dir=ahba_small, stream=log, interval=0)
    assert [p.name for p in written] == ["atlas-DK_desc-multiverse_pipelines.tsv",
                                         "atlas-DKcopy_desc-multiverse_pipelines.tsv"]
    first, second = (pd.read_csv(p, sep="\t") for p in written)
    assert list(first.columns) == list(COLUMNS) and len(first) == 2
    pd.testing.assert_frame_equal(first, second)
    assert first["map_rho"].notna().all() and (first["sample_norm"] == "zscore").all()
    assert log.getvalue().splitlines()[-1].startswith("multiverse: 4/4 pipelines (100.0%)")


# ---------------------------------------------------------------------------------------------
# ahba-app IN OUT group --multiverse GRID
# ---------------------------------------------------------------------------------------------
def _main(capsys, args):
    from ahba_app.cli import run as cli_run

    code = cli_run.main([str(a) for a in args])
    return code, capsys.readouterr().err


def _cli_grid(tmp_path, text="[grid]\nagg_metric = ['mean', 'median']\n"):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    (tmp_path / "in").mkdir(exist_ok=True)
    return path


def test_command_line_multiverse_run(tmp_path, capsys, ahba_small, dk_tree):
    grid = _cli_grid(tmp_path)
    map_path = _map(tmp_path / "map.tsv", list(dk_tree.labels))
    out = tmp_path / "out"
    code, err = _main(capsys, [tmp_path / "in", out, "group", "--ahba-dir", ahba_small,
                               "-w", tmp_path / "work", "--gene-norm", "zscore",
                               "--multiverse", grid, "--multiverse-map", map_path])
    assert code == 0, err
    table = out / "atlas-desikankilliany_desc-multiverse_pipelines.tsv"
    report = out / "atlas-desikankilliany_desc-multiverse_report.html"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [table.name, report.name, "dataset_description.json"])
    assert "a multiverse of 2 pipelines" in report.read_text()
    assert "multiverse_wf" in {p.name for p in (tmp_path / "work").iterdir()}
    rows = pd.read_csv(table, sep="\t")
    assert len(rows) == 2 and list(rows["agg_metric"]) == ["mean", "median"]
    assert (rows["gene_norm"] == "zscore").all() and rows["map_rho"].notna().all()
    assert "2 pipelines" in err and "estimated" in err
    assert "multiverse: 2/2 pipelines (100.0%)" in err


@pytest.mark.parametrize("extra, words", [
    (["--multiverse", "GRID_UNKNOWN"], ["unknown option", "sample_nrom"]),
    (["--multiverse", "GRID", "--multiverse-map", "MAP_BAD"], ["do not match"]),
    (["--multiverse-map", "MAP_BAD"], ["--multiverse-map needs --multiverse"]),
    (["--multiverse", "no-such-grid"], ["Unknown multiverse grid", "markello2021"]),
])
def test_command_line_bad_multiverse_inputs(tmp_path, capsys, ahba_small, dk_tree, extra,
                                            words):
    grid = _cli_grid(tmp_path)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[grid]\nsample_nrom = ['srs']\n")
    bad_map = _map(tmp_path / "bad.tsv", list(dk_tree.labels)[1:])
    swap = {"GRID": grid, "GRID_UNKNOWN": unknown, "MAP_BAD": bad_map}
    out = tmp_path / "out"
    code, err = _main(capsys, [tmp_path / "in", out, "group", "--ahba-dir", ahba_small,
                               "-w", tmp_path / "work", *[swap.get(a, a) for a in extra]])
    assert code == 1
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("ahba-app: error:")
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists() and not (tmp_path / "work").exists()


def test_command_line_multiverse_needs_the_group_level(tmp_path, capsys, ahba_small):
    grid = _cli_grid(tmp_path)
    code, err = _main(capsys, [tmp_path / "in", tmp_path / "out", "participant",
                               "--ahba-dir", ahba_small, "--multiverse", grid])
    assert code == 1 and "group level" in err and not (tmp_path / "out").exists()



def test_command_line_engine_and_saved_tables(tmp_path, capsys, ahba_small):
    grid = _cli_grid(tmp_path)
    out = tmp_path / "out"
    code, err = _main(capsys, [tmp_path / "in", out, "group", "--ahba-dir", ahba_small,
                               "-w", tmp_path / "work", "--multiverse", grid,
                               "--nipype-plugin", "MultiProc", "--nprocs", "2",
                               "--plugin-args", '{"raise_insufficient": false}',
                               "--multiverse-save-tables", "reference",
                               "--multiverse-format", "parquet"])
    assert code == 0, err
    stem = "atlas-desikankilliany"
    rows = pd.read_parquet(out / f"{stem}_desc-multiverse_pipelines.parquet")
    from ahba_app.multiverse import _options
    from ahba_app.multiverse.grid import pipeline_id
    from ahba_app.multiverse.sweep import table_name

    reference = pipeline_id(_options.defaults())
    assert reference in set(rows["pipeline_id"])
    saved = out / f"{stem}_desc-multiverse_tables" / table_name(reference)
    table = pd.read_csv(saved, sep="\t", index_col=0)
    assert table.index.name == "index" and table.shape[0] > 10
    summary = pd.read_csv(out / f"{stem}_desc-multiverse_summary.tsv", sep="\t")
    assert "impact_agg_metric" in summary.columns
    assert (out / f"{stem}_desc-multiverse_report.html").is_file()


@pytest.mark.parametrize("extra, words", [
    (["--plugin-args", "{oops"], ["--plugin-args is neither a JSON object"]),
    (["--nipype-plugin", "SLURM"], ["sbatch", "cannot be found on PATH"]),
    (["--multiverse-save-tables", "reference"], ["--multiverse-save-tables needs --multiverse"]),
    (["--multiverse", "GRID", "--multiverse-save-tables", "0000000000000000"],
     ["not pipelines of the grid"]),
])
def test_command_line_bad_engine_or_selection(tmp_path, capsys, ahba_small, monkeypatch, extra,
                                              words):
    grid = _cli_grid(tmp_path)
    if "SLURM" in extra:
        monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    out = tmp_path / "out"
    code, err = _main(capsys, [tmp_path / "in", out, "group", "--ahba-dir", ahba_small,
                               "-w", tmp_path / "work",
                               *[str(grid) if a == "GRID" else a for a in extra]])
    assert code == 1
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("ahba-app: error:"), err
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists() and not (tmp_path / "work").exists()
