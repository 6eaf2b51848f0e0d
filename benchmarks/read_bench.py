"""Time and peak memory of reading the AHBA microarray and PACall files, per donor.

    python benchmarks/read_bench.py [DATA_DIR] [--work DIR] [--donors 9861 ...] [--no-parquet]

``DATA_DIR`` holds ``microarray/normalized_microarray_donor<N>/`` (default
``benchmarks/results/synthetic-full``, generated with ``python -m ahba_app.synthetic DIR --size
full --seed 0`` when absent). The data folder is never written to: the benchmark links the CSVs
into ``--work`` (default: a temporary folder) and the caches are built there.

For each donor, each step runs in a fresh Python process; its wall time and CPU time (all
threads; both of the step alone, after imports) and the process's peak resident memory
(``os.wait4``'s ru_maxrss) are printed. CPU time is the fairer figure on a busy machine:

- ``first``: read_microarray + read_pacall with no cache (CSV parsed, cache written);
- ``cached``: the same with the cache in place, then a pass over every value;
- ``arrays``: load_matrix for both files, then select_rows for every third probe (the pipeline's
  access pattern);
- ``pandas``: pandas.read_csv(header=None, index_col=0) of both files (abagen without parquet).

It also prints the cache size on disk, how the microarray values were stored (rows of w-byte
integers, or float64 rows when nothing exact is narrower) and, unless ``--no-parquet``, the size
of the snappy parquet files abagen would write for the same CSVs (pyarrow, plain encoding like
fastparquet's default).
Microarray reads return float64 decoded from the cache, so ``cached`` includes the decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DONORS = ("9861", "10021", "12876", "14380", "15496", "15697")
FILES = ("MicroarrayExpression.csv", "PACall.csv")

_PRELUDE = """
import sys, time
from pathlib import Path
import numpy as np
import pandas as pd
from ahba_app import io
folder = Path(sys.argv[1])
expr, pacall = folder / "MicroarrayExpression.csv", folder / "PACall.csv"
start, start_cpu = time.perf_counter(), time.process_time()
"""

STEPS = {
    "baseline": "",
    "first": """
data = io.read_microarray(expr), io.read_pacall(pacall)
""",
    "cached": """
data = io.read_microarray(expr), io.read_pacall(pacall)
total = float(data[0].to_numpy().sum(dtype=np.float64)) + int(data[1].to_numpy().sum())
""",
    "arrays": """
m, p = io.load_matrix(expr), io.load_matrix(pacall)
rows = np.arange(0, m.shape[0], 3)
values, present = io.select_rows(m, rows), io.select_rows(p, rows)
""",
    "pandas": """
data = [pd.read_csv(f, header=None, index_col=0) for f in (expr, pacall)]
""",
    "parquet": """
for f in (expr, pacall):
    frame = pd.read_csv(f, header=None)
    frame.columns = frame.columns.astype(str)
    frame.to_parquet(f.with_suffix(".parq"), engine="pyarrow", compression="snappy",
                     use_dictionary=False, index=False)
""",
}
_EPILOGUE = """
print(time.perf_counter() - start, time.process_time() - start_cpu)
"""


def run_step(step: str, folder: Path) -> tuple[float, float, float]:
    """Run one step in a fresh interpreter; return (wall s, CPU s of all threads, peak RSS MB)."""
    code = _PRELUDE + STEPS[step] + _EPILOGUE
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=out,
                                stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"step {step} failed on {folder}:\n{err.read()[-3000:]}")
        wall, cpu = map(float, out.read().strip().splitlines()[-1].split())
    return wall, cpu, usage.ru_maxrss / 1024


def _size_mb(paths) -> float:
    return sum(Path(p).stat().st_size for p in paths) / 2**20


def link_donor(data_dir: Path, work: Path, donor: str) -> Path:
    """A folder in ``work`` whose two CSVs link to the donor's (the caches are built there)."""
    source = data_dir / "microarray" / f"normalized_microarray_donor{donor}"
    target = work / f"donor{donor}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in FILES:
        (target / name).symlink_to((source / name).resolve())
    return target


def _describe_rows(matrix) -> str:
    """Rows per storage width of a microarray cache, e.g. ``"5 bytes: 58,690, float64: 2"``."""
    if matrix.codes is None:
        return "float64 in memory (no cache)"
    return ", ".join(f"{'float64' if width == 0 else f'{width} bytes'}: {rows:,}"
                     for width, rows in matrix.codes.widths().items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", type=Path,
                        default=REPO / "benchmarks" / "results" / "synthetic-full")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--donors", nargs="+", default=list(DONORS))
    parser.add_argument("--no-parquet", action="store_true",
                        help="skip writing abagen-style parquet files to compare sizes")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    if not (args.data_dir / "microarray").is_dir():
        print(f"Generating full-size synthetic data in {args.data_dir} ...", flush=True)
        subprocess.run([sys.executable, "-m", "ahba_app.synthetic", str(args.data_dir),
                        "--size", "full", "--seed", "0"], check=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="ahba-read-bench-"))
    steps = ["first", "cached", "arrays", "pandas"] + ([] if args.no_parquet else ["parquet"])

    _, _, base_mb = run_step("baseline", link_donor(args.data_dir, work, DONORS[0]))
    print(f"data: {args.data_dir}\nwork: {work}\n"
          f"interpreter with numpy, pandas, pyarrow and ahba_app.io imported: {base_mb:.0f} MB\n")
    shown = ("first", "cached", "arrays", "pandas")
    header = (f"{'donor':>6} {'S':>5} {'CSV MB':>7} | "
              + " | ".join(f"{s + ' s':>9} {'cpu':>6} {'MB':>5}" for s in shown)
              + f" | {'cache MB':>8} {'parquet MB':>10}")
    print("wall time and CPU time (all threads) of each step after imports; peak RSS of its "
          "process")
    print(header)
    print("-" * len(header))
    rows = []
    for donor in args.donors:
        folder = link_donor(args.data_dir, work, donor)
        figures = {"donor": donor, "csv_mb": _size_mb(folder / f for f in FILES)}
        for step in steps:
            wall, cpu, peak = run_step(step, folder)
            figures[step] = {"seconds": wall, "cpu_seconds": cpu, "peak_rss_mb": peak}
            if step == "first":
                figures["cache_mb"] = _size_mb((folder / ".ahba-cache").glob("*.cache"))
        from ahba_app import io

        matrix = io.load_matrix(folder / FILES[0])
        figures["samples"] = matrix.n_samples
        figures["encoding"] = _describe_rows(matrix)
        figures["parquet_mb"] = (_size_mb(folder.glob("*.parq")) if "parquet" in figures
                                 else float("nan"))
        rows.append(figures)
        print(f"{donor:>6} {figures['samples']:>5} {figures['csv_mb']:>7.0f} | "
              + " | ".join(f"{figures[s]['seconds']:>9.2f} {figures[s]['cpu_seconds']:>6.2f} "
                           f"{figures[s]['peak_rss_mb']:>5.0f}" for s in shown)
              + f" | {figures['cache_mb']:>8.0f} {figures['parquet_mb']:>10.0f}", flush=True)
    totals = {key: sum(r[key] for r in rows) for key in ("csv_mb", "cache_mb", "parquet_mb")}
    print("-" * len(header))
    print(f"{'all':>6} {sum(r['samples'] for r in rows):>5} {totals['csv_mb']:>7.0f} | "
          + " | ".join(f"{sum(r[s]['seconds'] for r in rows):>9.2f} "
                       f"{sum(r[s]['cpu_seconds'] for r in rows):>6.2f} {'':>5}" for s in shown)
          + f" | {totals['cache_mb']:>8.0f} {totals['parquet_mb']:>10.0f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("microarray stored as: " + ", ".join(f"{r['donor']} {r['encoding']}" for r in rows))
    if not args.no_parquet:
        print(f"\ncache / parquet size: {totals['cache_mb'] / totals['parquet_mb']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"baseline_rss_mb": base_mb, "donors": rows}, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
