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
import os
import sys
from pathlib import Path

from .. import options
from .._version import __version__
from . import exits
from .engines import PLUGINS
from .presets import PARAMETERS, Preset, available_presets, load_preset

__all__ = ["DEFAULTS", "get_parser", "parse_args", "resolve_parameters", "choices"]

#: abagen 0.1.3's defaults (and ahba-app's for its extension), from :mod:`ahba_app.options`.
DEFAULTS = options.DEFAULTS


def choices() -> dict[str, list]:
    """Allowed values of the options with a fixed set, read from the method registries."""
    return options.choices()


def _path(value: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(value)))


def _label(value: str) -> str:
    """A donor given as ``9861``, ``sub-9861`` or a uid (``H0351.2001``)."""
    return value[4:] if value.startswith("sub-") else value


def _megabytes(value: str) -> int:
    """``16000``, ``16000M``, ``16G``, ``16GB`` -> megabytes."""
    text = value.strip().upper().removesuffix("B")
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}
    factor = units.get(text[-1:], None)
    try:
        number = float(text[:-1] if factor else text) * (factor or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected megabytes (e.g. 16000 or 16G), got "
                                         f"{value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"memory must be positive, got {value!r}")
    return int(number)


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
    parser.add_argument("input_dir", metavar="INPUT_DIR", type=_path,
                        help="BIDS atlas dataset: dseg images (NIfTI, GIFTI hemi-L/hemi-R "
                             "pairs, CIFTI dlabel) with their _dseg.tsv; donor-native atlases "
                             "under sub-<donor>/. Without any, the bundled Desikan-Killiany "
                             "atlas is used.")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", type=_path,
                        help="Where the derivatives are written.")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="'participant': per-donor sample-level tables; 'group': region x "
                             "gene tables aggregated across donors.")
    parser.add_argument("--version", action="version", version=f"ahba-app {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="More messages (repeat for more); errors show a traceback.")

    g = parser.add_argument_group("Selecting inputs")
    g.add_argument("--participant-label", "--participant_label", "--donors",
                   dest="participant_label", nargs="+", metavar="DONOR", type=_label,
                   help="AHBA donors to use (numbers such as 9861, with or without 'sub-', or "
                        "uids such as H0351.2001; 'all' for every donor). Default: all.")
    g.add_argument("--atlas", nargs="+", metavar="LABEL",
                   help="Process only the atlases with these atlas- labels (e.g. Schaefer2018) "
                        "or output names (e.g. Schaefer2018400Parcels7Networks); a label "
                        "INPUT_DIR lacks is looked up in $TEMPLATEFLOW_HOME (offline).")
    g.add_argument("--atlas-desc", "--atlas_desc", dest="atlas_desc", metavar="DESC",
                   help="The desc- of a TemplateFlow atlas (e.g. 400Parcels7Networks; for "
                        "Schaefer2018 on fsaverage it also finds seg-7n_scale-400).")
    g.add_argument("--space", metavar="TEMPLATE",
                   help="TemplateFlow template of the atlas: MNI152NLin6Asym (default), fsLR, "
                        "fsaverage, ...")
    g.add_argument("--res", "--resolution", dest="res", metavar="N",
                   help="TemplateFlow resolution index of a volumetric atlas (1 = 1 mm in "
                        "MNI152NLin6Asym). Default: the finest there is.")
    g.add_argument("--den", "--density", dest="den", metavar="DEN",
                   help="Density of a surface atlas: 32k (fsLR); 3k, 10k, 41k or 164k "
                        "(fsaverage4, 5, 6, fsaverage). A coarser fsaverage density than "
                        "TemplateFlow holds is cut from the nested finer mesh.")
    g.add_argument("--skip-bids-validation", "--skip_bids_validation",
                   "--skip-bids-validator", "--skip_bids_validator",
                   dest="skip_bids_validation", action="store_true",
                   help="Accepted for BIDS Apps compatibility: ahba-app checks the atlas files "
                        "it uses itself and never runs the BIDS validator.")
    g.add_argument("--no-default-atlas", "--no_default_atlas", dest="default_atlas",
                   action="store_false", default=True,
                   help="Fail when INPUT_DIR holds no atlas instead of using the bundled "
                        "Desikan-Killiany atlas.")
    g.add_argument("--ahba-dir", "--ahba_dir", "--data-dir", "--data_dir", dest="ahba_dir",
                   type=_path, metavar="PATH",
                   help="The AHBA data folder (holding microarray/normalized_microarray_donor*"
                        "/). Default: $AHBA_DATA, else $ABAGEN_DATA, else ~/.local/share/"
                        "ahba-app. Missing donors are downloaded before processing starts.")

    g = parser.add_argument_group("Presets")
    g.add_argument("--preset", metavar="NAME|PATH",
                   help=f"Start from a parameter set: {', '.join(available_presets())}, or the "
                        "path of a TOML file. Explicit options override it.")
    g.add_argument("--desc", metavar="LABEL",
                   help="The desc- label of the output files. Default: the preset's name "
                        "(letters and digits only; 'abagendefaults' without a preset) when its "
                        "parameters are used unchanged, else 'custom'.")

    g = parser.add_argument_group("Processing options (abagen's names and defaults)")
    options.add_arguments(g)

    g = parser.add_argument_group("Outputs")
    g.add_argument("--save-donors", "--save_donors", dest="save_donors", action="store_true",
                   help="group: also write one region x gene table per donor "
                        "(sub-<donor>/...).")
    g.add_argument("--save-counts", "--save_counts", dest="save_counts", action="store_true",
                   help="Accepted for abagen compatibility: sample counts are always written.")

    g = parser.add_argument_group("Multiverse (group level; ahba_app.multiverse)")
    g.add_argument("--multiverse", metavar="GRID",
                   help="Run every pipeline of a grid (a TOML file whose [grid] table maps "
                        "options to lists of values, or a bundled grid such as markello2021) "
                        "and write one row of statistics per pipeline and atlas instead of the "
                        "tables. Options the grid does not name keep their value from the "
                        "command line or preset.")
    g.add_argument("--multiverse-map", "--multiverse_map", dest="multiverse_map", type=_path,
                   metavar="TSV",
                   help="A value per atlas region (columns 'index' and one value, n/a for "
                        "none) whose Spearman correlation with each table's first principal "
                        "component is reported (map_rho).")
    g.add_argument("--multiverse-format", "--multiverse_format", dest="multiverse_format",
                   choices=["auto", "tsv", "parquet"], default="auto",
                   help="Format of the pipelines table. Default: auto (Parquet above 100,000 "
                        "pipelines, TSV below).")
    g.add_argument("--multiverse-save-tables", "--multiverse_save_tables",
                   dest="multiverse_save_tables", metavar="IDS",
                   help="Also save the region x gene table (gzip TSV) of some pipelines, in "
                        "<atlas>_desc-multiverse_tables/: 'reference' (the command line's or "
                        "preset's own pipeline), 'all' (grids of at most 1,000 pipelines), "
                        "pipeline ids separated by commas, or a file listing them (one per "
                        "line, or a TSV with a pipeline_id column).")

    g = parser.add_argument_group("Execution")
    g.add_argument("-w", "--work-dir", "--work_dir", dest="work_dir", type=_path,
                   metavar="PATH",
                   help="Nipype's working folder; keep it to reuse unchanged steps in a later "
                        "run. Default: ./work.")
    g.add_argument("--clean-workdir", "--clean_workdir", dest="clean_workdir",
                   action="store_true", help="Remove the work folder after a successful run.")
    g.add_argument("--nprocs", "--n-procs", "--n_procs", "--nthreads", "--n-proc", "--n_proc",
                   "--n-cpus", "--n_cpus",
                   dest="nprocs", type=int, default=1, metavar="N",
                   help="Processes to run donors and atlases in parallel. Default: 1.")
    g.add_argument("--nipype-plugin", "--nipype_plugin", dest="nipype_plugin",
                   choices=list(PLUGINS), metavar="{" + ",".join(PLUGINS) + "}",
                   help="Nipype plugin that runs the workflow: Linear (one node at a time), "
                        "MultiProc (--nprocs processes), SLURM (one sbatch job per node, "
                        "submitted as their inputs are ready) or SLURMGraph (the whole graph "
                        "submitted at once with job dependencies). Default: MultiProc with "
                        "--nprocs above 1, Linear otherwise.")
    g.add_argument("--plugin-args", "--plugin_args", dest="plugin_args", metavar="JSON",
                   help="Arguments of the Nipype plugin, as a JSON object or the path of a "
                        "JSON/TOML file holding one, e.g. '{\"sbatch_args\": "
                        "\"--partition=short --time=2:00:00\"}'.")
    g.add_argument("--mem", "--mem-mb", "--mem_mb", dest="mem_mb", type=_megabytes,
                   metavar="MB",
                   help="Upper bound of the memory the parallel nodes may use together, in MB "
                        "(or with a unit: 16G, 16000M). Default: no bound.")
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

