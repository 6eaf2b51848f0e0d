"""The abagen venvs of the test oracle and of the benchmarks: neither clears the other's."""
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import oracle  # noqa: E402


def _fake_venv(folder: Path, stamp: str) -> Path:
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").write_text("#!/bin/sh\n")
    (folder / ".requirements-sha256").write_text(stamp)
    return folder


def test_a_venv_stamped_by_another_owner_is_refused_not_cleared(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: built.append(a))
    venv = _fake_venv(tmp_path / "venv", "tests/oracle.py 0123abcd")
    with pytest.raises(SystemExit) as err:
        oracle.pinned_venv(venv, ["abagen==0.1.3", "fastparquet"], owner="benchmarks/run.py")
    message = str(err.value)
    assert str(venv) in message and "tests/oracle.py" in message and "--abagen-venv" in message
    assert built == [] and (venv / "bin" / "python").exists()  # nothing cleared or installed


def test_a_venv_of_the_same_owner_is_reused_or_rebuilt_when_its_pins_change(tmp_path,
                                                                             monkeypatch):
    built = []

    def run(command, **_):
        built.append(command)
        if command[1:3] == ["-m", "venv"]:
            Path(command[-1]).mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(subprocess, "run", run)
    venv = tmp_path / "venv"
    python = oracle.pinned_venv(venv, ["abagen==0.1.3"], owner="tests/oracle.py")
    assert python == venv / "bin" / "python" and len(built) == 2  # venv, pip install
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text("")
    oracle.pinned_venv(venv, ["abagen==0.1.3"], owner="tests/oracle.py")
    assert len(built) == 2                      # same pins: reused
    oracle.pinned_venv(venv, ["abagen==0.1.3", "pytest"], owner="tests/oracle.py",
                       check="print(1)")
    assert len(built) == 5 and built[-1][-1] == "print(1)"  # new pins: rebuilt and checked
    # a stamp of the old form (a bare hash) is rebuilt, as before
    (venv / ".requirements-sha256").write_text("0123abcd")
    oracle.pinned_venv(venv, ["abagen==0.1.3"], owner="benchmarks/run.py")
    assert len(built) == 7
