"""The multiverse sweep as a Nipype workflow whose nodes are the shared stages.

- one ``probes_<n>`` node per probe choice the grid needs (:class:`ChooseProbes`): made once and
  stored beside the matrix caches, read by every unit below it;
- one ``<atlas>_unit<n>`` node per unit and atlas (:class:`SweepUnit`): the pipelines sharing
  one probe choice and one matching; each of its normalization groups is computed once and
  every downstream variant is aggregated from it in memory.

Any Nipype plugin runs it (:mod:`ahba_app.cli.engines`); a killed sweep started again with
the same work folder reruns only the units that had not finished (Nipype's cache). The rows
are then merged unit by unit, in plan order, so every engine and number of processes writes
the same file (:func:`ahba_app.multiverse.command.run_engine`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from nipype.pipeline import engine as pe

from ..interfaces.multiverse import ChooseProbes, SweepUnit
from ..multiverse.planner import CostModel, unit_peak_bytes

__all__ = ["ROWS_FILE", "UnitNode", "init_multiverse_wf", "probe_node_needed"]

#: The file each unit node writes in its folder.
ROWS_FILE = "rows.jsonl.gz"


class UnitNode:
    """One unit node: its atlas (output stem), node name, pipelines, and rows file."""

    def __init__(self, stem: str, name: str, n_pipelines: int, folder: Path):
        self.stem, self.name, self.n_pipelines, self.folder = stem, name, n_pipelines, folder

    @property
    def rows(self) -> Path:
        return self.folder / ROWS_FILE

    @property
    def tables(self) -> Path:
        """The folder of the unit's saved tables."""
        return self.folder / "tables"


def probe_node_needed(options: Mapping, group_atlas: bool) -> bool:
    """Whether a shared probe-choice node saves work: the choice is stored (not 'rnaseq', nor
    'average', which chooses nothing and only combines every probe: such a node would compute
    and let go the whole tables, 1.8 GB on full data, that each unit computes again) and the
    samples do not depend on the atlas (a group atlas)."""
    from ..probes import COLLAPSE_METHODS, UNSTORED_METHODS

    return group_atlas and options["probe_selection"] not in UNSTORED_METHODS + COLLAPSE_METHODS


def _json(value):
    return list(value) if isinstance(value, tuple) else value


def init_multiverse_wf(plan, atlases: Mapping[str, dict], *, data_dir=None,
                       data_identity: str = "", region_maps: Mapping | None = None,
                       save_tables=(), kernel_cache=None, base_dir,
                       name: str = "multiverse_wf"):
    """The workflow of ``plan`` over ``atlases`` (output stem -> AtlasInput.as_dict()), and
    its unit nodes in output order (atlas by atlas, units in plan order). ``save_tables``:
    ids of the pipelines whose tables are saved (each unit is given its own); ``kernel_cache``:
    the folder where the units' processes keep their compiled kernels
    (:func:`ahba_app.multiverse.sweep.kernel_cache`), None for none."""
    workflow = pe.Workflow(name=name, base_dir=str(base_dir))
    grid = plan.grid.as_dict()
    group_atlas = bool(plan.grid.context.get("group_atlas", True))
    data_dir = None if data_dir is None else str(data_dir)
    probe_nodes: dict = {}
    units = []
    unit_list = list(plan.units().items())
    wanted = set(save_tables)
    saved_by_unit = [sorted(p.id for key in keys for p in plan.pipelines(key) if p.id in wanted)
                     if wanted else [] for _, keys in unit_list]
    for number, (stem, atlas) in enumerate(atlases.items()):
        values = None if region_maps is None else region_maps.get(stem)
        region_map = {} if values is None else {str(int(k)): float(v)
                                                 for k, v in values.items()}
        for index, ((probe_key, _), keys) in enumerate(unit_list):
            options = plan.group_options(keys[0])
            # what the scheduler counts (MultiProc's memory_gb): the unit's estimated peak
            node = pe.Node(SweepUnit(), name=f"a{number}_unit{index:05d}",
                           mem_gb=unit_peak_bytes(options) / 2**30)
            node.inputs.grid = grid
            node.inputs.combos = [[_json(v) for v in combo] for key in keys
                                  for combo in plan.groups[key]]
            node.inputs.atlas = dict(atlas)
            node.inputs.region_map = region_map
            node.inputs.data_dir = data_dir
            node.inputs.data_identity = data_identity
            node.inputs.save_tables = saved_by_unit[index]
            node.inputs.kernel_cache = None if kernel_cache is None else str(kernel_cache)
            if probe_node_needed(options, group_atlas):
                probes = probe_nodes.get(probe_key)
                if probes is None:
                    probes = pe.Node(ChooseProbes(), name=f"probes{len(probe_nodes):04d}",
                                     mem_gb=CostModel().probes_peak_bytes / 2**30)
                    probes.inputs.options = {n: _json(v) for n, v in options.items()}
                    probes.inputs.data_dir = data_dir
                    probes.inputs.data_identity = data_identity
                    probe_nodes[probe_key] = probes
                workflow.connect(probes, "n_genes", node, "n_genes")
            else:
                workflow.add_nodes([node])
            units.append(UnitNode(stem, node.name, sum(plan.sizes[k] for k in keys),
                                  Path(base_dir) / name / node.name))
    return workflow, units
