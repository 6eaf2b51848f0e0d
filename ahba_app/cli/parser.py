"""The command line of the ahba-app BIDS App (argument parsing only: no Nipype, no I/O).

``ahba-app INPUT_DIR OUTPUT_DIR {participant,group} [options]``. Every processing option of
abagen's command line is accepted under the same names, in dash and underscore spellings; choices
come from the method registries of the stage modules. Processing options are absent from the
parsed namespace unless given (``argparse.SUPPRESS``), so that :func:`resolve_parameters` can
tell an explicit option (even ``none``) from a default: explicit options override the
``--preset``, which overrides abagen's defaults.
"""

from __future__ import annotations

import argparse
import sys

from .. import options
from .._version import __version__
from . import exits
from .presets import PARAMETERS, Preset, available_presets, load_preset

__all__ = ["DEFAULTS", "get_parser", "parse_args", "resolve_parameters", "choices"]

#: abagen 0.1.3's defaults (and ahba-app's for its extension), from :mod:`ahba_app.options`.
DEFAULTS = options.DEFAULTS


def choices() -> dict[str, list]:
    """Allowed values of the options with a fixed set, read from the method registries."""
    return options.choices()


class _Parser(argparse.ArgumentParser):
    """argparse with the exit codes of the BIDS Apps specification: 17 for an unknown
    analysis level, 64 for any other usage error (argparse's own is 2, which shells use)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        code = exits.EXIT_UNKNOWN_LEVEL if "analysis_level" in message else exits.EXIT_USAGE
        self.exit(code, f"{self.prog}: error: {message}\n")


def get_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``ahba-app``."""
    parser = _Parser(
        prog="ahba-app",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Region x gene tables of Allen Human Brain Atlas microarray expression for every "
            "atlas (parcellation) of a BIDS atlas dataset.\n\n"
            "The AHBA donors are the participants: the 'participant' level writes, for each "
            "donor, the normalized expression of every tissue sample with the region it was "
            "matched to (sub-<donor>/...); the 'group' level writes region x gene tables "
            "aggregated across donors, with sample counts, the probe chosen for each gene, a "
            "sidecar listing every parameter, an HTML report and CITATION.md."),
        epilog=(f"Presets: {', '.join(available_presets())} (or the path of a TOML file).\n"
                "Explicit options override the preset's values.\n\n" + exits.help_text()),
    )
    parser.add_argument("input_dir", metavar="INPUT_DIR", type=options.absolute_path,
                        help="BIDS atlas dataset: dseg images (NIfTI, GIFTI hemi-L/hemi-R "
                             "pairs, CIFTI dlabel) with their _dseg.tsv; donor-native atlases "
                             "under sub-<donor>/. Without any, the bundled Desikan-Killiany "
                             "atlas is used.")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", type=options.absolute_path,
                        help="Where the derivatives are written.")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="'participant': per-donor sample-level tables; 'group': region x "
                             "gene tables aggregated across donors.")
    parser.add_argument("--version", action="version", version=f"ahba-app {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="More messages (repeat for more); errors show a traceback.")

    presets = ", ".join(available_presets())
    for title in options.RUN_GROUPS:
        group = parser.add_argument_group(title)
        if title == options.PROCESSING:
            options.add_arguments(group)
        else:
            options.add_run_arguments(group, title, presets=presets)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``); bad usage exits with status 64 (17 for an
    unknown analysis level)."""
    parser = get_parser()
    opts = parser.parse_args(argv)
    if opts.nprocs < 1:
        parser.error(f"--nprocs must be at least 1, got {opts.nprocs}")
    return opts


def resolve_parameters(opts: argparse.Namespace) -> tuple[dict, Preset | None]:
    """The processing parameters of a run: abagen's defaults, then the preset, then options.

    Returns the parameters (``get_expression_data``'s names plus ``stability_threshold``) and
    the preset used (None without ``--preset``). Raises
    :class:`~ahba_app.cli.presets.PresetError` for a bad preset.
    """
    params = dict(DEFAULTS)
    preset = load_preset(opts.preset) if getattr(opts, "preset", None) else None
    if preset is not None:
        params.update(preset.parameters)
    for name in PARAMETERS:
        if name == "donors":
            continue
        if name in vars(opts):  # given explicitly (possibly as 'none')
            params[name] = getattr(opts, name)
    if getattr(opts, "participant_label", None):
        params["donors"] = list(opts.participant_label)
    return params, preset

