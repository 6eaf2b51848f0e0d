"""Interfaces of the atlas stages: match (all donors), normalize (per donor), aggregate.

The atlas travels between nodes as the small dict of :class:`ahba_app.bids.AtlasInput` (paths
and checksums), and every node that needs its matching tree loads it with
:func:`ahba_app.bids.load_atlas_input`, i.e. :func:`ahba_app.pipeline.load_atlas`.
"""

from __future__ import annotations

import logging
import os
import queue

import numpy as np

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    OutputMultiObject, SimpleInterface, TraitedSpec, isdefined,
                                    traits)

from .. import pipeline
from .._blocks import n_threads, thread_map
from ..options import trait
from ..bids import AtlasInput, load_atlas_input
from ..stages import stage_options
from ._files import (DonorSamples, SharedTables, check_lengths, read_frame, read_labels,
                     write_frame, write_json, write_labels)

LGR = logging.getLogger("ahba_app")

__all__ = ["AggregateExpression", "MatchSamples", "NormalizeExpression"]


class _AtlasInputSpec(BaseInterfaceInputSpec):
    atlas = traits.Dict(mandatory=True, desc="the atlas (ahba_app.bids.AtlasInput.as_dict())")
    data_dir = traits.Either(None, traits.Str, usedefault=True,
                             desc="AHBA data folder (FreeSurfer files of donor-native "
                                  "surface atlases)")


# ---------------------------------------------------------------------------------------------
class _MatchSamplesInputSpec(_AtlasInputSpec):
    donors = traits.List(traits.Str, mandatory=True, desc="donors whose samples are matched")
    annotations = InputMultiObject(File(exists=True), mandatory=True,
                                   desc="sample table of every donor, in donors' order")
    tolerance = trait("tolerance")


class _MatchSamplesOutputSpec(TraitedSpec):
    labels = OutputMultiObject(File(exists=True),
                               desc="per donor: region label of every sample row "
                                    "(0 = none)")
    n_matched = traits.List(traits.Int, desc="samples matched to a region, per donor")


class MatchSamples(SimpleInterface):
    """Region label of every sample of every donor (stage ``match``).

    One node for all donors: the atlas is loaded and its search tree built once (for a
    template-space atlas they are shared by the donors), which costs more than matching.
    """

    input_spec = _MatchSamplesInputSpec
    output_spec = _MatchSamplesOutputSpec

    def _run_interface(self, runtime):
        donors = [str(d) for d in self.inputs.donors]
        check_lengths(donors, annotations=self.inputs.annotations)
        atlases, _ = load_atlas_input(AtlasInput.from_dict(self.inputs.atlas), donors,
                                      data_dir=self.inputs.data_dir)
        self._results["labels"], self._results["n_matched"] = [], []
        n_samples = {}
        for donor, path in zip(donors, self.inputs.annotations):
            annotation = pipeline.renumbered(read_frame(path))
            labels = pipeline.match_donor_samples(atlases[donor], annotation,
                                                  **stage_options(self.inputs, "match"))
            if not (labels != 0).any():
                LGR.warning("No sample of donor %s matched a region of the atlas.", donor)
            self._results["labels"].append(
                write_labels(labels, os.path.join(runtime.cwd, f"labels_{donor}")))
            self._results["n_matched"].append(int((labels != 0).sum()))
            n_samples[donor] = len(labels)
        pipeline.check_matched(dict(zip(donors, self._results["n_matched"])), n_samples,
                               tolerance=self.inputs.tolerance)
        return runtime


# ---------------------------------------------------------------------------------------------
class _NormalizeInputSpec(BaseInterfaceInputSpec):
    expression = InputMultiObject(File(exists=True), mandatory=True,
                                  desc="per donor: samples x genes from select probes (table, "
                                       "or the chosen probes to read from the microarray "
                                       "cache)")
    annotation = InputMultiObject(File(exists=True), mandatory=True,
                                  desc="per donor: the sample table")
    labels = InputMultiObject(File(exists=True), mandatory=True,
                              desc="per donor: table of the region label of every sample")
    shared = traits.Either(None, traits.Str, usedefault=True,
                           desc="folder of the run's shared normalized tables "
                                "(interfaces._files.SharedTables): the atlases of a run that "
                                "keep the same samples of a donor normalize them once")
    sample_norm = trait("sample_norm")
    gene_norm = trait("gene_norm")
    norm_matched = trait("norm_matched")
    norm_structures = trait("norm_structures")
    file_order = traits.Bool(False, usedefault=True,
                             desc="read every donor's genes in the order of the first donor's "
                                  "microarray rows (pipeline.genes_in_file_order: the group "
                                  "level with options whose numbers do not see the order; the "
                                  "aggregate node gives the region table symbol order back)")
    regions = traits.Bool(False, usedefault=True,
                          desc="give each donor's region table (the mean of its samples in "
                               "each region they match: pipeline.DonorStream.table) instead of "
                               "its normalized samples, when the donors' tables have the same "
                               "genes: the group level when the region tables suffice "
                               "(pipeline.region_tables_suffice)")


class _NormalizeOutputSpec(TraitedSpec):
    expression = OutputMultiObject(File(exists=True),
                                   desc="per donor: table of the normalized samples x genes "
                                        "(kept samples)")
    annotation = OutputMultiObject(File(exists=True),
                                   desc="per donor: sample table of the kept samples")
    labels = OutputMultiObject(File(exists=True),
                               desc="per donor: table of the region labels of the kept samples")
    region_tables = OutputMultiObject(File(exists=True),
                                      desc="with regions: per donor, table of the mean of its "
                                           "normalized samples in each region (regions x "
                                           "genes); expression and annotation are then given "
                                           "only when the run shares its tables")


class NormalizeExpression(SimpleInterface):
    """Sample and gene normalization of every donor (stage ``normalize``), the donors side by
    side on the run's threads (:func:`ahba_app._blocks.thread_map`).

    One node for all donors (as ``match``): each thread reads and normalizes its donors'
    tables in the same two buffers (:func:`ahba_app.pipeline.normalize_donor_expression`), as
    the Python API does, instead of new memory for each, and writes them out before its next
    donor's turn. Each donor's numbers are those of normalizing it alone.

    The normalized table depends on the atlas only through the samples kept (those matched to
    a region with ``norm_matched``, else all): with ``shared``, a table normalized for the same
    samples, inputs and options by another atlas of the run is read instead of computed again
    (the same bytes: the same function on the same inputs).

    With ``regions`` (the group level, when the region means suffice) each donor's table is
    reduced to its region means as soon as it is normalized, as the Python API streams them,
    and only that small table is written (unless ``shared``): the aggregate node folds them.
    A run of one atlas thus writes no sample-level table (~550 MB for six donors of the full
    data) and reads none back.
    """

    input_spec = _NormalizeInputSpec
    output_spec = _NormalizeOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        check_lengths(inputs.labels, expression=inputs.expression,
                      annotation=inputs.annotation)
        options = stage_options(inputs, "normalize")
        store = SharedTables(inputs.shared) if inputs.shared else None
        labels = [read_labels(path) for path in inputs.labels]
        # only the samples normalization keeps are read (as the Python API does)
        rows = [pipeline.normalized_rows(each, norm_matched=inputs.norm_matched)
                for each in labels]
        # each donor's chosen probes read once (for the size, the order and the samples)
        sources = [DonorSamples(path) for path in inputs.expression]
        columns = None
        if inputs.file_order:  # (as a streamed pipeline.run reads them)
            columns = sources[0].file_order(read_frame(inputs.annotation[0]))
        # region tables can be folded donor by donor only when they have the same genes
        regions = inputs.regions and pipeline.same_genes(source.genes for source in sources)
        donors = list(enumerate(zip(inputs.expression, inputs.annotation)))
        keys, found = [None] * len(donors), [None] * len(donors)
        if store is not None:
            for position, (expression, annotation) in donors:
                keys[position] = store.key(
                    files=(expression, annotation), arrays=(rows[position],),
                    options=dict(options, columns=None if columns is None
                                 else columns.tolist()))
                found[position] = store.find(keys[position])
        region_tables = [None] * len(donors)

        def reduce(position, normalized) -> str:
            """The donor's region table, written (pipeline.DonorStream.table: the API's)."""
            table, _ = pipeline.DonorStream({}, None, None).table(
                position, normalized, labels[position][rows[position]], None, first=False)
            return write_frame(table, os.path.join(runtime.cwd, f"regions{position}"))

        # the largest tables first: the threads take the donors in turn, so the last ones to
        # start are small and the threads finish closer together (a DK run's six donors:
        # 1,623 -> 1,569 kept samples on the thread with the most)
        todo = sorted((position for position, tables in enumerate(found) if tables is None),
                      key=lambda p: -len(rows[p]) * sources[p].n_columns)
        if todo:
            # donors normalized side by side on the run's threads, each thread in its own two
            # buffers (large enough for every donor's table), each donor's tables written out
            # (or reduced to its regions) before the buffers take the next donor
            size = max(len(rows[p]) * sources[p].n_columns for p in todo)
            free = queue.SimpleQueue()
            for _ in range(min(n_threads(), len(todo))):
                free.put((np.empty(size), np.empty(size)))

            def normalize(position):
                annotation = donors[position][1][1]
                buffers = free.get()
                try:
                    tables = self._normalize(sources[position], annotation, labels[position],
                                             rows[position], options, buffers, columns)
                    if regions:
                        region_tables[position] = reduce(position, tables["normalized"])
                    if store is not None:
                        return store.add(keys[position], tables)
                    if regions:
                        return None
                    return {name: write_frame(frame, os.path.join(
                        runtime.cwd, f"{name}{position}")) for name, frame in tables.items()}
                finally:
                    free.put(buffers)

            for position, tables in zip(todo, thread_map(normalize, todo)):
                found[position] = tables
        if regions:
            # the shared tables another atlas normalized: reduced here too
            shared = [p for p in range(len(donors)) if region_tables[p] is None]
            for position, table in zip(shared, thread_map(
                    lambda p: reduce(p, read_frame(found[p]["normalized"])), shared)):
                region_tables[position] = table
            self._results["region_tables"] = region_tables
        # every row kept for normalization stays (pipeline.normalize_donor_expression)
        if all(tables is not None for tables in found):
            self._results.update(expression=[tables["normalized"] for tables in found],
                                 annotation=[tables["annotation"] for tables in found])
        self._results["labels"] = [
            write_labels(labels[position][rows[position]],
                         os.path.join(runtime.cwd, f"labels{position}"))
            for position in range(len(donors))]
        return runtime

    def _normalize(self, source: DonorSamples, annotation_path, labels, rows, options,
                   buffers, columns=None) -> dict:
        """One donor's normalized table and kept-sample table (the first in ``buffers``'s
        memory: written out before the next donor's turn); its genes at positions
        ``columns``, in that order, if given."""
        annotation = read_frame(annotation_path)
        table = source.read(annotation, rows, sample_norm=self.inputs.sample_norm,
                            buffer=buffers[1], columns=columns)
        annotation = pipeline.renumbered(annotation).iloc[rows]
        # normalized where it was read when the methods allow it (as the Python API does):
        # the other buffer is then never touched, so its memory is never taken
        normalized, _, kept = pipeline.normalize_donor_expression(
            table.frame().set_axis(annotation.index, axis=0), labels[rows], annotation,
            buffers=buffers, out=table.values, **options)
        return {"normalized": normalized, "annotation": kept}


# ---------------------------------------------------------------------------------------------
class _AggregateInputSpec(_AtlasInputSpec):
    donors = traits.List(traits.Str, mandatory=True, desc="donors, in the lists' order")
    expressions = InputMultiObject(File(exists=True),
                                   desc="table: normalized samples x genes of every donor "
                                        "(unless region_tables)")
    annotations = InputMultiObject(File(exists=True),
                                   desc="sample tables (kept samples) of every donor (unless "
                                        "region_tables)")
    labels = InputMultiObject(File(exists=True), mandatory=True,
                              desc="table: region labels (kept samples) of every donor")
    region_tables = InputMultiObject(File(exists=True),
                                     desc="table: regions x genes of every donor "
                                          "(NormalizeExpression's region_tables), folded "
                                          "instead of the normalized samples when given")
    missing = trait("missing")
    region_agg = trait("region_agg")
    agg_metric = trait("agg_metric")
    stability_threshold = trait("stability_threshold")
    return_donors = traits.Bool(False, usedefault=True,
                                desc="also write one region x gene table per donor")
    file_order = traits.Bool(False, usedefault=True,
                             desc="the normalize node read the genes in file order "
                                  "(NormalizeExpression's file_order): the region table and "
                                  "the genes dropped are put back in symbol order")


class _AggregateOutputSpec(TraitedSpec):
    expression = File(exists=True, desc="table: regions x genes, aggregated across donors")
    counts = File(exists=True, desc="table: samples per region (rows) and donor (columns)")
    donor_expressions = OutputMultiObject(File(exists=True),
                                          desc="table: regions x genes of every donor")
    summary = File(exists=True, desc="JSON: genes dropped, regions filled or empty")
    stability = File(exists=True, desc="table: every gene's differential stability (with a "
                                       "stability threshold)")


class AggregateExpression(SimpleInterface):
    """Missing-region filling and aggregation into regions x genes (stage ``aggregate``).

    Given the donors' region tables (``region_tables``: the options need no more than the
    region means, see NormalizeExpression's ``regions``) they are folded into the mean over
    donors (:class:`ahba_app.pipeline.DonorStream`, as the Python API does); otherwise the
    normalized samples are aggregated (:func:`ahba_app.pipeline.aggregate_group`).
    """

    input_spec = _AggregateInputSpec
    output_spec = _AggregateOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        donors = [str(d) for d in inputs.donors]
        atlases, _ = load_atlas_input(AtlasInput.from_dict(inputs.atlas), donors,
                                      data_dir=inputs.data_dir)
        all_labels = next(iter(atlases.values())).labels
        labels = {d: read_labels(p) for d, p in zip(donors, inputs.labels)}
        if isdefined(inputs.region_tables) and inputs.region_tables:
            result = self._fold(donors, all_labels, labels)
        else:
            if not (isdefined(inputs.expressions) and isdefined(inputs.annotations)):
                raise ValueError("The aggregate node needs the normalized samples "
                                 "(expressions and annotations) or the donors' region tables "
                                 "(region_tables).")
            check_lengths(donors, expressions=inputs.expressions,
                          annotations=inputs.annotations)
            normalized = {d: read_frame(p) for d, p in zip(donors, inputs.expressions)}
            kept = {d: read_frame(p) for d, p in zip(donors, inputs.annotations)}
            result = pipeline.aggregate_group(atlases, all_labels, normalized, kept, labels,
                                              return_donors=inputs.return_donors,
                                              **stage_options(inputs, "aggregate"))
        if inputs.file_order:
            result = pipeline.in_symbol_order(result)
        pipeline.check_expression(result["expression"], result["summary"])
        cwd = runtime.cwd
        self._results["expression"] = write_frame(result["expression"],
                                                  os.path.join(cwd, "expression"))
        self._results["counts"] = write_frame(result["counts"],
                                              os.path.join(cwd, "counts"))
        if inputs.return_donors:
            self._results["donor_expressions"] = [
                write_frame(result["donor_expressions"][d],
                            os.path.join(cwd, f"expression_{d}")) for d in donors]
        self._results["summary"] = write_json(result["summary"].as_dict(),
                                              os.path.join(cwd, "aggregate.json"))
        if result.get("stability") is not None:
            self._results["stability"] = write_frame(
                result["stability"].rename("differential_stability").to_frame(),
                os.path.join(cwd, "stability"))
        return runtime

    def _fold(self, donors: list, all_labels, labels: dict) -> dict:
        """:meth:`ahba_app.pipeline.DonorStream.result` of the donors' region tables, folded in
        donor order (the first widened to every region of the atlas)."""
        inputs = self.inputs
        check_lengths(donors, region_tables=inputs.region_tables)
        if not pipeline.region_tables_suffice(inputs, inputs.return_donors):
            raise ValueError("Region tables hold only each donor's region means: these "
                             "aggregation options need its normalized samples (give "
                             "expressions and annotations instead).")
        stream = pipeline.DonorStream({}, all_labels, None)
        for path in inputs.region_tables:
            stream.fold((read_frame(path), None))
        return stream.result(labels)
