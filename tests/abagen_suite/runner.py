"""Run abagen 0.1.3's own test suite on abagen and on ahba-app, and compare the outcomes.

abagen ships its tests inside the wheel (``abagen/tests/``). This runner copies them out of the
oracle venv twice: once unchanged, run by the oracle venv's python on abagen itself; once with
every import of ``abagen`` rewritten to ``ahba_app``, run by ahba-app's python. Both runs see the
same synthetic data folder, in abagen's layout, through ``$ABAGEN_DATA``, with a fresh HOME and
every HTTP(S) proxy pointed at a closed port on 127.0.0.1 so that nothing can reach the internet.

The rewrite touches imports only: ``import abagen`` becomes ``import ahba_app as abagen``,
``from abagen[.x] import ...`` becomes ``from ahba_app[.x] import ...``, and the package name
given to ``pkg_resources.resource_filename`` (how abagen's tests find its bundled files) becomes
``ahba_app``. Nothing else in the tests changes.

The outcome of every test on both sides is compared with ``tests/abagen_deviations.toml``:

- a *required* test (one of abagen's documented modules, not a ``test__`` private helper) that
  passes on abagen must pass on ahba-app unless the file lists it;
- a listed test must really fail on ahba-app and pass on abagen (a stale entry is an error).

``python tests/abagen_suite/runner.py --data DIR`` prints the summary (``--json F`` keeps it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEVIATIONS = REPO / "tests" / "abagen_deviations.toml"

#: abagen's documented modules (its "Reference API"): their tests are required to pass.
DOCUMENTED = ("allen", "datasets", "images", "correct", "matching", "io", "reporting", "mouse")
#: abagen's internal modules: their tests are run and reported, not required.
INTERNAL = ("samples", "probes", "utils", "transforms", "surfaces", "cli")

# one import line at a time; the name "abagen" must be a whole word
_IMPORT = re.compile(r"^(\s*)import abagen\b(?!\.)(?! as)", re.M)
_IMPORT_AS = re.compile(r"^(\s*)import abagen((?:\.\w+)*) as ", re.M)
_FROM = re.compile(r"^(\s*)from abagen((?:\.\w+)*) import ", re.M)
_RESOURCE = re.compile(r"resource_filename\((['\"])abagen\1")


def rewrite_imports(text: str) -> str:
    """``text`` (a test module of abagen) with its imports of abagen pointed at ahba_app."""
    text = _IMPORT.sub(r"\1import ahba_app as abagen", text)
    text = _IMPORT_AS.sub(r"\1import ahba_app\2 as ", text)
    text = _FROM.sub(r"\1from ahba_app\2 import ", text)
    return _RESOURCE.sub(r"resource_filename(\1ahba_app\1", text)


def abagen_tests_dir(oracle_python: Path) -> Path:
    """The ``abagen/tests`` folder of the abagen installed in the oracle venv."""
    out = subprocess.run(
        [str(oracle_python), "-c",
         "import importlib.util, pathlib; "
         "print(pathlib.Path(importlib.util.find_spec('abagen').origin).parent / 'tests')"],
        check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


#: Sub-packages of abagen's tests that this runner runs (``abagen/tests/<name>/``): the tests of
#: ``abagen.datasets`` and of ``abagen.cli``. ``abagen/tests/mouse/`` needs the Allen web API:
#: tests/test_mouse_abagen_suite.py runs it against a local server on both tools.
SUBPACKAGES = ("datasets", "cli")


def test_files(source: Path) -> list[Path]:
    """abagen's test files this runner copies (relative to ``source``)."""
    files = sorted(p.relative_to(source) for p in source.glob("*.py"))
    for sub in SUBPACKAGES:
        files += sorted(p.relative_to(source) for p in (source / sub).glob("*.py"))
    return files


def copy_tests(source: Path, target: Path, *, rewrite: bool) -> Path:
    """Copy abagen's test modules into ``target/abagen_tests`` (rewritten if asked)."""
    folder = target / "abagen_tests"
    folder.mkdir(parents=True)
    for name in test_files(source):
        text = (source / name).read_text()
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(rewrite_imports(text) if rewrite else text)
    # an empty configuration so that neither project's pytest settings apply
    (target / "pytest.ini").write_text("[pytest]\n")
    return folder


#: Pseudo test name standing for "this module could not be imported".
COLLECTION = "<collection>"


def module_of(nodeid: str) -> str:
    """abagen module a test id belongs to: ``abagen_tests/test_io.py::x`` -> ``io``;
    ``abagen_tests/datasets/test_fetchers.py::x`` -> ``datasets`` (a sub-package's tests
    belong to the sub-package)."""
    parts = nodeid.split("::")[0].split("/")
    if len(parts) > 2 and parts[-2] in SUBPACKAGES:
        return parts[-2]
    return parts[-1].removeprefix("test_").removesuffix(".py")


def test_name(nodeid: str) -> str:
    return nodeid.split("::", 1)[1]


def is_required(nodeid: str) -> bool:
    """Required: a test of a documented module that does not test a private helper."""
    return module_of(nodeid) in DOCUMENTED and not test_name(nodeid).startswith("test__")


def read_junit(path: Path) -> dict[str, dict]:
    """``{test id: {"outcome": passed|failed|skipped, "message": first line}}`` from JUnit XML."""
    results = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        nodeid = f"{module}.py::{case.get('name')}"
        if not module:   # a test module that could not be imported: none of its tests ran
            nodeid = f"{case.get('name', '').replace('.', '/')}.py::{COLLECTION}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message = (child.get("message") or "").strip().splitlines()[:1]
                message = message[0][:200] if message else child.tag
                break
            if child.tag == "skipped":
                outcome = "skipped"
                message = (child.get("message") or "")[:200]
        results[nodeid] = {"outcome": outcome, "message": message}
    return results


def run_side(python: Path, tests: Path, data: Path, work: Path, timeout: float) -> dict:
    """Run the copied tests with ``python``; return the outcome of every test.

    The top-level test modules and each sub-package (:data:`SUBPACKAGES`) run in a pytest
    process of their own: abagen's ``datasets/test_utils.py::test_get_dataset_dir`` removes
    ``$ABAGEN_DATA`` from the environment and puts it back only if it passes, which would leave
    every later test of a shared process without its data folder.
    """
    home = work / "home"
    home.mkdir()
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens, a request fails at once
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AHBA_", "ABAGEN_", "PYTEST_", "COV_"))
           and key.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    env.update(ABAGEN_DATA=str(data), HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"),
               MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0",
               http_proxy=closed, https_proxy=closed, HTTP_PROXY=closed, HTTPS_PROXY=closed)
    groups = {"top": sorted(str(p) for p in tests.glob("test_*.py"))}
    groups.update({sub: [str(tests / sub)] for sub in SUBPACKAGES if (tests / sub).is_dir()})
    results = {}
    for name, paths in groups.items():
        junit = work / f"junit-{name}.xml"
        command = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                   "no:xdist", "-W", "ignore", "--continue-on-collection-errors", "-c",
                   str(work / "pytest.ini"), "--rootdir", str(work), f"--junitxml={junit}",
                   "-o", "junit_family=xunit1", *paths]
        proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if not junit.exists():
            # a conftest that cannot even be imported: every test counts as missing
            print(f"abagen's tests ({name}) could not be collected under {python}:\n"
                  f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results.update(read_junit(junit))
    return results


def load_deviations(path: Path = DEVIATIONS) -> dict[str, dict]:
    """``{test id: entry}`` of the expected deviations (each entry has a ``reason``)."""
    table = tomllib.loads(path.read_text())
    out = {}
    for entry in table.get("deviation", []):
        if not entry.get("reason", "").strip():
            raise ValueError(f"{path}: deviation {entry.get('test')!r} has no reason.")
        out[entry["test"]] = entry
    return out


def compare(abagen: dict, ahba: dict, deviations: dict) -> dict:
    """Per-module counts and the list of problems (empty when ahba-app is a drop-in)."""
    modules: dict[str, dict] = {}
    problems = []
    unimportable = {side: sorted(module_of(n) for n in outcomes if n.endswith(COLLECTION))
                    for side, outcomes in (("abagen", abagen), ("ahba_app", ahba))}
    for nodeid in sorted(set(abagen) | set(ahba)):
        if nodeid.endswith(COLLECTION):
            continue
        module = module_of(nodeid)
        ours = ahba.get(nodeid, {"outcome": "missing"})["outcome"]
        theirs = abagen.get(nodeid, {"outcome": "missing"})["outcome"]
        counts = modules.setdefault(module, {
            "required": module in DOCUMENTED,
            "abagen": {"passed": 0, "failed": 0, "skipped": 0, "missing": 0},
            "ahba_app": {"passed": 0, "failed": 0, "skipped": 0, "missing": 0}})
        counts["abagen"][theirs] += 1
        counts["ahba_app"][ours] += 1
        listed = deviations.get(nodeid)
        if is_required(nodeid) and theirs == "passed" and ours != "passed" and listed is None:
            problems.append(f"{nodeid}: passes on abagen, {ours} on ahba-app: "
                            f"{ahba.get(nodeid, {}).get('message', '')}")
        if listed is not None and (ours == "passed" or theirs != "passed"):
            problems.append(f"{nodeid}: listed as a deviation but {ours} on ahba-app and "
                            f"{theirs} on abagen: remove it from {DEVIATIONS.name}")
    for nodeid in deviations:
        if nodeid not in abagen and nodeid not in ahba:
            problems.append(f"{nodeid}: listed as a deviation but no such test ran")
    return {"modules": modules, "problems": problems, "unimportable": unimportable}


def summary_text(result: dict, deviations: dict) -> str:
    def cell(c):   # a test that did not run (its module could not be imported) failed
        return f"{c['passed']}/{c['failed'] + c['missing']}/{c['skipped']}"

    lines = ["passed/failed/skipped per abagen test module (required: documented module, "
             "tests of private helpers test__* excepted)",
             f"{'module':<12} {'required':<9} {'abagen':<12} {'ahba-app':<12}"]
    for module, counts in sorted(result["modules"].items()):
        lines.append(f"{module:<12} {'yes' if counts['required'] else 'no':<9} "
                     f"{cell(counts['abagen']):<12} {cell(counts['ahba_app']):<12}")
    total = {side: {k: sum(c[side][k] for c in result["modules"].values())
                    for k in ("passed", "failed", "skipped", "missing")}
             for side in ("abagen", "ahba_app")}
    lines.append(f"{'total':<12} {'':<9} {cell(total['abagen']):<12} "
                 f"{cell(total['ahba_app']):<12}")
    for side, names in result.get("unimportable", {}).items():
        if names:
            lines.append(f"test modules that {side} cannot import: {', '.join(names)}")
    lines.append(f"expected deviations: {len(deviations)}")
    for nodeid, entry in sorted(deviations.items()):
        lines.append(f"  {nodeid} [{entry.get('kind', 'deliberate')}]: {entry['reason']}")
    lines.append(f"problems: {len(result['problems'])}")
    lines.extend(f"  {p}" for p in result["problems"])
    return "\n".join(lines)


def prepare_data(source: Path, target: Path) -> Path:
    """A private copy of the synthetic data folder (both tools write caches beside the data,
    neither changes a file it reads: hard links are enough)."""
    shutil.copytree(source, target, copy_function=os.link,
                    ignore=shutil.ignore_patterns(".ahba-cache", "*.parq", "selection-*",
                                                  ".complete", "mirror"))
    return target


#: Bump when the way abagen's side is run changes (its command line or environment).
ABAGEN_RUN_VERSION = "2"


def abagen_key(source: Path, data: Path) -> str:
    """What abagen's outcomes depend on: its tests, the oracle venv's pins, how it is run and
    the data."""
    digest = hashlib.sha256(ABAGEN_RUN_VERSION.encode())
    for path in [source / name for name in test_files(source)] + [
            REPO / "tests" / "oracle-requirements.txt"]:
        digest.update(str(path.relative_to(path.parents[1])).encode() + b"\0"
                      + path.read_bytes())
    for path in sorted(p for p in data.rglob("*") if p.is_file() and ".ahba-cache" not in
                       p.parts and not p.name.endswith((".parq", ".lock", ".npz"))):
        # the synthetic data are generated deterministically: names, sizes and the
        # generator's manifest (synthetic.json: version, size, seed) identify them
        stat = path.stat()
        digest.update(f"{path.relative_to(data)}:{stat.st_size}".encode())
        if path.name in ("synthetic.json", ".anatomy-complete"):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


#: abagen's outcomes recorded with the repository (a run of ``runner.py --record``), used when
#: their key matches: abagen takes ten minutes and more on a busy machine, ahba-app's side a few.
RECORDED = HERE / "abagen_outcomes.json"


def run(data: Path, *, oracle_python: Path, ahba_python: Path = Path(sys.executable),
        work: Path | None = None, timeout: float = 1800, cache: Path | None = None) -> dict:
    """Run both sides (in parallel) on copies of ``data``; return outcomes and the comparison.

    abagen's outcomes depend only on abagen, its tests and the data: with ``cache`` (a folder)
    they are kept there under a key of those inputs and read back by later runs, which then
    run ahba-app's side only (abagen takes minutes where ahba-app takes about one).
    """
    work = Path(tempfile.mkdtemp(prefix="abagen-suite-")) if work is None else Path(work)
    source = abagen_tests_dir(oracle_python)
    key = abagen_key(source, data)
    stored = None if cache is None else Path(cache) / f"abagen-{key}.json"
    outcomes = {}
    recorded = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}
    if recorded.get("key") == key:
        outcomes["abagen"] = recorded["outcomes"]
    elif stored is not None and stored.exists():
        outcomes["abagen"] = json.loads(stored.read_text())
    jobs = {}
    for side, python, rewrite in (("abagen", oracle_python, False),
                                  ("ahba_app", ahba_python, True)):
        if side in outcomes:
            continue
        folder = work / side
        tests = copy_tests(source, folder, rewrite=rewrite)
        side_data = prepare_data(data, folder / "data")
        jobs[side] = (python, tests, side_data, folder)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {side: pool.submit(run_side, *args, timeout) for side, args in jobs.items()}
        outcomes.update({side: future.result() for side, future in futures.items()})
    if stored is not None and "abagen" in jobs and outcomes["abagen"]:
        stored.parent.mkdir(parents=True, exist_ok=True)
        temporary = stored.with_suffix(f".tmp{os.getpid()}")
        temporary.write_text(json.dumps(outcomes["abagen"], indent=1, sort_keys=True))
        os.replace(temporary, stored)
    deviations = load_deviations()
    result = compare(outcomes["abagen"], outcomes["ahba_app"], deviations)
    result["outcomes"] = outcomes
    result["key"] = key
    result["summary"] = summary_text(result, deviations)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="synthetic AHBA folder in abagen's layout (microarray/, rnaseq/, ...)")
    parser.add_argument("--work", type=Path, help="folder for the copies (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the outcomes and summary here")
    parser.add_argument("--cache", type=Path,
                        help="keep (and reuse) abagen's outcomes in this folder")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds each side may take (default 3600)")
    parser.add_argument("--record", action="store_true",
                        help=f"run abagen's side afresh and record its outcomes in "
                             f"{RECORDED.relative_to(REPO)}")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    import oracle

    if args.record and RECORDED.exists():
        RECORDED.unlink()
    result = run(args.data, oracle_python=oracle.oracle_python(), work=args.work,
                 cache=None if args.record else args.cache, timeout=args.timeout)
    if args.record:
        RECORDED.write_text(json.dumps({"key": result["key"],
                                        "outcomes": result["outcomes"]["abagen"]},
                                       indent=1, sort_keys=True) + "\n")
    print(result["summary"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
