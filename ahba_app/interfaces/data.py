"""Interfaces of the AHBA data stages: fetch, reannotate, annotate/mirror, filter, select probes.

Each ``_run_interface`` calls one function of :mod:`ahba_app.pipeline` and writes its results
into the node's folder as Arrow IPC / JSON (see :mod:`ahba_app.interfaces._files`).
"""

from __future__ import annotations

import os

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    OutputMultiObject, SimpleInterface, TraitedSpec, isdefined,
                                    traits)

from .. import pipeline
from ..options import trait
from ..selection_cache import ChoiceStore
from ..stages import stage_options
from ._files import (check_lengths, read_frame, read_json, write_chosen_probes, write_frame,
                     write_json)

__all__ = ["FilterProbes", "LoadProbes", "LocateData", "PrepareSamples", "SelectProbes"]


def _by_donor(donors, paths) -> dict:
    return {str(d): read_frame(p) for d, p in zip(donors, paths)}


# ---------------------------------------------------------------------------------------------
class _LocateDataInputSpec(BaseInterfaceInputSpec):
    data_dir = traits.Either(None, traits.Str, usedefault=True,
                             desc="AHBA data folder (None: $AHBA_DATA, $ABAGEN_DATA or the "
                                  "per-user folder)")
    donors = traits.List(traits.Str, mandatory=True, desc="donor numbers")
    need_rnaseq = traits.Bool(False, usedefault=True,
                              desc="also locate the RNA-seq files (probe_selection='rnaseq')")
    n_proc = traits.Int(1, usedefault=True, desc="parallel downloads when files are missing")
    identity = traits.Str("", usedefault=True,
                          desc="SHA-256 of the AHBA files' content (pipeline.data_identity): "
                               "data replaced in place change this node's hash, hence every "
                               "later one")


class _LocateDataOutputSpec(TraitedSpec):
    files = File(exists=True, desc="JSON: donor -> {file kind: path} of the microarray files")
    rnaseq_files = File(exists=True, desc="JSON: donor -> {file kind: path} of the RNA-seq "
                                          "files (null when not needed)")
    donors = traits.List(traits.Str, desc="the donors, in processing order")


class LocateData(SimpleInterface):
    """Find (downloading when absent) the AHBA files of the donors (stage ``fetch``)."""

    input_spec = _LocateDataInputSpec
    output_spec = _LocateDataOutputSpec

    def _run_interface(self, runtime):
        files, rnaseq = pipeline.locate_data(self.inputs.data_dir,
                                             need_rnaseq=self.inputs.need_rnaseq,
                                             n_proc=self.inputs.n_proc,
                                             **stage_options(self.inputs, "fetch"))
        self._results["files"] = write_json(files, os.path.join(runtime.cwd, "files.json"))
        self._results["rnaseq_files"] = write_json(
            rnaseq, os.path.join(runtime.cwd, "rnaseq_files.json"))
        self._results["donors"] = [str(d) for d in files]
        return runtime


# ---------------------------------------------------------------------------------------------
class _LoadProbesInputSpec(BaseInterfaceInputSpec):
    files = File(exists=True, mandatory=True, desc="JSON of the donors' microarray files")
    reannotated = trait("reannotated")


class _LoadProbesOutputSpec(TraitedSpec):
    raw_probes = File(exists=True, desc="table: the gene symbol of every probe of Probes.csv "
                                        "(the genes table's first column)")
    probes = File(exists=True, desc="table: the probe table (probes with a gene)")
    n_probes = traits.Int(desc="probes in Probes.csv")
    n_annotated = traits.Int(desc="probes left with a gene after (re)annotation")


class LoadProbes(SimpleInterface):
    """The probe table, reannotated or not (stage ``reannotate``)."""

    input_spec = _LoadProbesInputSpec
    output_spec = _LoadProbesOutputSpec

    def _run_interface(self, runtime):
        files = read_json(self.inputs.files)
        raw, probes = pipeline.read_probe_tables(files, **stage_options(self.inputs,
                                                                        "reannotate"))
        self._results["probes"] = write_frame(probes, os.path.join(runtime.cwd,
                                                                   "probes"))
        self._results["raw_probes"] = write_frame(raw[["gene_symbol"]], os.path.join(
            runtime.cwd, "raw_probes"))
        self._results["n_probes"] = len(raw)
        self._results["n_annotated"] = len(probes)
        return runtime


# ---------------------------------------------------------------------------------------------
class _PrepareSamplesInputSpec(BaseInterfaceInputSpec):
    files = File(exists=True, mandatory=True, desc="JSON of the donors' microarray files")
    donors = traits.List(traits.Str, mandatory=True,
                         desc="the donors whose samples are prepared, in the outputs' order")
    probes = File(exists=True, mandatory=True, desc="probe table (similarity filter)")
    corrected_mni = trait("corrected_mni")
    lr_mirror = trait("lr_mirror")
    sim_threshold = trait("sim_threshold")
    native_atlas = traits.Dict(desc="a donor-native atlas (ahba_app.bids.AtlasInput.as_dict()): "
                                    "the samples are placed on the donor's raw T1w and their "
                                    "hemispheres checked there, as the Python API does")
    data_dir = traits.Either(None, traits.Str, usedefault=True,
                             desc="AHBA data folder (the donors' raw T1w, FreeSurfer files)")
    raw_mri = traits.Dict(desc="donor -> SHA-256 of its raw T1w ('' without one): the files "
                               "read with native_atlas enter the node's hash")


class _PrepareSamplesOutputSpec(TraitedSpec):
    annotation = OutputMultiObject(File(exists=True),
                                   desc="per donor: the donor's sample table")
    info = OutputMultiObject(File(exists=True),
                             desc="per donor: JSON of what happened to its samples (counts)")


class PrepareSamples(SimpleInterface):
    """Every donor's samples: coordinates, mirroring, hemisphere checks, similarity filter
    (stage ``annotate``).

    One node for all donors (as ``match`` and ``normalize``): the files list, the probe table
    and the corrected coordinates are read once, and Nipype hashes, pickles and logs one node
    run instead of one per donor."""

    input_spec = _PrepareSamplesInputSpec
    output_spec = _PrepareSamplesOutputSpec

    def _run_interface(self, runtime):
        from ..datasets import load_corrected_mni

        inputs = self.inputs
        donors = [str(d) for d in inputs.donors]
        files = read_json(inputs.files)
        native_affines = dict.fromkeys(donors)
        if isdefined(inputs.native_atlas) and inputs.native_atlas:
            from ..bids import AtlasInput, load_atlas_input

            trees, _ = load_atlas_input(AtlasInput.from_dict(inputs.native_atlas), donors,
                                        data_dir=inputs.data_dir)
            native_affines = {donor: trees[donor].native_affine for donor in donors}
        probes = read_frame(inputs.probes)
        coords = load_corrected_mni() if inputs.corrected_mni else None
        self._results["annotation"], self._results["info"] = [], []
        for donor in donors:
            annotation, info = pipeline.prepare_donor_samples(
                files[donor], probes, native_affine=native_affines[donor], coords=coords,
                **stage_options(inputs, "annotate"))
            self._results["annotation"].append(write_frame(
                annotation, os.path.join(runtime.cwd, f"annotation_{donor}")))
            self._results["info"].append(write_json(
                dict(info, donor=donor), os.path.join(runtime.cwd, f"samples_{donor}.json")))
        return runtime


# ---------------------------------------------------------------------------------------------
class _FilterProbesInputSpec(BaseInterfaceInputSpec):
    files = File(exists=True, mandatory=True, desc="JSON of the donors' microarray files")
    donors = traits.List(traits.Str, mandatory=True, desc="donors, in the annotations' order")
    annotations = InputMultiObject(File(exists=True), mandatory=True,
                                   desc="sample table of every donor")
    probes = File(exists=True, mandatory=True, desc="probe table")
    ibf_threshold = trait("ibf_threshold")


class _FilterProbesOutputSpec(TraitedSpec):
    probes = File(exists=True, desc="table: the probes that pass the intensity filter")
    share = File(exists=True, desc="table: every probe's share of samples above background")
    n_filtered = traits.Int(desc="probes kept")


class FilterProbes(SimpleInterface):
    """Intensity-based filtering of the probes over all donors (stage ``filter``)."""

    input_spec = _FilterProbesInputSpec
    output_spec = _FilterProbesOutputSpec

    def _run_interface(self, runtime):
        check_lengths(self.inputs.donors, annotations=self.inputs.annotations)
        probes, share = pipeline.filter_probe_table(
            read_json(self.inputs.files),
            _by_donor(self.inputs.donors, self.inputs.annotations),
            read_frame(self.inputs.probes), return_share=True,
            **stage_options(self.inputs, "filter_probes"))
        self._results["share"] = write_frame(share.to_frame(), os.path.join(runtime.cwd,
                                                                            "probe_share"))
        self._results["probes"] = write_frame(probes, os.path.join(runtime.cwd,
                                                                   "probes_filtered"))
        self._results["n_filtered"] = len(probes)
        return runtime


# ---------------------------------------------------------------------------------------------
class _SelectProbesInputSpec(BaseInterfaceInputSpec):
    files = File(exists=True, mandatory=True, desc="JSON of the donors' microarray files")
    rnaseq_files = File(exists=True, desc="JSON of the RNA-seq files (probe_selection='rnaseq')")
    donors = traits.List(traits.Str, mandatory=True, desc="donors, in the annotations' order")
    annotations = InputMultiObject(File(exists=True), mandatory=True,
                                   desc="sample table of every donor")
    probes = File(exists=True, mandatory=True, desc="table of the filtered probes")
    probe_selection = trait("probe_selection")
    donor_probes = trait("donor_probes")


class _SelectProbesOutputSpec(TraitedSpec):
    expressions = OutputMultiObject(File(exists=True),
                                    desc="samples x genes of every donor: the probes chosen, to "
                                         "read from its microarray cache (or the table)")
    selection = File(exists=True, desc="table: the probe chosen for every gene")
    n_genes = traits.Int(desc="genes")


def _write_donor_samples(expressions: pipeline.DonorTables, donor: str, folder: str) -> str:
    """The chosen probes, read again from the cache by the next node (only the samples it
    needs); the table itself when it cannot be read that way."""
    stem = os.path.join(folder, f"expression_{donor}")
    source = expressions.source(donor)
    if source is None:
        return write_frame(expressions[donor], stem)
    return write_chosen_probes(*source, stem)


class SelectProbes(SimpleInterface):
    """One column per gene for every donor (stage ``select probes``)."""

    input_spec = _SelectProbesInputSpec
    output_spec = _SelectProbesOutputSpec

    def _run_interface(self, runtime):
        check_lengths(self.inputs.donors, annotations=self.inputs.annotations)
        rnaseq = (read_json(self.inputs.rnaseq_files) if isdefined(self.inputs.rnaseq_files)
                  else None)
        expressions, selection = pipeline.select_donor_probes(
            read_json(self.inputs.files), _by_donor(self.inputs.donors, self.inputs.annotations),
            read_frame(self.inputs.probes), rnaseq_files=rnaseq, store=ChoiceStore(),
            **stage_options(self.inputs, "select_probes"))
        self._results["expressions"] = [_write_donor_samples(expressions, d, runtime.cwd)
                                        for d in self.inputs.donors]
        self._results["selection"] = write_frame(selection, os.path.join(
            runtime.cwd, "selection"))
        self._results["n_genes"] = expressions.n_genes(self.inputs.donors[0])
        pipeline.check_genes(self._results["n_genes"], n_probes=len(read_frame(
            self.inputs.probes)))
        return runtime
