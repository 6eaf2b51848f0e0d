"""benchmarks/run.py's probe of the machine's own speed, kept with every record."""

from __future__ import annotations

import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import run  # noqa: E402


def test_speed_probe_times_its_four_pieces_of_work():
    figures = run.speed_probe()
    assert set(figures) == {"numpy_import_s", "sort_ns_per_value", "python_loop_s",
                            "first_touch_gb_per_s"}
    assert all(math.isfinite(value) and value > 0 for value in figures.values())
    assert figures["numpy_import_s"] < 30 and figures["python_loop_s"] < 30
    line = run._speed_line(figures)
    assert f"{figures['sort_ns_per_value']:.2f} ns a value" in line
    assert f"{figures['first_touch_gb_per_s']:.2f} GB/s" in line
    # another interpreter may run it (the path of any Python with numpy)
    assert set(run.speed_probe(Path(sys.executable))) == set(figures)


def test_warm_runs_are_timed_with_the_probe_choice_of_this_code(tmp_path, monkeypatch):
    # a stored choice's key holds the code's version: a choice stored before a change is not
    # used, so the warm case makes one untimed run first (once a benchmark run, again after
    # the rechoose case removed the stored choices), never timing a first run after a change
    bench = object.__new__(run.Bench)
    bench.args = type("Args", (), {"data": tmp_path / "data"})()
    bench.work = tmp_path / "work"
    bench.dk = ("dk.nii.gz", "dk.csv")
    bench.results, bench._prepared = {}, set()
    calls = []
    monkeypatch.setattr(run, "link_data", lambda data, folder: folder)
    monkeypatch.setattr(run, "cache_sizes",
                        lambda folder: {"ahba_cache_mb": 1.0, "abagen_parquet_mb": 1.0})
    monkeypatch.setattr(bench, "api", lambda tool, folder, atlas, kwargs, out=None, label="":
                        calls.append((tool, label)) or {"wall_s": 1.0}, raising=False)
    for rep in range(3):
        bench.warm(rep, ["abagen", "ahba"])
    assert calls == [("abagen", "warm"), ("ahba", "prepare"), ("ahba", "warm"),
                     ("abagen", "warm"), ("ahba", "warm"), ("abagen", "warm"), ("ahba", "warm")]
    assert len(bench.results["warm"]["ahba"]) == 3
    bench._prepared.clear()  # (as the rechoose case does when it removes the choices)
    calls.clear()
    bench.warm(3, ["ahba"])
    assert calls == [("ahba", "prepare"), ("ahba", "warm")]


def test_outputs_compared_are_those_of_the_cases_run(tmp_path):
    # a run of some cases compared every table left in its work folder, so a warm-only run
    # reported the command line's and the batch's tables of an earlier run as its own
    import pandas as pd

    table = pd.DataFrame({"g": [1.0, 2.0]}, index=[1, 2])
    for case in ("warm", "fine"):
        for tool in ("ahba", "abagen"):
            table.to_pickle(tmp_path / f"output-{case}-{tool}.pkl")
    table.to_csv(tmp_path / "output-cli-ahba.tsv", sep="\t")
    table.to_csv(tmp_path / "output-cli-abagen.csv")
    table.to_csv(tmp_path / "output-batch-DK-ahba.tsv", sep="\t")
    table.to_pickle(tmp_path / "output-batch-DK-abagen.pkl")
    parity = run.compare_case_outputs(tmp_path, ("warm", "rechoose"))
    assert list(parity) == ["warm"] and parity["warm"]["ok"]
    assert set(run.compare_case_outputs(tmp_path, ("cli", "batch"))) == {"cli", "batch DK"}

    run.clear_outputs(tmp_path, ("warm", "batch"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "output-cli-abagen.csv", "output-cli-ahba.tsv", "output-fine-abagen.pkl",
        "output-fine-ahba.pkl"]
    assert run.compare_case_outputs(tmp_path, ("warm",)) == {"warm": {"checked": False}}
