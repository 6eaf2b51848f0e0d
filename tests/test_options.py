"""One table of options (ahba_app.options) and one run summary (ahba_app.summary), shared by the
Python API and the command line."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

from ahba_app import options
from ahba_app.api import get_expression_data
from ahba_app.cli import run as cli_run
from ahba_app.cli.parser import get_parser
from ahba_app.cli.presets import PARAMETERS, load_preset
from ahba_app.datasets import fetch_desikan_killiany
from ahba_app.report import CC0_NOTICE, ReportParameters

DK = fetch_desikan_killiany()
DONORS = ["9861", "10021"]


def test_the_api_signature_and_the_parser_read_the_table():
    signature = inspect.signature(get_expression_data).parameters
    for name, default in options.DEFAULTS.items():
        assert signature[name].default == default, name
    parsed = vars(get_parser().parse_args(["in", "out", "group"]))
    assert not set(options.NAMES) & set(parsed)  # absent unless given: presets can apply
    assert PARAMETERS == options.NAMES
    text = get_parser().format_help()
    for option in options.OPTIONS.values():
        for flag in option.flags:
            assert flag in text or flag.replace("-", "_") != flag, flag


def test_every_command_line_option_is_declared_in_the_tables():
    """The parser (and so the Boutiques descriptor) is made from options.OPTIONS and
    options.RUN_OPTIONS: each of its options is an entry of one of them, with the same flags."""
    declared = {}
    for option in options.OPTIONS.values():
        for flags in (option.flags, *(s.flags for s in option.switches)):
            if flags:
                declared[flags] = option.name
    for option in options.RUN_OPTIONS:
        declared[option.flags] = option.name
    seen = set()
    for action in get_parser()._actions:
        if not action.option_strings or action.dest in ("help", "version", "verbose"):
            continue
        flags = tuple(action.option_strings)
        assert declared.get(flags) == action.dest, flags
        seen.add(flags)
    assert seen == set(declared)
    groups = [g.title for g in get_parser()._action_groups][2:]
    assert groups == list(options.RUN_GROUPS)
    opts = get_parser().parse_args(["in", "out", "group", "--mem", "2G", "--n_cpus", "3",
                                    "--donors", "sub-9861", "--no-default-atlas"])
    assert (opts.mem_mb, opts.nprocs, opts.participant_label, opts.default_atlas) == \
        (2048, 3, ["9861"], False)


def test_the_abagen_defaults_preset_is_the_table():
    preset = load_preset("abagen-defaults").parameters
    assert options.Settings(**preset) == options.Settings()


def test_settings_are_frozen_and_canonical():
    with pytest.warns(UserWarning, match="replaced by 'aggregate'"):
        settings = options.Settings(sample_norm="srs", probe_selection="mean",
                                    donor_probes="independent")
    assert settings.sample_norm == "scaled_robust_sigmoid"
    assert settings.probe_selection == "average" and settings.donor_probes == "aggregate"
    with pytest.raises(Exception):
        settings.sample_norm = "zscore"
    assert settings.replace(gene_norm="zscore").gene_norm == "zscore"


@pytest.mark.parametrize("name", [n for n, o in options.OPTIONS.items() if o.kind == "choice"])
def test_every_registry_value_is_accepted_and_others_are_not(name):
    option = options.OPTIONS[name]
    for value in option.accepted():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            options.Settings(**{name: value})
    with pytest.raises(ValueError, match="no-such-method"):
        options.Settings(**{name: "no-such-method"})
    assert set(options.choices(name)) >= {v for v in option.accepted() if v is not None}


@pytest.mark.parametrize("spelling, value", [(True, "bidirectional"), (False, None)])
def test_deprecated_lr_mirror_spellings_warn_once_and_convert(spelling, value):
    with pytest.warns(FutureWarning) as caught:
        settings = options.settings(lr_mirror=spelling)
    assert settings.lr_mirror == value and len(caught) == 1
    assert ReportParameters(lr_mirror=spelling).lr_mirror == value


def test_exact_is_missing():
    with pytest.warns(FutureWarning, match="exact="):
        assert options.settings(exact=False).missing == "centroids"


def test_report_parameter_table_follows_the_table():
    rows = ReportParameters(gene_norm="zscore").as_table()
    names = [row[0] for row in rows]
    assert names[:len(options.NAMES) + 1] == [*options.NAMES[:options.NAMES.index("donors") + 1],
                                              "return_donors",
                                              *options.NAMES[options.NAMES.index("donors") + 1:]]
    helps = {row[0]: row[3] for row in rows}
    for option in options.OPTIONS.values():
        assert helps[option.name] == option.help


# --------------------------------------------------------------------------------------------
# return_report=True, for every option family
# --------------------------------------------------------------------------------------------
FAMILIES = [
    dict(),
    dict(ibf_threshold=0.3),
    dict(probe_selection="max_intensity", donor_probes="independent"),
    dict(probe_selection="average"),
    dict(sim_threshold=2),
    dict(lr_mirror="bidirectional"),
    dict(missing="centroids"),
    dict(missing="interpolate", lr_mirror="leftright"),
    dict(tolerance=0),
    dict(sample_norm="zscore", gene_norm=None),
    dict(norm_matched=False, norm_structures=True),
    dict(region_agg="samples", agg_metric="median"),
    dict(corrected_mni=False, reannotated=False),
    dict(stability_threshold=0.1),
    dict(return_donors=True),
]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: ",".join(f) or "defaults")
def test_return_report_for_every_option_family(ahba_small, family):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expression, counts, report = get_expression_data(
            DK["image"], DK["info"], data_dir=str(ahba_small), donors=DONORS,
            return_counts=True, return_report=True, **family)
    assert isinstance(report, str) and "### References" in report
    assert "Desikan-Killiany" in report and "83 regions" in report
    assert "MNI152NLin6Asym" not in report  # the bundled volume's template variant is unknown
    matched = int(np.asarray(counts).sum())
    if family.get("norm_matched", True):
        assert f"{matched:,}" in report or f" {matched} " in report or matched <= 10
    if "stability_threshold" in family:
        assert "differential stability" in report
    if family.get("return_donors"):
        assert isinstance(expression, dict) and "one region-by-gene table per donor" in report


# --------------------------------------------------------------------------------------------
# the API and the command line write the same methods text
# --------------------------------------------------------------------------------------------
def _cli_methods_text(tmp_path, ahba_small, *flags) -> str:
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    code = cli_run.main([str(tmp_path / "in"), str(out), "group", "--ahba-dir", str(ahba_small),
                         "-w", str(tmp_path / "work"), "--participant-label", *DONORS, *flags])
    assert code == 0
    text = (out / "CITATION.md").read_text(encoding="utf-8")
    return text.split(CC0_NOTICE + "\n\n", 1)[1].split("\n\n## Licences", 1)[0]


@pytest.mark.parametrize("flags, kwargs", [
    ((), {}),
    (("--lr-mirror", "bidirectional", "--missing", "centroids", "--gene-norm", "zscore"),
     dict(lr_mirror="bidirectional", missing="centroids", gene_norm="zscore")),
], ids=["defaults", "mirror-centroids-zscore"])
def test_the_api_and_the_cli_write_the_same_methods_text(tmp_path, ahba_small, monkeypatch,
                                                           flags, kwargs):
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    cli_text = _cli_methods_text(tmp_path, ahba_small, *flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, report = get_expression_data(DK["image"], DK["info"], data_dir=str(ahba_small),
                                        donors=DONORS, return_report=True, **kwargs)
    assert report.rstrip() == cli_text.rstrip()
    assert "in MNI152 space" in report  # the bundled volume: a plain MNI152 volume, uncited
