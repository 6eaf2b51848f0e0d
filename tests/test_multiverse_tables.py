"""--multiverse-save-tables: the saved tables equal get_expression_data's (within 1e-12), for
the engine and the in-process sweep; bad selections are one message before anything runs."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from ahba_app import api
from ahba_app.bids import default_atlas
from ahba_app.cli.engines import Engine
from ahba_app.images import check_atlas
from ahba_app.multiverse import command
from ahba_app.multiverse.command import MultiverseInputError
from ahba_app.multiverse.grid import pipeline_id
from ahba_app.multiverse.sweep import table_name

from test_multiverse_engines import GRID_TOML


def _job(tmp_path, save, base=None):
    atlas = default_atlas()
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID_TOML)
    return command.prepare(str(grid), base or {}, {"atlas-dk": check_atlas(atlas.image,
                                                                           atlas.info)},
                           inputs={"atlas-dk": atlas.as_dict()}, save_tables=save)


def _read_table(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", index_col=0, na_values=["n/a"])


def _picks(job):
    """Three pipelines that differ upstream and downstream."""
    pipelines = list(job.grid.pipelines())
    return [pipelines[0], pipelines[13], pipelines[30]]


def test_saved_tables_equal_get_expression_data(tmp_path, ahba_small):
    job = _job(tmp_path, None)
    picks = _picks(job)
    listing = tmp_path / "picked.tsv"
    pd.DataFrame({"pipeline_id": [p.id for p in picks], "note": ["a", "b", "c"]}).to_csv(
        listing, sep="\t", index=False)
    job = _job(tmp_path, str(listing))
    assert job.save_tables == tuple(p.id for p in picks)
    out = tmp_path / "out"
    out.mkdir()
    written = command.run_engine(job, out, work_dir=tmp_path / "work", engine=Engine("Linear"),
                                 data_dir=ahba_small, stream=io.StringIO())
    folder = out / "atlas-dk_desc-multiverse_tables"
    assert written[-1] == folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(table_name(p.id) for p in picks)
    atlas = default_atlas()
    for pipeline in picks:
        saved = _read_table(folder / table_name(pipeline.id))
        expected = api.get_expression_data(atlas.image, atlas.info, data_dir=ahba_small,
                                           **pipeline.kwargs())
        assert saved.index.name == "index"
        assert list(saved.index) == list(expected.index)
        assert list(saved.columns) == list(expected.columns)
        assert np.allclose(saved.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12,
                           equal_nan=True)
        assert np.array_equal(np.isnan(saved.to_numpy()), np.isnan(expected.to_numpy()))
    # the in-process sweep saves the same files
    other = tmp_path / "in-process"
    other.mkdir()
    command.run(job, other, data_dir=ahba_small, stream=io.StringIO())
    for pipeline in picks:
        name = table_name(pipeline.id)
        assert (other / folder.name / name).read_bytes() == (folder / name).read_bytes()
    assert not list(out.glob(".*tmp")) and not list(other.glob(".*tmp"))


def test_reference_and_all(tmp_path):
    job = _job(tmp_path, "reference", base={"sample_norm": "zscore"})
    assert job.save_tables == (pipeline_id(job.reference),)
    assert job.reference["sample_norm"] == "zscore"
    assert len(_job(tmp_path, "all").save_tables) == 32


@pytest.mark.parametrize("spec, base, words", [
    ("0123456789abcdef", {}, ["not pipelines of the grid", "0123456789abcdef"]),
    ("reference", {"tolerance": 1}, ["run's own options are not a pipeline"]),
    ("EMPTY", {}, ["lists no pipeline id", "empty.txt"]),
])
def test_bad_selections_are_one_message(tmp_path, spec, base, words):
    (tmp_path / "empty.txt").write_text("\n")
    spec = str(tmp_path / "empty.txt") if spec == "EMPTY" else spec
    with pytest.raises(MultiverseInputError) as caught:
        _job(tmp_path, spec, base=base)
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_selection_file_row_without_its_id_cell_is_one_message(tmp_path):
    ids = [p.id for p in _picks(_job(tmp_path, None))]
    picked = tmp_path / "picked.tsv"
    picked.write_text(f"n_genes\tpipeline_id\n1\t{ids[0]}\n2\n")
    with pytest.raises(MultiverseInputError) as caught:
        _job(tmp_path, str(picked))
    message = str(caught.value)
    assert str(picked) in message and "line(s) [3]" in message and "pipeline_id" in message


def test_all_refused_for_large_grids(tmp_path, monkeypatch):
    monkeypatch.setattr(command, "MAX_SAVED_TABLES", 10)
    with pytest.raises(MultiverseInputError, match="would write 32 tables"):
        _job(tmp_path, "all")


@pytest.mark.parametrize("newline, bom", [("\n", ""), ("\r\n", ""), ("\r\n", "\ufeff")])
def test_selection_file_from_a_spreadsheet(tmp_path, newline, bom):
    """A TSV of picked rows saved by a spreadsheet (CRLF line ends, a byte-order mark), its
    pipeline_id column last or alone, selects those pipelines."""
    ids = [p.id for p in _picks(_job(tmp_path, None))]
    for header, rows in ((["pipeline_id"], [[i] for i in ids]),
                         (["n_genes", "pipeline_id"], [["1", i] for i in ids])):
        picked = tmp_path / "picked.tsv"
        picked.write_bytes((bom + newline.join("\t".join(r) for r in [header, *rows])
                            + newline).encode("utf-8"))
        assert _job(tmp_path, str(picked)).save_tables == tuple(ids)
