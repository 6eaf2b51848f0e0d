"""The report node: the HTML report and the citation text of one atlas.

:func:`run_summary` gathers what the report shows (a :class:`ahba_app.report.RunSummary`) from
the stages' intermediate files; :class:`RunReport` renders it with
:func:`ahba_app.report.render_report` and :func:`ahba_app.report.citation_markdown`.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    SimpleInterface, TraitedSpec, isdefined, traits)

from ..bids import AtlasInput, load_atlas_input, read_region_table
from ..matching import sample_counts
from ._files import read_frame, read_json, read_labels

__all__ = ["RunReport", "atlas_description", "probe_table", "run_summary"]

_SAMPLE_FIELDS = {"total": "n_samples", "mirrored": "n_mirrored",
                  "dropped_hemisphere": "n_mismatched", "dropped_similarity": "n_dissimilar",
                  "kept": "n_kept"}


def atlas_description(atlas: AtlasInput) -> dict:
    """The report's :class:`~ahba_app.report.AtlasDescription` fields for an atlas."""
    kind = {"cifti": "surface"}.get(atlas.kind, atlas.kind)
    native_kind = "volumetric"
    if atlas.kind == "donor-native":
        first = next(iter(atlas.image.values()))
        native_kind = "surface" if isinstance(first, (list, tuple)) else "volumetric"
    return {"label": atlas.label, "space": atlas.template or ("MNI152" if atlas.bundled else None),
            "kind": kind, "native_kind": native_kind, "n_regions": atlas.n_regions,
            "has_info": bool(atlas.has_info if atlas.constrained is None else atlas.constrained),
            "description": atlas.entities.get("desc")}


def probe_table(selection: pd.DataFrame, donor: str | None = None) -> pd.DataFrame:
    """The chosen probe of every gene (shared choice, else ``donor``'s), indexed by gene, with
    the differential stability when it was the selection criterion."""
    rows = selection[selection["donor"].astype(str) == "all"]
    if not len(rows) and donor is not None:
        rows = selection[selection["donor"].astype(str) == str(donor)]
    if not len(rows):
        rows = selection[selection["donor"] == selection["donor"].iloc[0]] if len(selection) \
            else selection
    table = rows.set_index("gene_symbol")
    if len(table) and (table["criterion"] == "diff_stability").all():
        table = table.assign(diff_stability=table["score"])
    return table


def run_summary(*, atlas: AtlasInput, donors: list[str], sample_info: list[dict],
                annotations: dict, match_labels: dict, selection: pd.DataFrame,
                probe_counts: dict, expression: pd.DataFrame | None = None,
                counts: pd.DataFrame | None = None, aggregate: dict | None = None,
                only_donor: str | None = None, data_dir=None, warnings=(),
                provenance: dict | None = None) -> dict:
    """The fields of a :class:`~ahba_app.report.RunSummary` for one atlas.

    ``annotations`` / ``match_labels`` are every donor's sample table and labels before
    normalization (all samples); ``only_donor`` restricts the samples, counts and coordinates
    to one donor (participant reports).
    """
    atlases, _ = load_atlas_input(atlas, donors[:1], data_dir=data_dir)
    tree = atlases[donors[0]]
    shown = [only_donor] if only_donor else list(donors)
    samples = pd.DataFrame([{col: info.get(key) for col, key in _SAMPLE_FIELDS.items()}
                            for info in sample_info], index=[str(i["donor"]) for i in sample_info])
    samples["matched"] = [int((match_labels[d] != 0).sum()) for d in samples.index]
    samples = samples.loc[shown]
    if counts is None or only_donor:
        counts = sample_counts({d: match_labels[d] for d in shown}, tree.labels)
    region_info = None
    if atlas.info is not None:
        region_info = read_region_table(atlas.info).reindex(tree.labels)
    elif tree.atlas_info is not None:
        region_info = tree.atlas_info.copy()
    if region_info is None:
        region_info = pd.DataFrame(index=pd.Index(tree.labels, name="index"))
    centroids = np.asarray([tree.centroids[int(lab)] for lab in tree.labels], dtype=float)
    region_info = region_info.assign(x=centroids[:, 0], y=centroids[:, 1], z=centroids[:, 2])
    coords = pd.concat([
        annotations[d][["mni_x", "mni_y", "mni_z"]].reset_index(drop=True)
        .assign(label=match_labels[d], donor=d) for d in shown], ignore_index=True)
    aggregate = aggregate or {}
    summary = dict(
        donors=list(donors), n_probes=probe_counts.get("n_probes"),
        n_probes_annotated=probe_counts.get("n_annotated"),
        n_probes_filtered=probe_counts.get("n_filtered"), n_genes=probe_counts.get("n_genes"),
        samples=samples, counts=counts, region_info=region_info, sample_coords=coords,
        probes=probe_table(selection, only_donor), expression=expression,
        warnings=list(warnings), provenance=dict(provenance or {}))
    if "genes_dropped" in aggregate:
        summary["genes_dropped"] = list(aggregate["genes_dropped"])
    if aggregate.get("filled_regions"):
        summary["filled_regions"] = list(aggregate["filled_regions"])
    if aggregate.get("stability_threshold") is not None and "n_genes" in aggregate:
        summary["n_genes_stable"] = int(aggregate["n_genes"])
    return summary


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
        params = dict(inputs.parameters, atlas=atlas_description(atlas))
        html = render_report(params, summary, mplconfigdir=os.environ.get(
            "MPLCONFIGDIR", os.path.join(runtime.cwd, ".matplotlib")))
        self._results["report"] = _write(os.path.join(runtime.cwd, "report.html"), html)
        self._results["citation"] = _write(os.path.join(runtime.cwd, "CITATION.md"),
                                           citation_markdown(params, summary))
        return runtime


def _write(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path
