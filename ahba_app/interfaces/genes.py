"""The fate of every gene of one atlas's run (stage ``genes``): :func:`ahba_app.genes.gene_fates`
over the files of the earlier nodes."""

from __future__ import annotations

import os

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec,
                                    isdefined, traits)

from ..options import trait
from ..stages import stage_options
from ._files import read_frame, read_json, write_frame

__all__ = ["AccountGenes"]


class _AccountGenesInputSpec(BaseInterfaceInputSpec):
    donors = traits.List(traits.Str, mandatory=True, desc="the run's donors")
    raw_probes = File(exists=True, mandatory=True,
                      desc="table: the gene symbol of every probe of Probes.csv")
    annotated_probes = File(exists=True, mandatory=True,
                            desc="table: the probes after (re)annotation")
    filtered_probes = File(exists=True, mandatory=True,
                           desc="table: the probes that passed the intensity filter")
    probe_share = File(exists=True, mandatory=True,
                       desc="table: every probe's share of samples above background")
    selection = File(exists=True, mandatory=True, desc="table of the chosen probes")
    expression = File(exists=True, mandatory=True,
                      desc="table: regions x genes (group level) or one donor's normalized "
                           "samples x genes (participant level)")
    aggregate = File(exists=True, desc="JSON facts of the aggregation (group level)")
    donor = traits.Str(desc="participant level: the donor whose table 'expression' is")
    stability = File(exists=True, desc="table: differential stability of every gene")
    ibf_threshold = trait("ibf_threshold")
    stability_threshold = trait("stability_threshold")
    reannotated = trait("reannotated")


class _AccountGenesOutputSpec(TraitedSpec):
    genes = File(exists=True, desc="table: every gene symbol of the probe table, its fate")


class AccountGenes(SimpleInterface):
    """Every gene symbol of the AHBA probe table: kept, or the stage that dropped it (for the
    group table, or for one donor's sample table at the participant level)."""

    input_spec = _AccountGenesInputSpec
    output_spec = _AccountGenesOutputSpec

    def _run_interface(self, runtime):
        from ..genes import gene_fates

        inputs = self.inputs
        raw = read_frame(inputs.raw_probes)
        stability = None
        if isdefined(inputs.stability):
            stability = read_frame(inputs.stability)["differential_stability"]
        table = gene_fates(
            raw, read_frame(inputs.annotated_probes), read_frame(inputs.filtered_probes),
            read_frame(inputs.selection), read_frame(inputs.expression).columns,
            share=read_frame(inputs.probe_share).iloc[:, 0],
            dropped_incomplete=(read_json(inputs.aggregate).get("genes_dropped", [])
                                if isdefined(inputs.aggregate) else []),
            stability=stability,
            donors=[inputs.donor] if isdefined(inputs.donor) and inputs.donor
            else list(inputs.donors), **stage_options(inputs, "genes"))
        table["fate"] = table["fate"].astype(str)
        self._results["genes"] = write_frame(table, os.path.join(runtime.cwd, "genes"))
        return runtime
