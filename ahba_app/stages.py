"""The stages of a run, declared once: what each runs, needs, produces and which options it reads.

Both front ends are built from :data:`STAGES`. The Python API's engine
(:func:`ahba_app.pipeline.run`) calls each stage's function with the options
:func:`stage_options` gives it; the command line's Nipype workflows
(:mod:`ahba_app.workflows`) make one node per stage, named after it, wrapping its interface and
given the same options. ``needs`` and ``produces`` name the data passed between stages (the
workflows' connections, the engine's variables); ``tests/test_stages.py`` checks the
functions' keywords, the interfaces' option inputs and the workflows' nodes against this list.

This module imports no stage and no Nipype: functions and interfaces are named, not imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["RUN_INPUTS", "STAGES", "Stage", "producers", "stage_options"]


@dataclass(frozen=True)
class Stage:
    """One stage.

    name: the stage (and its workflow node). function: the :mod:`ahba_app.pipeline` function
    (or ``module.function``) that does its work. interface: the Nipype interface wrapping it
    (``module.Class`` under :mod:`ahba_app.interfaces`). workflow: ``data`` (shared by every
    atlas) or ``atlas``. needs / produces: the data it takes and gives. options: the processing
    options it reads (:data:`ahba_app.options.OPTIONS`). api: the function :func:`ahba_app.pipeline.run` calls
    instead of ``function`` when they differ (all donors at once, holding less in memory).
    """

    name: str
    function: str
    interface: str
    workflow: str
    needs: tuple[str, ...]
    produces: tuple[str, ...]
    options: tuple[str, ...] = ()
    api: str | None = None

    @property
    def api_function(self) -> str:
        """The function the Python API's engine calls for this stage."""
        return self.api or self.function


#: What a run is given (everything else is produced by a stage).
RUN_INPUTS = ("data_dir", "atlas")

STAGES: Mapping[str, Stage] = MappingProxyType({s.name: s for s in (
    Stage("fetch", "locate_data", "data.LocateData", "data",
          needs=("data_dir",), produces=("files", "rnaseq_files"), options=("donors",)),
    Stage("reannotate", "read_probe_tables", "data.LoadProbes", "data",
          needs=("files",), produces=("raw_probes", "probes"), options=("reannotated",)),
    Stage("annotate", "prepare_donor_samples", "data.PrepareSamples", "data",
          needs=("files", "probes"), produces=("annotations", "sample_info"),
          options=("corrected_mni", "lr_mirror", "sim_threshold")),
    Stage("filter_probes", "filter_probe_table", "data.FilterProbes", "data",
          needs=("files", "annotations", "probes"), produces=("filtered_probes", "share"),
          options=("ibf_threshold",)),
    Stage("select_probes", "select_donor_probes", "data.SelectProbes", "data",
          needs=("files", "rnaseq_files", "annotations", "filtered_probes"),
          produces=("expressions", "selection"), options=("probe_selection", "donor_probes")),
    Stage("match", "match_donor_samples", "atlas.MatchSamples", "atlas",
          needs=("atlas", "annotations"), produces=("labels",), options=("tolerance",)),
    Stage("normalize", "normalize_donor_expression", "atlas.NormalizeExpression", "atlas",
          needs=("expressions", "labels", "annotations"), produces=("normalized",),
          options=("sample_norm", "gene_norm", "norm_matched", "norm_structures"),
          api="normalized_donors"),
    Stage("aggregate", "aggregate_group", "atlas.AggregateExpression", "atlas",
          needs=("atlas", "normalized", "labels"),
          produces=("expression", "counts", "donor_expressions", "summary", "stability"),
          options=("missing", "region_agg", "agg_metric", "stability_threshold")),
    Stage("genes", "genes.gene_fates", "genes.AccountGenes", "atlas",
          needs=("raw_probes", "probes", "filtered_probes", "selection", "share", "expression",
                 "stability"),
          produces=("genes",), options=("ibf_threshold", "stability_threshold", "reannotated")),
)})


def producers(stage: str) -> list[str]:
    """The stages that produce what ``stage`` needs (they run before it)."""
    needs = set(STAGES[stage].needs)
    return [s.name for s in STAGES.values() if needs & set(s.produces)]


def stage_options(settings, stage: str) -> dict[str, Any]:
    """The options stage ``stage`` reads, with their values in ``settings``
    (:class:`ahba_app.options.Settings`, or a node's inputs): the keywords of its function and
    the inputs of its interface."""
    return {name: getattr(settings, name) for name in STAGES[stage].options}
