"""The processing options of ahba-app, each declared once.

One :class:`Option` per option of ``get_expression_data`` (abagen 0.1.3's names and defaults)
plus ahba-app's ``stability_threshold``: its default, how a value is checked and made
canonical, its choices (read from the stage's method registry), its other spellings, one line
of help, its command-line flags and the stage that uses it. Everything else is derived from
:data:`OPTIONS`:

- :class:`Settings`, the frozen, checked options of one run;
- the command line's processing options (:func:`add_arguments`) and :data:`DEFAULTS`;
- the options a preset may set (:data:`NAMES`);
- the Nipype interface traits (:func:`trait`: ``traits.Enum`` of the registry);
- the report's parameter table and help (:func:`table`).

The command line's other options (inputs, presets, outputs, multiverse, execution) are the
:data:`RUN_OPTIONS` table below it; :mod:`ahba_app.cli.parser` builds argparse from both and the
Boutiques descriptor is built from that parser. A new option is one entry here (and the code
that uses it).
"""

from __future__ import annotations

import argparse
import math
import os
import warnings
from dataclasses import dataclass, field, fields, make_dataclass, replace
from importlib import import_module
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

__all__ = ["OPTIONS", "DEFAULTS", "NAMES", "Option", "RUN_GROUPS", "RUN_OPTIONS", "RunOption",
           "Settings", "add_arguments", "add_run_arguments", "choices",
           "settings", "table", "trait", "parse_text", "report_value", "deprecated_spellings"]

#: How "no value" may be written in text (command line, preset files, reports).
NONE_SPELLINGS = ("none", "None")


# ---------------------------------------------------------------------------------------------
# converters: value -> canonical value, or ValueError naming the value and what is allowed
# ---------------------------------------------------------------------------------------------
def _unit_interval(name: str) -> Callable:
    def convert(value) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"Invalid {name}={value!r}: give a number between 0 and 1."
                             ) from None
        if not 0 <= number <= 1:
            raise ValueError(f"Invalid {name}={value!r}: it must lie between 0 and 1.")
        return number
    return convert


def _optional(convert: Callable) -> Callable:
    def optional(value):
        return None if value is None else convert(value)
    return optional


def _tolerance(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid tolerance={value!r}: give a number (mm for volumes, standard "
                         "deviations for surfaces).") from None
    if not math.isfinite(number):  # nan and inf would fail later, blamed on the atlas
        raise ValueError(f"Invalid tolerance={value!r}: give a finite number (mm for volumes, "
                         "standard deviations for surfaces; default 2).")
    return number


def _stage(module: str):
    return import_module(f"{__package__}.{module}")


def _call(module: str, function: str) -> Callable:
    """The stage's own check (imported when first used: options.py imports no stage)."""
    def convert(*values):
        return getattr(_stage(module), function)(*values)
    return convert


def _member(name: str, module: str, registry: str, word: str = "Invalid") -> Callable:
    """A value that must be a key of the stage's registry."""
    def convert(value):
        names = getattr(_stage(module), registry)
        if value not in names:
            sep = " " if word == "Unknown" else "="
            raise ValueError(f"{word} {name}{sep}{value!r}: choose one of {list(names)}.")
        return value
    return convert


def _norm(name: str) -> Callable:
    def convert(value):
        normalize = _stage("normalize")
        resolved = normalize.resolve_norm(value)
        if resolved in normalize.ACROSS_DONORS:
            raise ValueError(f"Invalid {name}={resolved!r}: it corrects donors against one "
                             "another; use ahba_app.normalize_expression on the donors' tables "
                             f"instead. Choose one of {list(normalize.NORMALIZATIONS)} or None.")
        return resolved
    return convert


def _registry(module: str, names: str, *, aliases: str | None = None, none: bool = False,
              exclude: str | None = None) -> Callable[[], tuple[tuple, dict]]:
    """The values an option family accepts, read from the stage's registry: (canonical names,
    None first when allowed; {alias: canonical})."""
    def read():
        stage = _stage(module)
        dropped = getattr(stage, exclude) if exclude else ()
        values = tuple(v for v in getattr(stage, names) if v not in dropped)
        return ((None,) if none else ()) + values, dict(getattr(stage, aliases) if aliases else {})
    return read


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Switch:
    """A command-line flag that sets a boolean option to ``value``."""

    flags: tuple[str, ...]
    value: bool
    help: str | None  # None: accepted but not listed in --help


@dataclass(frozen=True)
class Option:
    """One processing option.

    name: ``get_expression_data``'s keyword (abagen's).
    default: abagen 0.1.3's default (ahba-app's for its extensions).
    stage: the stage that uses it (``samples``, ``probes``, ``matching``, ``normalize``,
        ``aggregate``, ``data``).
    help: one line, used by the command line, the interface traits and the report.
    convert: value -> canonical value (aliases resolved); ValueError for a bad value.
    registry: () -> (canonical choices, {alias: canonical}), read from the stage's registry;
        None for numbers, switches and donors.
    flags: command-line flags taking a value; switches: flags of a boolean option.
    kind: ``number``, ``choice``, ``bool`` or ``donors`` (how text is parsed).
    nullable: None is a valid value (written ``none`` on the command line and in presets).
    metavar: the command line's placeholder.
    describe: the converter of reports when it is more lenient than ``convert`` (a report may
        describe what ``normalize_expression`` did across donors).
    deprecated: (old value, value) pairs abagen still accepts, with a FutureWarning
        (``lr_mirror=True`` is ``'bidirectional'``); booleans match only booleans.
    old_names: (old keyword, value -> value of this option) pairs (``exact=``).
    """

    name: str
    default: Any
    stage: str
    help: str
    convert: Callable[[Any], Any]
    kind: str = "number"
    registry: Callable[[], tuple[tuple, dict]] | None = None
    flags: tuple[str, ...] = ()
    switches: tuple[Switch, ...] = ()
    nullable: bool = False
    metavar: str | None = None
    describe: Callable[[Any], Any] | None = None
    deprecated: tuple[tuple[Any, Any], ...] = ()
    old_names: tuple[tuple[str, Callable[[Any], Any]], ...] = ()

    def choices(self) -> tuple:
        """Canonical values (None first when allowed), from the registry."""
        return self.registry()[0] if self.registry else ()

    def aliases(self) -> dict:
        """Other accepted spellings -> canonical value."""
        return self.registry()[1] if self.registry else {}

    def accepted(self) -> tuple:
        """Every value the option takes: canonical values, then aliases."""
        return (*self.choices(), *self.aliases())


def _boolean(name: str, default: bool, stage: str, text: str,
             *switches: tuple[tuple[str, ...], bool, str | None]) -> Option:
    """A true/false option set on the command line by its switches: (flags, value, help)."""
    return Option(name, default, stage, text, bool, kind="bool",
                  switches=tuple(Switch(*switch) for switch in switches))


def _dash(name: str) -> tuple[str, str]:
    return "--" + name.replace("_", "-"), "--" + name


_NORMS = _registry("normalize", "METHODS", aliases="ALIASES", none=True, exclude="ACROSS_DONORS")

OPTIONS: Mapping[str, Option] = MappingProxyType({o.name: o for o in (
    Option("ibf_threshold", 0.5, "probes",
           "Share of all samples (0-1) in which a probe must exceed background to be kept.",
           _unit_interval("ibf_threshold"), flags=_dash("ibf_threshold"), metavar="THRESHOLD"),
    Option("probe_selection", "diff_stability", "probes",
           "How one expression profile per gene is obtained from its probes.",
           _call("probes", "check_probe_selection"), kind="choice",
           registry=_registry("probes", "SELECTION_METHODS", aliases="SELECTION_ALIASES"),
           flags=_dash("probe_selection"), metavar="METHOD"),
    Option("donor_probes", "aggregate", "probes",
           "Whether probes are chosen on pooled donors, per donor, or by majority.",
           _member("donor_probes", "probes", "DONOR_PROBES", "Unknown"), kind="choice",
           registry=_registry("probes", "DONOR_PROBES"),
           flags=_dash("donor_probes"), metavar="METHOD"),
    Option("sim_threshold", None, "samples",
           "Drop samples whose summed correlation with the others is this many standard "
           "deviations below the mean (none: keep all).",
           _call("samples", "check_sim_threshold"), nullable=True, flags=_dash("sim_threshold"),
           metavar="THRESHOLD"),
    Option("lr_mirror", None, "samples",
           "Copy samples into the other hemisphere to increase coverage.",
           _call("samples", "check_lr_mirror"), kind="choice",
           registry=_registry("samples", "MIRROR_METHODS", none=True), nullable=True,
           flags=_dash("lr_mirror"), metavar="METHOD",
           deprecated=((True, "bidirectional"), (False, None))),
    Option("missing", None, "matching",
           "How regions without samples are filled (none: left empty, rows of n/a).",
           _member("missing", "matching", "MISSING_METHODS"), kind="choice",
           registry=_registry("matching", "MISSING_METHODS"), nullable=True,
           flags=("--missing",), metavar="METHOD",
           old_names=(("exact", lambda exact: None if exact else "centroids"),)),
    Option("tolerance", 2, "matching",
           "Volumetric atlas: how far (mm) a sample may lie from a region. Surface atlas: "
           "standard deviations above the mean distance (a negative value is a distance in mm).",
           _tolerance, flags=("--tolerance", "--tol"), metavar="DIST"),
    Option("sample_norm", "srs", "normalize",
           "Normalisation of each sample across genes, within donors.",
           _norm("sample_norm"), kind="choice", registry=_NORMS, nullable=True,
           describe=_call("normalize", "resolve_norm"),
           flags=_dash("sample_norm"), metavar="METHOD"),
    Option("gene_norm", "srs", "normalize",
           "Normalisation of each gene across samples, within donors.",
           _norm("gene_norm"), kind="choice", registry=_NORMS, nullable=True,
           describe=_call("normalize", "resolve_norm"),
           flags=_dash("gene_norm"), metavar="METHOD"),
    _boolean("norm_matched", True, "normalize",
             "Normalise genes over matched samples only (else over all samples).",
             (("--norm-all", "--norm_all"), False,
              "Normalize genes over all samples, not only the matched ones."),
             (("--norm-matched", "--norm_matched"), True,
              "Normalize genes over matched samples only (the default; overrides a preset).")),
    _boolean("norm_structures", False, "normalize",
             "Normalise genes separately within cortex, subcortex/brainstem and cerebellum.",
             (("--norm-structures", "--norm_structures"), True,
              "Normalize genes separately within cortex, subcortex/brainstem and cerebellum."),
             (("--no-norm-structures", "--no_norm_structures"), False,
              "Normalize genes across structures (the default; overrides a preset).")),
    Option("region_agg", "donors", "aggregate",
           "Combine samples within donors first, or pool all samples.",
           _member("region_agg", "aggregate", "REGION_AGGS"), kind="choice",
           registry=_registry("aggregate", "REGION_AGGS"),
           flags=_dash("region_agg"), metavar="METHOD"),
    Option("agg_metric", "mean", "aggregate",
           "Statistic used to combine samples and donors.",
           _call("aggregate", "check_metric"), kind="choice",
           registry=_registry("aggregate", "AGG_METRICS"),
           flags=_dash("agg_metric"), metavar="METHOD"),
    _boolean("corrected_mni", True, "samples",
             "Use the alleninf non-linear MNI coordinates of the samples.",
             (("--no-corrected-mni", "--no_corrected_mni"), False,
              "Use the AHBA's MNI coordinates instead of the alleninf corrected ones."),
             (("--corrected-mni",), True, None)),
    _boolean("reannotated", True, "probes",
             "Use the Arnatkeviciute et al. (2019) probe-to-gene reannotation.",
             (("--no-reannotated", "--no_reannotated"), False,
              "Use the AHBA's own probe annotations instead of the Arnatkeviciute et al. "
              "(2019) reannotation."),
             (("--reannotated",), True, None)),
    Option("donors", "all", "data",
           "Donors whose samples are used.", _call("donors", "check_donors"), kind="donors"),
    Option("stability_threshold", None, "aggregate",
           "ahba-app extension: drop genes whose differential stability across donors is "
           "below this value (none: keep all).",
           _optional(_unit_interval("stability_threshold")), nullable=True,
           flags=_dash("stability_threshold"), metavar="R"),
)})

#: Option names, in the table's order (also what a preset may set).
NAMES: tuple[str, ...] = tuple(OPTIONS)

#: Every option's default, as abagen (and ``get_expression_data``'s signature) writes it.
DEFAULTS: Mapping[str, Any] = MappingProxyType({o.name: o.default for o in OPTIONS.values()})


def deprecated_spellings(kwargs: dict, stacklevel: int = 3) -> dict:
    """``kwargs`` with abagen's deprecated spellings (:attr:`Option.deprecated`,
    :attr:`Option.old_names`) replaced, each with a FutureWarning naming the new spelling."""
    kwargs = dict(kwargs)
    for option in OPTIONS.values():
        for old_name, translate in option.old_names:
            old = kwargs.pop(old_name, None)
            if old is not None:
                new = translate(old)
                warnings.warn(f"{old_name}={old!r} is deprecated: use {option.name}={new!r}.",
                              FutureWarning, stacklevel=stacklevel)
                kwargs[option.name] = new
        value = kwargs.get(option.name)
        for old, new in option.deprecated:
            if type(value) is type(old) and value == old:
                warnings.warn(f"{option.name}={old!r} is deprecated: use {option.name}={new!r}.",
                              FutureWarning, stacklevel=stacklevel)
                kwargs[option.name] = new
                break
    return kwargs


# ---------------------------------------------------------------------------------------------
# Settings: the checked options of one run
# ---------------------------------------------------------------------------------------------
def _post_init(self) -> None:
    for option in OPTIONS.values():
        object.__setattr__(self, option.name, option.convert(getattr(self, option.name)))
    if self.probe_selection is not None:  # (the stage's check, read like its registries)
        object.__setattr__(self, "donor_probes", _call("probes", "check_donor_probes")(
            self.donor_probes, self.probe_selection))
    if self.probe_selection == "diff_stability" and len(self.donors) < 2:
        raise ValueError("probe_selection='diff_stability' compares donors, so it needs at "
                         f"least two; got donors={self.donors}. Use more donors or another "
                         "probe_selection.")


def _as_dict(self) -> dict:
    """The settings as plain values (callables by name), for sidecars and reports."""
    out = {f.name: getattr(self, f.name) for f in fields(self)}
    out["donors"] = list(out["donors"])
    if callable(self.agg_metric):
        out["agg_metric"] = getattr(self.agg_metric, "__name__", repr(self.agg_metric))
    return out


def _names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


def _replace(self, **changes) -> "Settings":
    return replace(self, **changes)


Settings = make_dataclass(
    "Settings",
    [(o.name, Any, field(default=o.default)) for o in OPTIONS.values()],
    frozen=True,
    namespace={"__post_init__": _post_init, "as_dict": _as_dict, "names": classmethod(_names),
               "replace": _replace, "__module__": __name__,
               "__doc__": "Every processing option of one run, checked and canonical (frozen).\n\n"
                          "Built from :data:`OPTIONS`: ``Settings(**options)`` checks each "
                          "value\nagainst its stage's registry, resolves aliases, and checks "
                          "the options that\ndepend on one another."})


def settings(**kwargs) -> "Settings":
    """:class:`Settings` from ``get_expression_data``'s keywords (deprecated spellings
    accepted with a FutureWarning)."""
    return Settings(**deprecated_spellings(kwargs, stacklevel=4))


# ---------------------------------------------------------------------------------------------
# text sources: command line, preset files, reports
# ---------------------------------------------------------------------------------------------
def _is_none(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
        return True
    return isinstance(value, float) and math.isnan(value)


def parse_text(name: str, value):
    """A value as a preset file or a report gives it: ``"none"`` (any case), ``""`` and NaN
    mean None for options that take None; anything else is returned as is."""
    if OPTIONS[name].nullable and _is_none(value):
        return None
    return value


def report_value(name: str, value):
    """The canonical value a report shows: spelled as :class:`Settings` makes it (``"none"``
    spellings accepted), without the checks that need other options and without warnings; a
    callable ``agg_metric`` by its name. A value outside the registry is a ValueError that
    lists the allowed values."""
    value = parse_text(name, value)
    option = OPTIONS[name]
    if name == "donors":
        return value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = (option.describe or option.convert)(value)
        except (TypeError, ValueError):
            if option.kind != "choice":
                raise
            shown = ", ".join(repr(a) for a in option.accepted())
            raise ValueError(f"Invalid {name}={value!r}: allowed values are {shown}."
                             ) from None
    if name == "agg_metric" and callable(value):
        return getattr(value, "__name__", "custom")
    return value


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def choices(name: str | None = None):
    """Values the command line accepts for the options with a fixed set (canonical names,
    aliases, and 'none'/'None' when None is allowed); all of them by option without ``name``."""
    if name is None:
        return {o.name: choices(o.name) for o in OPTIONS.values() if o.kind == "choice"}
    option = OPTIONS[name]
    values = [v for v in option.accepted() if v is not None]
    return values + list(NONE_SPELLINGS) if option.nullable else values


class _Choices(list):
    """A choice list that also accepts None (from ``none``) without listing it twice."""

    def __contains__(self, item):
        return item is None or super().__contains__(item)


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None


def _none_or_number(value: str):
    if value in NONE_SPELLINGS:
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {value!r}") from None


_none_or_number.__name__ = "float"


def _none_string(value: str):
    return None if value in NONE_SPELLINGS else value


def _shown(value) -> str:
    return "none" if value is None else str(value)


def add_arguments(group) -> None:
    """Add every option with command-line flags to an argparse group.

    Options are absent from the parsed namespace unless given (``argparse.SUPPRESS``), so that
    an explicit option (even ``none``) can be told from a default.
    """
    for option in OPTIONS.values():
        if option.switches:
            for switch in option.switches:
                group.add_argument(*switch.flags, dest=option.name, action="store_const",
                                   const=switch.value, default=argparse.SUPPRESS,
                                   help=switch.help or argparse.SUPPRESS)
            continue
        if not option.flags:
            continue
        text = option.help
        kwargs = dict(dest=option.name, metavar=option.metavar, default=argparse.SUPPRESS)
        if option.kind == "choice":
            allowed = choices(option.name)
            shown = ", ".join(v for v in allowed if v != "None")
            text = f"{text} Choices: {shown}."
            if option.nullable:
                kwargs.update(type=_none_string, choices=_Choices(allowed))
            else:
                kwargs.update(choices=allowed)
        else:
            kwargs["type"] = _none_or_number if option.nullable else _number
        kwargs["help"] = f"{text} Default: {_shown(option.default)}."
        group.add_argument(*option.flags, **kwargs)


# ---------------------------------------------------------------------------------------------
# Nipype traits and the report
# ---------------------------------------------------------------------------------------------
def trait(name: str, **kwargs):
    """The Nipype trait of an option: ``traits.Enum`` of its registry's values (canonical and
    aliases, None when allowed), so that an interface rejects anything else; numbers and
    switches as Float / Bool. The default is the option's, made canonical."""
    from nipype.interfaces.base import traits

    option = OPTIONS[name]
    default = Settings.__dataclass_fields__[name].default
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = option.convert(default) if name != "donors" else default
    kwargs.setdefault("desc", option.help)
    kwargs.setdefault("usedefault", True)
    if option.kind == "choice":
        values = [default] + [v for v in option.accepted() if v != default]
        return traits.Enum(*values, **kwargs)
    if option.kind == "bool":
        return traits.Bool(default, **kwargs)
    if option.nullable:
        return traits.Either(None, traits.Float, default=default, **kwargs)
    return traits.Float(default, **kwargs)


def table(values: Mapping) -> list[tuple[str, Any, Any, str]]:
    """(name, value, default, help) of every option, for the report's parameter table."""
    return [(o.name, values.get(o.name, o.default), o.default, o.help) for o in OPTIONS.values()]


# ---------------------------------------------------------------------------------------------
# the command line's other options: what to run on, where, how (not processing options)
# ---------------------------------------------------------------------------------------------
def absolute_path(value: str) -> Path:
    """A command-line path, absolute (``~`` expanded)."""
    return Path(os.path.abspath(os.path.expanduser(value)))


def donor_label(value: str) -> str:
    """A donor given as ``9861``, ``sub-9861`` or a uid (``H0351.2001``)."""
    return value[4:] if value.startswith("sub-") else value


def megabytes(value: str) -> int:
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


@dataclass(frozen=True)
class RunOption:
    """One option of the command line that is not a processing option.

    name: the parsed attribute; group: the --help section; flags: every spelling; help: one
    line (``{presets}`` is replaced by the presets' names); the rest as argparse takes them
    (``action``: ``store`` with ``type``, or ``store_true`` / ``store_false``).
    """

    name: str
    group: str
    flags: tuple[str, ...]
    help: str
    type: Callable[[str], Any] | None = None
    action: str = "store"
    default: Any = None
    nargs: str | None = None
    metavar: str | None = None
    choices: tuple | Callable[[], tuple] | None = None

    def add_to(self, group, **text) -> None:
        kwargs = dict(dest=self.name, help=self.help.format(**text))
        if self.action == "store":
            choices = self.choices() if callable(self.choices) else self.choices
            kwargs.update(type=self.type, default=self.default, nargs=self.nargs,
                          metavar=self.metavar, choices=list(choices) if choices else None)
            kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "default"}
        else:
            kwargs.update(action=self.action)
            if self.action == "store_false":
                kwargs["default"] = True
        group.add_argument(*self.flags, **kwargs)


INPUTS, PRESETS, PROCESSING = ("Selecting inputs", "Presets",
                               "Processing options (abagen's names and defaults)")
OUTPUTS, MULTIVERSE, EXECUTION = ("Outputs", "Multiverse (group level; ahba_app.multiverse)",
                                  "Execution")
#: The --help sections, in order; the processing options (:data:`OPTIONS`) are the third.
RUN_GROUPS = (INPUTS, PRESETS, PROCESSING, OUTPUTS, MULTIVERSE, EXECUTION)

RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption("participant_label", INPUTS, ("--participant-label", "--participant_label",
                                            "--donors"),
              "AHBA donors to use (numbers such as 9861, with or without 'sub-', or uids such "
              "as H0351.2001; 'all' for every donor). Default: all.",
              type=donor_label, nargs="+", metavar="DONOR"),
    RunOption("atlas", INPUTS, ("--atlas",),
              "Process only the atlases with these atlas- labels (e.g. Schaefer2018) or output "
              "names (e.g. Schaefer2018400Parcels7Networks); a label INPUT_DIR lacks is looked "
              "up in $TEMPLATEFLOW_HOME (offline).", nargs="+", metavar="LABEL"),
    RunOption("atlas_desc", INPUTS, ("--atlas-desc", "--atlas_desc"),
              "The desc- of a TemplateFlow atlas (e.g. 400Parcels7Networks; for Schaefer2018 on "
              "fsaverage it also finds seg-7n_scale-400).", metavar="DESC"),
    RunOption("space", INPUTS, ("--space",),
              "TemplateFlow template of the atlas: MNI152NLin6Asym (default), fsLR, fsaverage, "
              "...", metavar="TEMPLATE"),
    RunOption("res", INPUTS, ("--res", "--resolution"),
              "TemplateFlow resolution index of a volumetric atlas (1 = 1 mm in "
              "MNI152NLin6Asym). Default: the finest there is.", metavar="N"),
    RunOption("den", INPUTS, ("--den", "--density"),
              "Density of a surface atlas: 32k (fsLR); 3k, 10k, 41k or 164k (fsaverage4, 5, 6, "
              "fsaverage). A coarser fsaverage density than TemplateFlow holds is cut from the "
              "nested finer mesh.", metavar="DEN"),
    RunOption("skip_bids_validation", INPUTS,
              ("--skip-bids-validation", "--skip_bids_validation", "--skip-bids-validator",
               "--skip_bids_validator"),
              "Accepted for BIDS Apps compatibility: ahba-app checks the atlas files it uses "
              "itself and never runs the BIDS validator.", action="store_true"),
    RunOption("default_atlas", INPUTS, ("--no-default-atlas", "--no_default_atlas"),
              "Fail when INPUT_DIR holds no atlas instead of using the bundled "
              "Desikan-Killiany atlas.", action="store_false"),
    RunOption("ahba_dir", INPUTS, ("--ahba-dir", "--ahba_dir", "--data-dir", "--data_dir"),
              "The AHBA data folder (holding microarray/normalized_microarray_donor*/). "
              "Default: $AHBA_DATA, else $ABAGEN_DATA, else ~/.local/share/ahba-app. Missing "
              "donors are downloaded before processing starts.", type=absolute_path,
              metavar="PATH"),
    RunOption("preset", PRESETS, ("--preset",),
              "Start from a parameter set: {presets}, or the path of a TOML file. Explicit "
              "options override it.", metavar="NAME|PATH"),
    RunOption("desc", PRESETS, ("--desc",),
              "The desc- label of the output files. Default: the preset's name (letters and "
              "digits only; 'abagendefaults' without a preset) when its parameters are used "
              "unchanged, else 'custom'.", metavar="LABEL"),
    RunOption("save_donors", OUTPUTS, ("--save-donors", "--save_donors"),
              "group: also write one region x gene table per donor (sub-<donor>/...).",
              action="store_true"),
    RunOption("save_counts", OUTPUTS, ("--save-counts", "--save_counts"),
              "Accepted for abagen compatibility: sample counts are always written.",
              action="store_true"),
    RunOption("multiverse", MULTIVERSE, ("--multiverse",),
              "Run every pipeline of a grid (a TOML file whose [grid] table maps options to "
              "lists of values, or a bundled grid such as markello2021) and write one row of "
              "statistics per pipeline and atlas instead of the tables. Options the grid does "
              "not name keep their value from the command line or preset.", metavar="GRID"),
    RunOption("multiverse_map", MULTIVERSE, ("--multiverse-map", "--multiverse_map"),
              "A value per atlas region (columns 'index' and one value, n/a for none) whose "
              "Spearman correlation with each table's first principal component is reported "
              "(map_rho).", type=absolute_path, metavar="TSV"),
    RunOption("multiverse_format", MULTIVERSE, ("--multiverse-format", "--multiverse_format"),
              "Format of the pipelines table. Default: auto (Parquet above 100,000 pipelines, "
              "TSV below).", default="auto", choices=("auto", "tsv", "parquet")),
    RunOption("multiverse_save_tables", MULTIVERSE,
              ("--multiverse-save-tables", "--multiverse_save_tables"),
              "Also save the region x gene table (gzip TSV) of some pipelines, in "
              "<atlas>_desc-multiverse_tables/: 'reference' (the command line's or preset's own "
              "pipeline), 'all' (grids of at most 1,000 pipelines), pipeline ids separated by "
              "commas, or a file listing them (one per line, or a TSV with a pipeline_id "
              "column).", metavar="IDS"),
    RunOption("work_dir", EXECUTION, ("-w", "--work-dir", "--work_dir"),
              "Nipype's working folder; keep it to reuse unchanged steps in a later run. "
              "Default: ./work.", type=absolute_path, metavar="PATH"),
    RunOption("clean_workdir", EXECUTION, ("--clean-workdir", "--clean_workdir"),
              "Remove the work folder after a successful run.", action="store_true"),
    RunOption("nprocs", EXECUTION, ("--nprocs", "--n-procs", "--n_procs", "--nthreads",
                                    "--n-proc", "--n_proc", "--n-cpus", "--n_cpus"),
              "Processes to run donors and atlases in parallel. Default: 1.", type=int,
              default=1, metavar="N"),
    RunOption("nipype_plugin", EXECUTION, ("--nipype-plugin", "--nipype_plugin"),
              "Nipype plugin that runs the workflow: Linear (one node at a time), MultiProc "
              "(--nprocs processes), SLURM (one sbatch job per node, submitted as their inputs "
              "are ready) or SLURMGraph (the whole graph submitted at once with job "
              "dependencies). Default: MultiProc with --nprocs above 1, Linear otherwise.",
              choices=lambda: _stage("cli.engines").PLUGINS),
    RunOption("plugin_args", EXECUTION, ("--plugin-args", "--plugin_args"),
              "Arguments of the Nipype plugin, as a JSON object or the path of a JSON/TOML file "
              "holding one, e.g. '{{\"sbatch_args\": \"--partition=short --time=2:00:00\"}}'.",
              metavar="JSON"),
    RunOption("mem_mb", EXECUTION, ("--mem", "--mem-mb", "--mem_mb"),
              "Upper bound of the memory the parallel nodes may use together, in MB (or with a "
              "unit: 16G, 16000M). Default: no bound.", type=megabytes, metavar="MB"),
)


def add_run_arguments(group, title: str, **text) -> None:
    """Add the :data:`RUN_OPTIONS` of section ``title`` to an argparse group."""
    for option in RUN_OPTIONS:
        if option.group == title:
            option.add_to(group, **text)
