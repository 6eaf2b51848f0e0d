"""A Boutiques descriptor of the ``ahba-app`` command line, generated from its parser.

Boutiques (https://boutiques.github.io) descriptors let platforms such as CBRAIN run a
container image: every input with its flag, type, choices and default, and the outputs. This
one is made from :func:`ahba_app.cli.parser.get_parser` (which is made from the options table),
so it lists exactly the options the command line accepts; ``boutiques/ahba-app.json`` in the
repository is its output, and the tests check that the two agree and that the ``boutiques``
validator accepts it.

Command line: ``python -m ahba_app.cli.boutiques [OUT.json]``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .._version import __version__

__all__ = ["descriptor", "main", "DOCKER_IMAGE"]

DOCKER_IMAGE = f"ahba-app/ahba-app:{__version__}"
_POSITIONAL = {
    "input_dir": ("bids_dir", "BIDS atlas dataset", "File", "[BIDS_DIR]"),
    "output_dir": ("output_dir_name", "Output folder", "String", "[OUTPUT_DIR]"),
    "analysis_level": ("analysis_level", "Analysis level", "String", "[ANALYSIS_LEVEL]"),
}
_SKIP = {"help", "version"}


def _flag(action: argparse.Action) -> str:
    """The first long spelling of an option (the dash form)."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs or action.option_strings)[0]


def _identifier(flag: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", flag.lstrip("-"))


def _type(action: argparse.Action) -> tuple[str, dict]:
    if action.nargs == 0:  # store_true / store_const / count
        return "Flag", {}
    kind = getattr(action.type, "__name__", "")
    if action.type is int:
        return "Number", {"integer": True}
    if kind in ("_number", "float") or action.type is float:
        return "Number", {}
    return "String", {}


def _help(action: argparse.Action) -> str:
    text = (action.help or "").replace("%(default)s", str(action.default))
    return " ".join(text.split()) or _flag(action)


def descriptor(parser: argparse.ArgumentParser | None = None) -> dict:
    """The Boutiques descriptor (schema 0.5) of ``parser`` (default: ahba-app's)."""
    if parser is None:
        from .parser import get_parser

        parser = get_parser()
    inputs, keys = [], []
    for action in parser._actions:
        if action.dest in _SKIP or isinstance(action, (argparse._HelpAction,
                                                       argparse._VersionAction)):
            continue
        if not action.option_strings:
            ident, name, kind, key = _POSITIONAL[action.dest]
            entry = {"id": ident, "name": name, "type": kind, "value-key": key,
                     "description": _help(action), "optional": False}
            if action.choices:
                entry["value-choices"] = [str(c) for c in action.choices]
            inputs.append(entry)
            keys.append(key)
            continue
        flag = _flag(action)
        ident = _identifier(flag)
        key = f"[{ident.upper()}]"
        kind, extra = _type(action)
        entry = {"id": ident, "name": flag.lstrip("-").replace("-", " ").replace("_", " "),
                 "type": kind, "value-key": key, "command-line-flag": flag,
                 "description": _help(action), "optional": True, **extra}
        if action.nargs in ("+", "*"):
            entry["list"] = True
            if action.nargs == "+":
                entry["min-list-entries"] = 1
        if action.choices and kind == "String":
            entry["value-choices"] = sorted({str(c) for c in action.choices if c is not None})
        inputs.append(entry)
        keys.append(key)
    positional = [k for k in ("[BIDS_DIR]", "[OUTPUT_DIR]", "[ANALYSIS_LEVEL]")]
    optional = [k for k in keys if k not in positional]
    return {
        "name": "ahba-app",
        "tool-version": __version__,
        "schema-version": "0.5",
        "description": (parser.description or "").split("\n")[0],
        "author": "The ahba-app developers",
        "url": "https://github.com/ahba-app/ahba-app",
        "command-line": "mkdir -p [OUTPUT_DIR]; ahba-app " + " ".join(positional + optional),
        "container-image": {"type": "docker", "image": DOCKER_IMAGE},
        "inputs": inputs,
        "output-files": [{"id": "output_dir", "name": "Output folder",
                          "path-template": "[OUTPUT_DIR]",
                          "description": "BIDS derivatives: tables, sidecars, report"}],
        "error-codes": [{"code": code, "description": text} for code, text in _exit_codes()],
        "tags": {"domain": ["neuroinformatics", "transcriptomics", "bids-app"]},
    }


def _exit_codes() -> list[tuple[int, str]]:
    from .exits import EXIT_CODES

    return [(code, text) for code, text in EXIT_CODES.items() if code != 0]


def main(argv=None) -> int:
    args = argparse.ArgumentParser(prog="python -m ahba_app.cli.boutiques",
                                   description="Write ahba-app's Boutiques descriptor.")
    args.add_argument("out", nargs="?", help="file to write (default: standard output)")
    opts = args.parse_args(argv)
    text = json.dumps(descriptor(), indent=2) + "\n"
    if opts.out:
        Path(opts.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
