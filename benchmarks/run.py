"""ahba-app against abagen 0.1.3, side by side: wall time and peak memory on identical inputs.

    python benchmarks/run.py [--data DIR] [--precision 6dp 12 17] [--repeat 3]
                             [--cases cold warm cli rechoose batch mirror fine]

Run it with the Python of the environment where ahba-app is installed. It

1. finds full-size synthetic AHBA data in ``--data`` (default
   ``benchmarks/results/synthetic-full``), making it with ``python -m ahba_app.synthetic DIR
   --size full --seed 0`` when absent (``--data /tmp/synth_full`` reuses a copy); that is the
   data written with 6 decimals. Each other ``--precision`` (12 or 17 significant digits, or
   9) reads ``DIR_p12``, ``DIR_p17`` beside it, generated once with ``--precision`` when
   absent; every case runs at every precision asked for, one precision after the other;
2. builds abagen 0.1.3 in its own pinned virtual environment (``--abagen-venv``, default
   ``benchmarks/results/.venv-abagen``) with its ``io`` extras (fastparquet, python-snappy), so
   that abagen keeps its parquet cache as its users do;
3. runs every case ``--repeat`` times, alternating abagen and ahba-app, each measurement in a
   fresh process: wall time (interpreter start and imports included), CPU time and peak
   memory (the largest resident set of the process or any of its children, from ``wait4``,
   and the largest sum over the process tree, polled from ``/proc``);
4. prints the medians and the ratios ahba-app / abagen per precision, checks that the outputs
   agree within 1e-12 (warm API, command line, two atlases of the batch), then one table of
   every target at every precision with PASS or FAIL, and writes
   ``benchmarks/results/<timestamp>.json``.

Cases (all on the six donors, default options unless said otherwise):

``cold``   first run on fresh folders (the CSVs hard-linked, or copied, into a new folder per
           run, no cache anywhere): abagen converts the CSVs to parquet, ahba-app builds its
           cache; also compares the sizes of the two caches;
``warm``   Python API, caches built, Desikan-Killiany volume with its atlas info;
``cli``    command line, caches built: ``ahba-app IN OUT group --ahba-dir DIR -w WORK`` (an
           empty IN: the bundled Desikan-Killiany atlas; Nipype included, a fresh work folder
           per run) against ``abagen --data-dir DIR --atlas-info info.csv atlas.nii.gz
           --output-file out.csv``;
``mirror`` Python API with ``lr_mirror='bidirectional'`` and ``missing='interpolate'``;
           abagen cannot combine them, so it runs each alone, and ahba-app's one run is
           compared with each (lr_mirror alone is the comparable workload: mirroring
           doubles the sample-level data; interpolate alone is the harder comparison) and
           with both together (their times added, the larger peak), which is what getting
           both results from abagen costs. abagen's
           interpolation crashes when a donor has no region it can fill; the script lets it
           add nothing for that donor instead (as ahba-app does);
``fine``   Python API with a ~1,000-region volume cut from Desikan-Killiany
           (``benchmarks/fine_atlas.py``), to show how the cost grows with regions;
``rechoose`` ahba-app only: ``warm`` with the stored probe choices removed before each run
           (``ahba_app.selection_cache``), so that it chooses the probes again, as a first
           run with new data or options does; compared with abagen's ``warm`` medians.
``batch``  one ahba-app command-line run over ten atlases (Desikan-Killiany and nine volumes
           cut from it by ``benchmarks/fine_atlas.py``, ``--batch-regions``) against ten
           abagen runs, one per atlas (its Python API, which is what its command line runs;
           their times added, the largest peak).
           abagen's ten runs are measured ``--batch-abagen-repeat`` times (default 1: they are
           ten runs already).

The first ``cold`` run of each tool keeps its folder as the tool's warm folder (its cache is
what a first run builds), so no untimed run is needed to build the caches.

"Caches built" includes, for ahba-app, the probe choice of the case's data and options (an
untimed run makes it, as it makes the matrix cache); ``rechoose`` shows the cost without it.

Before each measurement the files the tool is about to read are read once (untimed), so that
they are in the operating system's page cache for both tools alike: "warm" means caches built
and in memory, "cold" means no cache built yet (the CSVs themselves are in memory). Without
this, a machine that reclaims file pages between runs times its disk instead.

Nothing here is a test: CI never times anything. Timings on a shared machine vary; the JSON
records the load average before and after, and the time a fixed piece of work takes at the start
and at the end (:func:`speed_probe`: numpy's import and sort, a Python loop, first writes into
fresh memory), which the report prints too.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import errno
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DONORS = ("9861", "10021", "12876", "14380", "15496", "15697")
DATA_FILES = ("MicroarrayExpression.csv", "PACall.csv", "Probes.csv", "SampleAnnot.csv",
              "Ontology.csv")
CASES = ("cold", "warm", "cli", "rechoose", "batch", "mirror", "fine")
DEFAULT_CASES = ("cold", "warm", "cli", "rechoose", "batch")
PRECISIONS = ("6dp", "9", "12", "17")
TOLERANCE = 1e-12
BATCH_REGIONS = (100, 150, 200, 250, 300, 350, 400, 450, 500)

#: abagen 0.1.3 with the only versions it works with (tests/oracle-requirements.txt) and its
#: ``io`` extras, pinned to releases that install and work with numpy 1.26.
ABAGEN_REQUIREMENTS = [
    "abagen==0.1.3", "numpy==1.26.4", "pandas==1.5.3", "scipy==1.13.1", "nibabel==5.2.1",
    "setuptools<82", "fastparquet==2026.9.0", "python-snappy==0.7.3", "cramjam==2.14.0",
]
ABAGEN_PACKAGES = ["abagen", "numpy", "pandas", "scipy", "nibabel", "fastparquet",
                   "python-snappy", "cramjam"]
AHBA_PACKAGES = ["ahba-app", "numpy", "pandas", "scipy", "nibabel", "pyarrow", "nipype", "isal"]

# Each API measurement runs one of these in a fresh interpreter:
# argv = data_dir atlas info kwargs-json output-pickle-or-dash
_API_SCRIPT = {
    "ahba": """
import json, sys
import ahba_app
data_dir, atlas, info, kwargs, out = sys.argv[1:6]
expression = ahba_app.get_expression_data(atlas, info, data_dir=data_dir, **json.loads(kwargs))
if out != "-":
    expression.to_pickle(out)
""",
    "abagen": """
import json, sys, warnings
warnings.simplefilter("ignore")
import abagen
data_dir, atlas, info, kwargs, out = sys.argv[1:6]
if sys.argv[6] == "patch":  # keep_known_probes: see tests/oracle.py
    import abagen.probes_ as probes_
    keep_known_probes(probes_)
# abagen crashes (pd.concat of nothing) when missing='interpolate' finds nothing to fill for a
# donor (with atlas info: every empty region in a hemisphere or class the donor has no sample
# of); let it add no rows for that donor, as it means to
import abagen.allen as allen
_interpolate = allen._interpolate_missing
def _interpolate_or_nothing(atlas, labels, microarray, annotation):
    try:
        return _interpolate(atlas, labels, microarray, annotation)
    except ValueError as err:
        if "No objects to concatenate" not in str(err):
            raise
        return microarray.iloc[:0], labels.iloc[:0]
allen._interpolate_missing = _interpolate_or_nothing
expression = abagen.get_expression_data(atlas, info, data_dir=data_dir, **json.loads(kwargs))
if out != "-":
    expression.to_pickle(out)
""",
}


# ---------------------------------------------------------------------------------------------
# measuring one process
# ---------------------------------------------------------------------------------------------
def _tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and all its descendants, in MB (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21])  # pages
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


#: /proc/vmstat counters kept per run (what the machine did meanwhile): pages reclaimed by the
#: allocating processes themselves (their system time), by kswapd, and pages read back from disk
_VMSTAT = ("pgscan_direct", "pgsteal_direct", "allocstall_normal", "allocstall_movable",
           "pgscan_kswapd", "pgmajfault", "pgpgin", "pgpgout")


def _machine() -> dict:
    """Counters of the whole machine (Linux; empty elsewhere): :data:`_VMSTAT`, the CPU time
    stolen by the hypervisor (clock ticks), and the memory available / in the page cache."""
    found = {}
    try:
        with open("/proc/vmstat") as handle:
            for line in handle:
                name, value = line.split()
                if name in _VMSTAT:
                    found[name] = int(value)
        with open("/proc/stat") as handle:
            found["steal_ticks"] = int(handle.readline().split()[8])
        with open("/proc/meminfo") as handle:
            for line in handle:
                name, value = line.split(":")
                if name in ("MemAvailable", "Cached", "Dirty"):
                    found[f"{name}_mb"] = int(value.split()[0]) // 1024
    except (OSError, ValueError, IndexError):
        return {}
    return found


def measure(cmd: list[str], *, env: dict, cwd: Path, log: Path) -> dict:
    """Run ``cmd`` to completion; its wall and CPU time (user and system), peak memory (MB),
    the pages it read from disk (major faults, blocks) and what the machine did meanwhile
    (``machine``: reclaim, stolen time, page cache before), to tell a slow run's cause."""
    peak_tree = 0.0
    done = threading.Event()
    before = _machine()
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)

        def poll():
            nonlocal peak_tree
            while not done.wait(0.02):
                peak_tree = max(peak_tree, _tree_rss_mb(proc.pid))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed (exit {proc.returncode}):\n{tail}")
    after = _machine()
    machine = {name: after[name] - value for name, value in before.items()
               if name in after and not name.endswith("_mb")}
    machine.update({f"{name}_before": value for name, value in before.items()
                    if name.endswith("_mb")})
    maxrss = usage.ru_maxrss / 1024  # KB on Linux: the largest process of the tree
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "major_faults": usage.ru_majflt,
            "blocks_read": usage.ru_inblock, "maxrss_mb": maxrss, "tree_peak_mb": peak_tree,
            "peak_mb": max(maxrss, peak_tree), "machine": machine}


# ---------------------------------------------------------------------------------------------
# environments and data
# ---------------------------------------------------------------------------------------------
def ensure_abagen_venv(venv: Path) -> Path:
    """abagen 0.1.3's pinned venv (created, or re-created when the pins change; never one the
    test oracle built, whose pins differ: tests/oracle.py's ``pinned_venv``)."""
    sys.path.insert(0, str(REPO / "tests"))
    from oracle import pinned_venv

    python = venv / "bin" / "python"
    if not python.exists():
        print(f"Creating abagen 0.1.3's environment in {venv} ...", flush=True)
    check = ("import abagen.io as io, sys; sys.exit(0 if io.use_parq else "
             "'abagen cannot use parquet: fastparquet or python-snappy is not working')")
    return pinned_venv(venv, ABAGEN_REQUIREMENTS, owner="benchmarks/run.py", check=check)


def versions(python: Path, packages: list[str]) -> dict:
    code = ("import json, sys, importlib.metadata as m\n"
            "out = {'python': sys.version.split()[0]}\n"
            f"for p in {packages!r}:\n"
            "    try: out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: out[p] = None\n"
            "print(json.dumps(out))")
    return json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True,
                                     text=True).stdout)


def data_for(data: Path, precision: str) -> Path:
    """The folder of the data written at ``precision``: ``data`` itself for 6 decimals."""
    return data if precision == "6dp" else data.with_name(f"{data.name}_p{precision}")


def ensure_data(data: Path, precision: str = "6dp") -> Path:
    if not (data / "microarray").is_dir():
        print(f"Generating full-size synthetic AHBA data at precision {precision} in {data} "
              "(once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "ahba_app.synthetic", str(data), "--size", "full",
                        "--seed", "0", "--precision", precision], check=True)
    missing = [f"{donor}/{name}" for donor in DONORS for name in DATA_FILES
               if not (donor_folder(data, donor) / name).is_file()]
    if missing:
        raise SystemExit(f"{data} lacks AHBA files: {missing[:5]}")
    return data


def donor_folder(root: Path, donor: str) -> Path:
    """The folder of ``donor``'s AHBA files under the data folder ``root``."""
    return root / "microarray" / f"normalized_microarray_donor{donor}"


def link_data(source: Path, target: Path) -> Path:
    """``target/microarray/normalized_microarray_donor<N>/`` holding hard links to (or, across
    file systems, copies of) the source's files; caches of either tool are then built there."""
    for donor in DONORS:
        folder = donor_folder(target, donor)
        folder.mkdir(parents=True, exist_ok=True)
        for name in DATA_FILES:
            src, dst = donor_folder(source, donor) / name, folder / name
            if dst.exists():
                continue
            try:
                os.link(src, dst)
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                shutil.copy2(src, dst)
    return target


def needs_probe_patch(data: Path) -> bool:
    """Whether Probes.csv lacks probes of abagen's reannotation table (abagen then crashes)."""
    import pandas as pd
    from ahba_app.datasets import load_reannotated

    names = pd.read_csv(donor_folder(data, DONORS[0]) / "Probes.csv", usecols=["probe_name"])
    return not load_reannotated()["probe_name"].isin(names["probe_name"]).all()


def prewarm(folder: Path, tool: str, cold: bool = False) -> None:
    """Read the files ``tool`` reads from ``folder`` once, into the page cache."""
    micro = folder / "microarray"
    names = ["Probes.csv", "SampleAnnot.csv", "Ontology.csv"]
    if cold:
        names += ["MicroarrayExpression.csv", "PACall.csv"]
    paths = [p for name in names for p in micro.glob(f"*/{name}")]
    if not cold:
        paths += list(micro.glob("*/.ahba-cache/*.cache" if tool == "ahba" else "*/*.parq"))
    buffer = bytearray(16 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


def _sizes_mb(paths) -> float:
    return sum(p.stat().st_size for p in paths) / 2**20


def cache_sizes(folder: Path) -> dict:
    micro = folder / "microarray"
    return {"csv_mb": _sizes_mb(p for p in micro.glob("*/*.csv")
                                if p.name in ("MicroarrayExpression.csv", "PACall.csv")),
            "ahba_cache_mb": _sizes_mb(micro.glob("*/.ahba-cache/*.cache")),
            "abagen_parquet_mb": _sizes_mb(micro.glob("*/*.parq"))}


#: A fixed piece of work, timed in a fresh interpreter at the start and at the end of a run:
#: the machine's own speed then, which tells a slower host from slower code when records of
#: different runs are compared: on session 18's shared virtual machine the same code's warm
#: runs took 1.7-1.9 s in one hour and 2.0-3.1 s in the next, with no stolen time counted.
_SPEED_PROBE = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
rows = np.random.default_rng(0).normal(8.0, 2.0, (2000, 785))  # genes' rows, as normalized
t2 = time.perf_counter()
rows.sort(axis=1)
t3 = time.perf_counter()
total = 0
for i in range(2_000_000):
    total += i & 7
t4 = time.perf_counter()
fresh = np.empty(1 << 24)  # 128 MB written for the first time
fresh[::512] = 1.0
t5 = time.perf_counter()
print(json.dumps({"numpy_import_s": t1 - t0,
                  "sort_ns_per_value": (t3 - t2) / rows.size * 1e9,
                  "python_loop_s": t4 - t3,
                  "first_touch_gb_per_s": fresh.nbytes / (t5 - t4) / 1e9}))
"""


def speed_probe(python: Path | None = None) -> dict:
    """The figures of :data:`_SPEED_PROBE` run by ``python`` (default: this interpreter): numpy's
    import, its sort of rows like a gene's samples (ns a value), a pure-Python loop, and the
    first writes into fresh memory (GB/s)."""
    done = subprocess.run([str(python or sys.executable), "-c", _SPEED_PROBE],
                          capture_output=True, text=True, check=True)
    return {name: round(value, 4) for name, value in json.loads(done.stdout).items()}


def _speed_line(figures: dict) -> str:
    return (f"numpy import {figures['numpy_import_s']:.3f} s, sort "
            f"{figures['sort_ns_per_value']:.2f} ns a value, Python loop "
            f"{figures['python_loop_s']:.3f} s, first writes "
            f"{figures['first_touch_gb_per_s']:.2f} GB/s")


def machine_facts() -> dict:
    facts = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
             "cpus_usable": len(os.sched_getaffinity(0)), "load_average": os.getloadavg()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                facts["memory_gb"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return facts


def git_commit() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None
            else None}


# ---------------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------------
def _prepared_key(tool: str, atlas, kwargs: dict) -> str:
    return json.dumps([tool, list(atlas), kwargs], sort_keys=True)


class Bench:
    def __init__(self, args, abagen_python: Path):
        self.args = args
        self.work = args.work
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.scripts = self.work / "scripts"
        self.scripts.mkdir(exist_ok=True)
        sys.path.insert(0, str(REPO / "tests"))
        from oracle import KEEP_KNOWN_PROBES  # the patch the parity tests give abagen

        for tool, code in _API_SCRIPT.items():
            prefix = KEEP_KNOWN_PROBES if tool == "abagen" else ""
            (self.scripts / f"{tool}_api.py").write_text(prefix + code)
        self.python = {"ahba": Path(sys.executable), "abagen": abagen_python}
        self.ahba_cli = Path(sys.executable).with_name("ahba-app")
        self.abagen_cli = abagen_python.with_name("abagen")
        import ahba_app

        dk = ahba_app.fetch_desikan_killiany()
        self.dk = (str(dk["image"]), str(dk["info"]))
        self.patch = needs_probe_patch(args.data)
        self.results: dict = {}
        self.count = 0
        self._prepared: set = set()

    def env(self, tmp: Path) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PYTHON") and k not in ("AHBA_DATA", "ABAGEN_DATA")}
        # no cache from elsewhere: the user cache root of ahba-app points into the scratch
        env.update(AHBA_CACHE_DIR=str(tmp / "user-cache"), XDG_CACHE_HOME=str(tmp / "xdg"),
                   MPLCONFIGDIR=str(tmp / "mpl"))
        return env

    def api(self, tool: str, data: Path, atlas, kwargs: dict, output: Path | None = None,
            label: str = "") -> dict:
        prewarm(data, tool, cold=label == "cold")
        cmd = [str(self.python[tool]), str(self.scripts / f"{tool}_api.py"), str(data),
               str(atlas[0]), str(atlas[1]), json.dumps(kwargs),
               str(output) if output else "-"]
        if tool == "abagen":
            cmd.append("patch" if self.patch else "-")
        return self.measured(tool, label, cmd)

    def measured(self, tool: str, label: str, cmd: list[str]) -> dict:
        """Run ``cmd`` (one of ``tool``'s runs) in a scratch folder with the benchmark's
        environment, print its line and return its figures (:func:`measure`)."""
        self.count += 1
        tmp = Path(tempfile.mkdtemp(prefix="run-", dir=self.work))
        try:
            figures = measure(cmd, env=self.env(tmp), cwd=tmp,
                              log=self.logs / f"{self.count:03d}-{label}-{tool}.log")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        machine = figures["machine"]
        print(f"  {label:<22} {tool:<7} {figures['wall_s']:7.1f} s  cpu {figures['cpu_s']:6.1f} s"
              f" (sys {figures['sys_s']:4.1f})  peak {figures['peak_mb']:6.0f} MB"
              f"  disk read {figures['blocks_read'] / 2048:5.0f} MB"
              f"  reclaimed by processes {machine.get('pgsteal_direct', 0) / 256:5.0f} MB"
              f"  stolen {machine.get('steal_ticks', 0) / os.sysconf('SC_CLK_TCK'):4.1f} s",
              flush=True)
        return figures

    def warm_folder(self, tool: str) -> Path:
        """Persistent data folder of ``tool`` with its cache built (by an untimed run)."""
        folder = link_data(self.args.data, self.work / f"warm-{tool}")
        sizes = cache_sizes(folder)
        built = sizes["ahba_cache_mb"] if tool == "ahba" else sizes["abagen_parquet_mb"]
        if not built:
            print(f"  building {tool}'s cache in {folder} (untimed) ...", flush=True)
            self.api(tool, folder, self.dk, {}, label="prepare")
            self._prepared.add(_prepared_key(tool, self.dk, {}))  # (its choice is stored too)
        return folder

    def prepared(self, tool: str, atlas, kwargs: dict) -> Path:
        """The warm folder, after an untimed run with these options (ahba-app stores the probe
        choice they make, as a user's first run with them does), once a benchmark run: a
        choice is stored under a key holding the code's version, so one stored before the
        code changed is not used, and the first run after a change chooses again (what the
        rechoose case measures, not the warm one)."""
        folder = self.warm_folder(tool)
        key = _prepared_key(tool, atlas, kwargs)
        if tool == "ahba" and key not in self._prepared:
            print("  storing ahba-app's probe choice for these options (untimed) ...", flush=True)
            self.api(tool, folder, atlas, kwargs, label="prepare")
            self._prepared.add(key)
        return folder

    def record(self, case: str, tool: str, figures: dict) -> None:
        self.results.setdefault(case, {}).setdefault(tool, []).append(figures)

    # one repetition of each case ------------------------------------------------------------
    def cold(self, rep: int, tools) -> None:
        if rep >= self.args.cold_repeat:
            return
        for tool in tools:
            folder = link_data(self.args.data, self.work / f"cold-{tool}-{rep}")
            try:
                figures = self.api(tool, folder, self.dk, {}, label="cold")
                if rep == 0:
                    self.results.setdefault("cache_sizes", {})[tool] = cache_sizes(folder)
                warm = self.work / f"warm-{tool}"
                if not warm.exists():  # what a first run builds is the warm folder's cache
                    folder.rename(warm)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            self.record("cold", tool, figures)

    def warm(self, rep: int, tools) -> None:
        for tool in tools:
            out = self.work / f"output-warm-{tool}.pkl" if rep == 0 else None
            self.record("warm", tool, self.api(tool, self.prepared(tool, self.dk, {}), self.dk,
                                               {}, out, label="warm"))

    def cli(self, rep: int, tools) -> None:
        for tool in tools:
            data = self.warm_folder(tool)
            run = Path(tempfile.mkdtemp(prefix="cli-", dir=self.work))
            try:
                if tool == "ahba":
                    (run / "in").mkdir()
                    cmd = [str(self.ahba_cli), str(run / "in"), str(run / "out"), "group",
                           "--ahba-dir", str(data), "-w", str(run / "work")]
                else:
                    cmd = [str(self.abagen_cli), "--data-dir", str(data), "--atlas-info",
                           self.dk[1], self.dk[0], "--output-file", str(run / "out.csv")]
                prewarm(data, tool)
                figures = self.measured(tool, "cli", cmd)
                if rep == 0:
                    self._keep_cli_output(tool, run)
            finally:
                shutil.rmtree(run, ignore_errors=True)
            self.record("cli", tool, figures)

    def _keep_cli_output(self, tool: str, run: Path) -> None:
        found = (sorted((run / "out").glob("*_expression.tsv")) if tool == "ahba"
                 else [run / "out.csv"])
        if found and found[0].exists():
            shutil.copy(found[0], self.work / f"output-cli-{tool}{found[0].suffix}")

    def mirror(self, rep: int, tools) -> None:
        both = {"lr_mirror": "bidirectional", "missing": "interpolate"}
        for tool in tools:
            data = self.warm_folder(tool)
            if tool == "ahba":
                data = self.prepared(tool, self.dk, both)
                self.record("mirror", tool, self.api(tool, data, self.dk, both,
                                                     label="mirror+interpolate"))
            else:
                self.record("mirror_only", tool, self.api(
                    tool, data, self.dk, {"lr_mirror": "bidirectional"}, label="mirror"))
                self.record("interpolate_only", tool, self.api(
                    tool, data, self.dk, {"missing": "interpolate"}, label="interpolate"))

    def fine(self, rep: int, tools) -> None:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from fine_atlas import make_fine_atlas

        atlas = make_fine_atlas(self.work / "atlases", self.args.fine_regions)
        for tool in tools:
            out = self.work / f"output-fine-{tool}.pkl" if rep == 0 else None
            self.record("fine", tool, self.api(tool, self.warm_folder(tool), atlas, {}, out,
                                               label="fine"))


    def batch_input(self) -> tuple[Path, list]:
        """A BIDS atlas folder with DK and nine volumes cut from it; the atlases as pairs."""
        sys.path.insert(0, str(REPO / "benchmarks"))
        import nibabel as nib
        import pandas as pd
        from fine_atlas import make_fine_atlas

        folder = self.work / "batch-in"
        atlases = [("DK", self.dk)] + [
            (f"fine{n}", tuple(map(str, make_fine_atlas(self.args.work.parent / "atlases", n))))
            for n in self.args.batch_regions]
        folder.mkdir(parents=True, exist_ok=True)
        for label, (image, info) in atlases:
            stem = folder / f"tpl-MNI152NLin6Asym_res-01_atlas-{label}_dseg"
            if not stem.with_name(stem.name + ".tsv").exists():
                nib.save(nib.load(image), str(stem) + ".nii.gz")
                table = pd.read_csv(info).rename(columns={"id": "index", "label": "name"})
                table.to_csv(str(stem) + ".tsv", sep="\t", index=False)
        return folder, atlases

    def batch(self, rep: int, tools) -> None:
        inputs, atlases = self.batch_input()
        for tool in tools:
            data = self.warm_folder(tool)
            if tool == "ahba":
                run = Path(tempfile.mkdtemp(prefix="batch-", dir=self.work))
                try:
                    cmd = [str(self.ahba_cli), str(inputs), str(run / "out"), "group",
                           "--ahba-dir", str(data), "-w", str(run / "work")]
                    prewarm(data, tool)
                    figures = self.measured(tool, "batch (10 atlases)", cmd)
                    if rep == 0:
                        for label in ("DK", atlases[-1][0]):
                            found = sorted((run / "out").glob(f"atlas-{label}_*expression.tsv"))
                            if found:
                                shutil.copy(found[0], self.work / f"output-batch-{label}-ahba.tsv")
                finally:
                    shutil.rmtree(run, ignore_errors=True)
                self.record("batch", tool, figures)
                continue
            if (rep >= self.args.batch_abagen_repeat or self.args.batch_abagen_from is not None
                    or self.args.batch_abagen_bound):
                continue
            runs = []
            for label, atlas in atlases:  # its Python API (which takes the probe patch)
                out = self.work / f"output-batch-{label}-abagen.pkl"
                runs.append(self.api(tool, data, atlas, {}, out if rep == 0 else None,
                                     label=f"batch {label}"))
            self.record("batch", tool, {
                "wall_s": sum(r["wall_s"] for r in runs), "cpu_s": sum(r["cpu_s"] for r in runs),
                "peak_mb": max(r["peak_mb"] for r in runs), "runs": runs})

    def rechoose(self, rep: int, tools) -> None:
        if "ahba" not in tools:
            return
        folder = self.warm_folder("ahba")
        for stored in folder.rglob("selection-*.npz"):  # ahba_app.selection_cache's files
            stored.unlink()
        self._prepared.clear()  # the choices of other options are gone too
        self.record("rechoose", "ahba", self.api("ahba", folder, self.dk, {},
                                                 label="warm, probes chosen again"))


# ---------------------------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------------------------
def medians(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]
            if isinstance(runs[0][key], (int, float))}


def compare_outputs(ours: Path, theirs: Path, tolerance=TOLERANCE) -> dict:
    """Same regions, genes and empty cells, the largest absolute difference and whether every
    value is the same bits; ``ok`` within ``tolerance``, or bit for bit when it is "exact"."""
    import numpy as np
    import pandas as pd

    if not (ours.exists() and theirs.exists()):
        return {"checked": False}
    def read(path):
        if path.suffix == ".pkl":
            return pd.read_pickle(path)
        return pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index_col=0)

    a, b = read(ours), read(theirs)
    same_rows = list(map(int, a.index)) == list(map(int, b.index))
    same_cols = list(map(str, a.columns)) == list(map(str, b.columns))
    out = {"checked": True, "shape_ahba": list(a.shape), "shape_abagen": list(b.shape),
           "same_regions": same_rows, "same_genes": same_cols}
    if same_rows and same_cols:
        x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
        out["same_nan"] = bool((np.isnan(x) == np.isnan(y)).all())
        diff = np.abs(x - y)
        out["max_abs_diff"] = float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0
        out["bit_identical"] = bool((x.view(np.int64) == y.view(np.int64)).all())
    if tolerance == "exact":
        out["ok"] = bool(out.get("bit_identical"))
    else:
        out["ok"] = bool(same_rows and same_cols and out.get("same_nan")
                         and out.get("max_abs_diff", 1) <= tolerance)
    return out


def summarize(bench: Bench, args) -> dict:
    res = bench.results
    table, ratios = [], {}
    for case in ("cold", "warm", "cli", "mirror", "fine", "rechoose", "batch"):
        if case not in res or (case == "rechoose" and "abagen" not in res.get("warm", {})):
            continue
        if case != "rechoose" and not ({"ahba", "abagen"} <= set(res[case]) or (
                case == "mirror" and "ahba" in res[case] and "mirror_only" in res)):
            for tool, runs in res[case].items():  # one tool only (--tools): no ratio
                table.append((case, "ahba-app" if tool == "ahba" else tool, medians(runs)))
            continue
        ours = medians(res[case]["ahba"])
        if case == "rechoose":  # abagen has nothing to store: its warm run is the same work
            versus = {case: medians(res["warm"]["abagen"])}
            table.append(("rechoose: abagen's warm runs", "abagen", versus[case]))
        elif case == "mirror":  # abagen runs each option alone: compare with each run
            versus = {"mirror": medians(res["mirror_only"]["abagen"]),
                      "mirror (vs interpolate alone)": medians(res["interpolate_only"]["abagen"])}
            table.append(("mirror: abagen lr_mirror alone", "abagen", versus["mirror"]))
            table.append(("mirror: abagen interpolate alone", "abagen",
                          versus["mirror (vs interpolate alone)"]))
            # both results from abagen take both runs, one after the other: times add up,
            # the peak is the larger one
            both = [versus["mirror"], versus["mirror (vs interpolate alone)"]]
            versus["mirror (vs both abagen runs)"] = {
                "wall_s": sum(m["wall_s"] for m in both), "cpu_s": sum(m["cpu_s"] for m in both),
                "peak_mb": max(m["peak_mb"] for m in both)}
        else:
            versus = {case: medians(res[case]["abagen"])}
            table.append((case, "abagen", versus[case]))
        table.append((case, "ahba-app", ours))
        for name, theirs in versus.items():
            ratios[name] = {"wall": ours["wall_s"] / theirs["wall_s"],
                            "cpu": ours["cpu_s"] / theirs["cpu_s"],
                            "peak_memory": ours["peak_mb"] / theirs["peak_mb"]}
    return {"table": table, "ratios": ratios}


#: (name, ratio key, limit): the targets of issue 16, at every precision.
TARGETS = (
    ("warm API wall", ("warm", "wall"), 1 / 20),
    ("warm API peak memory", ("warm", "peak_memory"), 0.35),
    ("warm CLI wall", ("cli", "wall"), 1 / 10),
    ("cold wall", ("cold", "wall"), 1 / 5),
    ("new options, probes not stored (wall)", ("rechoose", "wall"), 1 / 10),
    ("batch of 10 atlases vs 10 abagen runs (wall)", ("batch", "wall"), 1 / 20),
)


def targets(ratios: dict, sizes: dict | None, parity: dict, precision: str = "6dp"
            ) -> list[tuple[str, bool, str]]:
    checks = []

    def add(name, value, limit, what):
        if value is not None:
            checks.append((name, value <= limit, f"{what} {value:.3f} (target <= {limit:.3g})"))

    for name, (case, key), limit in TARGETS:
        add(name, ratios.get(case, {}).get(key), limit, "ratio")
    if sizes and sizes.get("abagen", {}).get("abagen_parquet_mb") and sizes.get("ahba"):
        limit = 1.0 if precision == "17" else 1 / 2
        add("cache size", sizes["ahba"]["ahba_cache_mb"] / sizes["abagen"]["abagen_parquet_mb"],
            limit, "ahba cache / abagen parquet")
    warm = ratios.get("warm", {})
    for case in ("fine", "mirror", "mirror (vs interpolate alone)",
                 "mirror (vs both abagen runs)"):
        if case in ratios and warm:
            for key, label in (("wall", "wall time"), ("peak_memory", "peak memory")):
                add(f"{case} {label} vs DK", ratios[case][key], warm[key],
                    f"ratio (DK warm: {warm[key]:.3f})")
    checked = {case: p for case, p in parity.items() if p.get("checked")}
    if checked:
        worst = max(p.get("max_abs_diff", float("inf")) for p in checked.values())
        checks.append(("outputs equal abagen's", all(p["ok"] for p in checked.values()),
                       f"{len(checked)} tables ({', '.join(checked)}), max |difference| "
                       f"{worst:.2e} (tolerance {TOLERANCE:g})"))
    return checks


def print_report(summary: dict, checks, sizes, parity, facts, args) -> None:
    print("\n" + "=" * 100)
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {facts.get('cpu_model', '?')}, {facts['cpus_usable']} usable CPU(s), "
          f"{facts.get('memory_gb', '?')} GB; load average at start "
          f"{facts['load_average'][0]:.1f}, at end {os.getloadavg()[0]:.1f}")
    print(f"medians of {args.repeat} run(s); each a fresh process (start-up and imports "
          "included); peak = largest resident set of the process tree")
    print(f"\n{'case':<34} {'tool':<9} {'wall s':>8} {'cpu s':>8} {'peak MB':>9}")
    print("-" * 72)
    for case, tool, m in summary["table"]:
        print(f"{case:<34} {tool:<9} {m['wall_s']:8.1f} {m['cpu_s']:8.1f} {m['peak_mb']:9.0f}")
    print(f"\n{'ratio ahba-app / abagen':<34} {'wall':>8} {'cpu':>8} {'memory':>9}")
    print("-" * 62)
    for case, r in summary["ratios"].items():
        note = " (vs lr_mirror alone)" if case == "mirror" else ""
        print(f"{case + note:<34} {r['wall']:8.3f} {r['cpu']:8.3f} {r['peak_memory']:9.3f}")
    if sizes:
        print("\ncache on disk: " + ", ".join(
            f"{tool}: {s['ahba_cache_mb' if tool == 'ahba' else 'abagen_parquet_mb']:.0f} MB"
            for tool, s in sizes.items()) + f" (CSVs: {next(iter(sizes.values()))['csv_mb']:.0f}"
            " MB)")
    for case, p in parity.items():
        if p.get("checked"):
            print(f"outputs ({case}): ahba-app {p['shape_ahba']} vs abagen {p['shape_abagen']},"
                  f" same regions {p['same_regions']}, same genes {p['same_genes']}, same empty "
                  f"cells {p.get('same_nan')}, max |difference| "
                  f"{p.get('max_abs_diff', float('nan')):.2e}")
    print("\ntargets:")
    for name, ok, detail in checks:
        print(f"  [{'met' if ok else 'NOT met':>7}] {name}: {detail}")


def clear_outputs(work: Path, cases) -> None:
    """Remove the tables an earlier run of ``cases`` left in ``work``: the outputs compared
    after a run are then that run's own."""
    for case in cases:
        for stale in work.glob(f"output-{case}-*"):
            stale.unlink()


def compare_case_outputs(work: Path, cases) -> dict:
    """:func:`compare_outputs` of the two tools' tables for each of ``cases`` that writes
    them (warm, fine, cli, and each atlas of batch)."""
    parity = {case: compare_outputs(work / f"output-{case}-ahba.pkl",
                                    work / f"output-{case}-abagen.pkl")
              for case in ("warm", "fine") if case in cases}
    if "cli" in cases:
        parity["cli"] = compare_outputs(work / "output-cli-ahba.tsv",
                                        work / "output-cli-abagen.csv")
    if "batch" in cases:
        for ours in sorted(work.glob("output-batch-*-ahba.tsv")):
            label = ours.name[len("output-batch-"):-len("-ahba.tsv")]
            parity[f"batch {label}"] = compare_outputs(
                ours, work / f"output-batch-{label}-abagen.pkl")
    return parity


def run_precision(args, precision: str, abagen_python: Path, facts: dict) -> dict:
    """Every case at one precision; its summary, targets and raw figures."""
    sub = argparse.Namespace(**vars(args))
    sub.data = ensure_data(data_for(args.data, precision), precision)
    sub.work = args.work / f"p{precision}"
    sub.work.mkdir(parents=True, exist_ok=True)
    bench = Bench(sub, abagen_python)
    print(f"\n### precision {precision}\ndata: {sub.data}\nwork: {sub.work}" +
          ("\nabagen runs with the reannotation patch" if bench.patch else ""), flush=True)
    clear_outputs(sub.work, args.cases)
    for rep in range(args.repeat):
        tools = ("abagen", "ahba") if rep % 2 == 0 else ("ahba", "abagen")
        tools = tuple(t for t in tools if t in args.tools)
        print(f"repetition {rep + 1} of {args.repeat} (precision {precision}, load average "
              f"{os.getloadavg()[0]:.1f})", flush=True)
        for case in args.cases:
            getattr(bench, case)(rep, tools)
    parity = compare_case_outputs(sub.work, args.cases)
    if args.batch_abagen_bound and "batch" in args.cases and "warm" in bench.results:
        # ten times abagen's DK run: a lower bound of its ten runs (abagen's cost grows with
        # the regions, and the nine other atlases have more than DK's 83), so an upper bound
        # of the ratio
        warm = medians(bench.results["warm"]["abagen"])
        bench.results.setdefault("batch", {})["abagen"] = [{
            "wall_s": 10 * warm["wall_s"], "cpu_s": 10 * warm["cpu_s"],
            "peak_mb": warm["peak_mb"], "estimate": "10 x abagen's warm DK median"}]
        print("  (abagen's ten batch runs: 10 x its warm DK median, a lower bound)", flush=True)
    elif args.batch_abagen_from is not None and "batch" in args.cases:
        # abagen's ten runs read its parquet files, float64 at every precision: measured once
        bench.results.setdefault("batch", {})["abagen"] = args.batch_abagen_from
        print("  (abagen's ten batch runs: as measured at the first precision)", flush=True)
    summary = summarize(bench, sub)
    sizes = bench.results.get("cache_sizes")
    checks = targets(summary["ratios"], sizes, parity, precision)
    print_report(summary, checks, sizes, parity, facts, sub)
    return {"data": str(sub.data), "summary": summary, "checks": checks, "sizes": sizes,
            "parity": parity, "runs": {k: v for k, v in bench.results.items()
                                       if k != "cache_sizes"}}


def print_targets_table(done: dict) -> None:
    """One row per target, one column per precision: the ratio and PASS or FAIL."""
    names = []
    for result in done.values():
        for name, _, _ in result["checks"]:
            if name not in names:
                names.append(name)
    width = 44
    print("\n" + "=" * 100)
    print(f"{'target':<{width}}" + "".join(f"{p:>18}" for p in done))
    print("-" * (width + 18 * len(done)))
    for name in names:
        cells = []
        for result in done.values():
            found = [(ok, d) for n, ok, d in result["checks"] if n == name]
            if not found:
                cells.append(f"{'-':>18}")
                continue
            ok, detail = found[0]
            value = detail.split("(")[0].split()[-1] if "difference" not in detail else \
                detail.split("difference| ")[1].split()[0]
            cells.append(f"{value + (' PASS' if ok else ' FAIL'):>18}")
        print(f"{name[:width - 1]:<{width}}" + "".join(cells))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data", type=Path, default=RESULTS / "synthetic-full",
                        help="full-size AHBA data written with 6 decimals (made here when "
                             "absent); other precisions use DIR_p12 etc. beside it")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS,
                        default=["6dp", "12", "17"],
                        help="digits of the data to run on (default: 6dp 12 17)")
    parser.add_argument("--work", type=Path, default=RESULTS / "work",
                        help="scratch folder for data links, caches and logs (best on the "
                             "data's file system, so that the CSVs are hard-linked)")
    parser.add_argument("--abagen-venv", type=Path, default=RESULTS / ".venv-abagen")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(DEFAULT_CASES))
    parser.add_argument("--fine-regions", type=int, default=1000)
    parser.add_argument("--batch-regions", type=int, nargs=9, default=list(BATCH_REGIONS),
                        help="regions of the nine atlases cut from DK for the batch case")
    parser.add_argument("--batch-abagen-repeat", type=int, default=1,
                        help="times abagen's ten batch runs are measured (default 1)")
    parser.add_argument("--batch-abagen-once", action="store_true",
                        help="measure abagen's ten batch runs at the first precision only and "
                             "compare every precision with them (abagen reads the same float64 "
                             "parquet whatever the digits of the CSV)")
    parser.add_argument("--batch-abagen-bound", action="store_true",
                        help="do not run abagen on the ten atlases: take ten times its warm DK "
                             "median, a lower bound of its ten runs (fewer regions than any of "
                             "the nine others), which makes the batch ratio an upper bound")
    parser.add_argument("--tools", nargs="+", choices=("abagen", "ahba"),
                        default=["abagen", "ahba"],
                        help="run only these tools (ratios need both in one run)")
    parser.add_argument("--cold-repeat", type=int, default=None,
                        help="repetitions of the cold case (default: --repeat)")
    parser.add_argument("--json", type=Path, help="where to write the figures (default: "
                        "benchmarks/results/<timestamp>.json)")
    args = parser.parse_args(argv)
    args.data, args.work = args.data.resolve(), args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.cold_repeat is None:
        args.cold_repeat = args.repeat

    facts = machine_facts()
    for precision in args.precision:  # each dataset generated once, before any timing
        ensure_data(data_for(args.data, precision), precision)
    abagen_python = ensure_abagen_venv(args.abagen_venv)
    speed = {"start": speed_probe()}
    started = _dt.datetime.now()
    print(f"abagen: {abagen_python}\nahba-app: {sys.executable}\n"
          f"machine speed at the start: {_speed_line(speed['start'])}", flush=True)
    done = {}
    args.batch_abagen_from = None
    for precision in args.precision:
        done[precision] = run_precision(args, precision, abagen_python, facts)
        if args.batch_abagen_once and "abagen" in done[precision]["runs"].get("batch", {}):
            args.batch_abagen_from = done[precision]["runs"]["batch"]["abagen"]
    print_targets_table(done)
    print(f"load average at start {facts['load_average'][0]:.1f}, at end "
          f"{os.getloadavg()[0]:.1f} (2-core machine shared with other jobs)")
    speed["end"] = speed_probe()
    print(f"machine speed at the start: {_speed_line(speed['start'])}\n"
          f"machine speed at the end:   {_speed_line(speed['end'])}")

    record = {
        "started": started.isoformat(timespec="seconds"),
        "finished": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv], "repeat": args.repeat, "cases": args.cases,
        "precisions": args.precision, "batch_regions": args.batch_regions,
        "machine": dict(facts, load_average_end=os.getloadavg(), speed=speed),
        "git": git_commit(),
        "versions": {"ahba": versions(Path(sys.executable), AHBA_PACKAGES),
                     "abagen": versions(abagen_python, ABAGEN_PACKAGES)},
        "by_precision": {
            precision: {
                "data": r["data"], "runs": r["runs"],
                "medians": {f"{case}/{tool}": m for case, tool, m in r["summary"]["table"]},
                "ratios": r["summary"]["ratios"], "cache_sizes": r["sizes"],
                "parity": r["parity"],
                "targets": [{"target": n, "met": ok, "detail": d} for n, ok, d in r["checks"]],
            } for precision, r in done.items()},
    }
    path = args.json or RESULTS / f"{started.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, path)
    print(f"\nfigures written to {path}")
    return 0 if all(ok for r in done.values() for _, ok, _ in r["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
