"""Nipype execution engines: ``--nipype-plugin`` and ``--plugin-args`` (as fMRIPrep's
``--use-plugin``), checked before anything runs.

- ``Linear``: one node after the other, in this process, one sub-workflow (an atlas) after
  the other (:class:`ahba_app.cli.linear.SubWorkflowOrder`);
- ``MultiProc``: ``--nprocs`` worker processes (:mod:`ahba_app.cli.multiproc`: workers that
  end with the run);
- ``SLURM``: one ``sbatch`` job per node, this process submitting them as their inputs become
  ready and polling ``squeue`` until they are done;
- ``SLURMGraph``: the whole graph submitted at once as jobs with dependencies; Nipype returns
  right after submitting, so :func:`run_workflow` waits for the jobs (``squeue``) and fails
  when one of them failed.

Nipype's SLURM plugins need ``$LOGNAME`` (they look the user's jobs up with it): it is set
from the user id when missing. Work folders must be on a file system that every node sees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping

__all__ = ["PLUGINS", "EngineError", "Engine", "parse_plugin_args", "run_workflow"]

#: The engines ``--nipype-plugin`` accepts.
PLUGINS = ("Linear", "MultiProc", "SLURM", "SLURMGraph")
_CLUSTER = ("SLURM", "SLURMGraph")


class EngineError(ValueError):
    """An engine that cannot be used (one message, before anything runs)."""


def parse_plugin_args(text) -> dict:
    """``--plugin-args``: a JSON object, or the path of a JSON or TOML file holding one (e.g.
    ``{"sbatch_args": "--partition=short --time=1:00:00"}``)."""
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    text = str(text)
    path = Path(text).expanduser()
    where = "--plugin-args"
    if not text.lstrip().startswith("{") and path.is_file():
        where = f"--plugin-args file {path}"
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as err:
            raise EngineError(f"Cannot read the {where}: {err}.") from None
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # pragma: no cover - Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            try:
                value = tomllib.loads(raw)
            except tomllib.TOMLDecodeError as err:
                raise EngineError(f"The {where} is not valid TOML: {err}.") from None
            return _checked_args(value, where)
        text = raw
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise EngineError(
            f"{where} is neither a JSON object nor an existing file ({err}): give e.g. "
            "'{\"sbatch_args\": \"--partition=short\"}' or the path of a .json/.toml file."
        ) from None
    return _checked_args(value, where)


def _checked_args(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise EngineError(f"{where} must be an object of plugin arguments (e.g. "
                          "{\"sbatch_args\": \"--partition=short\"}), not "
                          f"{type(value).__name__}.")
    return value


class Engine:
    """A checked engine: the plugin's name, its arguments, the processes MultiProc may use."""

    def __init__(self, plugin: str | None = None, plugin_args=None, nprocs: int = 1,
                 mem_mb: int | None = None):
        if plugin is None:
            plugin = "MultiProc" if nprocs > 1 else "Linear"
        if plugin not in PLUGINS:
            raise EngineError(f"Unknown --nipype-plugin {plugin!r}: choose one of "
                              f"{list(PLUGINS)}.")
        self.plugin, self.nprocs, self.mem_mb = plugin, int(nprocs), mem_mb
        self.plugin_args = parse_plugin_args(plugin_args)
        if plugin in _CLUSTER:
            missing = [tool for tool in ("sbatch", "squeue")
                       if shutil.which(tool) is None]
            if missing:
                raise EngineError(f"--nipype-plugin {plugin} submits jobs with SLURM, but "
                                  f"{' and '.join(missing)} cannot be found on PATH: run on a "
                                  "SLURM login node, or choose Linear or MultiProc.")

    @property
    def cluster(self) -> bool:
        return self.plugin in _CLUSTER

    def __repr__(self) -> str:
        return f"Engine({self.plugin!r}, {self.plugin_args!r}, nprocs={self.nprocs})"


def run_workflow(workflow, engine: Engine,
                 status_callback: Callable | None = None, poll: float = 2.0) -> None:
    """Run ``workflow`` with ``engine``; returns when every node has run (for SLURMGraph: when
    every submitted job has left the queue). Raises RuntimeError when a node failed."""
    args = dict(engine.plugin_args)
    if status_callback is not None and engine.plugin != "SLURMGraph":
        args["status_callback"] = status_callback
    if engine.plugin == "Linear":
        from .linear import SubWorkflowOrder

        workflow.run(plugin=SubWorkflowOrder(plugin_args=args or None))
        return
    if engine.plugin == "MultiProc":
        from .multiproc import MultiProcPlugin

        args.setdefault("n_procs", engine.nprocs)
        args.setdefault("raise_insufficient", False)
        if engine.mem_mb:
            args.setdefault("memory_gb", engine.mem_mb / 1024)
        plugin = MultiProcPlugin(plugin_args=args)
        try:
            workflow.run(plugin=plugin)
        except BaseException:
            plugin.terminate()
            raise
        return
    os.environ.setdefault("LOGNAME", _user())
    if engine.plugin == "SLURM":
        workflow.run(plugin="SLURM", plugin_args=args)
        return
    # Nipype 1.11 reads this argument unconditionally; True also makes a resumed sweep skip
    # the jobs of nodes that finished before
    args.setdefault("dont_resubmit_completed_jobs", True)
    workflow.run(plugin="SLURMGraph", plugin_args=args)
    wait_for_graph(Path(workflow.base_dir) / workflow.name / "batch", poll=poll)


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _job_names(batch_dir: Path) -> set:
    script = batch_dir / "submit_jobs.sh"
    if not script.is_file():
        return set()
    return set(re.findall(r"-J (\S+)", script.read_text()))


def wait_for_graph(batch_dir: Path, *, poll: float = 2.0) -> None:
    """Wait until the jobs that SLURMGraph submitted (the names in its ``submit_jobs.sh``)
    have left SLURM's queue. Jobs that can never start because a job they depend on failed
    are cancelled and reported."""
    names = _job_names(batch_dir)
    if not names:
        return
    user = os.environ.get("LOGNAME") or _user()
    while True:
        listing = subprocess.run(["squeue", "-h", "-u", user, "-o", "%i|%j|%T|%r"],
                                 capture_output=True, text=True, check=False)
        if listing.returncode != 0:
            raise RuntimeError(f"squeue failed while waiting for the SLURMGraph jobs: "
                               f"{listing.stderr.strip()}")
        ours = [line.split("|") for line in listing.stdout.splitlines()
                if line.split("|")[1:2] and line.split("|")[1] in names]
        if not ours:
            return
        stuck = [job for job in ours if "DependencyNeverSatisfied" in job[3]]
        if stuck and len(stuck) == len(ours):
            subprocess.run(["scancel", *[job[0] for job in stuck]], check=False,
                           capture_output=True)
            raise RuntimeError(f"{len(stuck)} SLURMGraph job(s) can never run because a job "
                               "they depend on failed (cancelled); see the crash files in "
                               "the work folder.")
        time.sleep(poll)
