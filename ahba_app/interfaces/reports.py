"""The report node: the HTML report and the citation text of one atlas.

:func:`run_summary` gathers what the report shows (a :class:`ahba_app.report.RunSummary`) from
the stages' intermediate files; :class:`RunReport` renders it with
:func:`ahba_app.report.render_report` and :func:`ahba_app.report.citation_markdown`.
"""

from __future__ import annotations

import os

import pandas as pd
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    SimpleInterface, TraitedSpec, isdefined, traits)

from .. import summary as _summary
from ..atomic import write_text
from ..bids import AtlasInput, load_atlas_input, read_region_table
from ..derivatives import derivative_path
from ._files import read_frame, read_json, read_labels

__all__ = ["RunReport", "atlas_description", "run_summary"]


def atlas_description(atlas: AtlasInput, donors=None, data_dir=None) -> dict:
    """The report's :class:`~ahba_app.report.AtlasDescription` fields for an atlas
    (:func:`ahba_app.summary.describe_atlas`, as the Python API describes it)."""
    from ..datasets import check_donors

    donors = check_donors(donors if donors else list(atlas.image)
                          if atlas.kind == "donor-native" else "all")
    atlases, _ = load_atlas_input(atlas, donors[:1], data_dir=data_dir)
    return _summary.describe_atlas(atlases[donors[0]], entities=atlas.entities)


def run_summary(*, atlas: AtlasInput, donors: list[str], sample_info: list[dict],
                annotations: dict, match_labels: dict, selection: pd.DataFrame,
                probe_counts: dict, expression: pd.DataFrame | None = None,
                counts: pd.DataFrame | None = None, aggregate: dict | None = None,
                only_donor: str | None = None, data_dir=None, warnings=(),
                provenance: dict | None = None):
    """The :class:`~ahba_app.report.RunSummary` of one atlas, from the nodes' outputs
    (:func:`ahba_app.summary.run_summary`, as the Python API builds it)."""
    atlases, _ = load_atlas_input(atlas, donors[:1], data_dir=data_dir)
    return _summary.run_summary(
        tree=atlases[donors[0]], donors=donors,
        sample_info={str(info["donor"]): info for info in sample_info},
        annotations=annotations, match_labels=match_labels, selection=selection,
        probes=_summary.ProbeCounts(**probe_counts),
        group=_summary.GroupFacts.from_dict(aggregate), expression=expression, counts=counts,
        region_table=None if atlas.info is None else read_region_table(atlas.info),
        only_donor=only_donor, warnings=warnings, provenance=provenance)


# ---------------------------------------------------------------------------------------------
class _RunReportInputSpec(BaseInterfaceInputSpec):
    atlas = traits.Dict(mandatory=True, desc="the atlas (ahba_app.bids.AtlasInput.as_dict())")
    data_dir = traits.Either(None, traits.Str, usedefault=True, desc="AHBA data folder")
    parameters = traits.Dict(mandatory=True,
                             desc="ReportParameters fields but the atlas: the options, preset "
                                  "and versions")
    donors = traits.List(traits.Str, mandatory=True, desc="donors, in the lists' order")
    donor = traits.Str(desc="restrict samples and counts to this donor (participant report)")
    sample_info = InputMultiObject(File(exists=True), mandatory=True,
                                   desc="JSON sample counts of every donor")
    annotations = InputMultiObject(File(exists=True), mandatory=True,
                                   desc="sample tables (before matching)")
    labels = InputMultiObject(File(exists=True), mandatory=True,
                              desc="table: region labels of every sample row")
    selection = File(exists=True, mandatory=True, desc="table of the chosen probes")
    n_probes = traits.Int(desc="probes in Probes.csv")
    n_annotated = traits.Int(desc="probes with a gene after (re)annotation")
    n_filtered = traits.Int(desc="probes that passed the intensity filter")
    n_genes = traits.Int(desc="genes after probe selection")
    expression = File(exists=True, desc="table: regions x genes (group report)")
    counts = File(exists=True, desc="table: samples per region and donor")
    aggregate = File(exists=True, desc="JSON facts of the aggregation")
    genes = File(exists=True, desc="table: every gene symbol and its fate (for the group "
                                   "table, or for the donor's)")
    desc = traits.Str(desc="desc- label of the outputs (names the genes table in the report)")
    warnings = traits.List(traits.Str, desc="notes to show in the report")
    provenance = traits.Dict(desc="free key/value pairs shown in the report")


class _RunReportOutputSpec(TraitedSpec):
    report = File(exists=True, desc="the HTML report")
    citation = File(exists=True, desc="Markdown: how to cite, methods text, references")


class RunReport(SimpleInterface):
    """The HTML report and the citation text of one atlas (stage ``report``)."""

    input_spec = _RunReportInputSpec
    output_spec = _RunReportOutputSpec

    def _run_interface(self, runtime):
        from ..report import citation_markdown, render_report

        inputs = self.inputs
        donors = [str(d) for d in inputs.donors]

        def opt(name, reader):
            value = getattr(inputs, name)
            return reader(value) if isdefined(value) else None

        summary = run_summary(
            atlas=AtlasInput.from_dict(inputs.atlas), donors=donors,
            sample_info=[read_json(p) for p in inputs.sample_info],
            annotations={d: read_frame(p) for d, p in zip(donors, inputs.annotations)},
            match_labels={d: read_labels(p) for d, p in zip(donors, inputs.labels)},
            selection=read_frame(inputs.selection),
            probe_counts={name: getattr(inputs, name) for name in
                          ("n_probes", "n_annotated", "n_filtered", "n_genes")
                          if isdefined(getattr(inputs, name))},
            expression=opt("expression", read_frame), counts=opt("counts", read_frame),
            aggregate=opt("aggregate", read_json),
            only_donor=inputs.donor if isdefined(inputs.donor) else None,
            data_dir=inputs.data_dir,
            warnings=list(inputs.warnings) if isdefined(inputs.warnings) else [],
            provenance=dict(inputs.provenance) if isdefined(inputs.provenance) else {})
        atlas = AtlasInput.from_dict(inputs.atlas)
        if isdefined(inputs.genes):
            summary.genes = read_frame(inputs.genes)
            summary.genes_file = (derivative_path(
                "", AtlasInput.from_dict(inputs.atlas), inputs.desc, "genes",
                donor=inputs.donor if isdefined(inputs.donor) else None).name
                if isdefined(inputs.desc) else None)
        params = dict(inputs.parameters, atlas=atlas_description(atlas, donors, inputs.data_dir))
        html = render_report(params, summary)
        self._results["report"] = _write(os.path.join(runtime.cwd, "report.html"), html)
        self._results["citation"] = _write(os.path.join(runtime.cwd, "CITATION.md"),
                                           citation_markdown(params, summary))
        return runtime


def _write(path: str, text: str) -> str:
    return str(write_text(path, text))
