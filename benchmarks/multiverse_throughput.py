"""Throughput of a multiverse sweep against abagen running the same pipelines one by one, in
the same run: pipelines per second, and what that makes of the whole grid (an extrapolation).

    python benchmarks/multiverse_throughput.py --data DIR [--grid markello2021]
        [--pipelines 2000] [--nprocs 2] [--abagen 2] [--work DIR]

1. picks random *probe choices* of the grid and takes every *unit* reading them (a unit: the
   pipelines sharing a probe choice and a matching, one node of the Nipype engine), until at
   least ``--pipelines`` pipelines in a number of units that ``--nprocs`` divides. Why whole
   probe choices: in the grid each probe-choice node (10-30 s) feeds the 6 units below it,
   180 nodes for 1,296 units; random units would each bring their own (7 random units: 5
   nodes), charging the sample about six times the grid's share of them. Why a multiple of
   ``--nprocs``: the grid's 1,296 units keep every worker busy to the end, a sample of 7 units
   on 2 workers leaves one idle during its last unit. ``--sample units`` draws units instead
   (the sampling of sessions 6-9, still a multiple of ``--nprocs``);
2. runs them with the Nipype engine (``MultiProc`` with ``--nprocs`` worker processes, BLAS on
   one thread per worker; ``--nprocs 1``: Linear) on the DK atlas, the matrix caches built
   and the compiled kernels cached beforehand (untimed, as a second run finds them; the
   kernels: one run of part of a unit, into ``--work``'s ``compiled-kernels``) and no probe
   choice stored;
3. runs abagen 0.1.3 (its pinned environment with parquet, see ``benchmarks/run.py``) on
   ``--abagen`` pipelines of that sample, one process each, after one untimed run that builds
   abagen's parquet files (as its users' second run finds them);
4. prints wall and CPU time, the load average (``uptime``) before and after, where the wall
   time went (before the first node, the nodes, idle worker time, after the last node: from
   each node's own start and end), pipelines per second for both tools, the ratio, and the
   extrapolation to the whole grid; with ``--record FILE``, writes them as JSON too.

With several processes each worker runs its numeric loops on one thread (``AHBA_APP_THREADS``
and the BLAS variables set to 1), so that the workers do not oversubscribe the cores.

The data folder is used through hard links in ``--work`` (both tools write caches beside the
data). A script, not a test: it prints figures, asserts nothing.
"""

from __future__ import annotations

import os
import time

_STARTED = time.time()  # the sweep process's start, for its timeline

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
from collections import defaultdict  # noqa: E402
import io as _stdio  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def sample_units(whole, *, seed: int, pipelines: int, nprocs: int, by: str = "probe-choices",
                 groups: int = 0) -> list:
    """The sample's units (each a list of normalization keys of ``whole``): random probe
    choices with all their units (``by="probe-choices"``), or random units (``"units"``),
    until at least ``pipelines`` pipelines in a number of units ``nprocs`` divides."""
    units = whole.units()
    if by == "units":
        draws = [[keys] for keys in units.values()]
    else:
        by_choice: dict = defaultdict(list)
        for (probe_key, _), keys in units.items():
            by_choice[probe_key].append(keys)
        draws = list(by_choice.values())
    random.Random(seed).shuffle(draws)
    chosen, n = [], 0
    for draw in draws:
        for keys in draw:
            keys = keys[:groups] if groups else keys
            chosen.append(keys)
            n += sum(whole.sizes[key] for key in keys)
            if by == "units" and n >= pipelines and len(chosen) % max(1, nprocs) == 0:
                return chosen
        if n >= pipelines and len(chosen) % max(1, nprocs) == 0:
            return chosen
    return chosen


def node_timeline(work_dir: Path) -> list:
    """(node name, start, end) of every node run in ``work_dir`` (epoch seconds, from the
    runtimes Nipype keeps in each node's result file), by start."""
    from datetime import datetime, timezone

    from nipype.utils.filemanip import loadpkl

    def epoch(stamp):  # Nipype writes UTC without saying so
        when = datetime.fromisoformat(stamp)
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()

    out = []
    for path in Path(work_dir).glob("multiverse_wf/*/result_*.pklz"):
        runtime = loadpkl(path).runtime
        out.append((path.parent.name, epoch(runtime.startTime), epoch(runtime.endTime)))
    return sorted(out, key=lambda node: node[1])


def where_the_time_went(timeline: list, stamps: dict, started: float, wall: float,
                        nprocs: int) -> dict:
    """The sweep's wall time cut at its first node's start and last node's end, the nodes'
    own seconds by kind, and the worker seconds left idle between (``nprocs`` x span minus
    the nodes' seconds)."""
    first = min(start for _, start, _ in timeline) - started
    last = max(end for _, _, end in timeline) - started
    kinds: dict = defaultdict(float)
    counts: dict = defaultdict(int)
    for name, start, end in timeline:
        kind = "probes" if name.startswith("probes") else "units"
        kinds[kind] += end - start
        counts[kind] += 1
    busy = sum(kinds.values())
    return {"before_first_node_s": round(first, 2),
            "engine_started_s": round(stamps["engine"] - started, 2),
            "nodes_s": {kind: round(v, 2) for kind, v in kinds.items()},
            "nodes": dict(counts),
            "idle_worker_s": round(nprocs * (last - first) - busy, 2),
            "after_last_node_s": round(wall - last, 2),
            "rows_merged_s": round(stamps["merged"] - started - last, 2),
            "report_s": round(stamps["reported"] - stamps["merged"], 2)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="AHBA data folder")
    parser.add_argument("--grid", default="markello2021", help="grid name or TOML file")
    parser.add_argument("--pipelines", type=int, default=2000,
                        help="run random units until at least this many pipelines")
    parser.add_argument("--groups", type=int, default=0,
                        help="take only the first N normalization groups of each unit "
                             "(0: whole units)")
    parser.add_argument("--nprocs", type=int, default=2, help="MultiProc worker processes")
    parser.add_argument("--abagen", type=int, default=2,
                        help="pipelines of the sample abagen runs (0: none)")
    parser.add_argument("--abagen-venv", type=Path,
                        default=REPO / "benchmarks" / "results" / ".venv-abagen")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (kept)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the unit sample")
    parser.add_argument("--record", type=Path, default=None,
                        help="write the figures to this JSON file")
    parser.add_argument("--sample", choices=("probe-choices", "units"), default="probe-choices",
                        help="draw whole probe choices (every unit below each) or units")
    parser.add_argument("--sweep-only", action="store_true",
                        help="(internal) run the sample's sweep in this process and return")
    parser.add_argument("--warm-kernels", action="store_true",
                        help="(internal) with --sweep-only: run part of the first unit only, "
                             "to fill the compiled kernels' cache")
    args = parser.parse_args(argv)

    import run as bench  # benchmarks/run.py: abagen's environment and measurements
    from ahba_app import io
    from ahba_app.bids import default_atlas
    from ahba_app.cli.engines import Engine
    from ahba_app.fetch import find_microarray
    from ahba_app.images import check_atlas
    from ahba_app.multiverse import _options, load_grid, plan
    from ahba_app.multiverse.command import MultiverseRun, run_engine, write_reports
    from ahba_app.multiverse.planner import DOWNSTREAM, plan_of

    work = args.work or Path(tempfile.mkdtemp(prefix="multiverse-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = bench.link_data(args.data, work / "data")
    if (args.data / "rnaseq").is_dir() and not (data / "rnaseq" / "rnaseq_donor9861").exists():
        shutil.copytree(args.data / "rnaseq", data / "rnaseq", copy_function=os.link,
                        dirs_exist_ok=True)
    say = (lambda *a, **k: None) if args.sweep_only else print
    say(f"machine: {os.cpu_count()} CPUs; {_uptime()}", flush=True)

    grid = load_grid(args.grid)
    combos_file = work / ("warm.json" if args.warm_kernels else "sample.json")
    if args.sweep_only:  # the sample the parent drew: planned alone, as its user would
        upstream = [name for name in grid.axes if name not in DOWNSTREAM]
        sample = plan_of(grid, [tuple(_options.canonical(name, value)
                                      for name, value in zip(upstream, combo))
                                for combo in json.loads(combos_file.read_text())])
    else:
        t0 = time.perf_counter()
        whole = plan(grid)
        say(f"grid {grid.name}: {whole.summary()}")
        say(f"planning took {time.perf_counter() - t0:.1f} s", flush=True)
        chosen = sample_units(whole, seed=args.seed, pipelines=args.pipelines,
                              nprocs=args.nprocs, by=args.sample, groups=args.groups)
        sample = plan_of(grid, [combo for keys in chosen for key in keys
                                for combo in whole.groups[key]])
        combos_file.write_text(json.dumps([combo for keys in chosen for key in keys
                                           for combo in whole.groups[key]]))
        # the kernels' cache is filled by the first groups of the first unit: normalizations
        # of each kind (scaled robust sigmoid, then z-score samples)
        (work / "warm.json").write_text(json.dumps([combo for key in chosen[0][:12]
                                                    for combo in whole.groups[key]]))
    atlas = default_atlas()
    engine = Engine("MultiProc" if args.nprocs > 1 else "Linear", nprocs=args.nprocs)
    if args.sweep_only:
        job = MultiverseRun(grid, sample, {"atlas-dk": check_atlas(atlas.image, atlas.info)},
                            inputs={"atlas-dk": atlas.as_dict()},
                            reference=_options.defaults())  # abagen's defaults
        out = work / ("warm" if args.warm_kernels else "out")
        out.mkdir(exist_ok=True)
        work_dir = work / f"work-{time.time_ns()}"
        stamps = {"engine": time.time()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = run_engine(job, out, work_dir=work_dir, engine=engine, data_dir=str(data),
                              stream=_stdio.StringIO(),
                              kernel_cache=work / "compiled-kernels")
        stamps["merged"] = time.time()
        if args.warm_kernels:
            shutil.rmtree(work_dir)
            shutil.rmtree(out)
            return
        write_reports(job, out, {"atlas-dk": rows[0]})  # the report of the sample
        stamps["reported"] = time.time()
        own = resource.getrusage(resource.RUSAGE_SELF)
        (work / "timeline.json").write_text(json.dumps(
            {"started": _STARTED, "stamps": stamps, "nodes": node_timeline(work_dir),
             "main_cpu_s": own.ru_utime + own.ru_stime}))
        return
    print(f"sample: {sample.n_pipelines} pipelines, {len(sample.units())} units, "
          f"{len(sample.groups)} normalization groups", flush=True)

    for paths in find_microarray(str(data), "all").values():  # the caches, untimed
        for kind in ("microarray", "pacall"):
            io.load_matrix(paths[kind], kind)
    env = dict(os.environ)
    if args.nprocs > 1:  # one thread per worker process: the processes share the cores
        env.setdefault("AHBA_APP_THREADS", "1")
    sweep_cmd = [sys.executable, __file__, *(argv or sys.argv[1:]), "--work", str(work),
                 "--sweep-only"]
    # the compiled kernels, cached (untimed): what a second sweep, and the whole grid's 1,296
    # units after each worker's first, find
    bench.measure([*sweep_cmd, "--warm-kernels"], env=env, cwd=work, log=work / "warm.log")
    for stored in (data / "microarray").rglob("selection-*.npz"):  # no probe choice stored
        stored.unlink()

    # the sweep in a process of its own: its CPU time includes its workers'
    before = _uptime()
    started = time.time()
    figures = bench.measure(sweep_cmd, env=env, cwd=work, log=work / "sweep.log")
    seconds, cpu = figures["wall_s"], figures["cpu_s"]
    timeline = json.loads((work / "timeline.json").read_text())
    went = where_the_time_went(timeline["nodes"], timeline["stamps"], started, seconds,
                               args.nprocs)
    went["main_process_cpu_s"] = round(timeline["main_cpu_s"], 2)
    rate = sample.n_pipelines / seconds
    print(f"\nahba-app ({engine.plugin}, {args.nprocs} process(es)): {sample.n_pipelines} "
          f"pipelines in {seconds:.1f} s wall, {cpu:.1f} s CPU: {rate:.2f} pipelines/s "
          f"({sample.n_pipelines / cpu:.2f} per CPU-second), peak memory "
          f"{figures['peak_mb'] / 1024:.2f} GB")
    print(f"  before: {before}\n  after:  {_uptime()}")
    print(f"  wall: {went['before_first_node_s']:.1f} s before the first node (interpreter, "
          f"imports, planning, the workflow; the engine started at "
          f"{went['engine_started_s']:.1f} s), nodes "
          + ", ".join(f"{went['nodes'][k]} {k} {v:.1f} s" for k, v in went["nodes_s"].items())
          + f" with {went['idle_worker_s']:.1f} worker-seconds idle between, "
          f"{went['after_last_node_s']:.1f} s after the last node (rows merged "
          f"{went['rows_merged_s']:.1f} s, report {went['report_s']:.1f} s, exit); the "
          f"engine's main process {went['main_process_cpu_s']:.1f} s CPU")
    print(f"  extrapolated (not measured): the whole grid ({whole.n_pipelines:,} pipelines) "
          f"in {whole.n_pipelines / rate / 3600:.1f} h at this rate", flush=True)
    record = {"command": " ".join(["python", "benchmarks/multiverse_throughput.py",
                                   *(argv or sys.argv[1:])]),
              "data": str(args.data), "grid": grid.name, "nprocs": args.nprocs,
              "machine_cpus": os.cpu_count(),
              "sweep": {"pipelines": sample.n_pipelines, "units": len(sample.units()),
                        "groups": len(sample.groups), "wall_s": round(seconds, 2),
                        "cpu_s": round(cpu, 2), "peak_mb": round(figures["peak_mb"], 1),
                        "pipelines_per_s": round(rate, 3), "sample": args.sample,
                        "where_the_time_went": went,
                        "uptime_before": before, "uptime_after": _uptime()},
              "extrapolated_whole_grid_h": round(whole.n_pipelines / rate / 3600, 2)}

    def save():
        if args.record is not None:
            args.record.parent.mkdir(parents=True, exist_ok=True)
            args.record.write_text(json.dumps(record, indent=1) + "\n")

    save()
    if args.abagen <= 0:
        return
    python = bench.ensure_abagen_venv(args.abagen_venv)
    from oracle import KEEP_KNOWN_PROBES

    script = work / "abagen_api.py"
    script.write_text(KEEP_KNOWN_PROBES + bench._API_SCRIPT["abagen"])
    patch = "patch" if bench.needs_probe_patch(data) else "-"
    # abagen reads RNA-seq data from its own download layout: its rnaseq pipelines are left out
    usable = [p for p in sample.pipelines() if p.options["probe_selection"] != "rnaseq"]
    picks = random.Random(args.seed).sample(usable, min(args.abagen, len(usable)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    logs = work / "abagen-logs"
    logs.mkdir(exist_ok=True)

    def abagen(pipeline, label):
        kwargs = {k: v for k, v in pipeline.kwargs().items() if k != "stability_threshold"}
        cmd = [str(python), str(script), str(data), atlas.image, atlas.info,
               json.dumps(kwargs), "-", patch]
        return bench.measure(cmd, env=env, cwd=work, log=logs / f"{label}.log")

    print("\nabagen: one untimed run builds its parquet files ...", flush=True)
    abagen(picks[0], "prepare")
    before, times, cpus = _uptime(), [], []
    for i, pipeline in enumerate(picks):
        figures = abagen(pipeline, f"run{i}")
        times.append(figures["wall_s"])
        cpus.append(figures["cpu_s"])
        print(f"  {pipeline.id}: {figures['wall_s']:.1f} s wall, {figures['cpu_s']:.1f} s CPU",
              flush=True)
    per = sum(times) / len(times)
    print(f"abagen: {per:.1f} s wall per pipeline ({1 / per:.4f} pipelines/s), "
          f"{sum(cpus) / len(cpus):.1f} s CPU per pipeline")
    print(f"  before: {before}\n  after:  {_uptime()}")
    print(f"ratio: ahba-app's sweep {rate * per:.0f} x abagen one by one (wall; "
          f"{(sample.n_pipelines / cpu) * (sum(cpus) / len(cpus)):.0f} x per CPU-second)")
    print(f"abagen's whole grid, extrapolated: {whole.n_pipelines * per / 3600 / 24:.0f} days "
          "on one process")
    record["abagen"] = {"pipelines": [p.id for p in picks], "wall_s": times, "cpu_s": cpus,
                        "wall_s_per_pipeline": round(per, 2),
                        "pipelines_per_s": round(1 / per, 5), "uptime_before": before,
                        "uptime_after": _uptime()}
    record["ratio_wall"] = round(rate * per, 1)
    record["ratio_cpu"] = round((sample.n_pipelines / cpu) * (sum(cpus) / len(cpus)), 1)
    save()


if __name__ == "__main__":
    main()
