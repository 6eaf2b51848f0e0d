"""The in-process sweep engine: run a :class:`~ahba_app.multiverse.planner.Plan` unit by unit
and stream one row of statistics per pipeline to disk.

A unit is the groups sharing one probe choice and one matching (:meth:`Plan.units`); a group
is the pipelines sharing one normalization. A unit's upstream result (data, atlas, samples,
matching, probe choice: :class:`~ahba_app.multiverse.upstream.UnitUpstream`) is computed once;
its samples are normalized once per ``sample_norm`` (each sample over its genes alone), and
each group's gene normalization starts from them; then the group's downstream variants
(``missing``, ``region_agg``, ``agg_metric``) are aggregated together in memory by
:func:`~ahba_app.multiverse.variants.variant_tables` (the same numbers as
:func:`ahba_app.pipeline.aggregate_group`, the function ``get_expression_data`` uses, which
still computes the variants it does not cover, e.g. a ``stability_threshold``), and the
statistics (:mod:`.stats`) are taken from each table. Pipelines of a group whose options differ
only where they cannot change the result (see :func:`~ahba_app.multiverse.planner.stage_key`)
share their row's numbers. At most one group's tables are in memory at a time; rows go to disk
every ``flush_rows`` rows (TSV, or Parquet), into a temporary file renamed into place only when
the sweep has finished: an interrupted sweep leaves nothing half-written. Rows come unit by
unit, as the Nipype engine (:mod:`ahba_app.workflows.multiverse`) writes them."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping, TextIO

import pandas as pd

from .. import atomic
from .. import io as _io
from .. import pipeline as _pipeline
from ..selection_cache import ChoiceStore
from . import _options
from .planner import Plan, stage_key
from .stats import STATISTICS, TableStatistics
from .upstream import UnitUpstream
from .variants import Scratch, gather_group

__all__ = ["COLUMNS", "ProgressLine", "RowWriter", "format_value", "group_rows", "kept_heap",
           "kernel_cache", "sweep"]

#: Columns of the pipelines table: the id, every option, every statistic.
COLUMNS = ("pipeline_id", *_options.NAMES, *STATISTICS)

_FLOATS = ("ibf_threshold", "sim_threshold", "tolerance", "stability_threshold",
           "cge_distance_rho", "pc1_variance", "map_rho")
_INTEGERS = ("n_genes", "n_regions")


def format_value(value) -> str:
    """A cell of the TSV: None as ``none`` (how grids write it), NaN as ``n/a`` (BIDS), floats
    at full precision (``repr``), booleans ``true``/``false``, donors comma-separated."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else repr(value)
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


class RowWriter:
    """Rows (dicts with :data:`COLUMNS`) streamed to ``path`` as TSV or Parquet.

    Rows are held until ``flush_rows`` of them are waiting, then written; the file is written
    under a temporary name in the same folder and moved to ``path`` by :meth:`close`, or removed
    by :meth:`abort` (a ``with`` block aborts on an exception).
    """

    def __init__(self, path, *, parquet: bool = False, flush_rows: int = 10_000):
        self.path = Path(path)
        self.parquet = parquet
        self.flush_rows = max(1, int(flush_rows))
        self.n_rows = 0
        self._rows: list = []
        fd, tmp = atomic.create_temporary(self.path)
        self._tmp = Path(tmp)
        if parquet:
            import pyarrow.parquet as pq

            os.close(fd)
            self._writer = pq.ParquetWriter(str(self._tmp), self._schema())
            self._handle = None
        else:
            self._writer = None
            self._handle = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
            self._handle.write("\t".join(COLUMNS) + "\n")

    @staticmethod
    def _schema():
        import pyarrow as pa

        def kind(name):
            if name in _FLOATS:
                return pa.float64()
            if name in _INTEGERS:
                return pa.int64()
            if name in _options.BOOLEANS:
                return pa.bool_()
            return pa.string()
        return pa.schema([(name, kind(name)) for name in COLUMNS])

    def write(self, row: Mapping) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        if self._writer is not None:
            import pyarrow as pa

            columns = {}
            for name in COLUMNS:
                values = [row[name] for row in self._rows]
                if name == "donors":
                    values = [format_value(v) for v in values]
                columns[name] = values
            self._writer.write_table(pa.Table.from_pydict(columns, schema=self._writer.schema))
        else:
            self._handle.write("".join("\t".join(format_value(row[name]) for name in COLUMNS)
                                       + "\n" for row in self._rows))
        self.n_rows += len(self._rows)
        self._rows = []

    def close(self) -> Path:
        self.flush()
        if self._writer is not None:
            self._writer.close()
        else:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            elif not self._handle.closed:
                self._handle.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is None:
            self.close()
        else:
            self.abort()
        return False


class ProgressLine:
    """A progress report that also reads well in a batch log: one line (never a carriage
    return) at most every ``interval`` seconds, and one at the end: pipelines done, share,
    rate and time left."""

    def __init__(self, total: int, stream: TextIO | None = None, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.stream, self.interval, self.clock = total, stream, interval, clock
        self.start = clock()
        self.last = None
        self.done = 0

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        share = 100.0 * self.done / self.total if self.total else 100.0
        return (f"multiverse: {self.done:,}/{self.total:,} pipelines ({share:.1f}%), "
                f"{rate:.2f} pipelines/s, {_duration(left)} left")

    def update(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if self.last is None or now - self.last >= self.interval or done >= self.total:
            self.last = now
            print(self.line(), file=self.stream or sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown time"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _downstream(options: Mapping) -> tuple:
    return stage_key("aggregation", options)


def table_name(pipeline_id: str) -> str:
    """The file name of a saved table (``--multiverse-save-tables``)."""
    return f"pipeline-{pipeline_id}_expression.tsv.gz"


def write_table(expression: pd.DataFrame, path) -> Path:
    """One pipeline's region x gene table, gzip TSV as the group level writes its table
    (column ``index``: the region; ``n/a`` for no value; every float to 17 significant digits,
    so it reads back exactly), under a temporary name renamed into place."""
    path = Path(path)
    # A fixed temporary name, not atomic.replacing's random one: gzip records the file's name
    # in its header, and saved tables must be byte-identical from run to run.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        expression.rename_axis("index", axis=0).rename_axis(None, axis=1).to_csv(
            tmp, sep="\t", na_rep="n/a", float_format="%.17g", lineterminator="\n",
            compression={"method": "gzip", "compresslevel": 6, "mtime": 0})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _fast_variant(options: Mapping):
    """The ``(missing, region_agg, agg_metric)`` of a pipeline whose table
    :func:`~.variants.variant_tables` may compute, or None (the API's aggregation then; it
    also declines metrics it does not know)."""
    from ..aggregate import AGG_METRICS

    if (options.get("stability_threshold") is None
            and options["missing"] in (None, "centroids")
            and isinstance(options["agg_metric"], str) and options["agg_metric"] in AGG_METRICS):
        return (options["missing"], options["region_agg"], options["agg_metric"])
    return None


def group_rows(plan: Plan, key, atlas, atlas_info=None, *, data_dir=None,
               centroids: Mapping | None = None, region_map: pd.Series | None = None,
               n_proc: int = 1, tables: Mapping | None = None,
               upstream: UnitUpstream | None = None, sampled: Mapping | None = None,
               scratch: Scratch | None = None, shared: dict | None = None
               ) -> Iterable[dict]:
    """The rows of one group of ``plan`` (``key``: a key of ``plan.groups``): its normalization
    computed once from the unit's shared ``upstream`` (:class:`~.upstream.UnitUpstream`; made
    here when not given; from its samples normalized once, ``sampled``
    (:meth:`~.upstream.UnitUpstream.sample_normalized`), when given), its downstream variants
    aggregated together (:func:`~.variants.variant_tables`; the others, and every variant when
    a value is NaN, one by one by :func:`ahba_app.pipeline.aggregate_group`, the function
    ``get_expression_data`` uses). ``tables``: pipeline id -> file, for the pipelines whose
    table is saved (:func:`write_table`); ``scratch``: working memory shared by the groups of
    a unit (:class:`~.variants.Scratch`); ``shared``: tables shared by the groups of one
    ``sample_norm`` (:meth:`~.upstream.UnitUpstream.group_tables`)."""
    members = list(plan.pipelines(key))
    settings = _pipeline.Settings(**members[0].kwargs())
    with warnings.catch_warnings():
        # the same warnings (e.g. regions no sample can reach) would repeat for every group
        warnings.simplefilter("ignore")
        if upstream is None:
            upstream = UnitUpstream(atlas, atlas_info, settings=settings, data_dir=data_dir,
                                    n_proc=n_proc)

        def normalize_group():
            if sampled is not None:
                return upstream.normalized_from(sampled, settings)
            return upstream.normalized(settings)

        fast = sorted({v for v in (_fast_variant(m.options) for m in members) if v is not None},
                      key=repr)
        together = None
        normalized = None
        if fast and sampled is not None:
            # a block of genes at a time, from the unit's sample-normalized rows
            together = upstream.group_tables(sampled, settings, fast, scratch, shared=shared)
        elif fast:
            normalized, kept, labels = normalize_group()
            fills = None
            if any(missing is not None for missing, _, _ in fast):
                coords = {donor: _pipeline.atlas_coordinates(upstream.atlases[donor], frame)
                          for donor, frame in kept.items()}
                fills = _pipeline.fill_missing_regions("centroids", upstream.atlases, labels,
                                                       normalized, coords)
            # the frames go as they are gathered when no variant needs them afterwards
            consume = all(_fast_variant(m.options) is not None for m in members)
            gathered = gather_group(normalized, labels, upstream.all_labels, scratch,
                                    consume=consume)
            if gathered is not None:
                together = gathered.tables(fast, fills)
                del gathered
            if consume:
                normalized = None
        if normalized is None and (together is None or any(
                _fast_variant(m.options) not in together for m in members)):
            # a NaN, or variants only the API's aggregation computes: from the whole tables
            normalized, kept, labels = normalize_group()
        computed: dict = {}
        wanted = {_downstream(m.options) for m in members if tables and m.id in tables}
        saved: dict = {}  # variant -> table, for the variants of the tables saved
        for member in members:
            variant = _downstream(member.options)
            if variant not in computed:
                options = member.options
                quick = _fast_variant(options)
                if together is not None and quick in together:
                    expression = together[quick]
                else:
                    expression = _pipeline.aggregate_group(
                        upstream.atlases, upstream.all_labels, normalized, kept, labels,
                        missing=options["missing"], region_agg=options["region_agg"],
                        agg_metric=options["agg_metric"],
                        stability_threshold=options["stability_threshold"])["expression"]
                computed[variant] = TableStatistics(expression, centroids,
                                                    region_map).as_dict()
                if variant in wanted:
                    saved[variant] = expression
            if tables and member.id in tables:
                write_table(saved[variant], tables[member.id])
            yield dict({"pipeline_id": member.id}, **member.options, **computed[variant])


def by_unit(plan: Plan, keys=None) -> list[list]:
    """``keys`` (default: every group) gathered by unit (:meth:`Plan.units`), units in order
    of first appearance: the groups of a unit share one :class:`~.upstream.UnitUpstream`."""
    unit_of = {key: unit for unit, group_keys in plan.units().items() for key in group_keys}
    out: dict = {}
    for key in (plan.groups if keys is None else keys):
        out.setdefault(unit_of[key], []).append(key)
    return list(out.values())


def sweep(plan: Plan, atlas, atlas_info=None, out=None, *, data_dir=None,
          region_map: pd.Series | None = None, parquet: bool = False, keys=None,
          progress: ProgressLine | None = None, flush_rows: int = 10_000,
          n_proc: int = 1, save_tables=(), tables_dir=None) -> Path:
    """Run the groups of ``plan`` (all, or those of ``keys``) on ``atlas`` and write one row per
    pipeline to ``out`` (TSV, or Parquet with ``parquet``). Returns ``out``.

    ``atlas`` is checked once (:func:`ahba_app.check_atlas`); its centroids (mm) feed
    ``cge_distance_rho``. ``region_map`` (a value per region label) feeds ``map_rho``.
    ``save_tables``: ids of pipelines whose table is also written to ``tables_dir``
    (:func:`table_name`, :func:`write_table`).
    """
    from ..atlas import check_atlas

    tree = atlas
    if not isinstance(atlas, Mapping):
        tree = check_atlas(atlas, atlas_info)
        atlas_info = None  # the checked tree carries it
        centroids = tree.centroids
    else:
        centroids = None  # donor-native atlases: no common centroid per region
    tables = {pid: Path(tables_dir) / table_name(pid) for pid in save_tables}
    done = 0
    # one run: each matrix cache's checksum read once, not once a unit (io.remembering_checks)
    with _io.remembering_checks(), RowWriter(out, parquet=parquet,
                                             flush_rows=flush_rows) as writer:
        for unit_keys in by_unit(plan, keys):
            for row in unit_rows(plan, tree, atlas_info, data_dir=data_dir,
                                 centroids=centroids, region_map=region_map, n_proc=n_proc,
                                 tables=tables, keys=unit_keys):
                writer.write(row)
                done += 1
            if progress is not None:
                progress.update(done)
    return Path(out)


# ---------------------------------------------------------------------------------------------
# the stages of the Nipype engine (ahba_app.workflows.multiverse): pure functions of files
# ---------------------------------------------------------------------------------------------
def choose_probes(options: Mapping, data_dir=None) -> int:
    """The probe choice of pipelines with ``options`` (every option, canonical), made and
    stored beside the matrix caches (:mod:`ahba_app.selection_cache`) for the units that read
    it: the stages of :func:`ahba_app.pipeline.run` up to the choice, which needs no atlas (it
    reads the samples' structures, not their coordinates). Returns the number of genes.

    The store only saves time: a unit that finds no stored choice (a choice that is never
    stored, or samples that a donor-native atlas changes) makes it itself, with the same
    result."""
    settings = _pipeline.Settings(**{name: list(value) if name == "donors" else value
                                     for name, value in options.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files, rnaseq = _pipeline.locate_data(
            data_dir, settings.donors, need_rnaseq=settings.probe_selection == "rnaseq")
        probes = _pipeline.load_probe_table(files, reannotated=settings.reannotated)
        annotations = {donor: _pipeline.prepare_donor_samples(
            paths, probes, corrected_mni=settings.corrected_mni, lr_mirror=settings.lr_mirror,
            sim_threshold=settings.sim_threshold)[0] for donor, paths in files.items()}
        probes = _pipeline.filter_probe_table(files, annotations, probes,
                                              ibf_threshold=settings.ibf_threshold)
        expressions, _ = _pipeline.select_donor_probes(
            files, annotations, probes, probe_selection=settings.probe_selection,
            donor_probes=settings.donor_probes, rnaseq_files=rnaseq, store=ChoiceStore())
    return int(expressions.n_genes(next(iter(expressions))))


def _json_row(row: Mapping) -> dict:
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in row.items()}


def write_unit_rows(rows: Iterable[Mapping], path) -> int:
    """Rows of one unit to ``path`` (gzip JSON lines: every float exactly, NaN included),
    written under a temporary name and renamed into place. Returns how many."""
    import gzip
    import json

    n = 0
    with atomic.replacing(path, mkdir=False) as tmp, \
            gzip.open(tmp, "wt", encoding="utf-8", compresslevel=3) as handle:
        for row in rows:
            handle.write(json.dumps(_json_row(row)) + "\n")
            n += 1
    return n


def read_unit_rows(path) -> Iterable[dict]:
    """The rows :func:`write_unit_rows` wrote (donors as tuples again)."""
    import gzip
    import json

    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if isinstance(row.get("donors"), list):
                row["donors"] = tuple(row["donors"])
            yield row


def unit_rows(plan: Plan, atlas, atlas_info=None, *, data_dir=None,
              centroids: Mapping | None = None, region_map: pd.Series | None = None,
              n_proc: int = 1, tables: Mapping | None = None, keys=None) -> Iterable[dict]:
    """The rows of the groups ``keys`` of one unit (default: every group of ``plan``, a
    unit's plan: :func:`~.planner.plan_of`), in order, their upstream computed once
    (``tables``: as :func:`group_rows`).

    The groups are computed by ``sample_norm``: the unit's samples are normalized once per
    ``sample_norm`` (:meth:`~.upstream.UnitUpstream.sample_normalized`, one at a time in
    memory) and each group's gene normalization starts from them; the rows are then given in
    the order of ``keys``."""
    keys = list(plan.groups if keys is None else keys)
    if not keys:
        return
    settings = {key: _pipeline.Settings(**next(plan.pipelines(key)).kwargs()) for key in keys}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        upstream = UnitUpstream(atlas, atlas_info, settings=settings[keys[0]],
                                data_dir=data_dir, n_proc=n_proc)
    by_norm: dict = {}
    for key in keys:
        by_norm.setdefault(_sample_pass(settings[key]), []).append(key)
    rows: dict = {}
    scratch = Scratch()
    # A group's large arrays can sit in reference cycles (pandas objects), and the compiled
    # aggregation makes too few Python objects for the collector to run on its own: collected
    # after each group, a worker's memory stays that of one group. The objects alive before
    # the groups (modules, the compiler's, the unit's upstream: a million or more) are set
    # aside meanwhile (gc.freeze), so that each collection looks only at what the groups made
    # (a full-data unit's 34 collections: 9.1 -> 2.4 s, profiled); they are handed back to the
    # collector afterwards. What is still alive after a group's collection is set aside too:
    # the first groups compile the kernels, and the compiler's objects (~75,000) made each
    # later collection 40-50 ms; the groups' rows, the scratch and the shared tables it also
    # sets aside hold no reference cycles (freed by their counts when let go). gc.unfreeze
    # hands back every object set aside, the caller's too (the command line sets aside what
    # its imports and checks made before the units run): when the caller had set some aside,
    # the unit's own large objects are let go and collected, and what is still alive is set
    # aside again, the caller's among it (one full collection a unit, as each unit's first
    # collection was when the caller's objects were handed back).
    caller_froze = gc.get_freeze_count() > 0
    gc.collect()
    gc.freeze()
    # The tables' values, decoded once, serve the pass without sample normalization and then
    # the first whose normalization writes over them (:meth:`~.upstream.UnitUpstream.
    # sample_normalized`): those two passes first, in that order; the rows keep ``keys``'
    # order. (Not every pass: a third would hold a second 0.6 GB copy of them meanwhile.)
    passes = sorted(by_norm, key=_pass_rank)
    reuse = (None,) in by_norm and any(_pass_rank(norm) == 1 for norm in by_norm)
    values = None
    try:
        for norm in passes:
            group_keys = by_norm[norm]
            sampled = None
            if norm is not None:  # even for one group: its blocks of genes hold less than it
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if reuse and norm == (None,):  # kept on for the next pass
                        sampled = values = upstream.sample_values()
                    else:
                        sampled = upstream.sample_normalized(norm[0], values)
                        values = None
            shared: dict = {}  # tables the groups of this sample_norm share
            for key in group_keys:
                rows[key] = list(group_rows(plan, key, atlas, atlas_info, data_dir=data_dir,
                                            centroids=centroids, region_map=region_map,
                                            n_proc=n_proc, tables=tables, upstream=upstream,
                                            sampled=sampled, scratch=scratch, shared=shared))
                gc.collect()
                gc.freeze()
            del sampled, shared
            gc.collect()
    finally:
        gc.unfreeze()
        if caller_froze:
            upstream = scratch = values = None
            gc.collect()
            gc.freeze()
    for key in keys:
        yield from rows.pop(key)


#: glibc's mallopt parameters: M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@contextlib.contextmanager
def kept_heap():
    """Within the block, the arrays a unit frees stay in this process's heap for the next ones
    (glibc's allocator; elsewhere nothing changes). A unit's groups each make and free tens of
    tables of 10-50 MB; glibc gives such memory back to the system when freed (above its
    trimming threshold, or as separate maps) and takes it again page by page, a fault every
    4 KB: 1.7-3 s of a full-data unit's 4.5-4.8 s of system time. Here arrays up to 64 MB come
    from the heap and it keeps up to 1 GB free; the block's end hands back what is free
    (``malloc_trim``). glibc's thresholds then stay set for the process (its defaults adapt as
    it runs and cannot be set back): meant for the engine's unit nodes (their own processes
    with MultiProc and on a cluster)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        if libc is not None:
            libc.malloc_trim(0)


def _glibc():
    """The C library when it is glibc (its ``mallopt`` and ``malloc_trim``), else None."""
    import ctypes
    import platform

    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def kernel_cache(folder):
    """Within the block, this process's compiled kernels (:mod:`._kernels`, numba) are saved in
    ``folder`` as they compile and read from it instead of compiling: numba's on-disk cache, in
    a folder the user gave (the engine's work folder), never the package's (read-only in a
    container). Compiling them takes 4-6 s of CPU in every process: a resumed or second sweep
    in the same work folder, and every cluster job after the first, read them instead in a
    fraction of a second (the 8 calls that compiled a unit's kernels: 4.4-4.6 s -> 0.1-0.3 s
    of CPU, full data). numba
    keys each entry by the kernels' source file (size and time), the argument types and the
    CPU, and loads the machine code it compiled: the same arithmetic, bit for bit. ``folder``
    None: no cache."""
    kernels = [] if folder is None else _caching_kernels(folder)
    try:
        yield
    finally:
        _without_cache(kernels)


def _caching_kernels(folder) -> list:
    """The kernels of :mod:`._kernels`, now cached in ``folder``; none (they compile as without
    a cache) when the folder cannot be written, or numba's caching is not where it was (its
    ``config.CACHE_DIR`` and ``Dispatcher.enable_caching``): a cache only saves time. The
    folder is checked first, because numba would otherwise fall back on folders of its own
    choosing, the package's among them."""
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return []
    enabled = []
    try:
        import numba.core.config
        import numba.core.dispatcher

        from . import _kernels

        # numba's cache locator reads its folder from the configuration when the cache is
        # made (enable_caching); set only meanwhile, so that nothing else of the process changes
        previous = numba.core.config.CACHE_DIR
        numba.core.config.CACHE_DIR = os.fspath(folder)
        try:
            for kernel in vars(_kernels).values():
                if isinstance(kernel, numba.core.dispatcher.Dispatcher):
                    kernel.enable_caching()  # compilations already made stay in memory
                    enabled.append(kernel)
        finally:
            numba.core.config.CACHE_DIR = previous
    except (ImportError, AttributeError, RuntimeError, OSError):
        _without_cache(enabled)
        return []
    return enabled


def _without_cache(kernels) -> None:
    """``kernels`` as their decorators left them: no cache."""
    if kernels:
        import numba.core.caching

        for kernel in kernels:
            kernel._cache = numba.core.caching.NullCache()


def _pass_rank(norm) -> int:
    """The order of a unit's sample-normalization passes (:func:`_sample_pass`): without
    normalization first, then the layout-free normalizations (written over the values the
    first pass read), then the others."""
    from ..exact import LAYOUT_FREE_NORMS

    if norm == (None,):
        return 0
    return 1 if norm is not None and norm[0] in LAYOUT_FREE_NORMS else 2


def _sample_pass(settings):
    """The groups whose samples one sample normalization serves: ``(sample_norm,)``, or None
    for normalizations that need every donor at once (each group normalizes on its own)."""
    from ..normalize import ACROSS_DONORS, resolve_norm

    sample, gene = resolve_norm(settings.sample_norm), resolve_norm(settings.gene_norm)
    if sample in ACROSS_DONORS or gene in ACROSS_DONORS:
        return None
    return (sample,)
