"""Multiverse runs: many pipelines (combinations of processing options) over one atlas, with the
stages they have in common computed once.

- :mod:`.grid`: read a grid (option -> values), check it, cross it, drop what abagen refuses or
  silently changes, stable pipeline ids;
- :mod:`.planner`: which stage results the pipelines share, and an estimate of the run;
- :mod:`.stats`: the statistics of each pipeline's region x gene table;
- :mod:`.sweep`: the in-process engine that runs a plan and streams one row per pipeline.
"""

from .grid import Grid, GridError, Pipeline, available_grids, load_grid, parse_grid, pipeline_id
from .planner import Plan, plan
from .stats import STATISTICS, table_statistics

__all__ = ["Grid", "GridError", "Pipeline", "Plan", "STATISTICS", "available_grids",
           "load_grid", "parse_grid", "pipeline_id", "plan", "table_statistics"]
