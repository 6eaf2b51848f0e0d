"""Shared stages: which intermediate results the pipelines of a grid have in common.

A pipeline is a chain of stages, and each stage's result depends on only some options:

==============  =====================================================================
stage           the options its result depends on (with those of the stages above)
==============  =====================================================================
samples         donors, corrected_mni, lr_mirror, sim_threshold (and reannotated when
                sim_threshold is set: the similarity filter reads the probes)
probes          donors, lr_mirror, sim_threshold, reannotated, ibf_threshold,
                probe_selection, donor_probes (the choice reads sample structures, not
                coordinates: the stored choice's key has no coordinates either)
matching        samples + tolerance
normalization   probes + matching + sample_norm, gene_norm, norm_matched,
                norm_structures (which only acts through gene_norm: ignored without it)
aggregation     normalization + missing, region_agg, agg_metric, stability_threshold
==============  =====================================================================

Pipelines with the same key at a stage share that stage's result: it is computed once. The
:class:`Plan` counts the distinct results per stage, groups pipelines by their normalization
(the unit the sweep engine works on: everything downstream is computed together in memory) and
estimates time, memory and disk from unit costs (:class:`CostModel`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
import itertools
from typing import Iterator, Mapping

from .grid import RULES, Grid, Pipeline

__all__ = ["STAGES", "CostModel", "Estimate", "Plan", "plan", "plan_of", "stage_key",
           "unit_peak_bytes"]

#: Stage names, upstream first.
STAGES = ("samples", "probes", "matching", "normalization", "aggregation")

_OWN = {
    "samples": ("donors", "corrected_mni", "lr_mirror", "sim_threshold"),
    "probes": ("donors", "lr_mirror", "sim_threshold", "reannotated", "ibf_threshold",
               "probe_selection", "donor_probes"),
    "matching": ("tolerance",),
    "normalization": ("sample_norm", "gene_norm", "norm_matched", "norm_structures"),
    "aggregation": ("missing", "region_agg", "agg_metric", "stability_threshold"),
}
#: Options of the aggregation stage: the variants computed together from one upstream result.
DOWNSTREAM: tuple = _OWN["aggregation"]
_UPSTREAM = {"samples": (), "probes": (), "matching": ("samples",),
             "normalization": ("probes", "matching"), "aggregation": ("normalization",)}


def _options_of(stage: str) -> set:
    names = set(_OWN[stage])
    for above in _UPSTREAM[stage]:
        names |= _options_of(above)
    return names


def _effective(options: Mapping) -> dict:
    """The options with those that cannot change the result set to a fixed value."""
    out = dict(options)
    if out.get("gene_norm") is None:
        out["norm_structures"] = False  # structures only group the gene normalization
    return out


def stage_key(stage: str, options: Mapping) -> tuple:
    """What ``stage``'s result depends on, for a pipeline with ``options`` (canonical): two
    pipelines with equal keys share the result."""
    effective = _effective(options)
    names = _options_of(stage)
    if stage in ("samples", "matching") and effective.get("sim_threshold") is not None:
        names = names | {"reannotated"}
    return tuple((name, effective[name]) for name in sorted(names))


# ---------------------------------------------------------------------------------------------
# estimates
# ---------------------------------------------------------------------------------------------
#: full-size AHBA: probes x samples (58,692 x 3,702)
_FULL_CELLS = 58_692 * 3_702


@dataclass(frozen=True)
class CostModel:
    """What the engines spend, in CPU seconds on full-size data, and bytes per output row;
    scaled by the data's probes x samples for other sizes. An estimate, not a measurement of
    the run to come.

    Each unit prepares its shared upstream once (``upstream``: data, atlas, samples, matching,
    reading the stored probe choice), each probe choice is made once (``probes``), each
    normalization group is normalized once (``normalization``), each distinct table is
    aggregated (``aggregation``) and every pipeline's statistics taken (``statistics``).
    Calibrated on the full-size data (20,232 genes): one unit of the Markello grid (30 groups,
    240 distinct tables, 288 pipelines) took 95 CPU seconds on one thread (on a loaded
    machine), shared by a profile as: the unit's upstream with its three sample
    normalizations ~11 s, each group's gene normalization ~0.85 s, each table's aggregation
    (the 8 variants of a group together, a block of genes at a time) ~0.26 s, each pipeline's
    statistics ~0.013 s; a probe choice took 10 to 30 s. Memory: see ``worker_bytes``.
    """

    upstream: float = 11.0
    probes: float = 15.0
    normalization: float = 0.85
    aggregation: float = 0.26
    statistics: float = 0.013
    row_bytes_tsv: int = 260
    row_bytes_parquet: int = 40
    #: Memory of one worker process running a unit (:func:`unit_peak_bytes`): the process
    #: (libraries, atlas, pages of the matrix caches, working blocks of genes), plus one
    #: samples x genes table per table held whole: the sample-normalized one, and for probes
    #: combined in memory ('average') their table too. Each holds every distinct sample once
    #: (mirrored copies are not repeated): 22,496 genes x 3,702 samples, float64, at most.
    #: Measured (RSS): 1.26-1.28 GiB for a unit of one table, 2.0 GiB for a 'bidirectional'
    #: unit of 'average' probes (two tables).
    worker_bytes: int = int(0.75 * 2**30)
    table_bytes: int = 22_496 * 3_702 * 8
    #: A probe-choice node's peak (differential stability: 0.51 GiB).
    probes_peak_bytes: int = int(0.6 * 2**30)
    #: What the sweep keeps under (the process tree: the engine's main process and its
    #: workers); the main process holds the workflow and its graph.
    budget_bytes: int = 4 * 2**30
    main_bytes: int = int(0.5 * 2**30)


def unit_peak_bytes(options: Mapping, costs: CostModel = CostModel(), *,
                    cells: int = _FULL_CELLS) -> int:
    """The peak memory of the worker process running a unit whose pipelines have ``options``
    (any of them: the unit's upstream options are common), scaled to data of ``cells`` probes
    x samples: what the scheduler is told (``mem_gb``), so that the units running side by
    side stay within the sweep's memory."""
    from ..probes import COLLAPSE_METHODS

    tables = 2 if options.get("probe_selection") in COLLAPSE_METHODS else 1
    return int((costs.worker_bytes + tables * costs.table_bytes) * max(cells / _FULL_CELLS, 0.01))


@dataclass(frozen=True)
class Estimate:
    seconds: float
    peak_bytes: int
    disk_bytes: int

    def text(self) -> str:
        hours = self.seconds / 3600
        when = f"{hours:.1f} h" if hours >= 1 else f"{self.seconds / 60:.1f} min"
        return (f"estimated (from unit costs, not measured): {when} of compute, peak memory "
                f"about {self.peak_bytes / 2**30:.1f} GB, {self.disk_bytes / 2**20:.1f} MB "
                "of results")


@dataclass
class Plan:
    """The pipelines of a grid grouped by the stage results they share.

    ``counts[stage]``: distinct results of each stage. ``groups``: normalization key -> the
    upstream combinations (values of :attr:`upstream`, in grid order) sharing that result;
    each group is one unit of the sweep engine, and :meth:`pipelines` gives its pipelines
    (every upstream combination crossed with the downstream options, :attr:`downstream`).
    Only upstream combinations are held, never one object per pipeline.
    """

    grid: Grid = field(repr=False)
    upstream: tuple
    downstream: tuple
    n_pipelines: int
    counts: dict
    groups: dict = field(repr=False)
    #: normalization key -> how many pipelines the group holds
    sizes: dict = field(default_factory=dict, repr=False)

    def units(self) -> dict:
        """The groups by the probe choice and the matching they read: (probes key, matching
        key) -> normalization keys, in plan order. A unit is one node of the Nipype engine
        (:mod:`ahba_app.workflows.multiverse`); the units of one probe choice wait for it."""
        out: dict = defaultdict(list)
        for key, combos in self.groups.items():
            values = dict(self.grid.base, **dict(zip(self.upstream, combos[0])))
            out[(stage_key("probes", values), stage_key("matching", values))].append(key)
        return dict(out)

    def group_options(self, key) -> dict:
        """The options (every one) of the first upstream combination of group ``key``: what
        its upstream result is computed with (the downstream options at the grid's first
        values)."""
        values = dict(self.grid.base, **dict(zip(self.upstream, self.groups[key][0])))
        return dict(values, **{n: self.grid.axes[n][0] for n in self.downstream})

    @property
    def n_units(self) -> int:
        """Units: distinct (probe choice, matching) pairs (:meth:`units`)."""
        return len({(stage_key("probes", values), stage_key("matching", values))
                    for values in (dict(self.grid.base, **dict(zip(self.upstream, combos[0])))
                                   for combos in self.groups.values())})

    @property
    def n_shared_stages(self) -> int:
        """Distinct stage results computed once and shared (every stage above aggregation)."""
        return sum(n for stage, n in self.counts.items() if stage != "aggregation")

    def pipelines(self, key=None) -> Iterator[Pipeline]:
        """The pipelines of one group (``key``: a key of :attr:`groups`), or of every group,
        group by group."""
        keys = list(self.groups) if key is None else [key]
        down_axes = [self.grid.axes[name] for name in self.downstream]
        for group in keys:
            for combo in self.groups[group]:
                upstream = dict(self.grid.base, **dict(zip(self.upstream, combo)))
                for down in itertools.product(*down_axes):
                    yield from self.grid.keep(dict(upstream, **dict(zip(self.downstream,
                                                                           down))))

    def estimate(self, costs: CostModel = CostModel(), *, cells: int = _FULL_CELLS,
                 parquet: bool = False) -> Estimate:
        """Time (one core), peak memory and disk of the run, from ``costs`` scaled to data of
        ``cells`` probes x samples."""
        scale = cells / _FULL_CELLS
        seconds = (costs.upstream * self.n_units
                   + costs.probes * self.counts["probes"]
                   + costs.normalization * self.counts["normalization"]
                   + costs.aggregation * self.counts["aggregation"]
                   + costs.statistics * self.n_pipelines)
        per_row = costs.row_bytes_parquet if parquet else costs.row_bytes_tsv
        peak = max((unit_peak_bytes(self.group_options(keys[0]), costs, cells=cells)
                    for keys in self.units().values()), default=0)
        return Estimate(seconds * scale, peak, per_row * self.n_pipelines)

    def summary(self, costs: CostModel = CostModel(), *, cells: int = _FULL_CELLS,
                parquet: bool = False) -> str:
        stages = ", ".join(f"{self.counts[s]:,} {s}" for s in STAGES if s != "aggregation")
        return (f"{self.n_pipelines:,} pipelines, {self.n_shared_stages:,} shared stage "
                f"results ({stages}) in {self.n_units:,} units, "
                f"{self.counts['aggregation']:,} distinct tables; "
                + self.estimate(costs, cells=cells, parquet=parquet).text())


def plan(grid: Grid) -> Plan:
    """Group the pipelines of ``grid`` by the stage results they share.

    Works on the upstream combinations (the grid's axes that are not aggregation options):
    the downstream options are crossed with each of them only when pipelines are listed.
    """
    return plan_of(grid, None)


def plan_of(grid: Grid, combos=None) -> Plan:
    """:func:`plan` of only some upstream combinations of ``grid`` (``combos``: values of the
    upstream axes, as in :attr:`Plan.groups`; None: all of them, in grid order). A unit of the
    Nipype engine plans its own groups this way."""
    downstream = tuple(n for n in grid.axes if n in DOWNSTREAM)
    upstream = tuple(n for n in grid.axes if n not in downstream)
    down_axes = [grid.axes[name] for name in downstream]
    watched_downstream = any(name in rule.options for rule in RULES for name in downstream)
    seen: dict = {stage: set() for stage in STAGES[:-1]}
    groups: dict = defaultdict(list)
    tables: dict = defaultdict(set)  # normalization key -> downstream values kept
    sizes: dict = defaultdict(int)
    n_pipelines = 0
    if combos is None:
        combos = itertools.product(*(grid.axes[name] for name in upstream))
    for combo in combos:
        combo = tuple(combo)
        values = dict(grid.base, **dict(zip(upstream, combo)))
        if watched_downstream:
            kept = [down for down in itertools.product(*down_axes)
                    if grid.reason(dict(values, **dict(zip(downstream, down)))) is None]
        else:  # no rule looks at the downstream options: one check for all of them
            kept = [] if grid.reason(values) is not None else list(
                itertools.product(*down_axes))
        if not kept:
            continue
        n_pipelines += len(kept)
        for stage in STAGES[:-1]:
            seen[stage].add(stage_key(stage, values))
        norm_key = stage_key("normalization", values)
        groups[norm_key].append(combo)
        tables[norm_key].update(kept)
        sizes[norm_key] += len(kept)
    counts = {stage: len(keys) for stage, keys in seen.items()}
    counts["aggregation"] = sum(len(kept) for kept in tables.values())
    return Plan(grid, upstream, downstream, n_pipelines, counts, dict(groups), dict(sizes))
