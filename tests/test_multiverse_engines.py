"""The multiverse as a Nipype workflow: the same rows whatever the engine and the number of
processes, a killed sweep resumed from Nipype's cache, engines checked before anything runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from ahba_app.bids import default_atlas
from ahba_app.cli.engines import Engine, EngineError, parse_plugin_args
from ahba_app.images import check_atlas
from ahba_app.multiverse.command import prepare, run_engine
from ahba_app.multiverse.grid import grid_from_dict, parse_grid
from ahba_app.multiverse.planner import plan, plan_of
from ahba_app.multiverse.sweep import STATISTICS, sweep

REPO = Path(__file__).resolve().parents[1]

#: 32 pipelines in 4 units (2 mirrorings x 2 tolerances), each unit 2 normalization groups
GRID_TOML = """\
[grid]
lr_mirror = ["none", "leftright"]
tolerance = [0, 2]
sample_norm = ["srs", "zscore"]
missing = ["none", "centroids"]
agg_metric = ["mean", "median"]
"""


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"pipeline_id": str}, keep_default_na=False,
                       na_values=["n/a"])


def make_job(tmp_path):
    atlas = default_atlas()
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(GRID_TOML)
    tree = check_atlas(atlas.image, atlas.info)
    return prepare(str(grid_file), {}, {"atlas-dk": tree},
                   inputs={"atlas-dk": atlas.as_dict()})


def run_with(job, tmp_path, data_dir, plugin, name, **kwargs):
    out = tmp_path / name
    out.mkdir()
    import io

    log = io.StringIO()
    engine = Engine(plugin, nprocs=kwargs.pop("nprocs", 1), plugin_args=kwargs.pop("args", None))
    [table] = run_engine(job, out, work_dir=tmp_path / f"work-{name}", engine=engine,
                         data_dir=data_dir, stream=log, interval=0, **kwargs)
    return table, log.getvalue()


@pytest.fixture(scope="module")
def linear(ahba_small, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("engines")
    job = make_job(tmp_path)
    table, log = run_with(job, tmp_path, ahba_small, "Linear", "linear")
    return job, table, log, tmp_path


def test_grid_round_trips_through_json():
    grid = parse_grid({"grid": {"donors": [["9861", "10021"], "all"], "lr_mirror": ["none",
                                                                                 "leftright"],
                                "ibf_threshold": [0, 0.5]}}, base={"tolerance": 1})
    again = grid_from_dict(json.loads(json.dumps(grid.as_dict())))
    assert again.axes == grid.axes and again.base == grid.base
    assert [p.id for p in again.pipelines()] == [p.id for p in grid.pipelines()]


def test_units_cover_every_group_once(tmp_path):
    job = make_job(tmp_path)
    units = job.plan.units()
    keys = [key for group_keys in units.values() for key in group_keys]
    assert sorted(map(repr, keys)) == sorted(map(repr, job.plan.groups))
    assert len(units) == 4 and all(len(v) == 2 for v in units.values())
    assert sum(job.plan.sizes.values()) == job.plan.n_pipelines == 32
    # a unit's own plan (as its node rebuilds it) has the unit's groups and pipelines
    first = next(iter(units.values()))
    sub = plan_of(job.plan.grid, [c for key in first for c in job.plan.groups[key]])
    assert list(sub.groups) == first
    assert {p.id for p in sub.pipelines()} == {p.id for key in first
                                               for p in job.plan.pipelines(key)}


def test_linear_rows_equal_the_in_process_sweep(linear, ahba_small, tmp_path):
    job, table, log, _ = linear
    rows = _read(table)
    assert len(rows) == 32 and rows["pipeline_id"].is_unique
    assert log.strip().splitlines()[-1].startswith("multiverse: 32/32 pipelines (100.0%)")
    atlas = default_atlas()
    reference = tmp_path / "reference.tsv"
    sweep(plan(job.grid), atlas.image, atlas.info, reference, data_dir=ahba_small)
    expected = _read(reference).set_index("pipeline_id").loc[rows["pipeline_id"]]
    pd.testing.assert_frame_equal(rows.set_index("pipeline_id"), expected)
    assert rows["n_regions"].nunique() > 1  # the options change the tables


def test_multiproc_rows_equal_linear_rows(linear, ahba_small):
    job, table, _, tmp_path = linear
    other, _ = run_with(job, tmp_path, ahba_small, "MultiProc", "multiproc", nprocs=2)
    assert other.read_bytes() == table.read_bytes()
    # the probe choices are shared nodes that ran before the units
    work = tmp_path / "work-multiproc" / "multiverse_wf"
    assert sorted(p.name for p in work.glob("probes*")) == ["probes0000", "probes0001"]
    assert len(list(work.glob("a0_unit*"))) == 4


_KILLER = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from ahba_app.multiverse import sweep
from ahba_app.cli.engines import Engine
from ahba_app.multiverse.command import run_engine
import test_multiverse_engines as t

written = []
original = sweep.write_unit_rows
def write_then_die(rows, path):
    if len(written) == 2:  # two units finished: killed while the third writes its rows
        os.kill(os.getpid(), signal.SIGKILL)
    written.append(path)
    return original(rows, path)
sweep.write_unit_rows = write_then_die
job = t.make_job(Path({tmp!r}))
out = Path({tmp!r}) / "killed"
out.mkdir()
run_engine(job, out, work_dir=Path({tmp!r}) / "work-resume", engine=Engine("Linear"),
           data_dir={data!r})
"""


def test_a_killed_sweep_resumes_from_the_cache(linear, ahba_small, tmp_path):
    _, table, _, _ = linear
    script = _KILLER.format(tests=str(REPO / "tests"), tmp=str(tmp_path), data=str(ahba_small))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert list((tmp_path / "killed").iterdir()) == []  # nothing published
    work = tmp_path / "work-resume" / "multiverse_wf"
    finished = sorted(work.glob("a0_unit*/rows.jsonl.gz"))
    assert len(finished) == 2
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    job = make_job(tmp_path)
    out = tmp_path / "resumed"
    out.mkdir()
    [resumed] = run_engine(job, out, work_dir=tmp_path / "work-resume",
                           engine=Engine("Linear"), data_dir=ahba_small)
    assert {p: p.stat().st_mtime_ns for p in finished} == stamps  # not run again
    assert len(list(work.glob("a0_unit*/rows.jsonl.gz"))) == 4
    assert resumed.read_bytes() == table.read_bytes()


def test_statistics_columns_are_filled(linear):
    rows = _read(linear[1])
    assert rows["cge_distance_rho"].notna().all() and rows["pc1_variance"].between(0, 1).all()
    assert set(STATISTICS) <= set(rows.columns)


# ---------------------------------------------------------------------------------------------
# engines checked before anything runs
# ---------------------------------------------------------------------------------------------
def test_plugin_args_json_text_and_files(tmp_path):
    assert parse_plugin_args('{"sbatch_args": "-p short"}') == {"sbatch_args": "-p short"}
    (tmp_path / "args.toml").write_text('sbatch_args = "-p long"\n')
    assert parse_plugin_args(str(tmp_path / "args.toml")) == {"sbatch_args": "-p long"}
    (tmp_path / "args.json").write_text('{"n_procs": 3}')
    assert parse_plugin_args(str(tmp_path / "args.json")) == {"n_procs": 3}
    assert parse_plugin_args(None) == {}


@pytest.mark.parametrize("text, words", [
    ("{sbatch_args: 1}", ["neither a JSON object nor an existing file", "sbatch_args"]),
    ('["-p", "short"]', ["must be an object", "list"]),
])
def test_bad_plugin_args_are_one_message(text, words):
    with pytest.raises(EngineError) as caught:
        parse_plugin_args(text)
    assert all(word in str(caught.value) for word in words)


def test_bad_plugin_args_file_names_the_file(tmp_path):
    bad = tmp_path / "args.toml"
    bad.write_text("sbatch_args = \n")
    with pytest.raises(EngineError, match=f"file {bad} is not valid TOML"):
        parse_plugin_args(str(bad))


def test_engine_choice(monkeypatch):
    assert Engine().plugin == "Linear" and Engine(nprocs=3).plugin == "MultiProc"
    with pytest.raises(EngineError, match="Unknown --nipype-plugin 'PBS'"):
        Engine("PBS")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EngineError, match="sbatch and squeue cannot be found on PATH"):
        Engine("SLURM")


def test_the_probe_choice_node_stores_the_choice_units_read(ahba_small, tmp_path):
    import shutil

    from ahba_app.multiverse import _options
    from ahba_app.multiverse.sweep import choose_probes

    data = tmp_path / "ahba"
    shutil.copytree(ahba_small, data)
    for stored in data.rglob("selection-*.npz"):
        stored.unlink()
    options = dict(_options.defaults(), ibf_threshold=0.25)
    n_genes = choose_probes(options, data)
    stored = list(data.rglob("selection-*.npz"))
    assert len(stored) == 1 and n_genes > 0
    stamp = stored[0].stat().st_mtime_ns
    # a pipeline with that choice reads it (nothing written again) and keeps n_genes genes
    from ahba_app import api

    atlas = default_atlas()
    expression = api.get_expression_data(atlas.image, atlas.info, data_dir=data,
                                         ibf_threshold=0.25)
    assert expression.shape[1] == n_genes
    assert [p.stat().st_mtime_ns for p in data.rglob("selection-*.npz")] == [stamp]


def test_no_probe_node_for_probes_combined_in_memory():
    # 'average' chooses nothing to store: a node would only compute the whole tables (1.8 GB
    # on full data) that the unit computes again
    from ahba_app.workflows.multiverse import probe_node_needed

    assert probe_node_needed({"probe_selection": "diff_stability"}, True)
    assert not probe_node_needed({"probe_selection": "average"}, True)
    assert not probe_node_needed({"probe_selection": "rnaseq"}, True)
    assert not probe_node_needed({"probe_selection": "diff_stability"}, False)


def test_the_scheduler_is_given_each_units_memory(tmp_path):
    # MultiProc runs side by side only nodes whose mem_gb fit in memory_gb: each unit claims
    # its estimated peak, and the sweep's budget keeps two 'average' units (which also hold
    # their combined probes' table) from running together, not one beside another unit
    from ahba_app.multiverse.command import within_budget
    from ahba_app.multiverse.planner import CostModel, unit_peak_bytes
    from ahba_app.workflows.multiverse import init_multiverse_wf

    grid = parse_grid({"grid": {"probe_selection": ["diff_stability", "average"],
                                "lr_mirror": ["none", "bidirectional"]}})
    result = plan(grid)
    workflow, units = init_multiverse_wf(result, {"atlas-dk": default_atlas().as_dict()},
                                         base_dir=tmp_path)
    claims = {}
    for unit, keys in zip(units, result.units().values()):
        options = result.group_options(keys[0])
        node = workflow.get_node(unit.name)
        assert node.mem_gb == pytest.approx(unit_peak_bytes(options) / 2**30)
        claims.setdefault(options["probe_selection"], set()).add(node.mem_gb)
    assert len(claims["average"]) == len(claims["diff_stability"]) == 1
    heavy, light = claims["average"].pop(), claims["diff_stability"].pop()
    costs = CostModel()
    assert heavy - light == pytest.approx(costs.table_bytes / 2**30)
    probes = [workflow.get_node(n) for n in workflow.list_node_names() if "probes" in n]
    assert probes and all(p.mem_gb == costs.probes_peak_bytes / 2**30 for p in probes)
    budget = within_budget(Engine(nprocs=2)).plugin_args["memory_gb"]
    assert 2 * heavy > budget >= heavy + light
    assert result.estimate().peak_bytes == unit_peak_bytes({"probe_selection": "average"})
    # the user's memory wins, and other engines are left alone
    assert "memory_gb" not in within_budget(Engine(nprocs=2, mem_mb=8000)).plugin_args
    assert within_budget(Engine(nprocs=2, plugin_args='{"memory_gb": 9}')
                         ).plugin_args["memory_gb"] == 9
    assert "memory_gb" not in within_budget(Engine()).plugin_args


_CACHED = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from ahba_app.cli.engines import Engine
from ahba_app.multiverse import _kernels
from ahba_app.multiverse.command import run_engine
import test_multiverse_engines as t

tmp = Path({tmp!r})
job = t.make_job(tmp)
out = tmp / {name!r}
out.mkdir()
run_engine(job, out, work_dir=tmp / ("work-" + {name!r}), engine=Engine("Linear"),
           data_dir={data!r}, kernel_cache={cache!r})
stats = [k.stats for k in vars(_kernels).values() if hasattr(k, "py_func")]
print(json.dumps({{"hits": sum(sum(s.cache_hits.values()) for s in stats),
                  "misses": sum(sum(s.cache_misses.values()) for s in stats)}}))
"""


def test_units_compile_their_kernels_once_into_the_work_folder(linear, ahba_small, tmp_path):
    _, table, _, _ = linear

    def run(name, cache):
        script = _CACHED.format(tests=str(REPO / "tests"), tmp=str(tmp_path), name=name,
                                data=str(ahba_small), cache=cache)
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1]), tmp_path / name

    first, out = run("first", None)  # a fresh process: compiled, saved in the work folder
    cache = tmp_path / "work-first" / "compiled-kernels"
    assert first["misses"] > 0 and first["hits"] == 0
    assert list(cache.rglob("*.nbi")) and list(cache.rglob("*.nbc"))
    assert (out / table.name).read_bytes() == table.read_bytes()
    again, out = run("again", str(cache))  # another process, another sweep: read, not compiled
    # (the kernels that others call are compiled into them: only those called are read)
    assert 0 < again["hits"] <= first["misses"] and again["misses"] == 0
    assert (out / table.name).read_bytes() == table.read_bytes()
    # the package's own folder is left alone
    assert not list((REPO / "ahba_app" / "multiverse").rglob("*.nbi"))


def _cached_kernels():
    """The kernels of the multiverse whose on-disk cache is on."""
    import numba.core.caching
    import numba.core.dispatcher

    from ahba_app.multiverse import _kernels

    return [name for name, kernel in vars(_kernels).items()
            if isinstance(kernel, numba.core.dispatcher.Dispatcher)
            and not isinstance(kernel._cache, numba.core.caching.NullCache)]


def test_kernel_cache_on_only_within_its_block(tmp_path):
    from ahba_app.multiverse.sweep import kernel_cache

    assert _cached_kernels() == []
    with kernel_cache(tmp_path / "kernels"):
        assert len(_cached_kernels()) > 3
    assert _cached_kernels() == []


def test_kernel_cache_that_cannot_be_made_leaves_the_kernels_uncached(tmp_path, monkeypatch):
    """A folder that cannot be written, or numba's caching moved elsewhere: the kernels compile
    as without a cache (never in a folder numba would pick, such as the package's)."""
    import numba.core.dispatcher

    from ahba_app.multiverse.sweep import kernel_cache

    in_a_file = tmp_path / "a-file"
    in_a_file.write_text("not a folder")
    with kernel_cache(in_a_file / "kernels"):
        assert _cached_kernels() == []
    assert not (in_a_file / "kernels").exists()

    calls = []

    def moved(self):
        calls.append(self)
        if len(calls) == 2:  # the second kernel: after one was switched on
            raise AttributeError("numba moved its caching")
        return original(self)

    original = numba.core.dispatcher.Dispatcher.enable_caching
    monkeypatch.setattr(numba.core.dispatcher.Dispatcher, "enable_caching", moved)
    with kernel_cache(tmp_path / "kernels"):
        assert len(calls) == 2 and _cached_kernels() == []
    assert _cached_kernels() == []


def test_kept_heap_sets_glibcs_thresholds_and_hands_back_what_is_free(monkeypatch):
    from ahba_app.multiverse import sweep as sweep_module

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad):
            calls.append(("malloc_trim", pad))
            return 1

    monkeypatch.setattr(sweep_module, "_glibc", lambda: FakeLibc())
    with pytest.raises(RuntimeError):
        with sweep_module.kept_heap():
            assert ("mallopt", -3, 64 << 20) in calls and ("mallopt", -1, 1 << 30) in calls
            assert not any(call[0] == "malloc_trim" for call in calls)
            raise RuntimeError("a failing unit")
    assert calls[-1] == ("malloc_trim", 0)  # handed back even when the unit failed
    # no glibc: nothing called, the block runs
    calls.clear()
    monkeypatch.setattr(sweep_module, "_glibc", lambda: None)
    with sweep_module.kept_heap():
        pass
    assert calls == []


def test_kept_heap_finds_glibc_here():
    import platform

    from ahba_app.multiverse.sweep import _glibc

    libc = _glibc()
    assert (libc is not None) == (sys.platform == "linux" and platform.libc_ver()[0] == "glibc")
    if libc is not None:
        assert libc.malloc_trim(0) in (0, 1)  # (1: memory was handed back)
