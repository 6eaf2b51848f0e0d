"""ahba-app on data NOT shaped like ``ahba_app.synthetic``'s: speed, cache size and outputs.

    python benchmarks/foreign.py --work DIR [--variants text order numbers] [--repeat 3]
                                 [--cold-repeat 2] [--abagen-venv DIR] [--make-only]
    python benchmarks/foreign.py --work DIR --size small --make-only   (small data, no timing)

The issue's authors check ahba-app on data they generate themselves. Our performance figures
all come from ``ahba_app.synthetic`` (fixed digits, its own value ranges and row order, unquoted
fields, LF line ends), so a fast path that quietly falls back to a slow one on other files
would go unseen. This script derives full-size VARIANTS of a synthetic dataset, each a
streamed rewrite of the CSV text (files it does not change are hard-linked), and measures
ahba-app on each variant alternating with the same measures on its unvaried source:

``text``    (from the 6-decimal data) every field of every CSV quoted, CRLF line ends, no
            newline at the end of any file: the same numbers;
``order``   (from the 17-digit data) each donor's probe rows in a random order of their own
            (the same for MicroarrayExpression and PACall), Probes.csv rows in another, and the
            samples permuted (SampleAnnot rows and both matrices' columns together): the same
            numbers in another order;
``numbers`` (from the 12-digit data) one change per donor: 9861 at 9 significant digits;
            10021 rows at mixed precisions (12 digits, 6 fixed decimals with trailing zeros,
            17 digits); 12876 on another scale (x * 2.5 - 4.5: values from below 0 to ~25,
            a few tiny values such as 1e-05) with some values in scientific notation (1.234568e+01,
            2.500E+00); 14380 with a third of its samples dropped; 15496 with half of its
            samples repeated (50 % more); 15697 centred and scaled (values near 0, negative,
            written with 17 significant digits).

Per variant it prints, for the variant and its source (fresh processes, alternating): the cold
run (cache build, Python API), the warm Python API, the warm command line (wall, CPU, peak
memory), the cache size in bytes per value, and the ratio variant / source of each median;
then the largest difference between ahba-app's and abagen 0.1.3's warm API tables on the variant
(abagen run once, without its parquet cache, in ``--abagen-venv``; skipped with
``--no-abagen``) and, for the variants that only re-quote or reorder, whether ahba-app's table
on the variant equals its table on the source (int64 views of float64; for ``order`` within
1e-12, since sums over permuted samples may round differently). A JSON record goes to
``--json`` when given.

Disk: a full-size variant takes ~2.5 GB plus caches; each variant's folders are deleted
before the next one is made (``--keep`` keeps them). Nothing here is a test; the test
(tests/test_foreign_variants.py) makes the variants of small data and checks ahba-app's tables.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import operator
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run  # noqa: E402  (the benchmark's own measurement helpers)

VARIANTS = ("text", "order", "numbers")
#: which precision of the synthetic data each variant is derived from
SOURCE_PRECISION = {"text": "6dp", "order": "17", "numbers": "12"}
#: variants whose numbers are the source's exactly (ahba-app's tables are compared with its own)
SAME_NUMBERS = {"text": "exact", "order": 1e-12}
MATRICES = ("MicroarrayExpression.csv", "PACall.csv")
TABLES = ("Probes.csv", "SampleAnnot.csv", "Ontology.csv")
_CHUNK = 8 << 20


# ---------------------------------------------------------------------------------------------
# making the variants (streamed text rewrites)
# ---------------------------------------------------------------------------------------------
def _lines(path: Path):
    """The lines of a file without their line ends, read in chunks."""
    with open(path, "rb") as handle:
        rest = b""
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                if rest:
                    yield rest.rstrip(b"\r")
                return
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            for line in parts:
                yield line.rstrip(b"\r")


class _Writer:
    """Writes lines with a chosen line end, leaving out the end of the last one if asked."""

    def __init__(self, path: Path, newline: bytes = b"\n", final_newline: bool = True):
        self.handle = open(path, "wb", buffering=_CHUNK)
        self.newline, self.final = newline, final_newline
        self.first = True

    def write(self, line: bytes) -> None:
        if not self.first:
            self.handle.write(self.newline)
        self.handle.write(line)
        self.first = False

    def close(self) -> None:
        if self.final and not self.first:
            self.handle.write(self.newline)
        self.handle.close()


def _quote_all(fields: list) -> bytes:
    return b'"' + b'","'.join(fields) + b'"'


def _rewrite_matrix(source: Path, target: Path, *, row_order=None, columns=None, values=None,
                    quote=False, newline=b"\n", final_newline=True) -> None:
    """Rewrite a matrix CSV line by line: rows in ``row_order`` (indices into the source's
    rows; the file is then read whole), sample columns picked by ``columns`` (indices),
    each row's value texts turned by ``values(row_number, texts) -> texts``."""
    if row_order is not None:
        lines = source.read_bytes().split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        rows = (lines[i].rstrip(b"\r") for i in row_order)
    else:
        rows = _lines(source)
    # the probe id, then the samples kept
    pick = None if columns is None else operator.itemgetter(0, *(c + 1 for c in columns))
    out = _Writer(target, newline, final_newline)
    try:
        for number, line in enumerate(rows):
            fields = line.split(b",")
            if pick is not None:
                fields = list(pick(fields))
            if values is not None:
                fields[1:] = values(number, fields[1:])
            out.write(_quote_all(fields) if quote else b",".join(fields))
    finally:
        out.close()


def _rewrite_table(source: Path, target: Path, *, row_order=None, quote=False, newline="\n",
                   final_newline=True) -> None:
    """Rewrite a small CSV with a header (Probes, SampleAnnot, Ontology)."""
    with open(source, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    if row_order is not None:
        body = [body[i] for i in row_order]
    text = io.StringIO()
    writer = csv.writer(text, quoting=csv.QUOTE_ALL if quote else csv.QUOTE_MINIMAL,
                        lineterminator=newline)
    writer.writerow(header)
    writer.writerows(body)
    data = text.getvalue()
    if not final_newline:
        data = data[:-len(newline)]
    target.write_text(data, newline="")


def _link_unchanged(source: Path, target: Path) -> None:
    """A file the variant leaves as it is: a hard link (the variants are ~2.5 GB each)."""
    os.link(source, target)


# value rewrites of the numbers variant: (row number, list of value texts) -> texts
def _nine_digits(number, texts):
    return [b"%.9g" % float(t) for t in texts]


def _mixed(number, texts):
    if number % 3 == 0:
        return texts
    form = b"%.6f" if number % 3 == 1 else b"%.17g"
    return [form % float(t) for t in texts]


def _rescaled(number, texts):
    out = []
    for j, t in enumerate(texts):
        v = float(t) * 2.5 - 4.5
        if j % 101 == 7:
            out.append(b"1e-05" if number % 2 else b"2.5E-06")
        elif j % 13 == 0:
            out.append(b"%.3E" % v)
        elif j % 7 == 0:
            out.append(b"%.6e" % v)
        else:
            out.append(b"%.12g" % v)
    return out


def _centred(number, texts):
    return [b"%.17g" % ((float(t) - 6.0) / 2.0) for t in texts]


#: numbers variant: donor -> (value rewrite, sample columns kept: "fewer", "more" or None)
NUMBERS_PLAN = {"9861": (_nine_digits, None), "10021": (_mixed, None),
                "12876": (_rescaled, None), "14380": (None, "fewer"),
                "15496": (None, "more"), "15697": (_centred, None)}


def _count_rows(path: Path) -> int:
    """Lines of a file, the last one counted with or without its line end."""
    lines, last = 0, b"\n"
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def _make_donor(variant: str, source: Path, target: Path, donor: str, seed: int) -> str:
    """One donor's folder of a variant (run in a worker process)."""
    target.mkdir(parents=True, exist_ok=True)
    n_samples = _count_rows(source / "SampleAnnot.csv") - 1
    rng = np.random.default_rng([seed, int(donor)])
    if variant == "text":
        for name in MATRICES:
            _rewrite_matrix(source / name, target / name, quote=True, newline=b"\r\n",
                            final_newline=False)
        for name in TABLES:
            _rewrite_table(source / name, target / name, quote=True, newline="\r\n",
                           final_newline=False)
    elif variant == "order":
        n_probes = _count_rows(source / "Probes.csv") - 1
        rows = rng.permutation(n_probes)
        samples = rng.permutation(n_samples)
        for name in MATRICES:
            _rewrite_matrix(source / name, target / name, row_order=rows, columns=samples)
        _rewrite_table(source / "Probes.csv", target / "Probes.csv",
                       row_order=rng.permutation(n_probes))
        _rewrite_table(source / "SampleAnnot.csv", target / "SampleAnnot.csv",
                       row_order=samples)
        _link_unchanged(source / "Ontology.csv", target / "Ontology.csv")
    elif variant == "numbers":
        rewrite, samples = NUMBERS_PLAN[donor]
        columns = None
        if samples == "fewer":
            columns = [j for j in range(n_samples) if j % 3 != 2]
        elif samples == "more":
            columns = list(range(n_samples)) + list(range(0, n_samples, 2))
        for name in MATRICES:
            if rewrite is None and columns is None:
                _link_unchanged(source / name, target / name)
            else:
                _rewrite_matrix(source / name, target / name, columns=columns,
                                values=rewrite if name == MATRICES[0] else None)
        if columns is not None:
            _rewrite_table(source / "SampleAnnot.csv", target / "SampleAnnot.csv",
                           row_order=columns)
        else:
            _link_unchanged(source / "SampleAnnot.csv", target / "SampleAnnot.csv")
        for name in ("Probes.csv", "Ontology.csv"):
            _link_unchanged(source / name, target / name)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return donor


def make_variant(variant: str, source: Path, target: Path, seed: int = 0, jobs: int = 2) -> Path:
    """Write the ``variant`` of the dataset at ``source`` (six donors) under ``target``."""
    if target.exists():
        shutil.rmtree(target)
    donors = [p.name.rsplit("donor", 1)[1]
              for p in sorted((source / "microarray").glob("normalized_microarray_donor*"))]
    with ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(_make_donor, variant, run.donor_folder(source, d),
                               run.donor_folder(target, d), d, seed) for d in donors]
        for future in futures:
            future.result()
    (target / "variant.json").write_text(json.dumps({"variant": variant, "source": str(source),
                                                     "seed": seed}))
    return target


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------
_ABAGEN_NO_PARQUET = """
import abagen.io
abagen.io.use_parq = False   # no parquet copies: the variant is read once
"""


class Variants:
    """The measurements of the variants against their sources, with benchmarks/run.py's
    machinery (its ``Bench``: fresh processes, wall, CPU, peak memory)."""

    def __init__(self, args):
        self.args = args
        self.work = args.work
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        bench_args = argparse.Namespace(work=self.work, data=args.source_data("6dp"))
        self.bench = run.Bench(bench_args, args.abagen_python or Path(sys.executable))
        if args.abagen_python:
            script = self.bench.scripts / "abagen_api.py"
            text = script.read_text()
            marker = "import abagen\n"
            if marker not in text:  # (abagen would write parquet copies unseen)
                raise SystemExit(f"{script}: no line {marker.strip()!r} to turn abagen's "
                                 "parquet off after; benchmarks/run.py's script changed: "
                                 "update _ABAGEN_NO_PARQUET's place in foreign.py")
            script.write_text(text.replace(marker, marker + _ABAGEN_NO_PARQUET, 1))

    def api(self, data: Path, label: str, out: Path | None = None) -> dict:
        return self.bench.api("ahba", data, self.bench.dk, {}, out, label=label)

    def cli(self, data: Path, label: str) -> dict:
        run_dir = Path(tempfile.mkdtemp(prefix="cli-", dir=self.work))
        try:
            (run_dir / "in").mkdir()
            cmd = [str(self.bench.ahba_cli), str(run_dir / "in"), str(run_dir / "out"), "group",
                   "--ahba-dir", str(data), "-w", str(run_dir / "work")]
            run.prewarm(data, "ahba")
            return self.bench.measured("ahba", label, cmd)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def measure_variant(self, variant: str, source: Path, data: Path) -> dict:
        args = self.args
        folders = {"source": source, "variant": data}
        warm = {side: self.work / f"warm-{side}" for side in folders}
        figures = {side: {"cold": [], "warm": [], "cli": []} for side in folders}
        sizes = {}
        # at least one cold run a side, even with --cold-repeat 0: it builds the caches the
        # warm runs read (kept as the warm folder), and its cache sizes are the figures
        for rep in range(max(args.cold_repeat, 1)):
            for side, folder in folders.items():
                cold = run.link_data(folder, self.work / f"cold-{side}-{rep}")
                try:
                    result = self.api(cold, f"{variant} cold {side}")
                    if rep == 0:
                        sizes[side] = cache_bytes_per_value(cold)
                    if not warm[side].exists():
                        cold.rename(warm[side])
                finally:
                    shutil.rmtree(cold, ignore_errors=True)
                if rep < args.cold_repeat:
                    figures[side]["cold"].append(result)
        outputs = {side: self.work / f"output-{variant}-{side}.pkl" for side in folders}
        for rep in range(args.repeat):
            for side in folders:
                figures[side]["warm"].append(self.api(
                    warm[side], f"{variant} warm {side}", outputs[side] if rep == 0 else None))
        for rep in range(args.cli_repeat):
            for side in folders:
                figures[side]["cli"].append(self.cli(warm[side], f"{variant} cli {side}"))
        record = {"variant": variant, "source": str(source), "data": str(data), "sizes": sizes,
                  "figures": figures, "medians": {}, "ratios": {}}
        for case in ("cold", "warm", "cli"):
            med = {side: run.medians(figures[side][case]) for side in folders
                   if figures[side][case]}
            if len(med) < 2:
                continue
            record["medians"][case] = med
            record["ratios"][case] = {key: med["variant"][key] / med["source"][key]
                                      for key in ("wall_s", "cpu_s", "peak_mb")
                                      if med["source"].get(key)}
        if variant in SAME_NUMBERS:
            record["same_as_source"] = run.compare_outputs(
                outputs["variant"], outputs["source"], tolerance=SAME_NUMBERS[variant])
        if args.abagen_python:
            theirs = self.work / f"output-{variant}-abagen.pkl"
            record["abagen_run"] = self.bench.api("abagen", warm["variant"], self.bench.dk, {},
                                                  theirs, label=f"{variant} abagen")
            record["parity"] = run.compare_outputs(outputs["variant"], theirs)
        if not args.keep:
            for folder in warm.values():
                shutil.rmtree(folder, ignore_errors=True)
        return record


def cache_bytes_per_value(folder: Path) -> dict:
    """Bytes of ahba-app's cache per matrix value, microarray and PACall apart."""
    out = {}
    for name in MATRICES:
        total = values = 0
        for cache in (folder / "microarray").glob(f"*/.ahba-cache/{name}.cache"):
            donor = cache.parent.parent
            n_samples = _count_rows(donor / "SampleAnnot.csv") - 1
            n_probes = _count_rows(donor / "Probes.csv") - 1
            total += cache.stat().st_size
            values += n_samples * n_probes
        out[name.split(".")[0]] = total / values if values else None
    return out


def _summary(record: dict) -> str:
    """The lines printed for one variant's record."""
    lines = [f"variant {record['variant']}:"]
    for case, ratio in record["ratios"].items():
        med = record["medians"][case]
        lines.append(f"  {case:<5} variant/source wall {ratio['wall_s']:.3f} "
                     f"({med['variant']['wall_s']:.2f} / {med['source']['wall_s']:.2f} s), "
                     f"cpu {ratio['cpu_s']:.3f} ({med['variant']['cpu_s']:.2f} / "
                     f"{med['source']['cpu_s']:.2f} s), peak {ratio['peak_mb']:.3f} "
                     f"({med['variant']['peak_mb']:.0f} / {med['source']['peak_mb']:.0f} MB)")
    for side, size in record["sizes"].items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in size.items() if v is not None)
        lines.append(f"  cache bytes per value, {side}: {shown}")
    if "same_as_source" in record:
        lines.append(f"  ahba-app's table on the variant vs on the source: "
                     f"{record['same_as_source']}")
    if "parity" in record:
        lines.append(f"  ahba-app vs abagen on the variant: {record['parity']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True,
                        help="scratch folder (variants, caches, logs)")
    parser.add_argument("--data", type=Path, default=None,
                        help="the 6-decimal synthetic data; DATA_p12 and DATA_p17 beside it "
                             "(default: made under --work at --size)")
    parser.add_argument("--size", choices=("small", "full"), default="full",
                        help="size of the data made when --data is not given")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--repeat", type=int, default=3, help="warm API runs per side")
    parser.add_argument("--cli-repeat", type=int, default=2, help="command-line runs per side")
    parser.add_argument("--cold-repeat", type=int, default=2, help="cold runs per side")
    parser.add_argument("--abagen-venv", type=Path, default=None,
                        help="abagen 0.1.3's venv (built by benchmarks/run.py's pins when "
                             "absent); without it abagen is not run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--make-only", action="store_true",
                        help="write the variants and stop (no measurement)")
    parser.add_argument("--keep", action="store_true", help="keep each variant's folders")
    parser.add_argument("--json", type=Path, default=None, help="write the records here")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        args.data = args.work / f"synth-{args.size}"

    def source_data(precision: str) -> Path:
        folder = run.data_for(args.data, precision)
        if not (folder / "microarray").is_dir():
            subprocess.run([sys.executable, "-m", "ahba_app.synthetic", str(folder), "--size",
                            args.size, "--seed", "0", "--precision", precision], check=True)
        return folder

    args.source_data = source_data
    args.abagen_python = run.ensure_abagen_venv(args.abagen_venv) if args.abagen_venv else None
    records = []
    variants = None if args.make_only else Variants(args)
    for variant in args.variants:
        source = source_data(SOURCE_PRECISION[variant])
        target = args.work / f"variant-{variant}"
        made = target / "variant.json"
        if made.exists() and json.loads(made.read_text()) == {
                "variant": variant, "source": str(source), "seed": args.seed}:
            print(f"reusing variant {variant} in {target}", flush=True)
        else:
            print(f"making variant {variant} from {source} in {target} ...", flush=True)
            make_variant(variant, source, target, args.seed)
        if variants is None:
            continue
        record = variants.measure_variant(variant, source, target)
        records.append(record)
        print(_summary(record), flush=True)
        if not args.keep:
            shutil.rmtree(target, ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps(records, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
