"""A small multiverse on a real SLURM cluster: the rows of the SLURM and SLURMGraph engines
equal those of MultiProc.

``.ci/run`` starts a single-node cluster (``../shared/tools/engines/start-slurm.sh``: munged,
slurmctld and slurmd from Debian's packages) before the tests. Elsewhere the tests are skipped,
with the reason, when no SLURM node answers; in CI (``CI=true``) that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from test_multiverse_engines import make_job, run_with


def _cluster_problem() -> str | None:
    """Why no job can run on a SLURM cluster here, or None when one answers."""
    for tool in ("sinfo", "sbatch", "squeue"):
        if shutil.which(tool) is None:
            return f"no SLURM client ({tool} is not on PATH)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                                timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s (no slurmctld running?)"
    if states.returncode != 0:
        return f"sinfo failed: {states.stderr.strip() or states.returncode}"
    usable = {"idle", "mix", "alloc", "comp"}
    if not usable & {s.strip().rstrip("*~#") for s in states.stdout.split()}:
        return f"no SLURM node is up (node states: {states.stdout.split()})"
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = _cluster_problem()
    if problem is not None:
        message = (f"no SLURM cluster: {problem}. Start one as root with "
                   "../shared/tools/engines/start-slurm.sh (.ci/run does).")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the SLURM tests, but there is {message}")
        pytest.skip(message)


@pytest.fixture(scope="module")
def multiproc(ahba_small, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("slurm")
    job = make_job(tmp_path)
    table, _ = run_with(job, tmp_path, ahba_small, "MultiProc", "multiproc", nprocs=2)
    return job, table, tmp_path


@pytest.mark.parametrize("plugin", ["SLURM", "SLURMGraph"])
def test_slurm_rows_equal_multiproc_rows(cluster, multiproc, ahba_small, plugin):
    job, table, tmp_path = multiproc
    logs = tmp_path / f"jobs-{plugin}"
    logs.mkdir()
    # --plugin-args reach sbatch: each job writes its log where they say, named by SLURM's id
    args = {"sbatch_args": f"--time=30 --output={logs}/job-%j.out"}
    if plugin == "SLURM":
        args["poll_sleep_duration"] = 1
    other, _ = run_with(job, tmp_path, ahba_small, plugin, plugin.lower(), args=args)
    assert other.read_bytes() == table.read_bytes()
    names = sorted(p.name for p in logs.iterdir())
    assert len(names) == 6 and all(re.fullmatch(r"job-[0-9]+\.out", n) for n in names), names


def test_no_cluster_is_explained(monkeypatch):
    from test_multiverse_slurm import _cluster_problem

    monkeypatch.setenv("PATH", "/nonexistent")
    assert _cluster_problem() == "no SLURM client (sinfo is not on PATH)"


def test_command_line_multiverse_on_slurm(cluster, multiproc, ahba_small, tmp_path):
    """ahba-app IN OUT group --multiverse GRID --nipype-plugin SLURMGraph: the rows of the
    MultiProc run."""
    from ahba_app.cli import run as cli_run

    job, table, module_tmp = multiproc
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    code = cli_run.main([str(tmp_path / "in"), str(out), "group", "--ahba-dir", str(ahba_small),
                         "-w", str(tmp_path / "work"), "--multiverse",
                         str(module_tmp / "grid.toml"), "--nipype-plugin", "SLURMGraph",
                         "--plugin-args", '{"sbatch_args": "--time=30"}'])
    assert code == 0
    rows = out / "atlas-desikankilliany_desc-multiverse_pipelines.tsv"
    # the CLI's atlas input is the bundled atlas under its own name: same rows
    assert rows.read_bytes() == table.read_bytes()


def test_ordinary_group_run_on_slurm(cluster, ahba_small, tmp_path):
    """--nipype-plugin SLURM is an engine of every run: the group tables equal Linear's."""
    from ahba_app.cli import run as cli_run

    (tmp_path / "in").mkdir()
    outputs = {}
    for plugin in ("Linear", "SLURM"):
        out = tmp_path / f"out-{plugin}"
        code = cli_run.main([str(tmp_path / "in"), str(out), "group", "--ahba-dir",
                             str(ahba_small), "-w", str(tmp_path / f"work-{plugin}"),
                             "--nipype-plugin", plugin,
                             "--plugin-args", '{"poll_sleep_duration": 1}'
                             if plugin == "SLURM" else "{}"])
        assert code == 0, plugin
        outputs[plugin] = out
    tables = sorted(p.name for p in outputs["Linear"].glob("*.tsv"))
    assert any(name.endswith("_expression.tsv") for name in tables)
    for name in tables:
        assert (outputs["SLURM"] / name).read_bytes() == (outputs["Linear"] / name).read_bytes()
    batch = tmp_path / "work-SLURM"
    assert list(batch.rglob("batchscript_*.sh"))  # the nodes ran as sbatch jobs
