"""ahba-app-abagen against abagen 0.1.3's own ``abagen`` command: same files, same numbers.

Both commands run in subprocesses on private copies of the same synthetic data (every probe of
the real files, so that abagen runs unpatched), with the same command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ahba_app.datasets import fetch_desikan_killiany
from conftest import _synthetic
from oracle import oracle_python

sys.path.insert(0, str(Path(__file__).with_name("abagen_suite")))
import runner  # noqa: E402

pytestmark = pytest.mark.oracle

DK = fetch_desikan_killiany()
DK_SURF = fetch_desikan_killiany(surface=True)
# all six donors: with two, abagen and ahba-app break ties of differential stability apart
# for a few genes on these small samples (reported, being looked into)
DONORS: list[str] = []

#: name -> (arguments after the atlas, files written besides nothing else)
CASES = {
    "default": ([DK["image"], "--atlas-info", DK["info"]], ["out.csv"]),
    "counts-zscore-maxint": (
        [DK["image"], "--atlas_info", DK["info"], "--save-counts", "--gene-norm", "zscore",
         "--sample_norm", "None", "--probe-selection", "max_intensity"],
        ["out.csv", "out_counts.csv"]),
    "donors-centroids-allen": (
        [DK["image"], "--save_donors", "--missing", "centroids", "--no-reannotated",
         "--no-corrected-mni", "--norm-all"],
        [f"out_{d}.csv" for d in ("10021", "12876", "14380", "15496", "15697", "9861")]),
    "surface-samples-median": (
        [*DK_SURF["image"], "--region-agg", "samples", "--agg_metric", "median", "--tol", "1.5",
         "--lr-mirror", "leftright", "--probe_selection", "average"],
        ["out.csv"]),
}


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AHBA_", "ABAGEN_"))}
    env.update(HOME=str(home), PYTHONWARNINGS="ignore", MPLBACKEND="Agg")
    return env


def _command(tool: str, args: list, data: Path, out: Path) -> list[str]:
    exe = Path(oracle_python()).with_name("abagen") if tool == "abagen" \
        else Path(sys.executable).with_name("ahba-app-abagen")
    return [str(exe), *map(str, args), *DONORS, "--data-dir", str(data),
            "--output-file", str(out / "out.csv")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(name)``: the case run by both commands at once (each case once per module)."""
    source = _synthetic("suite", 1234)
    root = tmp_path_factory.mktemp("cli")
    data = {tool: runner.prepare_data(source, root / tool / "data") for tool in ("abagen", "ahba")}
    done = {}

    def one(tool, name):
        out = root / tool / name
        out.mkdir(parents=True)
        proc = subprocess.run(_command(tool, CASES[name][0], data[tool], out), cwd=out,
                              env=_env(root), capture_output=True, text=True, timeout=1800)
        return proc, out

    def run(name):
        if name not in done:
            with ThreadPoolExecutor(max_workers=2) as pool:
                jobs = {tool: pool.submit(one, tool, name) for tool in ("abagen", "ahba")}
                done[name] = {tool: job.result() for tool, job in jobs.items()}
        return done[name]
    return run


@pytest.mark.parametrize("name", list(CASES))
def test_same_files_and_numbers_as_abagen(runs, name):
    result = runs(name)
    (theirs, their_dir), (ours, our_dir) = result["abagen"], result["ahba"]
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    assert ours.returncode == 0, ours.stderr[-2000:]
    expected = CASES[name][1]
    assert sorted(p.name for p in their_dir.iterdir()) == expected
    assert sorted(p.name for p in our_dir.iterdir()) == expected
    for file in expected:
        a = pd.read_csv(their_dir / file, index_col=0)
        b = pd.read_csv(our_dir / file, index_col=0)
        assert a.index.name == b.index.name and list(a.index) == list(b.index), file
        assert list(a.columns) == list(b.columns), file
        x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
        assert np.array_equal(np.isnan(x), np.isnan(y)), file
        diff = np.nanmax(np.abs(x - y)) if x.size and not np.isnan(x).all() else 0.0
        print(f"{name}/{file}: {a.shape[0]} x {a.shape[1]}, largest difference {diff:.1e}")
        assert diff <= 1e-12, (file, diff)


def test_stdout_prints_the_table(tmp_path):
    data = runner.prepare_data(_synthetic("suite", 1234), tmp_path / "data")
    proc = subprocess.run([*_command("ahba", CASES["default"][0], data, tmp_path), "--stdout"],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("label,") and len(proc.stdout.splitlines()) == 84
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("args, status", [
    (["/no/such/atlas.nii.gz"], 2),                          # argparse: the path must exist
    ([DK["image"], "--missing", "everywhere"], 2),           # argparse: not a choice
    ([DK["image"], "--atlas-info", "WRONG_INFO"], 1),        # the workflow refuses the table
])
def test_bad_input_gets_abagens_status_and_one_line(tmp_path, args, status):
    data = runner.prepare_data(_synthetic("suite", 1234), tmp_path / "data")
    bad = tmp_path / "info.csv"
    pd.DataFrame({"id": [1, 2], "colour": ["red", "blue"]}).to_csv(bad, index=False)
    args = [str(bad) if a == "WRONG_INFO" else a for a in args]
    results = {}
    for tool in ("abagen", "ahba"):
        out = tmp_path / tool
        out.mkdir()
        results[tool] = subprocess.run(_command(tool, args, data, out), cwd=out,
                                       env=_env(tmp_path), capture_output=True, text=True,
                                       timeout=600)
        assert not (out / "out.csv").exists()
    assert results["abagen"].returncode == status
    assert results["ahba"].returncode == status
    lines = results["ahba"].stderr.strip().splitlines()
    message = lines[-1]
    assert message.startswith("ahba-app-abagen: error: ")
    assert "Traceback" not in results["ahba"].stderr
    if status == 2:   # argparse's usage, then one error line: as abagen's
        assert lines[0].startswith("usage: ahba-app-abagen")
        assert results["abagen"].stderr.strip().splitlines()[-1].startswith("abagen: error: ")
    else:             # abagen prints a traceback; ahba-app one line naming the file and fix
        assert len(lines) == 1
        assert str(bad) in message and "hemisphere" in message
        assert "Traceback" in results["abagen"].stderr
