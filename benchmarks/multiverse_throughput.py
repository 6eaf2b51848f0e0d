"""Throughput of a multiverse sweep against abagen running the same pipelines one by one, in
the same run: pipelines per second, and what that makes of the whole grid (an extrapolation).

    python benchmarks/multiverse_throughput.py --data DIR [--grid markello2021]
        [--pipelines 2000] [--nprocs 2] [--abagen 2] [--work DIR]

1. picks random *units* of the grid (the pipelines sharing a probe choice and a matching, as the
   Nipype engine runs them) until at least ``--pipelines`` pipelines;
2. runs them with the Nipype engine (``MultiProc`` with ``--nprocs`` worker processes, BLAS on
   one thread per worker; ``--nprocs 1``: Linear) on the DK atlas, the matrix caches built
   beforehand (untimed, as a second run finds them) and no probe choice stored;
3. runs abagen 0.1.3 (its pinned environment with parquet, see ``benchmarks/run.py``) on
   ``--abagen`` pipelines of that sample, one process each, after one untimed run that builds
   abagen's parquet files (as its users' second run finds them);
4. prints wall and CPU time, the load average (``uptime``) before and after, pipelines per
   second for both tools, the ratio, and the extrapolation to the whole grid; with
   ``--record FILE``, writes them as JSON too.

With several processes each worker runs its numeric loops on one thread (``AHBA_APP_THREADS``
and the BLAS variables set to 1), so that the workers do not oversubscribe the cores.

The data folder is used through hard links in ``--work`` (both tools write caches beside the
data). A script, not a test: it prints figures, asserts nothing.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import io as _stdio  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


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
    parser.add_argument("--sweep-only", action="store_true",
                        help="(internal) run the sample's sweep in this process and return")
    args = parser.parse_args(argv)

    import run as bench  # benchmarks/run.py: abagen's environment and measurements
    from ahba_app import io
    from ahba_app.bids import default_atlas
    from ahba_app.cli.engines import Engine
    from ahba_app.fetch import find_microarray
    from ahba_app.images import check_atlas
    from ahba_app.multiverse import _options, load_grid, plan
    from ahba_app.multiverse.command import MultiverseRun, run_engine, write_reports
    from ahba_app.multiverse.planner import plan_of

    work = args.work or Path(tempfile.mkdtemp(prefix="multiverse-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = bench.link_data(args.data, work / "data")
    if (args.data / "rnaseq").is_dir() and not (data / "rnaseq" / "rnaseq_donor9861").exists():
        shutil.copytree(args.data / "rnaseq", data / "rnaseq", copy_function=os.link,
                        dirs_exist_ok=True)
    say = (lambda *a, **k: None) if args.sweep_only else print
    say(f"machine: {os.cpu_count()} CPUs; {_uptime()}", flush=True)

    grid = load_grid(args.grid)
    t0 = time.perf_counter()
    whole = plan(grid)
    say(f"grid {grid.name}: {whole.summary()}")
    say(f"planning took {time.perf_counter() - t0:.1f} s", flush=True)

    units = list(whole.units().values())
    random.Random(args.seed).shuffle(units)
    combos, n = [], 0
    for keys in units:
        keys = keys[:args.groups] if args.groups else keys
        combos += [combo for key in keys for combo in whole.groups[key]]
        n += sum(whole.sizes[key] for key in keys)
        if n >= args.pipelines:
            break
    sample = plan_of(grid, combos)
    atlas = default_atlas()
    engine = Engine("MultiProc" if args.nprocs > 1 else "Linear", nprocs=args.nprocs)
    if args.sweep_only:
        job = MultiverseRun(grid, sample, {"atlas-dk": check_atlas(atlas.image, atlas.info)},
                            inputs={"atlas-dk": atlas.as_dict()},
                            reference=_options.defaults())  # abagen's defaults
        out = work / "out"
        out.mkdir(exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = run_engine(job, out, work_dir=work / f"work-{time.time_ns()}",
                              engine=engine, data_dir=str(data), stream=_stdio.StringIO())
        write_reports(job, out, {"atlas-dk": rows[0]})  # the report of the sample
        return
    print(f"sample: {sample.n_pipelines} pipelines, {len(sample.units())} units, "
          f"{len(sample.groups)} normalization groups", flush=True)

    for paths in find_microarray(str(data), "all").values():  # the caches, untimed
        for kind in ("microarray", "pacall"):
            io.load_matrix(paths[kind], kind)
    for stored in (data / "microarray").rglob("selection-*.npz"):  # no probe choice stored
        stored.unlink()

    # the sweep in a process of its own: its CPU time includes its workers'
    before = _uptime()
    env = dict(os.environ)
    if args.nprocs > 1:  # one thread per worker process: the processes share the cores
        env.setdefault("AHBA_APP_THREADS", "1")
    figures = bench.measure([sys.executable, __file__, *(argv or sys.argv[1:]), "--work",
                             str(work), "--sweep-only"], env=env, cwd=work,
                            log=work / "sweep.log")
    seconds, cpu = figures["wall_s"], figures["cpu_s"]
    rate = sample.n_pipelines / seconds
    print(f"\nahba-app ({engine.plugin}, {args.nprocs} process(es)): {sample.n_pipelines} "
          f"pipelines in {seconds:.1f} s wall, {cpu:.1f} s CPU: {rate:.2f} pipelines/s "
          f"({sample.n_pipelines / cpu:.2f} per CPU-second), peak memory "
          f"{figures['peak_mb'] / 1024:.2f} GB")
    print(f"  before: {before}\n  after:  {_uptime()}")
    print(f"  extrapolated (not measured): the whole grid ({whole.n_pipelines:,} pipelines) "
          f"in {whole.n_pipelines / rate / 3600:.1f} h at this rate", flush=True)
    record = {"command": " ".join(["python", "benchmarks/multiverse_throughput.py",
                                   *(argv or sys.argv[1:])]),
              "data": str(args.data), "grid": grid.name, "nprocs": args.nprocs,
              "machine_cpus": os.cpu_count(),
              "sweep": {"pipelines": sample.n_pipelines, "units": len(sample.units()),
                        "groups": len(sample.groups), "wall_s": round(seconds, 2),
                        "cpu_s": round(cpu, 2), "peak_mb": round(figures["peak_mb"], 1),
                        "pipelines_per_s": round(rate, 3),
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
