"""The per-atlas workflow: match and normalize (all donors, each one node), then aggregate
(group) or write the sample-level tables (participant), the report and the derivatives."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from .. import pipeline, summary
from ..interfaces.atlas import AggregateExpression, MatchSamples, NormalizeExpression
from ..interfaces.bids import GroupDerivatives, ParticipantDerivatives
from ..interfaces.genes import AccountGenes
from ..interfaces.reports import RunReport
from ..stages import stage_options

__all__ = ["ANALYSIS_LEVELS", "atlas_workflow_name", "init_atlas_wf"]

ANALYSIS_LEVELS = ("participant", "group")

_INPUTS = ["donors", "annotations", "sample_info", "expressions", "selection", "n_probes",
           "n_annotated", "n_filtered", "n_genes", "files", "raw_probes", "annotated_probes",
           "filtered_probes", "probe_share"]


def atlas_workflow_name(atlas_key: str) -> str:
    """A valid Nipype name for the workflow of the atlas whose outputs are named
    ``atlas_key`` (``atlas-DK_space-fsaverage_den-10k`` -> ``atlas_DK_space_fsaverage_den_10k_wf``).
    """
    return "".join(ch if ch.isalnum() else "_" for ch in atlas_key) + "_wf"


def init_atlas_wf(*, atlas, analysis_level, out_dir, desc, metadata, parameters, settings,
                  data_dir=None, save_donors=False, warnings=(), provenance=None,
                  shared_dir=None, name="atlas_wf"):
    """Build the workflow of one atlas, from matched samples to its derivatives.

    Workflow graph (group)::

        inputnode -> match (all donors) -> normalize (all donors) -> aggregate -> report
                                                                             -> ds_group

    Workflow graph (participant)::

        inputnode -> match (all donors) -> normalize (all donors) -> report (per donor)
                                                                -> ds_participant (per donor)

    Parameters
    ----------
    atlas : :class:`ahba_app.bids.AtlasInput`
        The atlas, checked (``checksums``, ``n_regions`` and ``constrained`` filled in).
    analysis_level : {'participant', 'group'}
        Sample-level tables per donor, or region x gene tables across donors.
    out_dir : str
        Staging folder the derivatives are written into.
    desc : str
        ``desc-`` label of the outputs.
    metadata : dict
        Sidecar content shared by every output (parameters, preset, donors, versions).
    parameters : dict
        What the report says besides the options (``preset``, ``versions``, ...:
        :class:`ahba_app.report.ReportParameters` fields).
    settings : :class:`ahba_app.options.Settings`
        The processing options; this workflow reads those of the ``matching``, ``normalize``
        and ``aggregate`` stages, and the report all of them.
    data_dir : str or None
        The AHBA data folder (FreeSurfer files of donor-native surface atlases).
    save_donors : bool
        Group level: also write one region x gene table per donor.
    warnings : list of str
        Notes for the report.
    provenance : dict
        Key/value pairs shown in the report.
    shared_dir : str, optional
        Folder of the run's shared normalized tables
        (:class:`ahba_app.interfaces._files.SharedTables`): the atlases that keep the same
        samples of a donor normalize them once. None: each normalizes its own.
    name : str
        Name of the workflow.

    Inputs
    ------
    donors, annotations, sample_info, expressions, selection, n_probes, n_annotated,
    n_filtered, n_genes
        The outputs of :func:`ahba_app.workflows.data.init_ahba_data_wf`.

    Outputs
    -------
    out_files
        Files written into ``out_dir``.
    """
    if analysis_level not in ANALYSIS_LEVELS:
        raise ValueError(f"Unknown analysis level {analysis_level!r}: choose one of "
                         f"{list(ANALYSIS_LEVELS)}.")
    atlas_dict = atlas.as_dict()
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=_INPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")

    s = settings
    # each node takes the options its stage reads (ahba_app.stages)
    match = pe.Node(MatchSamples(atlas=atlas_dict, data_dir=data_dir,
                                 **stage_options(s, "match")), name="match")
    # the group level reads the genes in file order when no number depends on their order
    # (the aggregate node then puts them back in symbol order)
    file_order = analysis_level == "group" and pipeline.genes_in_file_order(s, save_donors)
    # the group level passes each donor's region table from normalize to aggregate when the
    # region means suffice (and no region is filled): no sample-level table written or read
    regions = analysis_level == "group" and pipeline.region_tables_suffice(s, save_donors)
    normalize = pe.Node(NormalizeExpression(shared=shared_dir, file_order=file_order,
                                            regions=regions, **stage_options(s, "normalize")),
                        name="normalize")
    report_parameters = dict(summary.report_parameters(s, return_donors=save_donors,
                                                       versions={}), **(parameters or {}))
    report_inputs = dict(atlas=atlas_dict, data_dir=data_dir, parameters=report_parameters,
                         warnings=list(warnings), provenance=dict(provenance or {}))
    sink_inputs = dict(out_dir=str(out_dir), atlas=atlas_dict, desc=desc, metadata=metadata)

    connections = [
        (inputnode, match, [("donors", "donors"), ("annotations", "annotations")]),
        (inputnode, normalize, [("expressions", "expression"), ("annotations", "annotation")]),
        (match, normalize, [("labels", "labels")]),
    ]

    if analysis_level == "group":
        aggregate = pe.Node(AggregateExpression(
            atlas=atlas_dict, data_dir=data_dir, return_donors=save_donors,
            file_order=file_order, **stage_options(s, "aggregate")), name="aggregate",
            mem_gb=1.0)
        genes = pe.Node(AccountGenes(**stage_options(s, "genes")), name="genes")
        report = pe.Node(RunReport(**report_inputs, desc=desc),
                         name="report")
        ds_group = pe.Node(GroupDerivatives(**sink_inputs), name="ds_group")
        connections += [
            (inputnode, genes, [("raw_probes", "raw_probes"), ("donors", "donors"),
                                ("annotated_probes", "annotated_probes"),
                                ("filtered_probes", "filtered_probes"),
                                ("probe_share", "probe_share"), ("selection", "selection")]),
            (aggregate, genes, [("expression", "expression"), ("summary", "aggregate"),
                                ("stability", "stability")]),
            (genes, report, [("genes", "genes")]),
            (genes, ds_group, [("genes", "genes")]),
            (inputnode, aggregate, [("donors", "donors")]),
            (normalize, aggregate, [("expression", "expressions"),
                                    ("annotation", "annotations"), ("labels", "labels"),
                                    ("region_tables", "region_tables")]),
            (inputnode, report, [("donors", "donors"), ("sample_info", "sample_info"),
                                 ("annotations", "annotations"), ("selection", "selection"),
                                 ("n_probes", "n_probes"), ("n_annotated", "n_annotated"),
                                 ("n_filtered", "n_filtered"), ("n_genes", "n_genes")]),
            (match, report, [("labels", "labels")]),
            (aggregate, report, [("expression", "expression"), ("counts", "counts"),
                                 ("summary", "aggregate")]),
            (inputnode, ds_group, [("selection", "selection"), ("donors", "donors")]),
            (aggregate, ds_group, [("expression", "expression"), ("counts", "counts"),
                                   ("donor_expressions", "donor_expressions"),
                                   ("summary", "aggregate")]),
            (report, ds_group, [("report", "report"), ("citation", "citation")]),
            (ds_group, outputnode, [("out_files", "out_files")]),
        ]
    else:
        # every gene's fate for each donor's table (no aggregation, no stability filter here)
        genes = pe.MapNode(AccountGenes(**dict(stage_options(s, "genes"),
                                               stability_threshold=None)),
                           iterfield=["expression", "donor"], name="genes")
        report = pe.MapNode(RunReport(**report_inputs, desc=desc),
                            iterfield=["donor", "genes"], name="report")
        ds_participant = pe.MapNode(ParticipantDerivatives(**sink_inputs),
                                    iterfield=["donor", "expression", "annotation", "labels",
                                               "report", "citation", "genes"],
                                    name="ds_participant")
        connections += [
            (inputnode, genes, [("raw_probes", "raw_probes"), ("donors", "donors"),
                                ("donors", "donor"),
                                ("annotated_probes", "annotated_probes"),
                                ("filtered_probes", "filtered_probes"),
                                ("probe_share", "probe_share"), ("selection", "selection")]),
            (normalize, genes, [("expression", "expression")]),
            (genes, report, [("genes", "genes")]),
            (genes, ds_participant, [("genes", "genes")]),
            (inputnode, report, [("donors", "donors"), ("donors", "donor"),
                                 ("sample_info", "sample_info"),
                                 ("annotations", "annotations"), ("selection", "selection"),
                                 ("n_probes", "n_probes"), ("n_annotated", "n_annotated"),
                                 ("n_filtered", "n_filtered"), ("n_genes", "n_genes")]),
            (match, report, [("labels", "labels")]),
            (inputnode, ds_participant, [("donors", "donor"), ("selection", "selection")]),
            (normalize, ds_participant, [("expression", "expression"),
                                         ("annotation", "annotation"), ("labels", "labels")]),
            (report, ds_participant, [("report", "report"), ("citation", "citation")]),
            (ds_participant, outputnode, [("out_files", "out_files")]),
        ]
    workflow.connect(connections)
    return workflow
