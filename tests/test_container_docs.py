"""The container commands of README.md and singularity/README.md that use a TemplateFlow home:
the folder is bound read-only where ``TEMPLATEFLOW_HOME`` says, and what follows the image is a
command line ahba-app accepts (the image itself is tested by tests/test_container.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ahba_app.cli.parser import parse_args

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "singularity/README.md")
IMAGES = ("ahba-app/ahba-app:0.1.0", "ahba-app_0.1.0.sif")


def _commands(text: str) -> list[list[str]]:
    """docker/apptainer commands (continuation lines joined) that mention TEMPLATEFLOW_HOME."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip().lstrip("# ").strip()
        if line.startswith(("docker run", "apptainer run")) and "TEMPLATEFLOW_HOME" in line:
            out.append(shlex.split(line))
    return out


def _home_and_binds(words: list[str]) -> tuple[str, dict]:
    """The TEMPLATEFLOW_HOME given to the container and its binds (container path -> mode)."""
    home, binds = None, {}
    for flag, value in zip(words, words[1:]):
        if flag in ("-e", "--env") and value.startswith("TEMPLATEFLOW_HOME="):
            home = value.split("=", 1)[1]
        if flag in ("-v", "-B", "--bind"):
            parts = value.split(":")
            binds[parts[1]] = parts[2] if len(parts) > 2 else "rw"
    return home, binds


@pytest.mark.parametrize("doc", DOCS)
def test_templateflow_binds_are_read_only_and_commands_parse(doc):
    commands = _commands((REPO / doc).read_text(encoding="utf-8"))
    engines = {words[0] for words in commands}
    assert engines == {"docker", "apptainer"}, f"{doc}: a TemplateFlow example per engine"
    for words in commands:
        home, binds = _home_and_binds(words)
        assert home is not None, f"{doc}: {words[:3]} does not set TEMPLATEFLOW_HOME"
        assert binds.get(home) == "ro", f"{doc}: {home} is not bound read-only"
        if words[0] == "apptainer":
            assert "--cleanenv" in words   # the host's variable would not get through anyway
        image = next(i for i, w in enumerate(words) if w in IMAGES)
        opts = parse_args(words[image + 1:])
        assert opts.atlas == ["Schaefer2018"] and opts.analysis_level == "group"
