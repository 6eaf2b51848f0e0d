"""Throughput of the in-process multiverse sweep: pipelines per second on a random sample of a
grid's normalization groups, and what that makes of the whole grid (an extrapolation).

    python benchmarks/multiverse_throughput.py --data DIR [--grid markello2021] [--pipelines 100]

The matrix caches are built first (untimed, as a second run would find them); the probe
choices are not (each group's first run chooses and stores them, as a sweep does). BLAS runs on
one thread (a sweep scales by processes, one per core; multi-threaded BLAS on small matrices only
waits on a busy machine). A script, not a test: it prints figures, asserts nothing.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="AHBA data folder (synthetic or real)")
    parser.add_argument("--grid", default="markello2021", help="grid name or TOML file")
    parser.add_argument("--pipelines", type=int, default=100,
                        help="run random groups until at least this many pipelines")
    parser.add_argument("--seed", type=int, default=0, help="seed of the group sample")
    args = parser.parse_args(argv)

    from ahba_app import io
    from ahba_app.datasets import fetch_desikan_killiany
    from ahba_app.fetch import find_microarray
    from ahba_app.multiverse import load_grid, plan
    from ahba_app.multiverse.sweep import sweep

    grid = load_grid(args.grid)
    t0 = time.perf_counter()
    result = plan(grid)
    planning = time.perf_counter() - t0
    print(f"grid {grid.name}: {result.summary()}")
    print(f"planning took {planning:.1f} s")

    for paths in find_microarray(args.data, "all").values():  # build the caches, untimed
        for kind in ("microarray", "pacall"):
            io.load_matrix(paths[kind], kind)

    keys = list(result.groups)
    random.Random(args.seed).shuffle(keys)
    chosen, n = [], 0
    for key in keys:
        chosen.append(key)
        n += sum(1 for _ in result.pipelines(key))
        if n >= args.pipelines:
            break
    dk = fetch_desikan_killiany()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        sweep(result, dk["image"], dk["info"], Path(tmp) / "rows.tsv", data_dir=args.data,
              keys=chosen)
        seconds = time.perf_counter() - t0
    rate = n / seconds
    whole = result.n_pipelines / rate
    load = os.getloadavg()[0]
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KB -> GB
    print(f"{n} pipelines in {len(chosen)} groups: {seconds:.1f} s, {rate:.2f} pipelines/s "
          f"(load average {load:.1f}, {os.cpu_count()} CPUs), peak memory {peak:.2f} GB")
    print(f"extrapolated (not measured): the whole grid ({result.n_pipelines:,} pipelines) in "
          f"{whole / 3600:.1f} h on one process")


if __name__ == "__main__":
    main()
