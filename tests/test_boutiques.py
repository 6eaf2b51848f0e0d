"""The Boutiques descriptor: generated from the command line's parser, valid, in sync."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from ahba_app.cli import boutiques
from ahba_app.cli.exits import EXIT_CODES
from ahba_app.cli.parser import get_parser

REPO = Path(__file__).resolve().parents[1]
CHECKED_IN = REPO / "boutiques" / "ahba-app.json"

bosh_validator = pytest.importorskip("boutiques.validator")


def test_checked_in_descriptor_is_the_generated_one():
    """``python -m ahba_app.cli.boutiques boutiques/ahba-app.json`` regenerates it."""
    assert json.loads(CHECKED_IN.read_text()) == boutiques.descriptor()


def test_descriptor_passes_the_boutiques_validator():
    bosh_validator.validate_descriptor(boutiques.descriptor())


def test_every_option_of_the_parser_is_an_input():
    descriptor = boutiques.descriptor()
    flags = {i.get("command-line-flag") for i in descriptor["inputs"]}
    for action in get_parser()._actions:
        if action.option_strings and action.dest not in ("help", "version"):
            assert boutiques._flag(action) in flags, action.option_strings
    assert {e["code"] for e in descriptor["error-codes"]} == set(EXIT_CODES) - {0}


def test_an_invocation_becomes_a_command_line_the_parser_accepts(tmp_path):
    from boutiques import bosh

    invocation = {"bids_dir": "/in", "output_dir_name": "/out", "analysis_level": "group",
                  "participant_label": ["9861", "sub-10021"], "atlas": ["Schaefer2018"],
                  "ibf_threshold": 0.25, "norm_all": True, "lr_mirror": "bidirectional",
                  "nprocs": 2}
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    descriptor = tmp_path / "descriptor.json"
    descriptor.write_text(json.dumps(boutiques.descriptor()))
    command = bosh(["exec", "simulate", str(descriptor), "-i", str(path)]).shell_command
    mkdir, run = command.split(";", 1)
    assert mkdir.strip() == "mkdir -p /out"
    args = shlex.split(run)
    assert args[0] == "ahba-app"
    opts = get_parser().parse_args(args[1:])
    assert (str(opts.input_dir), str(opts.output_dir), opts.analysis_level) == \
        ("/in", "/out", "group")
    assert opts.atlas == ["Schaefer2018"] and opts.nprocs == 2
    assert opts.ibf_threshold == 0.25 and opts.norm_matched is False
    assert opts.lr_mirror == "bidirectional"
