"""The processing options a multiverse grid may vary, and how each value is made canonical.

This module is the multiverse's only view of the option registries: :func:`canonical` checks one
value of one option (unknown names and values raise ValueError naming them and what is allowed)
and returns it as :class:`ahba_app.pipeline.Settings` would hold it, aliases resolved.
"""

from __future__ import annotations

import warnings

from ..cli.parser import DEFAULTS
from ..cli.presets import PARAMETERS

#: Options a grid may vary (every processing option of ``get_expression_data``).
NAMES: tuple[str, ...] = tuple(PARAMETERS)
#: Options that take None (written ``"none"`` in TOML).
NULLABLE = ("sim_threshold", "lr_mirror", "missing", "sample_norm", "gene_norm",
            "stability_threshold")
#: Options whose values are true / false.
BOOLEANS = ("norm_matched", "norm_structures", "corrected_mni", "reannotated")


def _convert(name: str, value):
    from .. import aggregate, matching, normalize, probes, samples
    from ..datasets import check_donors

    if name == "ibf_threshold":
        return probes.check_ibf_threshold(value)
    if name == "probe_selection":
        return probes.check_probe_selection(value)
    if name == "donor_probes":
        if value not in probes.DONOR_PROBES:
            raise ValueError(f"Unknown donor_probes {value!r}: choose one of "
                             f"{list(probes.DONOR_PROBES)}.")
        return value
    if name == "sim_threshold":
        return samples.check_sim_threshold(value)
    if name == "lr_mirror":
        if isinstance(value, bool):
            raise ValueError(f"Invalid lr_mirror={value!r}: write 'bidirectional' or 'none'.")
        return samples.check_lr_mirror(value)
    if name == "missing":
        if value not in matching.MISSING_METHODS:
            raise ValueError(f"Invalid missing={value!r}: choose one of "
                             f"{list(matching.MISSING_METHODS)}.")
        return value
    if name == "tolerance":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"Invalid tolerance={value!r}: give a number (mm for volumes, "
                             "standard deviations for surfaces).")
        return float(value)
    if name in ("sample_norm", "gene_norm"):
        resolved = normalize.resolve_norm(value)
        if resolved in normalize.ACROSS_DONORS:
            raise ValueError(f"Invalid {name}={resolved!r}: it corrects donors against one "
                             f"another. Choose one of {list(normalize.NORMALIZATIONS)} or none.")
        return resolved
    if name in BOOLEANS:
        if not isinstance(value, bool):
            raise ValueError(f"Invalid {name}={value!r}: write true or false.")
        return value
    if name == "region_agg":
        if value not in aggregate.REGION_AGGS:
            raise ValueError(f"Invalid region_agg={value!r}: choose one of "
                             f"{list(aggregate.REGION_AGGS)}.")
        return value
    if name == "agg_metric":
        if not isinstance(value, str):
            raise ValueError(f"Invalid agg_metric={value!r}: choose one of "
                             f"{list(aggregate.AGG_METRICS)}.")
        return aggregate.check_metric(value)
    if name == "donors":
        return tuple(check_donors(value))
    if name == "stability_threshold":
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value <= 1:
            raise ValueError(f"Invalid stability_threshold={value!r}: give a number between "
                             "0 and 1, or 'none'.")
        return float(value)
    raise ValueError(f"Unknown option {name!r}: options are {list(NAMES)}.")


def canonical(name: str, value):
    """``value`` of option ``name`` checked and canonical; ``"none"`` (any case) is None for the
    options that take None. ValueError naming the option, the value and what is allowed."""
    if name not in NAMES:
        raise ValueError(f"Unknown option {name!r}: options are {list(NAMES)}.")
    if name in NULLABLE and (value is None or (isinstance(value, str)
                                               and value.lower() == "none")):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _convert(name, value)
        except (TypeError, ValueError) as err:
            raise ValueError(str(err)) from None


def defaults() -> dict:
    """Every option's default (abagen 0.1.3's), canonical."""
    return {name: canonical(name, DEFAULTS[name]) for name in NAMES}
