"""Interfaces of the multiverse engine (:mod:`ahba_app.workflows.multiverse`): the probe choice
shared by many units, and a unit (the pipelines sharing one probe choice and one matching).

Nodes receive JSON-able data only (the grid as :meth:`ahba_app.multiverse.grid.Grid.as_dict`,
upstream combinations as lists, the atlas as :meth:`ahba_app.bids.AtlasInput.as_dict`); a unit
writes its rows to a gzip JSON-lines file (every float exactly) that the run merges.
"""

from __future__ import annotations

import os

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec,
                                    traits)

__all__ = ["ChooseProbes", "SweepUnit"]


class _ChooseProbesInputSpec(BaseInterfaceInputSpec):
    options = traits.Dict(mandatory=True, desc="every option of a pipeline using this choice "
                                               "(canonical, JSON-able)")
    data_dir = traits.Either(None, traits.Str, usedefault=True, desc="AHBA data folder")
    data_identity = traits.Str("", usedefault=True,
                               desc="SHA-256 of the AHBA files (enters the node's hash)")


class _ChooseProbesOutputSpec(TraitedSpec):
    n_genes = traits.Int(desc="genes of the choice")


class ChooseProbes(SimpleInterface):
    """Make and store one probe choice (:func:`ahba_app.multiverse.sweep.choose_probes`)."""

    input_spec = _ChooseProbesInputSpec
    output_spec = _ChooseProbesOutputSpec

    def _run_interface(self, runtime):
        from ..multiverse import _options
        from ..multiverse.sweep import choose_probes

        options = {name: _options.canonical(name, value)
                   for name, value in self.inputs.options.items()}
        self._results["n_genes"] = choose_probes(options, self.inputs.data_dir)
        return runtime


class _SweepUnitInputSpec(BaseInterfaceInputSpec):
    grid = traits.Dict(mandatory=True, desc="the grid (Grid.as_dict())")
    combos = traits.List(mandatory=True, desc="upstream combinations of the unit's groups")
    atlas = traits.Dict(mandatory=True, desc="the atlas (AtlasInput.as_dict())")
    region_map = traits.Dict(desc="region label (str) -> value, for map_rho")
    data_dir = traits.Either(None, traits.Str, usedefault=True, desc="AHBA data folder")
    data_identity = traits.Str("", usedefault=True,
                               desc="SHA-256 of the AHBA files (enters the node's hash)")
    n_genes = traits.Int(desc="from the probe-choice node: run after it")
    save_tables = traits.List(traits.Str, value=[], usedefault=True,
                              desc="ids of the unit's pipelines whose table is saved")
    # where it is cached does not change a unit's rows: left out of the node's hash
    kernel_cache = traits.Either(None, traits.Str, usedefault=True, nohash=True,
                                 desc="folder of the compiled kernels' cache (numba)")


class _SweepUnitOutputSpec(TraitedSpec):
    rows = File(exists=True, desc="the unit's rows (gzip JSON lines)")
    n_rows = traits.Int(desc="how many rows")
    tables = traits.Directory(desc="the saved tables (pipeline-<id>_expression.tsv.gz)")


class SweepUnit(SimpleInterface):
    """Every pipeline of one unit: each normalization group's upstream result once, every
    downstream variant from it (:func:`ahba_app.multiverse.sweep.unit_rows`)."""

    input_spec = _SweepUnitInputSpec
    output_spec = _SweepUnitOutputSpec

    def _run_interface(self, runtime):
        import pandas as pd

        from ..bids import AtlasInput, load_atlas_input
        from ..multiverse import _options
        from ..multiverse.grid import grid_from_dict
        from ..multiverse.planner import DOWNSTREAM, plan_of
        from ..multiverse.sweep import (kept_heap, kernel_cache, table_name, unit_rows,
                                        write_unit_rows)

        grid = grid_from_dict(self.inputs.grid)
        upstream = [name for name in grid.axes if name not in DOWNSTREAM]
        combos = [tuple(_options.canonical(name, value) for name, value in zip(upstream, combo))
                  for combo in self.inputs.combos]
        unit = plan_of(grid, combos)
        donors = next(iter(unit.pipelines())).kwargs()["donors"]
        trees, group_atlas = load_atlas_input(AtlasInput.from_dict(self.inputs.atlas), donors,
                                              data_dir=self.inputs.data_dir)
        tree = next(iter(trees.values())) if group_atlas else trees
        region_map = None
        if self.inputs.region_map:
            region_map = pd.Series({int(k): float(v) for k, v in self.inputs.region_map.items()})
        path = os.path.join(runtime.cwd, "rows.jsonl.gz")
        folder = os.path.join(runtime.cwd, "tables")
        os.makedirs(folder, exist_ok=True)
        tables = {pid: os.path.join(folder, table_name(pid)) for pid in self.inputs.save_tables}
        with kernel_cache(self.inputs.kernel_cache), kept_heap():
            self._results["n_rows"] = write_unit_rows(
                unit_rows(unit, tree, data_dir=self.inputs.data_dir,
                          centroids=tree.centroids if group_atlas else None,
                          region_map=region_map, tables=tables), path)
        self._results["rows"] = path
        self._results["tables"] = folder
        return runtime

