"""Workflow builders, built (never run) over many option combinations (fmriprep's test_fit.py)."""

from __future__ import annotations

import itertools

import pytest
from nipype.pipeline import engine as pe

from ahba_app.bids import AtlasInput
from ahba_app.normalize import resolve_norm
from ahba_app.options import Settings
from ahba_app.workflows import init_ahba_data_wf, init_ahba_wf, init_atlas_wf
from ahba_app.workflows.atlas import atlas_workflow_name

VOLUME = AtlasInput(label="DK", entities={"atlas": "DK", "tpl": "MNI152NLin6Asym", "res": "01"},
                    image="/in/tpl-MNI152NLin6Asym_res-01_atlas-DK_dseg.nii.gz",
                    info="/in/tpl-MNI152NLin6Asym_res-01_atlas-DK_dseg.tsv", has_info=True,
                    n_regions=83, constrained=True)
SURFACE = AtlasInput(label="DK", entities={"atlas": "DK", "tpl": "fsaverage", "den": "10k"},
                     kind="surface", image=["/in/l.label.gii", "/in/r.label.gii"],
                     space="fsaverage5", n_regions=68, constrained=True)
NATIVE = AtlasInput(label="DK", entities={"atlas": "DK"}, kind="donor-native",
                    image={"9861": "/in/sub-9861/a.nii.gz", "10021": "/in/sub-10021/a.nii.gz"})

DONORS = ["9861", "10021"]


def _names(workflow) -> set[str]:
    return set(workflow.list_node_names())


_RUN = ("analysis_level", "atlases", "save_donors", "desc", "hash_method")


def _build(tmp_path, **kwargs):
    run = dict(analysis_level="group", atlases=[VOLUME], out_dir=str(tmp_path / "stage"),
               crash_dir=str(tmp_path / "logs"), base_dir=str(tmp_path / "work"))
    run.update({k: v for k, v in kwargs.items() if k in _RUN})
    settings = Settings(donors=DONORS, **{k: v for k, v in kwargs.items() if k not in _RUN})
    return init_ahba_wf(settings=settings, **run)


@pytest.mark.parametrize(
    ("analysis_level", "atlases", "probe_selection", "lr_mirror", "missing", "norms",
     "save_donors"),
    [
        (level, atlases, probe, mirror, missing, norms, save)
        for level, atlases, (probe, mirror, missing, norms, save) in itertools.product(
            ("participant", "group"),
            ([VOLUME], [VOLUME, SURFACE], [NATIVE]),
            [("diff_stability", None, None, ("srs", "srs"), False),
             ("rnaseq", "bidirectional", "interpolate", ("zscore", None), True),
             ("max_intensity", "leftright", "centroids", (None, "minmax"), False)])
    ])
def test_ahba_wf_builds(tmp_path, analysis_level, atlases, probe_selection, lr_mirror, missing,
                        norms, save_donors):
    sample_norm, gene_norm = norms
    wf = _build(tmp_path, analysis_level=analysis_level, atlases=atlases,
                probe_selection=probe_selection, lr_mirror=lr_mirror, missing=missing,
                sample_norm=sample_norm, gene_norm=gene_norm, save_donors=save_donors,
                stability_threshold=0.2 if save_donors else None, desc="custom")
    names = _names(wf)
    native = atlases[0].kind == "donor-native"
    # a donor-native atlas has its own data workflow (samples on each donor's T1w)
    data_name = (f"ahba_data_{atlas_workflow_name(atlases[0].key)}" if native
                 else "ahba_data_wf")
    data = {f"{data_name}.{n}" for n in ("fetch", "reannotate", "annotate", "filter_probes",
                                         "select_probes")}
    assert data <= names
    for atlas in atlases:
        prefix = atlas_workflow_name(atlas.key)
        assert {f"{prefix}.match", f"{prefix}.normalize", f"{prefix}.report"} <= names
        if analysis_level == "group":
            assert {f"{prefix}.aggregate", f"{prefix}.ds_group"} <= names
            assert f"{prefix}.ds_participant" not in names
        else:
            assert f"{prefix}.ds_participant" in names
            assert f"{prefix}.aggregate" not in names

    data_wf = wf.get_node(data_name)
    fetch = data_wf.get_node("fetch")
    assert fetch.inputs.need_rnaseq is (probe_selection == "rnaseq")
    annotate = data_wf.get_node("annotate")
    assert not isinstance(annotate, pe.MapNode)  # one node: files read once for the donors
    assert annotate.inputs.lr_mirror == lr_mirror
    if native:
        assert annotate.inputs.native_atlas == atlases[0].as_dict()
        assert sorted(annotate.inputs.raw_mri) == sorted(DONORS)
    else:
        assert not annotate.inputs.native_atlas
    assert data_wf.get_node("select_probes").inputs.probe_selection == probe_selection

    atlas_wf = wf.get_node(atlas_workflow_name(atlases[0].key))
    normalize = atlas_wf.get_node("normalize")
    # one node: the donors are normalized one after the other in the same buffers
    assert not isinstance(normalize, pe.MapNode)
    assert normalize.inputs.sample_norm == resolve_norm(sample_norm)
    assert normalize.inputs.gene_norm == resolve_norm(gene_norm)
    match = atlas_wf.get_node("match")
    assert not isinstance(match, pe.MapNode)  # one node: the atlas is loaded once
    assert match.inputs.atlas == atlases[0].as_dict()
    if analysis_level == "group":
        aggregate = atlas_wf.get_node("aggregate")
        assert aggregate.inputs.missing == missing
        assert aggregate.inputs.return_donors is save_donors
        assert atlas_wf.get_node("ds_group").inputs.desc == "custom"


def test_native_and_template_atlases_get_their_own_samples(tmp_path):
    """Template-space atlases share one data workflow; a donor-native atlas gets its own, whose
    samples are placed on each donor's raw T1w (the files' checksums enter its hash)."""
    wf = _build(tmp_path, atlases=[VOLUME, SURFACE, NATIVE])
    native_data = f"ahba_data_{atlas_workflow_name(NATIVE.key)}"
    sources = {}
    for u, v in wf._graph.edges():
        sources.setdefault(v.name, set()).add(u.name)
    assert sources[atlas_workflow_name(VOLUME.key)] == {"ahba_data_wf"}
    assert sources[atlas_workflow_name(SURFACE.key)] == {"ahba_data_wf"}
    assert sources[atlas_workflow_name(NATIVE.key)] == {native_data}
    shared = wf.get_node("ahba_data_wf").get_node("annotate")
    own = wf.get_node(native_data).get_node("annotate")
    assert not shared.inputs.native_atlas and own.inputs.native_atlas == NATIVE.as_dict()
    assert own.inputs.raw_mri == {"9861": "", "10021": ""}   # no T1w in the default folder


def test_workflow_config_is_per_workflow(tmp_path):
    from nipype import config

    before = config.get("execution", "hash_method")
    wf = _build(tmp_path, hash_method="content")
    execution = wf.config["execution"]
    assert execution["crashdump_dir"] == str(tmp_path / "logs")
    assert execution["hash_method"] == "content"
    assert execution["remove_unnecessary_outputs"] is False
    assert wf.base_dir == str(tmp_path / "work")
    assert config.get("execution", "hash_method") == before  # the global config is untouched


def test_data_wf_wiring():
    wf = init_ahba_data_wf(settings=Settings(donors=DONORS, ibf_threshold=0.25),
                           data_dir="/data")
    graph = wf._graph
    edges = {(u.name, v.name) for u, v in graph.edges()}
    assert {("inputnode", "fetch"), ("fetch", "reannotate"), ("reannotate", "annotate"),
            ("annotate", "filter_probes"), ("filter_probes", "select_probes"),
            ("select_probes", "outputnode")} <= edges
    assert wf.get_node("filter_probes").inputs.ibf_threshold == 0.25
    assert wf.get_node("fetch").inputs.data_dir == "/data"
    assert wf.get_node("inputnode").inputs.donors == DONORS


def test_atlas_wf_wiring_group_and_participant(tmp_path):
    common = dict(atlas=VOLUME, out_dir=str(tmp_path), desc="x", metadata={}, parameters={},
                  settings=Settings(donors=DONORS))
    group = init_atlas_wf(analysis_level="group", **common)
    edges = {(u.name, v.name) for u, v in group._graph.edges()}
    assert {("inputnode", "match"), ("match", "normalize"), ("normalize", "aggregate"),
            ("aggregate", "report"), ("aggregate", "ds_group"), ("report", "ds_group"),
            ("ds_group", "outputnode")} <= edges
    participant = init_atlas_wf(analysis_level="participant", **common)
    edges = {(u.name, v.name) for u, v in participant._graph.edges()}
    assert {("normalize", "ds_participant"), ("report", "ds_participant"),
            ("normalize", "genes"), ("genes", "report"), ("genes", "ds_participant")} <= edges
    # one genes table per donor, read by the donor's report and written beside its samples
    assert participant.get_node("genes").iterfield == ["expression", "donor"]
    assert participant.get_node("report").iterfield == ["donor", "genes"]
    assert "genes" in participant.get_node("ds_participant").iterfield
    with pytest.raises(ValueError, match="analysis level"):
        init_atlas_wf(analysis_level="session", **common)


def test_only_the_group_level_reads_genes_in_file_order(tmp_path):
    """The genes are read in file order where no number depends on their order: the group
    level (the aggregate node gives the region table symbol order back), by default; never
    for sample-level tables, per-donor tables, a summing sample normalization or a stability
    filter."""
    common = dict(atlas=VOLUME, out_dir=str(tmp_path), desc="x", metadata={}, parameters={})

    def file_order(level, save_donors=False, **options):
        wf = init_atlas_wf(analysis_level=level, settings=Settings(donors=DONORS, **options),
                           save_donors=save_donors, **common)
        flag = wf.get_node("normalize").inputs.file_order
        if level == "group":  # the aggregate node is told, not left to guess
            assert wf.get_node("aggregate").inputs.file_order == flag
        return flag

    assert file_order("group")
    assert file_order("group", missing="interpolate")
    assert not file_order("participant")
    assert not file_order("group", save_donors=True)
    assert not file_order("group", sample_norm="zscore")
    assert not file_order("group", stability_threshold=0.5)
    assert not file_order("group", missing="centroids")
    assert not file_order("group", agg_metric="median")


def test_the_group_level_passes_region_tables_when_the_means_suffice(tmp_path):
    """The normalize node reduces each donor to its region means (and writes no sample-level
    table) at the group level when the aggregation needs no more: means over donors, nothing
    filled, no per-donor tables, no stability filter. The aggregate node is connected to
    both kinds of output (the normalize node falls back to samples for donors whose genes
    differ)."""
    common = dict(atlas=VOLUME, out_dir=str(tmp_path), desc="x", metadata={}, parameters={})

    def regions(level, save_donors=False, **options):
        wf = init_atlas_wf(analysis_level=level, settings=Settings(donors=DONORS, **options),
                           save_donors=save_donors, **common)
        if level == "group":
            edges = {(src.name, out, dst.name, into)
                     for src, dst, data in wf._graph.edges(data=True)
                     for out, into in data["connect"]}
            assert ("normalize", "region_tables", "aggregate", "region_tables") in edges
            assert ("normalize", "expression", "aggregate", "expressions") in edges
        return wf.get_node("normalize").inputs.regions

    assert regions("group")
    assert regions("group", sample_norm="zscore", gene_norm="minmax")
    assert not regions("participant")
    assert not regions("group", save_donors=True)
    assert not regions("group", stability_threshold=0.5)
    assert not regions("group", missing="interpolate")
    assert not regions("group", missing="centroids")
    assert not regions("group", agg_metric="median")
    assert not regions("group", region_agg="samples")


def test_only_a_run_of_several_atlases_shares_normalized_tables(tmp_path):
    def shared(atlases):
        wf = _build(tmp_path, atlases=atlases)
        return {wf.get_node(f"{atlas_workflow_name(a.key)}.normalize").inputs.shared
                for a in atlases}

    assert shared([VOLUME]) == {None}
    (folder,) = shared([VOLUME, SURFACE])
    assert folder == str(tmp_path / "work" / "ahba_wf" / "shared_normalized")


def test_atlas_workflow_names_are_unique_and_valid():
    assert atlas_workflow_name(VOLUME.key) == "atlas_DK_space_MNI152NLin6Asym_res_01_wf"
    assert atlas_workflow_name(VOLUME.key) != atlas_workflow_name(SURFACE.key)


def test_builders_do_not_touch_the_inputs(tmp_path):
    """Building needs no file: the atlas paths above do not exist."""
    wf = _build(tmp_path, atlases=[VOLUME, SURFACE, NATIVE], analysis_level="participant")
    assert len([n for n in _names(wf) if n.endswith(".match")]) == 3
    assert not (tmp_path / "work").exists() and not (tmp_path / "stage").exists()


@pytest.mark.parametrize("interface, name, bad", [
    ("data.SelectProbes", "probe_selection", "best_probe"),
    ("data.SelectProbes", "donor_probes", "all"),
    ("data.PrepareSamples", "lr_mirror", "up"),
    ("atlas.NormalizeExpression", "sample_norm", "quantile"),
    ("atlas.AggregateExpression", "missing", "fill"),
    ("atlas.AggregateExpression", "region_agg", "voxels"),
    ("atlas.AggregateExpression", "agg_metric", "max"),
])
def test_interface_traits_accept_only_the_registry(interface, name, bad):
    """The traits are Enums of the stage registries (ahba_app.options.trait)."""
    import importlib

    from nipype.interfaces.base import traits

    from ahba_app import options

    module, cls = interface.split(".")
    node = getattr(importlib.import_module(f"ahba_app.interfaces.{module}"), cls)()
    with pytest.raises(traits.TraitError):
        setattr(node.inputs, name, bad)
    for value in options.OPTIONS[name].accepted():  # every registry value, aliases included
        setattr(node.inputs, name, value)
