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
