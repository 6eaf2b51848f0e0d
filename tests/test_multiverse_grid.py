"""Multiverse grids and the shared-stage planner: parsing, validation, drops, ids, counts."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from ahba_app.multiverse import grid as mgrid
from ahba_app.multiverse.grid import GridError, load_grid, parse_grid, pipeline_id
from ahba_app.multiverse.planner import STAGES, CostModel, plan, stage_key


def _grid(**axes):
    return parse_grid({"grid": axes})


# ---------------------------------------------------------------------------------------------
# the published grid
# ---------------------------------------------------------------------------------------------
def test_markello_grid_gives_373248_pipelines_per_atlas():
    grid = load_grid("markello2021")
    assert grid.name == "multiverse-markello2021" and "markello2021" in grid.citations
    assert len(grid.axes) == 14
    assert grid.n_combinations == 3 * 6 * 3 * 3 * 2 * 3 * 3 * 3 * 2 ** 6 == 559_872
    assert grid.n_pipelines == 373_248
    dropped = grid.dropped()
    # average, diff_stability and rnaseq with 'independent' or 'common': 6 pairs x 31,104
    assert len(dropped) == 6 and set(dropped.values()) == {559_872 // 18}
    assert all("replaces donor_probes=" in reason for reason in dropped)
    assert {(m, d) for m in ("average", "diff_stability", "rnaseq")
            for d in ("independent", "common")} == {
        (r.split("'")[1], r.split("'")[3]) for r in dropped}
    assert "373,248 pipelines" in grid.summary()


def test_markello_plan_counts_shared_stages():
    grid = load_grid("markello2021")
    result = plan(grid)
    assert result.n_pipelines == 373_248
    # probe choices: ibf 3 x 12 (selection, donor_probes) pairs x lr_mirror 3 x reannotated 2
    assert result.counts["probes"] == 3 * 12 * 3 * 2
    # sample tables: corrected_mni 2 x lr_mirror 3; matching: those x tolerance 3
    assert result.counts["samples"] == 6 and result.counts["matching"] == 18
    # normalizations: 216 probe choices x 18 matchings sharing lr_mirror (216 * 6) x 36 norm
    # settings, of which norm_structures is idle without gene_norm (3 x 3 x 2 x 2 -> 30)
    assert result.counts["normalization"] == 216 * 6 * 30 == 38_880
    assert result.counts["aggregation"] == 38_880 * 8
    assert len(result.groups) == 38_880
    assert result.n_shared_stages == 6 + 216 + 18 + 38_880
    text = result.summary()
    assert "373,248 pipelines" in text and "estimated" in text
    assert result.n_units == 1_296 == len(result.units())
    estimate = result.estimate(parquet=True)
    # one upstream per unit, one choice per probe set, one normalization per group, one
    # aggregation per table
    c = CostModel()
    assert estimate.seconds == pytest.approx(c.upstream * 1_296 + c.probes * 216
                                             + c.normalization * 38_880
                                             + c.aggregation * 311_040
                                             + c.statistics * 373_248)
    assert estimate.disk_bytes == 40 * 373_248
    small = result.estimate(cells=58_692 * 3_702 // 10)
    assert small.seconds == pytest.approx(estimate.seconds / 10, rel=1e-6)


def test_bundled_grid_is_not_a_preset_and_cites_known_references():
    from ahba_app.report import load_references

    assert "multiverse-markello2021" in mgrid.available_grids()
    known = load_references()
    assert all(key in known for key in load_grid("markello2021").citations)


# ---------------------------------------------------------------------------------------------
# small grids: crossing, ids, planning
# ---------------------------------------------------------------------------------------------
def test_pipelines_cross_the_axes_and_keep_the_base():
    grid = parse_grid({"grid": {"sample_norm": ["srs", "zscore"], "missing": ["none",
                                                                              "centroids"]}},
                      base={"gene_norm": "zscore", "lr_mirror": "bidirectional"})
    pipelines = list(grid.pipelines())
    assert len(pipelines) == 4 == grid.n_pipelines
    assert [(p.options["sample_norm"], p.options["missing"]) for p in pipelines] == [
        ("scaled_robust_sigmoid", None), ("scaled_robust_sigmoid", "centroids"),
        ("zscore", None), ("zscore", "centroids")]
    assert all(p.options["gene_norm"] == "zscore" and p.options["lr_mirror"] == "bidirectional"
               for p in pipelines)
    assert all(set(p.options) == set(mgrid._options.NAMES) for p in pipelines)
    kwargs = pipelines[0].kwargs()
    assert isinstance(kwargs["donors"], list) and len(kwargs["donors"]) == 6


def test_pipeline_ids_are_stable_and_distinct():
    defaults = mgrid._options.defaults()
    # the id depends only on the options that differ from abagen's defaults
    assert pipeline_id(defaults) == pipeline_id({}) == "44136fa355b3678a"
    changed = dict(defaults, sample_norm="zscore")
    assert pipeline_id(changed) == pipeline_id({"sample_norm": "zscore"}) != pipeline_id({})
    # the same pipeline however the grid spells its values
    a = next(_grid(sample_norm=["srs"], ibf_threshold=[0]).pipelines())
    b = next(_grid(sample_norm=["scaled_robust_sigmoid"], ibf_threshold=[0.0]).pipelines())
    assert a.id == b.id
    ids = [p.id for p in _grid(sample_norm=["srs", "zscore", "none"],
                               gene_norm=["srs", "zscore", "none"],
                               lr_mirror=["none", "bidirectional", "leftright"],
                               tolerance=[0, 1, 2]).pipelines()]
    assert len(ids) == 81 == len(set(ids))
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


def test_drops_follow_the_options_outside_the_grid():
    # diff_stability with a single donor: abagen refuses it
    grid = parse_grid({"grid": {"probe_selection": ["diff_stability", "max_intensity"],
                                "donor_probes": ["aggregate", "independent"]}},
                      base={"donors": ["9861"]})
    assert grid.n_combinations == 4 and grid.n_pipelines == 2
    assert sorted(grid.dropped().values()) == [1, 1]
    assert any("one donor" in r for r in grid.dropped())
    assert [(p.options["probe_selection"], p.options["donor_probes"])
            for p in grid.pipelines()] == [("max_intensity", "aggregate"),
                                           ("max_intensity", "independent")]
    # mirroring with a donor-native atlas
    native = parse_grid({"grid": {"lr_mirror": ["none", "leftright"]}}, group_atlas=False)
    assert native.n_pipelines == 1 and "donor-native" in next(iter(native.dropped()))


def test_dropped_counts_equal_enumeration():
    grid = _grid(probe_selection=["average", "max_variance", "diff_stability"],
                 donor_probes=["aggregate", "common", "independent"],
                 sample_norm=["srs", "none"], tolerance=[1, 2, 3])
    enumerated = sum(1 for _ in grid.pipelines())
    assert enumerated == grid.n_pipelines == (1 + 3 + 1) * 2 * 3
    assert sum(grid.dropped().values()) == grid.n_combinations - enumerated == 4 * 6


def test_plan_groups_share_upstream_results_and_list_every_pipeline():
    grid = _grid(gene_norm=["srs", "none"], norm_structures=[True, False],
                 agg_metric=["mean", "median"], missing=["none", "centroids"],
                 tolerance=[1, 2])
    result = plan(grid)
    assert result.downstream == ("agg_metric", "missing")
    listed = list(result.pipelines())
    assert sorted(p.id for p in listed) == sorted(p.id for p in grid.pipelines())
    # norm_structures does nothing without gene normalization: those two pipelines share
    assert result.counts["normalization"] == 2 * (2 + 1)
    assert result.counts["aggregation"] == 6 * 4
    for key in result.groups:
        members = list(result.pipelines(key))
        assert len({stage_key("normalization", p.options) for p in members}) == 1
        assert {len(members)} <= {4, 8}
    assert result.counts["matching"] == 2 and result.counts["probes"] == 1
    for stage in STAGES:
        assert len({stage_key(stage, p.options) for p in listed}) == (
            result.counts[stage] if stage != "aggregation" else 24)


def test_similarity_filter_makes_samples_depend_on_reannotation():
    grid = _grid(reannotated=[True, False], sim_threshold=["none", 2])
    result = plan(grid)
    assert result.counts["samples"] == 3 and result.counts["probes"] == 4


# ---------------------------------------------------------------------------------------------
# bad grids: one clear message naming the file and the problem
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("[grid]\nsample_nrom = ['srs']\n", ["unknown option", "sample_nrom", "sample_norm"]),
    ("[grid]\nsample_norm = ['srs', 'fancy']\n", ["fancy", "scaled_robust_sigmoid"]),
    ("[grid]\nlr_mirror = ['sideways']\n", ["sideways", "bidirectional"]),
    ("[grid]\nnorm_matched = ['yes']\n", ["norm_matched", "true or false"]),
    ("[grid]\ntolerance = ['far']\n", ["tolerance", "far"]),
    ("[grid]\nibf_threshold = [0.5, 2]\n", ["ibf_threshold", "2"]),
    ("[grid]\nsample_norm = []\n", ["sample_norm lists no value"]),
    ("[grid]\n", ["empty"]),
    ("name = 'x'\n", ["no [grid] table"]),
    ("[grid]\nsample_norm = ['srs', 'scaled_robust_sigmoid']\n", ["same value", "'srs'"]),
    ("[grid]\nsample_norm = ['batch']\n", ["batch", "donors"]),
    ("[grid\n", ["Cannot read grid file"]),
    ("citations = 2021\n[grid]\nsample_norm = ['srs']\n", ["citations", "2021"]),
    ("citations = ['a', 3]\n[grid]\nsample_norm = ['srs']\n", ["citations", "list of texts"]),
    ("[grid]\nprobe_selection = ['diff_stability']\ndonor_probes = ['common']\n",
     ["no pipeline", "replaces donor_probes"]),
])
def test_bad_grids_name_the_file_and_the_problem(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(GridError) as err:
        load_grid(path)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_unknown_grid_name_lists_the_bundled_ones():
    with pytest.raises(GridError, match="markello2021"):
        load_grid("no-such-grid")


def test_bad_base_value_is_an_error():
    with pytest.raises(GridError, match="lr_mirror"):
        parse_grid({"grid": {"missing": ["none"]}}, base={"lr_mirror": "sideways"})


def test_dropped_is_cheap_for_big_grids():
    grid = load_grid("markello2021")
    # only the options a rule looks at are enumerated (probe_selection, donor_probes,
    # lr_mirror): 54 combinations, not 559,872
    watched = [n for n in grid.axes if any(n in r.options for r in mgrid.RULES)]
    assert math.prod(len(grid.axes[n]) for n in watched) == 54
    assert list(itertools.islice(grid.pipelines(), 1))[0].options["probe_selection"] == "average"


def test_grid_files_are_not_presets():
    from ahba_app.cli.presets import PresetError, available_presets, load_preset

    assert not any(name.startswith("multiverse-") for name in available_presets())
    assert "abagen-defaults" in available_presets()
    with pytest.raises(PresetError, match="multiverse grid"):
        load_preset(mgrid.grid_path("markello2021"))


def test_readme_multiverse_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Multiverse runs", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "373,248 pipelines" in out and "38,880 normalization" in out
