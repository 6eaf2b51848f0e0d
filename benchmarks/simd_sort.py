"""How fast numpy sorts and partitions on this CPU, at the shapes the normalizations use.

    python benchmarks/simd_sort.py [--genes 14710] [--samples 785] [--repeat 5] [--json FILE]

The robust sigmoids' medians and quartiles (ahba_app/normalize.py, ``_Selected``) sort each
gene across a donor's samples (rows of ~800 values) and partition each sample across the genes
(rows of ~15,000). numpy does both with x86-simd-sort, whose AVX-512 code stores each vector's
halves with a memory-destination compress (``vpcompressq``). AMD's Zen 4 runs that instruction
in microcode (AMD's Zen 4 software optimisation guide, 2.11.2; numpy/x86-simd-sort issue 6), so
on Zen 4 the AVX-512 path is several times slower than numpy's AVX2 path, which the same numpy
uses on CPUs without AVX-512. This script times both paths in fresh interpreters, the second
with ``NPY_DISABLE_CPU_FEATURES`` hiding AVX-512 from numpy (which numpy reads only when it is
imported), together with ``exp``, which the AVX-512 path makes faster, so that the trade is seen
whole, and the medians and quartiles as ahba-app finds them on Zen 4 without long sorts (each
gene sorted in chunks of at most 256 values, each sample counted: ``ahba_app/order_stats.py``).
It prints nanoseconds a value; the results are the same numbers on every path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (benchmarks/run.py: the machine's facts and the commit, as its records)

#: numpy 2's names of the AVX-512 feature groups (``numpy.show_runtime()``).
NO_AVX512 = "AVX512_ICL AVX512_SPR X86_V4"

# Run in a fresh interpreter: argv = genes samples repeat; prints one JSON line.
_PROBE = r"""
import json, sys, time
import numpy as np

genes, samples, repeat = (int(a) for a in sys.argv[1:4])
rng = np.random.default_rng(0)
x = rng.normal(8.0, 2.0, (samples, genes))
by_gene = np.ascontiguousarray(x.T)  # a gene's samples in a row
middle = genes // 2

def best(work, prepare):
    times = []
    for _ in range(repeat):
        a = prepare()
        start = time.perf_counter()
        work(a)
        times.append(time.perf_counter() - start)
    return min(times) / x.size * 1e9

from numpy._core._multiarray_umath import __cpu_features__ as features
from ahba_app import normalize as nm

def selected(columns):  # ahba-app's way on Zen 4: chunks (short columns) or counting (long)
    n = columns.shape[0]
    positions = [n // 2 - 1, n // 2, *nm._quantile_positions(n, 0.25),
                 *nm._quantile_positions(n, 0.75)]
    return lambda a: nm._Selected(a, positions, counting=True)

print(json.dumps({
    # the dispatch group of the 64-bit sorts (numpy 2: X86_V4; numpy 1: AVX512_SKX)
    "avx512_used": bool(features.get("X86_V4") or features.get("AVX512_SKX")),
    "sort_rows_of_samples_ns": best(lambda a: a.sort(axis=1), by_gene.copy),
    "partition_rows_of_genes_ns": best(lambda a: a.partition(middle, axis=1), x.copy),
    "exp_ns": best(np.exp, lambda: x),
    # the same order statistics as ahba-app finds them where numpy's AVX-512 sort is slow
    "chunks_rows_of_samples_ns": best(selected(x), lambda: x),
    "count_rows_of_genes_ns": best(selected(x.T), lambda: x.T),  # a sample's genes contiguous
}))
"""


def probe(genes: int, samples: int, repeat: int, hide_avx512: bool) -> dict:
    env = dict(os.environ)
    env.pop("NPY_DISABLE_CPU_FEATURES", None)
    if hide_avx512:
        env["NPY_DISABLE_CPU_FEATURES"] = NO_AVX512
    done = subprocess.run([sys.executable, "-c", _PROBE, str(genes), str(samples), str(repeat)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genes", type=int, default=14710)
    parser.add_argument("--samples", type=int, default=785)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    machine = run.machine_facts()
    default = probe(args.genes, args.samples, args.repeat, hide_avx512=False)
    without = probe(args.genes, args.samples, args.repeat, hide_avx512=True)
    print(f"CPU: {machine.get('cpu_model', 'unknown')}; {args.samples} samples x {args.genes} "
          f"genes, best of {args.repeat}, nanoseconds a value")
    print(f"{'':36s}{'default dispatch':>18s}{'AVX-512 hidden':>16s}")
    for key, label in (("sort_rows_of_samples_ns", "sort each gene across samples"),
                       ("partition_rows_of_genes_ns", "partition each sample across genes"),
                       ("exp_ns", "exp")):
        print(f"{label:36s}{default[key]:18.2f}{without[key]:16.2f}")
    print("the same positions as ahba-app finds them on AMD CPUs with AVX-512 (no long sort):")
    for key, label in (("chunks_rows_of_samples_ns", "each gene, in sorted chunks"),
                       ("count_rows_of_genes_ns", "each sample, counted")):
        print(f"{label:36s}{default[key]:18.2f}{without[key]:16.2f}")
    if not default["avx512_used"]:
        print("(numpy uses no AVX-512 on this CPU: both columns run the same code)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "git": run.git_commit(),
                                         "genes": args.genes, "samples": args.samples,
                                         "default": default, "avx512_hidden": without},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
