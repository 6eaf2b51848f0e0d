"""Derivatives sinks: the final tables, sidecars and reports, written under BIDS names.

The sinks write into a staging folder (``out_dir``) that the command line moves into the output
folder only after the whole workflow succeeded, so that no output of a failed run looks
finished. :func:`group_outputs` and :func:`participant_outputs` do the writing; the interfaces
only read the intermediate files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    SimpleInterface, TraitedSpec, isdefined, traits)

from ..bids import AtlasInput
from ..derivatives import derivative_path, rows_helper, write_json, write_text, write_tsv
from ._files import read_frame, read_labels

__all__ = ["GroupDerivatives", "ParticipantDerivatives", "atlas_metadata", "group_outputs",
           "participant_outputs", "sample_table"]

#: Columns of the sample tables kept in the participant outputs, when present.
SAMPLE_COLUMNS = ("well_id", "structure_id", "structure_acronym", "structure_name",
                  "hemisphere", "structure", "mni_x", "mni_y", "mni_z")

_PROBE_COLUMNS = {
    "donor": "Donor the choice applies to ('all': the same probe for every donor).",
    "gene_symbol": "Gene.",
    "probe_id": "AHBA probe id of the chosen probe (n/a when probes were averaged).",
    "probe_name": "AHBA probe name of the chosen probe.",
    "n_probes": "Probes of the gene that passed the intensity filter.",
    "criterion": "What 'score' measures for the chosen probe.",
    "score": "Value of the criterion for the chosen probe.",
    "diff_stability": "Differential stability of the chosen probe across donors (when it was "
                      "the selection criterion).",
}


_GENE_COLUMNS = {
    "gene_symbol": "Gene symbol (of AHBA's Probes.csv or of the reannotation table).",
    "fate": "kept (a column of the expression table) or the stage that dropped the gene: "
            "no_annotated_probe, intensity_filter, probe_selection, incomplete, "
            "stability_threshold.",
    "n_probes_array": "Probes of the gene in Probes.csv.",
    "n_probes_annotated": "Probes assigned to the gene after (re)annotation.",
    "n_probes_above_threshold": "Of those, probes that passed the intensity filter.",
    "best_share_above_background": "Largest share of samples above background among the "
                                   "gene's probes.",
    "ibf_threshold": "The intensity filter's threshold.",
    "donors_without_probe": "Donors where no probe could be chosen (probe_selection).",
    "differential_stability": "Differential stability of the gene across donors (with a "
                              "stability threshold).",
    "stability_threshold": "The stability threshold.",
    "reason": "Why, in words.",
}


def atlas_metadata(atlas: AtlasInput) -> dict:
    """The sidecar's description of the input atlas: name, entities, files and their SHA-256."""
    return {"Label": atlas.label, "Entities": dict(atlas.entities), "Kind": atlas.kind,
            "Bundled": atlas.bundled,
            "HemisphereStructureConstraints": bool(atlas.has_info),
            "Files": [{"Path": path, "SHA256": atlas.checksums.get(path)}
                      for path in atlas.files()]}


def _probes(selection: pd.DataFrame) -> pd.DataFrame:
    table = selection.copy()
    if len(table) and (table["criterion"] == "diff_stability").all():
        table["diff_stability"] = table["score"]
    return table


def _index_named(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename_axis("index", axis=0).rename_axis(None, axis=1)


def group_outputs(out_dir, atlas: AtlasInput, desc: str, *, expression: pd.DataFrame,
                  counts: pd.DataFrame, selection: pd.DataFrame, metadata: dict,
                  donor_expressions: dict | None = None, report: str | None = None,
                  citation: str | None = None, aggregate: dict | None = None,
                  genes: pd.DataFrame | None = None) -> list[str]:
    """Write the group outputs of one atlas under ``out_dir``; returns the paths written."""
    out = []

    def path(suffix, ext=".tsv", donor=None):
        return derivative_path(out_dir, atlas, desc, suffix, ext, donor=donor)

    table = _index_named(expression)
    with rows_helper(table) as helper:
        # the region x gene table is written last, so that its helper process (if any)
        # starts while the smaller files are written; its path stays first in the list
        _other_group_outputs(out, path, atlas, expression, counts=counts, selection=selection,
                             metadata=metadata, donor_expressions=donor_expressions,
                             report=report, citation=citation, aggregate=aggregate,
                             genes=genes, out_dir=out_dir, desc=desc)
        out.insert(0, write_tsv(table, path("expression"), helper=helper))
    return [str(p) for p in out]


def _other_group_outputs(out, path, atlas, expression, *, counts, selection, metadata,
                         donor_expressions, report, citation, aggregate, genes, out_dir,
                         desc) -> None:
    """The group outputs but the region x gene table, appended to ``out``."""
    sidecar = dict(metadata)
    sidecar.update({
        "Description": "AHBA microarray expression aggregated over the regions of the atlas: "
                       "one row per region (first column: the atlas index), one column per "
                       "gene; n/a for regions without data.",
        "Atlas": atlas_metadata(atlas),
        "NumberOfRegions": int(expression.shape[0]),
        "NumberOfGenes": int(expression.shape[1]),
    })
    if aggregate:
        sidecar["RegionsWithoutSamples"] = aggregate.get("regions_without_samples", [])
        sidecar["RegionsFilled"] = aggregate.get("filled_regions", [])
        sidecar["GenesDroppedIncomplete"] = aggregate.get("genes_dropped", [])
        if aggregate.get("stability_threshold") is not None:
            sidecar["StabilityThreshold"] = aggregate["stability_threshold"]
    out.append(write_json(sidecar, path("expression", ".json")))
    out.append(write_tsv(_index_named(counts), path("counts")))
    out.append(write_json({"Description": "Tissue samples assigned to each region (rows, "
                                          "atlas index) in each donor (columns).",
                           "Atlas": atlas_metadata(atlas)}, path("counts", ".json")))
    probes = _probes(selection)
    out.append(write_tsv(probes, path("probes"), index=False))
    out.append(write_json({c: {"Description": _PROBE_COLUMNS.get(c, c)} for c in probes.columns},
                          path("probes", ".json")))
    if genes is not None:
        out.append(write_tsv(genes, path("genes"), index=False))
        out.append(write_json({c: {"Description": _GENE_COLUMNS.get(c, c)} for c in genes.columns},
                              path("genes", ".json")))
    for donor, table in (donor_expressions or {}).items():
        out.append(write_tsv(_index_named(table), path("expression", donor=donor)))
        out.append(write_json(dict(sidecar, Description=(
            f"Expression of donor {donor} aggregated over the regions of the atlas (before "
            "aggregation across donors)."), Donor=donor,
            NumberOfGenes=int(table.shape[1])), path("expression", ".json", donor=donor)))
    if report:
        out.append(_copy(report, path("report", ".html")))
    if citation:
        out.append(_copy(citation, Path(out_dir) / "citations" / f"{atlas.stem(desc)}.md"))


def sample_table(expression: pd.DataFrame, annotation: pd.DataFrame, labels) -> pd.DataFrame:
    """One row per sample: its identifiers, coordinates, region label, then the genes."""
    meta = annotation[[c for c in SAMPLE_COLUMNS if c in annotation.columns]]
    meta = meta.reset_index(drop=True).assign(label=np.asarray(labels, dtype=np.int64))
    genes = expression.reset_index(drop=True).rename_axis(None, axis=1)
    return pd.concat([meta, genes], axis=1)


def participant_outputs(out_dir, atlas: AtlasInput, desc: str, donor: str, *,
                        expression: pd.DataFrame, annotation: pd.DataFrame, labels,
                        selection: pd.DataFrame, metadata: dict, report: str | None = None,
                        citation: str | None = None,
                        genes: pd.DataFrame | None = None) -> list[str]:
    """Write one donor's sample-level outputs of one atlas; returns the paths written."""
    out = []

    def path(suffix, ext=".tsv"):
        return derivative_path(out_dir, atlas, desc, suffix, ext, donor=donor)

    table = sample_table(expression, annotation, labels)
    out.append(write_tsv(table, path("samples"), index=False))
    sidecar = dict(metadata)
    sidecar.update({
        "Description": f"Normalized AHBA microarray expression of every tissue sample of donor "
                       f"{donor} kept for the atlas, with the region it was matched to "
                       "('label', the atlas index; 0: no region), then one column per gene.",
        "Donor": donor, "Atlas": atlas_metadata(atlas),
        "NumberOfSamples": int(len(table)), "NumberOfGenes": int(expression.shape[1]),
    })
    out.append(write_json(sidecar, path("samples", ".json")))
    rows = selection[selection["donor"].astype(str).isin(["all", str(donor)])]
    probes = _probes(rows)
    out.append(write_tsv(probes, path("probes"), index=False))
    out.append(write_json({c: {"Description": _PROBE_COLUMNS.get(c, c)} for c in probes.columns},
                          path("probes", ".json")))
    if genes is not None:
        out.append(write_tsv(genes, path("genes"), index=False))
        out.append(write_json({c: {"Description": _GENE_COLUMNS.get(c, c)} for c in genes.columns},
                              path("genes", ".json")))
    if report:
        out.append(_copy(report, path("report", ".html")))
    if citation:
        out.append(_copy(citation, Path(out_dir) / "citations" / f"{atlas.stem(desc)}.md"))
    return [str(p) for p in out]


def _copy(src, dst) -> Path:
    """Copy a text file atomically (several donors' sinks may write the same citation)."""
    return write_text(Path(src).read_text(encoding="utf-8"), dst)


# ---------------------------------------------------------------------------------------------
class _SinkInputSpec(BaseInterfaceInputSpec):
    out_dir = traits.Str(mandatory=True, desc="staging folder the outputs are written into")
    atlas = traits.Dict(mandatory=True, desc="the atlas (ahba_app.bids.AtlasInput.as_dict())")
    desc = traits.Str(mandatory=True, desc="desc- label of the outputs")
    metadata = traits.Dict(mandatory=True, desc="sidecar content: parameters, donors, versions")
    selection = File(exists=True, mandatory=True, desc="table of the chosen probes")
    report = File(exists=True, desc="HTML report")
    citation = File(exists=True, desc="Markdown citation text")


class _SinkOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="files written into the staging folder (moved "
                                             "away when the run succeeds)")


class _GroupInputSpec(_SinkInputSpec):
    expression = File(exists=True, mandatory=True, desc="table: regions x genes")
    counts = File(exists=True, mandatory=True, desc="table: samples per region and donor")
    donors = traits.List(traits.Str, desc="donors of donor_expressions, in order")
    donor_expressions = InputMultiObject(File(exists=True),
                                         desc="table: regions x genes of every donor")
    aggregate = File(exists=True, desc="JSON facts of the aggregation")
    genes = File(exists=True, desc="table: every gene symbol and its fate")


class GroupDerivatives(SimpleInterface):
    """Write the group-level outputs of one atlas (stage ``derivatives``)."""

    input_spec = _GroupInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        from ._files import read_json

        inputs = self.inputs
        donor_tables = None
        if isdefined(inputs.donor_expressions) and inputs.donor_expressions:
            donor_tables = {str(d): read_frame(p)
                            for d, p in zip(inputs.donors, inputs.donor_expressions)}
        self._results["out_files"] = group_outputs(
            inputs.out_dir, AtlasInput.from_dict(inputs.atlas), inputs.desc,
            expression=read_frame(inputs.expression), counts=read_frame(inputs.counts),
            selection=read_frame(inputs.selection), metadata=dict(inputs.metadata),
            donor_expressions=donor_tables,
            report=inputs.report if isdefined(inputs.report) else None,
            citation=inputs.citation if isdefined(inputs.citation) else None,
            aggregate=read_json(inputs.aggregate) if isdefined(inputs.aggregate) else None,
            genes=read_frame(inputs.genes) if isdefined(inputs.genes) else None)
        return runtime


class _ParticipantInputSpec(_SinkInputSpec):
    donor = traits.Str(mandatory=True, desc="the donor")
    expression = File(exists=True, mandatory=True, desc="table: normalized samples x genes")
    annotation = File(exists=True, mandatory=True, desc="sample table (kept samples)")
    labels = File(exists=True, mandatory=True, desc="table: region labels (kept samples)")
    genes = File(exists=True, desc="table: every gene symbol and its fate for this donor")


class ParticipantDerivatives(SimpleInterface):
    """Write one donor's sample-level outputs of one atlas (stage ``derivatives``)."""

    input_spec = _ParticipantInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        self._results["out_files"] = participant_outputs(
            inputs.out_dir, AtlasInput.from_dict(inputs.atlas), inputs.desc, inputs.donor,
            expression=read_frame(inputs.expression), annotation=read_frame(inputs.annotation),
            labels=read_labels(inputs.labels), selection=read_frame(inputs.selection),
            metadata=dict(inputs.metadata),
            report=inputs.report if isdefined(inputs.report) else None,
            citation=inputs.citation if isdefined(inputs.citation) else None,
            genes=read_frame(inputs.genes) if isdefined(inputs.genes) else None)
        return runtime
