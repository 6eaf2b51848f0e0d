"""The AHBA data workflow: fetch, reannotate, annotate/mirror, filter, select probes (each node
serves all donors).

Everything here is shared by all atlases: none of these stages depends on the parcellation.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.data import FilterProbes, LoadProbes, LocateData, PrepareSamples, SelectProbes
from ..stages import stage_options

__all__ = ["init_ahba_data_wf"]


def init_ahba_data_wf(*, settings, data_dir=None, data_identity="", native_atlas=None,
                      raw_mri=None, name="ahba_data_wf"):
    """Build the workflow turning AHBA files into one samples x genes table per donor.

    Workflow graph::

        inputnode -> fetch -> reannotate -> annotate -> filter_probes
                                                     -> select_probes -> outputnode

    Parameters
    ----------
    settings : :class:`ahba_app.options.Settings`
        The processing options; this workflow reads ``donors`` and the options of the
        ``samples`` and ``probes`` stages (``probe_selection='rnaseq'`` also locates the RNA-seq
        files).
    data_dir : str or None
        The AHBA data folder (None: ``$AHBA_DATA``, ``$ABAGEN_DATA`` or the per-user folder).
    data_identity : str
        :func:`ahba_app.pipeline.data_identity` of the files: the first node's hash depends on
        the data, not only on the folder's path.
    native_atlas : :class:`ahba_app.bids.AtlasInput`, optional
        A donor-native atlas: each donor's samples are placed on its raw T1w (from
        ``data_dir``, else the atlas's own affine) and their hemispheres checked in those
        native coordinates, as :func:`ahba_app.get_expression_data` does; the samples kept,
        the probes filtered and chosen are then this atlas's own.
    raw_mri : dict, optional
        With ``native_atlas``: donor -> SHA-256 of its raw T1w ('' without one), so that a
        replaced T1w makes the samples be prepared again.
    name : str
        Name of the workflow.

    Inputs
    ------
    donors
        AHBA donor numbers (set from ``settings.donors``).

    Outputs
    -------
    donors
        The donors, in the order of every list below.
    annotations
        Sample table of every donor.
    sample_info
        JSON counts of what happened to every donor's samples.
    expressions
        Samples x genes table of every donor.
    selection
        Table of the chosen probes.
    n_probes, n_annotated, n_filtered, n_genes
        Probes in Probes.csv, with a gene, above background; genes.
    files, raw_probes, annotated_probes, filtered_probes, probe_share
        JSON of the donors' AHBA files; the gene symbol of every probe of Probes.csv; the
        probe table after (re)annotation and after the intensity filter; every probe's share
        of samples above background (what the genes table,
        :func:`ahba_app.genes.gene_fates`, is made from).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["donors"]), name="inputnode")
    inputnode.inputs.donors = list(settings.donors)
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "donors", "annotations", "sample_info", "expressions", "selection", "n_probes",
        "n_annotated", "n_filtered", "n_genes", "files", "raw_probes", "annotated_probes",
        "filtered_probes", "probe_share"]), name="outputnode")

    # the command line has checked (and, when needed, downloaded) the files before the run, so
    # this node only finds them; its inputs leave out how many processes run, to stay cached
    s = settings
    fetch = pe.Node(LocateData(data_dir=data_dir, need_rnaseq=s.probe_selection == "rnaseq",
                               identity=data_identity), name="fetch")
    # each node takes the options its stage reads (ahba_app.stages)
    reannotate = pe.Node(LoadProbes(**stage_options(s, "reannotate")), name="reannotate")
    annotate = pe.Node(PrepareSamples(**stage_options(s, "annotate")), name="annotate")
    if native_atlas is not None:
        annotate.inputs.native_atlas = native_atlas.as_dict()
        annotate.inputs.data_dir = data_dir
        annotate.inputs.raw_mri = dict(raw_mri or {})
    filter_probes = pe.Node(FilterProbes(**stage_options(s, "filter_probes")),
                            name="filter_probes", mem_gb=1.0)
    select_probes = pe.Node(SelectProbes(**stage_options(s, "select_probes")),
                            name="select_probes", mem_gb=2.0)

    workflow.connect([
        (inputnode, fetch, [("donors", "donors")]),
        (fetch, reannotate, [("files", "files")]),
        (fetch, annotate, [("files", "files"), ("donors", "donors")]),
        (reannotate, annotate, [("probes", "probes")]),
        (fetch, filter_probes, [("files", "files"), ("donors", "donors")]),
        (annotate, filter_probes, [("annotation", "annotations")]),
        (reannotate, filter_probes, [("probes", "probes")]),
        (fetch, select_probes, [("files", "files"), ("rnaseq_files", "rnaseq_files"),
                                ("donors", "donors")]),
        (annotate, select_probes, [("annotation", "annotations")]),
        (filter_probes, select_probes, [("probes", "probes")]),
        (fetch, outputnode, [("donors", "donors"), ("files", "files")]),
        (reannotate, outputnode, [("probes", "annotated_probes"),
                                  ("raw_probes", "raw_probes")]),
        (filter_probes, outputnode, [("probes", "filtered_probes"), ("share", "probe_share")]),
        (annotate, outputnode, [("annotation", "annotations"), ("info", "sample_info")]),
        (select_probes, outputnode, [("expressions", "expressions"),
                                     ("selection", "selection"), ("n_genes", "n_genes")]),
        (reannotate, outputnode, [("n_probes", "n_probes"), ("n_annotated", "n_annotated")]),
        (filter_probes, outputnode, [("n_filtered", "n_filtered")]),
    ])
    return workflow
