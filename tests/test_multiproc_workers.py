"""MultiProc workers share the CPUs: each runs its numeric loops on its share of threads."""

from __future__ import annotations

import os

import pytest
from nipype.interfaces.utility import Function
from nipype.pipeline import engine as pe

from ahba_app.cli.multiproc import MultiProcPlugin, worker_threads


def _threads_in_worker(index):
    import os

    from ahba_app._blocks import n_threads

    return n_threads(), os.environ.get("AHBA_APP_THREADS")


def _run_two_nodes(tmp_path, n_procs):
    workflow = pe.Workflow(name="threads", base_dir=str(tmp_path))
    node = pe.Node(Function(input_names=["index"], output_names=["threads"],
                            function=_threads_in_worker), name="probe")
    node.iterables = ("index", [0, 1])
    workflow.add_nodes([node])
    graph = workflow.run(plugin=MultiProcPlugin(plugin_args={"n_procs": n_procs}))
    return [n.result.outputs.threads for n in graph.nodes()]


@pytest.mark.parametrize(("cpus", "processors", "expected"),
                         [(2, 2, 1), (2, 1, 2), (8, 3, 2), (1, 4, 1), (4, 0, 4)])
def test_worker_threads_share_the_usable_cpus(monkeypatch, cpus, processors, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert worker_threads(processors) == expected


def test_each_worker_runs_its_share_of_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("AHBA_APP_THREADS", raising=False)
    share = worker_threads(2)
    assert _run_two_nodes(tmp_path, 2) == [(share, str(share))] * 2


def test_a_thread_count_the_user_set_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("AHBA_APP_THREADS", "3")
    assert _run_two_nodes(tmp_path, 2) == [(3, "3")] * 2
