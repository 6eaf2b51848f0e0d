"""Run abagen 0.1.3 in its own virtual environment and bring its results back.

abagen needs numpy 1.26 and pandas 1.5 while ahba-app runs on current releases, so the oracle
lives in a separate venv (``$AHBA_ORACLE_VENV``, default ``<repo>/.venv-abagen``), built from
``tests/oracle-requirements.txt`` on first use. A test hands it a snippet of Python; the snippet
calls ``save(name, obj)`` and the objects come back through pandas pickles (pandas reads pickles
written by older versions).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = Path(__file__).with_name("oracle-requirements.txt")


def oracle_venv() -> Path:
    return Path(os.environ.get("AHBA_ORACLE_VENV", REPO / ".venv-abagen"))


def oracle_python() -> Path:
    """The oracle venv's python, building the venv first when it is missing or out of date."""
    requirements = [line.strip() for line in REQUIREMENTS.read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    return pinned_venv(oracle_venv(), requirements, owner="tests/oracle.py")


def pinned_venv(venv: Path, requirements: list[str], *, owner: str, check: str = "") -> Path:
    """The python of the venv ``venv`` holding ``requirements``, (re)built under the venv's
    lock when missing or out of date; ``check`` (Python text) must then run in it.

    The stamp names its owner with the pins' hash. The test oracle and the benchmarks pin
    different packages (the benchmarks add abagen's parquet writer), so a venv another owner
    built is not cleared: each used to rebuild the other's, wiping it under running tests.
    """
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    wanted = f"{owner} " + hashlib.sha256("\n".join(requirements).encode()).hexdigest()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv) + ".lock"):
        found = stamp.read_text() if stamp.is_file() else ""
        if python.exists() and found == wanted:
            return python
        if " " in found and not found.startswith(f"{owner} "):
            raise SystemExit(
                f"{venv} is the abagen venv of {found.split()[0]}, pinned differently from "
                f"what {owner} needs; give {owner} a folder of its own (tests: "
                f"AHBA_ORACLE_VENV; benchmarks: --abagen-venv) rather than rebuilding it")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
        if check:
            subprocess.run([str(python), "-c", check], check=True)
        stamp.write_text(wanted)
    return python


#: Python text (for abagen's venv) defining ``keep_known_probes(probes_module)``: abagen crashes
#: when Probes.csv lacks a probe that its reannotation table names (facts.md); the patched
#: reannotation keeps only the rows whose probe exists. Also used by benchmarks/run.py.
KEEP_KNOWN_PROBES = '''
def keep_known_probes(probes_module):
    full = probes_module.reannotate_probes

    def reannotate_known_probes(probes):
        table = full(probes)
        table = table.loc[table.index.notna()]
        table.index = table.index.astype("int64")
        return table

    probes_module.reannotate_probes = reannotate_known_probes
'''

# Prepended to every oracle snippet (with the patch above applied).
_PREAMBLE = KEEP_KNOWN_PROBES + '''
import json, os, sys, warnings
from pathlib import Path
import numpy as np
import pandas as pd
warnings.simplefilter("ignore")
import abagen
import abagen.probes_ as _abagen_probes

PARAMS = json.loads(Path(sys.argv[1]).read_text())
OUT = Path(sys.argv[2])
# abagen's rnaseq probe selection ignores data_dir and looks in $ABAGEN_DATA
if "data" in PARAMS:
    os.environ["ABAGEN_DATA"] = str(PARAMS["data"])
keep_known_probes(_abagen_probes)

def save(name, obj):
    pd.to_pickle(obj, OUT / (name + ".pkl"))
'''


def run_abagen(snippet: str, workdir: Path, **params) -> dict:
    """Run ``snippet`` under abagen 0.1.3; return ``{name: obj}`` for every ``save(name, obj)``.

    ``params`` (JSON-serialisable) are available to the snippet as ``PARAMS``.
    """
    workdir = Path(workdir)
    out = workdir / "oracle-out"
    out.mkdir(parents=True, exist_ok=True)
    script = workdir / "oracle_script.py"
    script.write_text(_PREAMBLE + "\n" + textwrap.dedent(snippet))
    params_file = workdir / "oracle_params.json"
    params_file.write_text(json.dumps(params, default=str))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([str(oracle_python()), str(script), str(params_file), str(out)],
                          capture_output=True, text=True, env=env, cwd=workdir)
    if proc.returncode != 0:
        raise RuntimeError(f"abagen oracle failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return {p.stem: pd.read_pickle(p) for p in sorted(out.glob("*.pkl"))}
