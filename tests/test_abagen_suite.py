"""abagen 0.1.3's own test suite, run on abagen and on ahba-app (tests/abagen_suite/runner.py).

Every test of abagen's documented modules that passes on abagen must pass on ahba-app, except
the deliberate deviations listed (with reasons) in tests/abagen_deviations.toml; a listed test
that stops deviating fails too, so the list stays true.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import _synthetic, _test_cache, _with_anatomy
from oracle import oracle_python

sys.path.insert(0, str(Path(__file__).with_name("abagen_suite")))
import runner  # noqa: E402

pytestmark = pytest.mark.oracle


def test_rewrite_touches_imports_only():
    text = ("import abagen\nimport abagen.io as aio\nfrom abagen import allen, io\n"
            "from abagen.utils import flatten_dict\n"
            "x = resource_filename('abagen', 'data/x')\ny = 'abagen is here'\n"
            "import abagenx\n")
    assert runner.rewrite_imports(text) == (
        "import ahba_app as abagen\nimport ahba_app.io as aio\nfrom ahba_app import allen, io\n"
        "from ahba_app.utils import flatten_dict\n"
        "x = resource_filename('ahba_app', 'data/x')\ny = 'abagen is here'\n"
        "import abagenx\n")


def test_compare_flags_regressions_and_stale_deviations():
    passed, failed = {"outcome": "passed"}, {"outcome": "failed", "message": "boom"}
    abagen = {"t/test_io.py::test_a": passed, "t/test_io.py::test__b": passed,
              "t/test_samples.py::test_c": passed, "t/test_io.py::test_d": passed,
              "t/test_io.py::test_e": failed}
    ahba = {"t/test_io.py::test_a": failed, "t/test_io.py::test__b": failed,
            "t/test_samples.py::test_c": failed, "t/test_io.py::test_d": passed,
            "t/test_io.py::test_e": passed}
    result = runner.compare(abagen, ahba, {"t/test_io.py::test_d": {"reason": "r"}})
    problems = result["problems"]
    assert len(problems) == 2
    assert problems[0].startswith("t/test_io.py::test_a: passes on abagen, failed")
    assert "test_d: listed as a deviation but passed on ahba-app" in problems[1]
    assert result["modules"]["io"]["ahba_app"] == {"passed": 2, "failed": 2, "skipped": 0,
                                                   "missing": 0}


def test_every_deviation_has_a_reason():
    deviations = runner.load_deviations()
    assert all(entry["reason"].strip() for entry in deviations.values())
    assert all(runner.is_required(nodeid) for nodeid in deviations)


def test_abagen_own_suite_passes_on_ahba_app(tmp_path):
    # every probe of the real files, few samples; raw MRIs and FreeSurfer folders of the two
    # donors abagen's tests use (12876, 15496)
    data = _with_anatomy(_synthetic("suite", 1234))
    result = runner.run(data, oracle_python=oracle_python(), work=tmp_path,
                        cache=_test_cache() / "abagen-suite")
    print(result["summary"])
    assert result["outcomes"]["abagen"], "abagen's own suite did not run"
    # every documented module's tests ran on both sides (abagen.mouse's need the Allen API:
    # tests/test_mouse_abagen_suite.py runs them against a local server)
    documented = set(runner.DOCUMENTED) - {"mouse"}
    assert documented <= set(result["modules"])
    for module in documented:
        for side in ("abagen", "ahba_app"):
            assert sum(result["modules"][module][side].values()) > 0, (module, side)
    assert result["modules"]["datasets"]["abagen"]["passed"] >= 14
    assert not result["problems"], result["summary"]
