"""``ahba-app-abagen``: abagen 0.1.3's command line, unchanged, run by ahba-app.

Shell scripts and batch jobs written for ``abagen ATLAS [--atlas-info PATH] [--output-file F]
[--save-counts] [--save-donors] [--stdout] [options]`` run with ``abagen`` replaced by
``ahba-app-abagen`` and write the same files: ``F`` (default ``abagen_expression.csv``), with
``--save-counts`` also ``<F stem>_counts.csv`` and with ``--save-donors`` one
``<F stem>_<donor>.csv`` per donor instead of ``F``, all beside ``F``; ``--stdout`` prints the
table instead (unless one of the two save options is given, as in abagen). Every option keeps
abagen's spellings (dash and underscore), defaults and choices; the name differs so that it
cannot clash with an installed abagen.

Differences: files are written whole or not at all (a temporary name, then renamed); a user
mistake (a missing file, an invalid atlas, AHBA data that cannot be found or downloaded) prints
one line and exits with status 1 instead of a traceback; argument errors exit with status 2, as
in abagen.
"""

from __future__ import annotations

import argparse
import os
import sys

PROG = "ahba-app-abagen"


def _resolve_path(path):
    if path is None:
        return None
    if isinstance(path, (list, tuple)):
        return [_resolve_path(p) for p in path]
    return os.path.abspath(os.path.expanduser(path))


def _none(value):
    """abagen's spelling of None on its command line."""
    return None if value == "None" else value


class _Existing(argparse.Action):
    """Store absolute paths, refusing (as abagen does) paths that do not exist."""

    def __call__(self, parser, namespace, values, option_string=None):
        paths = _resolve_path(values)
        many = isinstance(paths, list)
        missing = [p for p in (paths if many else [paths]) if not os.path.exists(p)]
        if missing:
            parser.error(f"Provided value for {option_string or self.dest} does not exist: "
                         f"{missing[0]}")
        if many and len(paths) == 1:
            paths = paths[0]
        setattr(namespace, self.dest, paths)


def get_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ..normalize import ALIASES, NORMALIZATIONS
    from ..options import DEFAULTS as D, OPTIONS
    from ..probes import SELECTION_ALIASES, SELECTION_METHODS

    norms = sorted({*NORMALIZATIONS, *ALIASES} - {"batch"}) + ["None", None]
    parser = argparse.ArgumentParser(
        prog=PROG, description="Region x gene expression from the Allen Human Brain Atlas "
        "for ATLAS, with abagen 0.1.3's command line (ahba-app's implementation). See "
        "`ahba-app --help` for the BIDS-App command line.")
    parser.add_argument("atlas", action=_Existing, nargs="+",
                        help="a NIfTI volume in MNI152 space, or two GIFTI label files (left, "
                             "right) in fsaverage5 space; each region a unique integer id")
    parser.add_argument("--version", action="version",
                        version=f"{PROG} {__version__} (abagen 0.1.3's command line)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more progress messages")
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    a_data = parser.add_argument_group("atlas information")
    a_data.add_argument("--atlas_info", "--atlas-info", action=_Existing, default=None,
                        metavar="PATH",
                        help="CSV with columns id, hemisphere (L/R/B) and structure")
    g_data = parser.add_argument_group("which AHBA data")
    g_data.add_argument("--donors", nargs="+", default=D["donors"], metavar="DONOR_ID",
                        help="donor numbers or uids, or 'all' (default)")
    g_data.add_argument("--data_dir", "--data-dir", action=_Existing, metavar="PATH",
                        help="AHBA data folder (default: $AHBA_DATA, $ABAGEN_DATA, ...)")
    g_data.add_argument("--n_proc", "--n-proc", type=int, default=1,
                        help="donors downloaded at once (default 1)")
    w_data = parser.add_argument_group("processing")
    w_data.add_argument("--ibf_threshold", "--ibf-threshold", type=float,
                        default=D["ibf_threshold"],
                        metavar="THRESHOLD",
                        help=f"intensity-based filter threshold ({D['ibf_threshold']})")
    w_data.add_argument("--probe_selection", "--probe-selection", default=D["probe_selection"],
                        metavar="METHOD",
                        choices=sorted({*SELECTION_METHODS, *SELECTION_ALIASES}),
                        help=f"probe selection method ({D['probe_selection']})")
    w_data.add_argument("--lr_mirror", "--lr-mirror", metavar="METHOD", type=_none,
                        default=D["lr_mirror"], choices=OPTIONS["lr_mirror"].choices(),
                        help=f"mirror samples across hemispheres ({D['lr_mirror']})")
    w_data.add_argument("--sim_threshold", "--sim-threshold", type=_none,
                        default=D["sim_threshold"],
                        metavar="THRESHOLD",
                        help=f"sample similarity threshold, in SD ({D['sim_threshold']})")
    w_data.add_argument("--missing", metavar="METHOD", type=_none, default=D["missing"],
                        choices=OPTIONS["missing"].choices(),
                        help=f"fill regions without samples ({D['missing']})")
    w_data.add_argument("--tol", "--tolerance", dest="tolerance", type=float,
                        default=D["tolerance"],
                        help="matching distance: mm (volumes) or SD (surfaces); default "
                             f"{D['tolerance']}")
    w_data.add_argument("--sample_norm", "--sample-norm", default=D["sample_norm"],
                        metavar="METHOD", type=_none, choices=norms,
                        help=f"normalization across genes ({D['sample_norm']})")
    w_data.add_argument("--gene_norm", "--gene-norm", default=D["gene_norm"],
                        metavar="METHOD", type=_none, choices=norms,
                        help=f"normalization across samples ({D['gene_norm']})")
    w_data.add_argument("--norm_all", "--norm-all", dest="norm_matched",
                        action="store_false", default=D["norm_matched"],
                        help="normalize genes over all samples, not only matched ones")
    w_data.add_argument("--norm_structures", "--norm-structures", action="store_true",
                        default=D["norm_structures"], help="normalize within structural classes")
    w_data.add_argument("--region_agg", "--region-agg", default=D["region_agg"],
                        metavar="METHOD", choices=OPTIONS["region_agg"].choices(),
                        help=f"aggregate within donors first, or pool samples ({D['region_agg']})")
    w_data.add_argument("--agg_metric", "--agg-metric", default=D["agg_metric"],
                        metavar="METHOD", choices=OPTIONS["agg_metric"].choices(),
                        help=f"aggregation metric ({D['agg_metric']})")
    p_data = parser.add_argument_group("AHBA data used")
    p_data.add_argument("--no-reannotated", "--no_reannotated", dest="reannotated",
                        action="store_false", default=D["reannotated"],
                        help="use Allen's probe annotation instead of the reannotation")
    p_data.add_argument("--no-corrected-mni", "--no_corrected_mni", dest="corrected_mni",
                        action="store_false", default=D["corrected_mni"],
                        help="use Allen's MNI coordinates instead of the corrected ones")
    o_data = parser.add_argument_group("output")
    o_data.add_argument("--stdout", action="store_true",
                        help="print the table instead of writing it (ignored with "
                             "--save-counts or --save-donors)")
    o_data.add_argument("--output-file", "--output_file", type=_resolve_path, metavar="PATH",
                        default="abagen_expression.csv",
                        help="where to write the table (default ./abagen_expression.csv)")
    o_data.add_argument("--save-counts", "--save_counts", action="store_true",
                        help="also write samples per region and donor to <stem>_counts.csv")
    o_data.add_argument("--save-donors", "--save_donors", action="store_true",
                        help="write one table per donor (<stem>_<donor>.csv) instead")
    return parser


def _write_csv(frame, path: str) -> None:
    """``frame.to_csv(path)`` written whole or not at all."""
    from ..atomic import replacing

    with replacing(path, mkdir=False) as temporary:
        with open(temporary, "w", newline="") as out:
            frame.to_csv(out)


def run(opts) -> None:
    from ..api import get_expression_data

    result = get_expression_data(
        atlas=opts.atlas, atlas_info=opts.atlas_info, ibf_threshold=opts.ibf_threshold,
        probe_selection=opts.probe_selection,
        sim_threshold=None if opts.sim_threshold is None else float(opts.sim_threshold),
        lr_mirror=opts.lr_mirror, missing=opts.missing, tolerance=opts.tolerance,
        sample_norm=opts.sample_norm, gene_norm=opts.gene_norm,
        norm_matched=opts.norm_matched, norm_structures=opts.norm_structures,
        region_agg=opts.region_agg, agg_metric=opts.agg_metric,
        corrected_mni=opts.corrected_mni, reannotated=opts.reannotated,
        return_counts=opts.save_counts, return_donors=opts.save_donors, donors=opts.donors,
        data_dir=opts.data_dir, verbose=opts.verbose, n_proc=opts.n_proc)
    folder = os.path.dirname(opts.output_file)
    stem = os.path.splitext(os.path.basename(opts.output_file))[0]
    if opts.stdout and not (opts.save_counts or opts.save_donors):
        result.to_csv(sys.stdout)
        return
    expression = result
    if opts.save_counts:
        expression, counts = result
        _write_csv(counts, os.path.join(folder, f"{stem}_counts.csv"))
    if opts.save_donors:
        for donor, table in expression.items():
            _write_csv(table, os.path.join(folder, f"{stem}_{donor}.csv"))
    else:
        _write_csv(expression, opts.output_file)


def main(argv=None) -> int:
    opts = get_parser().parse_args(argv)
    if opts.debug:
        print(opts)
        return 0
    try:
        run(opts)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no output was written", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:   # user mistakes; anything else is a bug: traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
