"""The README's code examples, extracted and run: an example that fails fails CI.

Every fenced ``python`` block is executed, and every ``ahba-app`` command of a ``bash`` block
is run, on the synthetic data (``/data/ahba`` becomes the test's AHBA folder, ``INPUT_DIR`` /
``OUTPUT_DIR`` temporary folders, ``[optional parts]`` are left out) and with the Allen API
answered locally (``tests/allen_api_server.py``: no network). Commands a test cannot
run (building images, installing, the scripts CI itself runs) are listed in :data:`NOT_RUN`
with the reason; a command of neither kind fails the test, so a new example is never skipped
silently.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from allen_api_server import allen_api  # noqa: F401 (a fixture: the Allen API, locally)

README = Path(__file__).resolve().parents[1] / "README.md"

#: Commands of the README that a test cannot run, by their first word(s), and why.
NOT_RUN = {
    "bash scripts/demo.sh": "runs this suite's own CLI examples on fresh data (CI runs it)",
    "bash scripts/test.sh": "is what CI runs: this test is part of it",
    "python3 -m venv": "makes a virtual environment (what CI's set-up does)",
    ".venv/bin/pip install": "installs the package (what CI's set-up does)",
    "docker": "needs a container engine (tests/container/ builds and runs the image)",
    "apptainer": "needs a container engine (tests/container/ builds and runs the image)",
    "export TEMPLATEFLOW_HOME": "sets the TemplateFlow folder for the three commands below it",
    "ahba-app /data/atlases": "needs a TemplateFlow home: tests/test_templateflow.py runs it "
                              "on a synthetic one (test_readme_templateflow_commands_run)",
    "ahba-app /data/glasser": "needs a TemplateFlow home and a CIFTI atlas: "
                              "tests/test_templateflow.py runs it on synthetic ones",
    "python -m ahba_app.synthetic /tmp/suite": "makes the data of abagen's own suite (what "
                                               "tests/test_abagen_suite.py does)",
    "python tests/abagen_suite/runner.py": "runs abagen's own suite twice, minutes (what "
                                           "tests/test_abagen_suite.py does)",
}

_FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(README.read_text(encoding="utf-8"))
            if lang == language]


def commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in text.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out += [part.strip() for part in line.split("&&")]
    return out


def test_the_readme_has_examples():
    assert blocks("python") and blocks("bash")


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_examples_run(index, ahba_small, monkeypatch, tmp_path, allen_api):
    code = blocks("python")[index].replace('"/data/ahba"', repr(str(ahba_small)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AHBA_DATA", str(tmp_path / "data"))  # what an example may fetch
    namespace: dict = {}
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
    if "report" in namespace:  # the API example: the methods text of the run
        assert "### References" in namespace["report"]


def _bash_commands() -> list[str]:
    return [cmd for body in blocks("bash") for cmd in commands(body)]


@pytest.mark.parametrize("command", _bash_commands())
def test_bash_examples_run_or_say_why_not(command, ahba_small, tmp_path, monkeypatch):
    if any(command.startswith(prefix) for prefix in NOT_RUN):
        return
    if command.startswith("ahba-app-abagen "):
        _run_abagen_command(command, ahba_small, tmp_path, monkeypatch)
        return
    assert command.startswith("ahba-app "), \
        f"README command {command!r} is neither run by this test nor listed in NOT_RUN"
    from ahba_app.cli.run import main

    command = re.sub(r"\s*\[[^\]]*\]", "", command)  # optional parts
    (tmp_path / "in").mkdir()
    words = [{"INPUT_DIR": str(tmp_path / "in"), "OUTPUT_DIR": str(tmp_path / "out"),
              "/data/ahba": str(ahba_small)}.get(w, w) for w in shlex.split(command)[1:]]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    assert main(words + ["-w", str(tmp_path / "work")]) == 0
    assert (tmp_path / "out" / "dataset_description.json").is_file()


def _run_abagen_command(command, ahba_small, tmp_path, monkeypatch):
    """An ``ahba-app-abagen`` example (abagen's command line): ``atlas.nii.gz`` and
    ``atlas.csv`` are the bundled Desikan-Killiany volume and table; every file the options
    ask for is written."""
    import pandas as pd

    from ahba_app.cli.abagen_compat import main
    from ahba_app.datasets import fetch_desikan_killiany

    dk = fetch_desikan_killiany()
    words = [{"atlas.nii.gz": dk["image"], "atlas.csv": dk["info"],
              "/data/ahba": str(ahba_small)}.get(w, w) for w in shlex.split(command)[1:]]
    monkeypatch.chdir(tmp_path)
    assert main(words) == 0
    output = words[words.index("--output-file") + 1] if "--output-file" in words \
        else "abagen_expression.csv"
    table = pd.read_csv(tmp_path / output, index_col=0)
    assert table.shape[0] == 83 and table.shape[1] > 100
    if "--save-counts" in words:
        stem = output.rsplit(".", 1)[0]
        assert (tmp_path / f"{stem}_counts.csv").is_file()
