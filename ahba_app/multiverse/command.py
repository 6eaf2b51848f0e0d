"""The command line's multiverse run (``ahba-app IN OUT group --multiverse GRID``), from checked
inputs: every input is checked before anything runs, and a bad one ends with one message
(:class:`MultiverseInputError`) and nothing written.

1. :func:`prepare`: read the grid with the run's other options as its base, plan it, read the
   ``--multiverse-map`` TSV against each atlas's regions;
2. :func:`summary`: what is about to run (pipelines, dropped combinations, shared stages, the
   estimate), printed before the run;
3. :func:`run`: one sweep per atlas into ``OUT/<atlas stem>_desc-multiverse_pipelines.tsv``
   (``.parquet`` with ``parquet``), with a progress line that reads well in batch logs.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, TextIO

import numpy as np
import pandas as pd

from . import _options
from .grid import Grid, GridError, load_grid
from .planner import Plan, plan as make_plan
from .sweep import ProgressLine, sweep

__all__ = ["MultiverseInputError", "MultiverseRun", "prepare", "read_region_map", "run",
           "summary"]

#: Columns a region map may name its regions with (BIDS ``index`` first).
INDEX_COLUMNS = ("index", "id", "label")


class MultiverseInputError(ValueError):
    """A grid or region map that cannot be used (one message, nothing written)."""


def read_region_map(path, labels, where: str = "the atlas") -> pd.Series:
    """The value per region of a map TSV (``index`` column, or ``id``/``label``, and one value
    column, or a ``value`` column), checked against the atlas's region ``labels``: every region
    of the file must be an atlas region and every atlas region must be listed (``n/a`` for no
    value)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except (OSError, ValueError) as err:
        raise MultiverseInputError(f"Cannot read the region map {path}: {err}") from None
    index = next((c for c in INDEX_COLUMNS if c in table.columns), None)
    if index is None:
        raise MultiverseInputError(f"The region map {path} has no 'index' column (the atlas "
                                   f"region of each row); its columns are {list(table.columns)}.")
    others = [c for c in table.columns if c != index]
    value = "value" if "value" in others else (others[0] if len(others) == 1 else None)
    if value is None:
        raise MultiverseInputError(f"The region map {path} must have one value column besides "
                                   f"'{index}' (or one named 'value'); it has {others}.")
    values = pd.to_numeric(table[value], errors="coerce")
    bad = table[value][values.isna() & table[value].notna()]
    if len(bad):
        raise MultiverseInputError(f"The region map {path}: column {value!r} holds "
                                   f"non-numbers ({list(bad[:5])}); write n/a for no value.")
    regions = pd.to_numeric(table[index], errors="coerce")
    if regions.isna().any() or (regions != np.floor(regions)).any():  # not 1.5 read as 1
        raise MultiverseInputError(f"The region map {path}: column {index!r} must hold the "
                                   "atlas's integer region indices.")
    regions = regions.astype(np.int64)
    if regions.duplicated().any():
        raise MultiverseInputError(f"The region map {path} lists region(s) "
                                   f"{sorted(set(regions[regions.duplicated()]))[:10]} twice.")
    labels = [int(label) for label in labels]
    extra = sorted(set(regions) - set(labels))
    missing = sorted(set(labels) - set(regions))
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"region(s) {extra[:10]} are not in {where}")
        if missing:
            parts.append(f"region(s) {missing[:10]} of {where} are not listed")
        raise MultiverseInputError(f"The regions of the map {path} do not match {where}: "
                                   + "; ".join(parts) + ". List every region of the atlas once "
                                   "(n/a for no value).")
    return pd.Series(values.to_numpy(dtype=float), index=regions.to_numpy(), name=value)


@dataclass
class MultiverseRun:
    """A checked multiverse run: the grid, its plan, and per atlas (output stem -> atlas) the
    atlas (an AtlasTree, or a donor-native mapping) and its region map."""

    grid: Grid
    plan: Plan
    atlases: dict
    region_maps: dict = field(default_factory=dict)
    parquet: bool = False
    #: output stem -> the atlas as :meth:`ahba_app.bids.AtlasInput.as_dict` (what the Nipype
    #: engine's nodes load); empty for a run from the Python API's trees
    inputs: dict = field(default_factory=dict)
    #: ids of the pipelines whose tables are saved (``--multiverse-save-tables``)
    save_tables: tuple = ()
    #: every option of the run's own pipeline (command line or preset), canonical: the
    #: report's reference
    reference: dict = field(default_factory=dict)


#: The folder of the work folder where the units keep their compiled kernels.
KERNEL_CACHE = "compiled-kernels"

#: At most this many tables are saved (each is regions x genes: ~10 MB on full data).
MAX_SAVED_TABLES = 1000


def select_tables(spec, grid: Grid, reference: Mapping) -> tuple:
    """The pipeline ids of ``--multiverse-save-tables``: ``all`` (grids of at most
    :data:`MAX_SAVED_TABLES` pipelines), ``reference`` (the run's own options), ids separated
    by commas, or a file (one id per line, or a TSV with a ``pipeline_id`` column, e.g. rows
    of a sweep picked out). Every id must be a pipeline of the grid."""
    from .grid import pipeline_id

    if spec is None or spec == "" or spec == ():
        return ()
    if not isinstance(spec, str):
        wanted, where = [str(s) for s in spec], "--multiverse-save-tables"
    elif spec == "all":
        if grid.n_pipelines > MAX_SAVED_TABLES:
            raise MultiverseInputError(
                f"--multiverse-save-tables all would write {grid.n_pipelines:,} tables: save "
                f"at most {MAX_SAVED_TABLES:,}. Give the ids of the pipelines you want (a "
                "file with a pipeline_id column, e.g. rows picked from a first sweep).")
        return tuple(p.id for p in grid.pipelines())
    elif spec == "reference":
        wanted, where = [pipeline_id(reference)], "--multiverse-save-tables reference"
    elif Path(spec).expanduser().is_file():
        path = Path(spec).expanduser()
        where = f"--multiverse-save-tables file {path}"
        try:
            # a spreadsheet's export may begin with a byte-order mark and end lines with CRLF
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise MultiverseInputError(f"Cannot read the {where}: {err}.") from None
        header = [cell.strip() for cell in lines[0].split("\t")] if lines else []
        if "pipeline_id" in header:
            column = header.index("pipeline_id")
            rows = [(number, line.split("\t")) for number, line in enumerate(lines[1:], 2)
                    if line.strip()]
            short = [number for number, cells in rows if len(cells) <= column]
            if short:
                raise MultiverseInputError(
                    f"The {where}: line(s) {short[:5]} have no pipeline_id cell (column "
                    f"{column + 1} of the header); give every row its tab-separated cells.")
            wanted = [cells[column].strip() for _, cells in rows]
        else:
            wanted = [line.strip() for line in lines if line.strip()]
    else:
        wanted, where = [s.strip() for s in spec.split(",") if s.strip()], \
            "--multiverse-save-tables"
    if not wanted:
        raise MultiverseInputError(f"The {where} lists no pipeline id.")
    known = {p.id for p in grid.pipelines()}
    unknown = [pid for pid in wanted if pid not in known]
    if unknown:
        hint = (" The run's own options are not a pipeline of the grid: add their values to "
                "the grid, or list ids." if spec == "reference" else
                " Ids are the pipeline_id column of a sweep's rows (16 hex digits).")
        raise MultiverseInputError(f"The {where} names {len(unknown)} id(s) that are not "
                                   f"pipelines of the grid: {unknown[:5]}.{hint}")
    return tuple(dict.fromkeys(wanted))


def prepare(grid_arg, base: Mapping, atlases: Mapping, *, map_path=None,
            group_atlas: bool = True, parquet: bool | None = None,
            inputs: Mapping | None = None, save_tables=None) -> MultiverseRun:
    """Check everything a multiverse run needs. ``base``: the other options' values (command
    line / preset); ``atlases``: output stem -> checked atlas (AtlasTree with ``labels``).
    ``parquet`` None: Parquet for grids of more than 100,000 pipelines, TSV below."""
    try:
        grid = load_grid(grid_arg, base=base, group_atlas=group_atlas)
    except GridError as err:
        raise MultiverseInputError(str(err)) from None
    maps = {}
    if map_path is not None:
        for stem, tree in atlases.items():
            labels = next(iter(tree.values())).labels if isinstance(tree, Mapping) \
                else tree.labels
            maps[stem] = read_region_map(map_path, labels, where=stem)
    reference = _options.defaults()
    for name, value in base.items():
        reference[name] = _options.canonical(name, value)
    selected = select_tables(save_tables, grid, reference)
    result = make_plan(grid)
    if parquet is None:
        parquet = result.n_pipelines > 100_000
    return MultiverseRun(grid, result, dict(atlases), maps, parquet, dict(inputs or {}),
                         selected, reference)


def summary(job: MultiverseRun, *, cells: int | None = None) -> str:
    """What is about to run, for the log: the grid, what is dropped and why, the plan."""
    kwargs = {} if cells is None else {"cells": cells}
    n_atlases = len(job.atlases)
    return "\n".join([job.grid.summary(),
                      f"Per atlas ({n_atlases} atlas{'es' if n_atlases != 1 else ''}): "
                      + job.plan.summary(parquet=job.parquet, **kwargs)])


def output_path(output_dir, stem: str, parquet: bool) -> Path:
    return Path(output_dir) / f"{stem}_desc-multiverse_pipelines.{'parquet' if parquet else 'tsv'}"


def tables_path(output_dir, stem: str) -> Path:
    """The folder of an atlas's saved tables (``--multiverse-save-tables``)."""
    return Path(output_dir) / f"{stem}_desc-multiverse_tables"


def _staging(final: Path) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))


def _publish_folder(staging: Path, final: Path) -> Path:
    """Move a complete staging folder into place (replacing an older one)."""
    if final.exists():
        old = _staging(final)
        os.replace(final, old / final.name)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    return final


def write_reports(job: MultiverseRun, output_dir, rows: Mapping) -> list[Path]:
    """The multiverse report of each atlas (``<stem>_desc-multiverse_report.html``) and, for
    Parquet rows, the summary TSV beside them (``<stem>_desc-multiverse_summary.tsv``)."""
    from .report import write_report

    written = []
    for stem, path in rows.items():
        summary_file = (Path(output_dir) / f"{stem}_desc-multiverse_summary.tsv"
                        if job.parquet else None)
        written += write_report(path, Path(output_dir) / f"{stem}_desc-multiverse_report.html",
                                reference=job.reference, summary_path=summary_file,
                                title=stem, grid_name=job.grid.name,
                                reference_label="the command line's / preset's options")
    return written


def run(job: MultiverseRun, output_dir, *, data_dir=None, stream: TextIO | None = None,
        interval: float = 30.0, n_proc: int = 1) -> list[Path]:
    """One sweep per atlas; returns the tables written."""
    stream = stream or sys.stderr
    written = []
    total = job.plan.n_pipelines * len(job.atlases)
    progress = _Offset(ProgressLine(total, stream, interval))
    for stem, tree in job.atlases.items():
        out = output_path(output_dir, stem, job.parquet)
        staging = _staging(tables_path(output_dir, stem)) if job.save_tables else None
        try:
            written.append(sweep(job.plan, tree, None, out, data_dir=data_dir,
                                 region_map=job.region_maps.get(stem), parquet=job.parquet,
                                 progress=progress, n_proc=n_proc,
                                 save_tables=job.save_tables, tables_dir=staging))
        except BaseException:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        if staging is not None:
            written.append(_publish_folder(staging, tables_path(output_dir, stem)))
        progress.offset += job.plan.n_pipelines
    return written


def run_engine(job: MultiverseRun, output_dir, *, work_dir, engine=None, data_dir=None,
               data_identity: str = "", stream: TextIO | None = None,
               interval: float = 30.0, kernel_cache=None) -> list[Path]:
    """Run ``job`` as a Nipype workflow (:mod:`ahba_app.workflows.multiverse`) with ``engine``
    (:class:`ahba_app.cli.engines.Engine`; Linear by default) in ``work_dir``, then merge each
    atlas's rows, unit by unit in plan order, into its table. The same ``work_dir`` resumes a
    killed sweep: finished units are not run again. The units' compiled kernels are kept in
    ``kernel_cache`` (default: ``work_dir/compiled-kernels``; see
    :func:`~.sweep.kernel_cache`). Returns the tables written."""
    from ..cli.engines import Engine, run_workflow
    from ..workflows.multiverse import init_multiverse_wf
    from .sweep import RowWriter, read_unit_rows

    if not job.inputs:
        raise ValueError("run_engine needs the atlases as AtlasInput dicts (job.inputs).")
    engine = within_budget(engine or Engine())
    stream = stream or sys.stderr
    workflow, units = init_multiverse_wf(job.plan, job.inputs, data_dir=data_dir,
                                         data_identity=data_identity,
                                         region_maps=job.region_maps,
                                         save_tables=job.save_tables, base_dir=work_dir,
                                         kernel_cache=kernel_cache or Path(work_dir)
                                         / KERNEL_CACHE)
    crash_dir = Path(work_dir) / "multiverse-crashes"
    workflow.config["execution"].update({"crashdump_dir": str(crash_dir),
                                         "crashfile_format": "txt",
                                         "remove_unnecessary_outputs": False})
    if engine.plugin == "MultiProc":
        # how soon a free worker is given the next unit: Nipype's 2 s between looks left a
        # worker idle about a second after each node; each look costs the main process CPU
        # that grows with the graph (1,400 waiting nodes, measured: 56 ms a second at 0.1 s,
        # 6 at 0.5 s, 2 at 2 s); a cluster's queue is asked at Nipype's pace
        workflow.config["execution"]["poll_sleep_duration"] = 0.5
    progress = ProgressLine(sum(unit.n_pipelines for unit in units), stream, interval)
    sizes = {unit.name: unit.n_pipelines for unit in units}

    def finished(node, status):
        if status == "end" and node.name in sizes:
            progress.update(min(progress.total, progress.done + sizes.pop(node.name)))

    run_workflow(workflow, engine, status_callback=finished)
    missing = [unit.name for unit in units if not unit.rows.is_file()]
    if missing:
        raise RuntimeError(f"{len(missing)} unit(s) of the multiverse did not finish "
                           f"({', '.join(missing[:5])}); see the crash files in {crash_dir}. "
                           "Run the same command again to resume.")
    if progress.done < progress.total:
        progress.update(progress.total)
    written = []
    for stem in job.inputs:
        out = output_path(output_dir, stem, job.parquet)
        with RowWriter(out, parquet=job.parquet) as writer:
            for unit in units:
                if unit.stem == stem:
                    for row in read_unit_rows(unit.rows):
                        writer.write(row)
        written.append(out)
        if job.save_tables:
            staging = _staging(tables_path(output_dir, stem))
            for unit in units:
                if unit.stem == stem:
                    for table in sorted(unit.tables.glob("pipeline-*")):
                        shutil.copyfile(table, staging / table.name)
            written.append(_publish_folder(staging, tables_path(output_dir, stem)))
    return written


def within_budget(engine, costs=None):
    """``engine``, for MultiProc with no memory given (``--mem``/``--mem_mb``, or
    ``memory_gb`` in ``--plugin-args``), told the sweep's memory budget: what
    :attr:`~.planner.CostModel.budget_bytes` leaves beside the main process. The units' nodes
    carry their estimated peaks (``mem_gb``, :func:`~.planner.unit_peak_bytes`), so that two
    units too large together never run side by side (a 'bidirectional' unit of 'average'
    probes with another one)."""
    import copy

    from .planner import CostModel

    costs = costs or CostModel()
    if engine.plugin != "MultiProc" or engine.mem_mb or "memory_gb" in engine.plugin_args:
        return engine
    engine = copy.copy(engine)
    engine.plugin_args = dict(engine.plugin_args,
                              memory_gb=(costs.budget_bytes - costs.main_bytes) / 2**30)
    return engine


class _Offset:
    """One progress line over several sweeps (each counts from 0)."""

    def __init__(self, line: ProgressLine):
        self.line, self.offset = line, 0

    def update(self, done: int) -> None:
        self.line.update(self.offset + done)



# ---------------------------------------------------------------------------------------------
# the command line (ahba_app.cli.run calls these with its checked RunPlan)
# ---------------------------------------------------------------------------------------------
FORMATS = ("auto", "tsv", "parquet")


def prepare_cli(run_plan, grid_arg, map_path=None, fmt: str = "auto",
                save_tables=None) -> MultiverseRun:
    """Check a ``--multiverse`` run on top of the checked :class:`ahba_app.cli.run.RunPlan`:
    the group level, the grid (the run's options as its base), the region map per atlas, the
    tables to save."""
    from .. import bids

    if run_plan.analysis_level != "group":
        raise MultiverseInputError("--multiverse runs at the group level (its tables are region "
                                   "x gene); use 'group' instead of "
                                   f"'{run_plan.analysis_level}'.")
    if fmt not in FORMATS:
        raise MultiverseInputError(f"Unknown --multiverse-format {fmt!r}: choose one of "
                                   f"{list(FORMATS)}.")
    atlases, inputs, group_atlas = {}, {}, True
    for atlas in run_plan.atlases:
        trees, group = bids.load_atlas_input(atlas, run_plan.settings.donors,
                                             data_dir=run_plan.data_dir)
        group_atlas = group_atlas and group
        atlases[atlas.key] = next(iter(trees.values())) if group else trees
        inputs[atlas.key] = atlas.as_dict()
    parquet = None if fmt == "auto" else fmt == "parquet"
    return prepare(grid_arg, run_plan.settings.as_dict(), atlases, map_path=map_path,
                   group_atlas=group_atlas, parquet=parquet, inputs=inputs,
                   save_tables=save_tables)


def run_cli(run_plan, job: MultiverseRun, stream: TextIO | None = None,
            engine=None) -> list[Path]:
    """Print what is about to run, run the sweep's workflow (``engine``: the checked
    ``--nipype-plugin``; by default Linear, or MultiProc with ``--nprocs`` above 1) in the
    run's work folder (locked: one run at a time), write every atlas's rows, saved tables and
    report into the output folder, then the folder's dataset_description.json."""
    from .. import bids
    from ..cli.engines import Engine
    from ..cli.publish import lock_work_dir

    stream = stream or sys.stderr
    engine = engine or Engine(nprocs=run_plan.nprocs, mem_mb=run_plan.mem_mb)
    print(summary(job), file=stream, flush=True)
    work_dir = Path(run_plan.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_work_dir(work_dir)  # one run at a time per work folder (Nipype's cache)
    try:
        run_plan.output_dir.mkdir(parents=True, exist_ok=True)
        written = run_engine(job, run_plan.output_dir, work_dir=work_dir, engine=engine,
                             data_dir=run_plan.data_dir,
                             data_identity=getattr(run_plan, "data_identity", "") or "",
                             stream=stream)
    finally:
        lock.release()
    rows = {stem: output_path(run_plan.output_dir, stem, job.parquet) for stem in job.inputs}
    written += write_reports(job, run_plan.output_dir, rows)
    bids.write_json(bids.dataset_description(run_plan.input_dir),
                    run_plan.output_dir / "dataset_description.json")
    return written
