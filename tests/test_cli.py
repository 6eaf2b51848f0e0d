"""The ahba-app command line: parsing, presets, checks, and end-to-end runs on synthetic data."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ahba_app import aggregate, bids, matching, normalize, pipeline, probes, samples
from ahba_app._version import __version__
from ahba_app.cli import run as cli_run
from ahba_app.cli.parser import DEFAULTS, choices, get_parser, parse_args, resolve_parameters
from ahba_app.cli.presets import PresetError, available_presets, load_preset

from test_bids import GIFTI, TABLE, VOLUME, dk_table, make_bids_input

DONORS = ["9861", "10021"]
STEM_VOL = "atlas-DK_space-MNI152NLin6Asym_res-01"
STEM_SURF = "atlas-DK_space-fsaverage_den-10k"
UPSTREAM = ("fetch", "reannotate", "annotate", "filter_probes", "select_probes", "match")


def _args(*extra):
    return ["in", "out", "group", *extra]


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dash", "underscore", "value"), [
    ("--ibf-threshold", "--ibf_threshold", "0.25"),
    ("--probe-selection", "--probe_selection", "max_variance"),
    ("--donor-probes", "--donor_probes", "common"),
    ("--lr-mirror", "--lr_mirror", "leftright"),
    ("--sim-threshold", "--sim_threshold", "3"),
    ("--sample-norm", "--sample_norm", "zscore"),
    ("--gene-norm", "--gene_norm", "minmax"),
    ("--region-agg", "--region_agg", "samples"),
    ("--agg-metric", "--agg_metric", "median"),
    ("--stability-threshold", "--stability_threshold", "0.3"),
    ("--tolerance", "--tol", "3"),
])
def test_dash_and_underscore_spellings(dash, underscore, value):
    a, b = parse_args(_args(dash, value)), parse_args(_args(underscore, value))
    assert vars(a) == vars(b)
    params, _ = resolve_parameters(a)
    dest = dash.lstrip("-").replace("-", "_")
    assert params[dest] == (float(value) if dest in ("ibf_threshold", "sim_threshold",
                                                      "stability_threshold", "tolerance")
                            else value)


@pytest.mark.parametrize(("flags", "name", "value"), [
    (["--norm-all"], "norm_matched", False), (["--norm_all"], "norm_matched", False),
    (["--norm-structures"], "norm_structures", True),
    (["--norm_structures"], "norm_structures", True),
    (["--no-reannotated"], "reannotated", False), (["--no_reannotated"], "reannotated", False),
    (["--no-corrected-mni"], "corrected_mni", False),
    (["--no_corrected_mni"], "corrected_mni", False),
])
def test_switches(flags, name, value):
    params, _ = resolve_parameters(parse_args(_args(*flags)))
    assert params[name] is value
    assert resolve_parameters(parse_args(_args()))[0][name] is DEFAULTS[name]


def test_defaults_are_abagens():
    params, preset = resolve_parameters(parse_args(_args()))
    assert preset is None and params == DEFAULTS
    assert pipeline.Settings(**params).as_dict() == \
        pipeline.Settings(**load_preset("abagen-defaults").parameters).as_dict()


@pytest.mark.parametrize("flag", ["--participant-label", "--participant_label", "--donors"])
def test_donor_selection(flag):
    opts = parse_args(_args(flag, "sub-9861", "10021", "H0351.1009"))
    assert opts.participant_label == ["9861", "10021", "H0351.1009"]
    params, _ = resolve_parameters(opts)
    assert pipeline.Settings(**params).donors == ["9861", "10021", "12876"]


def test_choices_come_from_the_registries():
    opts = choices()
    norms = [m for m in normalize.METHODS if m not in normalize.ACROSS_DONORS]
    assert set(opts["gene_norm"]) == set(norms) | set(normalize.ALIASES) | {"none", "None"}
    assert opts["sample_norm"] == opts["gene_norm"]
    assert set(opts["probe_selection"]) == set(probes.SELECTION_METHODS) | \
        set(probes.SELECTION_ALIASES)
    assert set(opts["donor_probes"]) == set(probes.DONOR_PROBES)
    assert set(opts["lr_mirror"]) == set(samples.MIRROR_METHODS) | {"none", "None"}
    assert set(opts["missing"]) == {m for m in matching.MISSING_METHODS if m} | {"none", "None"}
    assert set(opts["region_agg"]) == set(aggregate.REGION_AGGS)
    assert set(opts["agg_metric"]) == set(aggregate.AGG_METRICS)
    for value in ("srs", "scaled_robust_sigmoid", "none", "None"):
        parse_args(_args("--gene-norm", value))


@pytest.mark.parametrize("bad", [["--gene-norm", "batch"], ["--probe-selection", "best"],
                                 ["--lr-mirror", "up"], ["--missing", "zeros"],
                                 ["--agg-metric", "max"], ["--nprocs", "0"],
                                 ["--ibf-threshold", "half"]])
def test_bad_options_are_usage_errors(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(_args(*bad))
    assert exc.value.code == 64  # EX_USAGE, as the BIDS Apps execution specification asks
    assert "ahba-app: error:" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"ahba-app {__version__}"


def test_nprocs_spellings():
    for flag in ("--nprocs", "--n-procs", "--n_procs", "--nthreads", "--n-proc", "--n_proc",
                 "--n_cpus", "--n-cpus"):
        assert parse_args(_args(flag, "3")).nprocs == 3


def test_bids_app_habits(capsys):
    """fMRIPrep's spellings: --mem/--mem_mb, --skip_bids_validation, sub- labels."""
    for flag in ("--mem", "--mem_mb", "--mem-mb"):
        assert parse_args(_args(flag, "16000")).mem_mb == 16000
    assert parse_args(_args("--mem", "16G")).mem_mb == 16 * 1024
    assert parse_args(_args("--mem", "8GB")).mem_mb == 8 * 1024
    assert parse_args(_args()).mem_mb is None
    for flag in ("--skip_bids_validation", "--skip-bids-validation", "--skip_bids_validator"):
        assert parse_args(_args(flag)).skip_bids_validation is True
    for flag in ("--participant_label", "--participant-label"):
        assert parse_args(_args(flag, "sub-9861", "10021")).participant_label == \
            ["9861", "10021"]
    with pytest.raises(SystemExit) as exc:
        parse_args(_args("--mem", "lots"))
    assert exc.value.code == 64


def test_unknown_analysis_level_exits_17(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["in", "out", "session"])
    assert exc.value.code == 17
    assert "analysis_level" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys):
    from ahba_app.cli.exits import EXIT_CODES

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for code, text in EXIT_CODES.items():
        assert f"{code} {' '.join(text.split())}" in out


@pytest.mark.parametrize("name", ["abagen-defaults", "arnatkeviciute2019", "dense",
                                  "enigma-toolbox"])
def test_every_preset_loads_and_validates(name):
    assert name in available_presets()
    preset = load_preset(name)
    assert preset.name == name and preset.description
    settings = pipeline.Settings(**dict(DEFAULTS, **preset.parameters))
    assert settings.probe_selection in probes.SELECTION_METHODS


def test_preset_values_and_overrides():
    params, preset = resolve_parameters(parse_args(_args("--preset", "dense")))
    assert preset.name == "dense"
    assert params["lr_mirror"] == "bidirectional" and params["missing"] == "interpolate"
    assert params["norm_matched"] is False
    params, _ = resolve_parameters(parse_args(_args("--preset", "dense", "--lr-mirror", "none",
                                                    "--norm-matched", "--gene-norm", "zscore")))
    assert params["lr_mirror"] is None and params["norm_matched"] is True
    assert params["gene_norm"] == "zscore" and params["missing"] == "interpolate"
    params, _ = resolve_parameters(parse_args(_args("--preset", "enigma-toolbox")))
    assert params["stability_threshold"] == 0.2
    params, _ = resolve_parameters(parse_args(_args("--preset", "enigma-toolbox",
                                                    "--stability-threshold", "none")))
    assert params["stability_threshold"] is None


def test_preset_from_a_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\ndescription = "test"\n[parameters]\n'
                    'gene_norm = "zscore"\nsim_threshold = "none"\n')
    params, preset = resolve_parameters(parse_args(_args("--preset", str(path))))
    assert preset.name == "mine" and preset.label == "mine"
    assert params["gene_norm"] == "zscore" and params["sim_threshold"] is None
    path.write_text('[parameters]\nflavour = "sweet"\n')
    with pytest.raises(PresetError, match="flavour"):
        load_preset(str(path))
    with pytest.raises(PresetError, match="Unknown preset 'nope'"):
        load_preset("nope")


def test_parser_and_run_modules_import_without_nipype_or_side_effects():
    code = ("import os, sys; before = dict(os.environ); import ahba_app.cli.run, "
            "ahba_app.cli.parser; assert 'nipype' not in sys.modules, 'nipype imported'; "
            "assert dict(os.environ) == before, 'environment changed'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_collector_is_paused_only_when_the_run_is_the_whole_process(tmp_path, monkeypatch):
    """The console script (no argv) runs its checks with the collector off, then sets what
    exists aside before the nodes and everything at the end (the exit does not walk it); a
    caller's main([...]) leaves the collector as it found it."""
    import gc

    def set_aside(*objects):  # frozen objects are in none of the collector's generations
        walked = {id(each) for each in gc.get_objects()}
        return not any(id(each) in walked for each in objects)

    gc.unfreeze()
    missing = [str(tmp_path / "missing"), str(tmp_path / "out"), "group"]
    assert cli_run.main(missing) == cli_run.EXIT_NO_INPUT
    assert gc.isenabled() and gc.get_freeze_count() == 0
    try:
        with cli_run._collector(whole_process=True):
            assert not gc.isenabled()
            made_by_the_checks = [[] for _ in range(10)]
            cli_run._collecting()
            assert gc.isenabled() and set_aside(*made_by_the_checks)
            made_by_the_nodes = [[] for _ in range(10)]
            assert not set_aside(*made_by_the_nodes)
        assert gc.isenabled() and set_aside(*made_by_the_nodes)
        gc.unfreeze()
        monkeypatch.setattr(sys, "argv", ["ahba-app", *missing])
        collecting_while_importing = []  # (the imports make most of the objects)
        monkeypatch.setattr(cli_run, "_defer_unused_imports",
                            lambda: collecting_while_importing.append(gc.isenabled()))
        assert cli_run.main() == cli_run.EXIT_NO_INPUT
        assert collecting_while_importing == [False]
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()


def test_help_lists_the_options():
    text = get_parser().format_help()
    for option in ("--participant-label", "--atlas", "--no-default-atlas", "--ahba-dir",
                   "--preset", "--work-dir", "--clean-workdir", "--nprocs", "--save-donors",
                   "--stability-threshold", "--norm-all", "--norm-structures", "--tol"):
        assert option in text


# --------------------------------------------------------------------------------------------
# checks before the workflow (prepare_run)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch):
    """Let ahba-app's main set Nipype's and matplotlib's folders, and restore them after."""
    for var in ("NIPYPE_CONFIG_DIR", "MPLCONFIGDIR", "AHBA_APP_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _prepare(tmp_path, inp, *extra, ahba=None):
    opts = parse_args([str(inp), str(tmp_path / "out"), "group", "-w", str(tmp_path / "work"),
                       *(["--ahba-dir", str(ahba)] if ahba else []), *extra])
    return cli_run.prepare_run(opts)


def test_default_atlas_when_the_input_holds_none(tmp_path, ahba_small, caplog):
    (tmp_path / "empty").mkdir()
    with caplog.at_level("INFO", logger="ahba_app"):
        plan = _prepare(tmp_path, tmp_path / "empty", "--donors", *DONORS, ahba=ahba_small)
    (atlas,) = plan.atlases
    assert atlas.bundled and atlas.n_regions == 83 and atlas.constrained
    assert "bundled Desikan-Killiany" in caplog.text
    assert plan.desc == "abagendefaults"
    assert set(atlas.checksums) == set(atlas.files())
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_caches_are_checked_on_another_thread_during_the_input_checks(tmp_path, ahba_small,
                                                                     monkeypatch):
    """The caches already built are opened (the PACall caches' CRC-32 checked, into the run's
    record, so that the nodes do not check them again; microarray caches are checked row by
    row as the nodes read them) on another thread while the inputs are checked, and done when
    the block ends; caches not built yet are left to the nodes, which build them."""
    import shutil
    import threading

    from ahba_app import fetch, io

    monkeypatch.setenv("AHBA_APP_THREADS", "2")
    files = fetch.find_microarray(ahba_small, DONORS)
    for each in files.values():  # (built if the session has not built them yet)
        for kind in ("microarray", "pacall"):
            io.load_matrix(each[kind], kind)
    opened = []
    real = io.load_matrix
    monkeypatch.setattr(io, "load_matrix", lambda source, kind, **k: opened.append(
        (Path(source).name, kind, threading.current_thread() is threading.main_thread()))
        or real(source, kind, **k))
    with io.remembering_checks() as record:  # (the run's record, as main() makes it)
        with cli_run._checking_caches(ahba_small, DONORS):
            pass
    assert sorted(opened) == sorted((Path(each[kind]).name, kind, False)
                                    for each in files.values()
                                    for kind in ("microarray", "pacall"))
    assert len(record) == len(files)  # (the PACall caches)
    fresh = tmp_path / "fresh"
    for each in files.values():  # the same data, no cache anywhere
        folder = fresh / Path(each["microarray"]).parent.relative_to(ahba_small)
        folder.mkdir(parents=True)
        for path in each.values():
            shutil.copy(path, folder)
    monkeypatch.setenv("AHBA_CACHE_DIR", str(tmp_path / "user-cache"))
    opened.clear()
    with cli_run._checking_caches(fresh, DONORS):
        pass
    assert opened == []


def test_data_identity_is_checked_beside_the_atlases(tmp_path, ahba_small, monkeypatch):
    """With two threads the data identity is made on a worker thread while the atlases are
    checked; when both the data and an atlas are wrong, the data's problem is the one said
    (as when the data were checked first)."""
    import threading

    monkeypatch.setenv("AHBA_APP_THREADS", "2")
    (tmp_path / "empty").mkdir()
    made_on = []
    real_identity = cli_run._data_identity

    def identity(*args):
        made_on.append(threading.current_thread() is threading.main_thread())
        return real_identity(*args)

    monkeypatch.setattr(cli_run, "_data_identity", identity)
    plan = _prepare(tmp_path, tmp_path / "empty", "--donors", *DONORS, ahba=ahba_small)
    assert made_on == [False]
    settings = pipeline.Settings(donors=list(DONORS))
    assert plan.data_identity == real_identity(str(ahba_small), settings)

    def broken(what):
        def fail(*args):
            raise cli_run.UsageError(f"{what} is broken")
        return fail

    monkeypatch.setattr(cli_run, "_check_atlases", broken("the atlas"))
    monkeypatch.setattr(cli_run, "_data_identity", broken("the data"))
    with pytest.raises(cli_run.UsageError, match="the data is broken"):
        _prepare(tmp_path, tmp_path / "empty", "--donors", *DONORS, ahba=ahba_small)
    monkeypatch.setattr(cli_run, "_data_identity", identity)
    with pytest.raises(cli_run.UsageError, match="the atlas is broken"):
        _prepare(tmp_path, tmp_path / "empty", "--donors", *DONORS, ahba=ahba_small)


def test_workflow_modules_are_imported_while_the_caches_are_checked(tmp_path, ahba_small,
                                                                    monkeypatch):
    """Nipype and the workflow modules are imported before the caches' checksums are
    awaited (the end of the checks block), not after."""
    events = []
    real_checking = cli_run._checking_caches

    @contextlib.contextmanager
    def checking(*args):
        with real_checking(*args) as pool:
            yield pool
        events.append("checks awaited")

    monkeypatch.setattr(cli_run, "_checking_caches", checking)
    monkeypatch.setattr(cli_run, "_import_workflow_modules",
                        lambda: events.append("workflow modules"))
    (tmp_path / "empty").mkdir()
    _prepare(tmp_path, tmp_path / "empty", "--donors", *DONORS, ahba=ahba_small)
    assert events == ["workflow modules", "checks awaited"]


def test_unused_imports_wait_until_used():
    """The console script keeps Nipype's import of scipy.io from loading it (and
    scipy.sparse); whoever uses it then gets the loaded module, by any form of import."""
    code = "\n".join([
        "import sys",
        "from ahba_app.cli import run",
        "run._defer_unused_imports()",
        "import nipype.pipeline.engine, nipype.interfaces.io",
        "from nipype.utils import filemanip",
        "assert 'scipy.sparse' not in sys.modules, 'scipy.io loaded with nipype'",
        "import scipy.io.matlab",
        "from scipy.io import loadmat",
        "import scipy.io",
        "assert type(sys.modules['scipy.io']) is type(sys), 'not loaded'",
        "assert sys.modules['scipy.io'].loadmat is loadmat is filemanip.sio.loadmat",
        "assert scipy.io.matlab.loadmat is loadmat",
    ])
    subprocess.run([sys.executable, "-c", code], check=True)


def test_desc_follows_the_preset(tmp_path, ahba_small):
    (tmp_path / "empty").mkdir()
    inp = tmp_path / "empty"
    assert _prepare(tmp_path, inp, "--preset", "dense", ahba=ahba_small).desc == "dense"
    assert _prepare(tmp_path, inp, "--preset", "dense", "--gene-norm", "zscore",
                    ahba=ahba_small).desc == "custom"
    assert _prepare(tmp_path, inp, "--gene-norm", "srs", ahba=ahba_small).desc == \
        "abagendefaults"
    assert _prepare(tmp_path, inp, "--desc", "mine", ahba=ahba_small).desc == "mine"
    with pytest.raises(cli_run.UsageError, match="letters and digits"):
        _prepare(tmp_path, inp, "--desc", "my-desc", ahba=ahba_small)


def test_atlas_without_hemisphere_structure_runs_unconstrained(tmp_path, ahba_small, caplog):
    inp = make_bids_input(tmp_path / "in", table=False, gifti=False)
    dk_table()[["index", "name"]].to_csv(inp / TABLE, sep="\t", index=False)
    plan = _prepare(tmp_path, inp, "--donors", *DONORS, ahba=ahba_small)
    (atlas,) = plan.atlases
    assert atlas.info == str(inp / TABLE) and not atlas.has_info and not atlas.constrained
    assert "without these constraints" in caplog.text
    from ahba_app.interfaces.reports import atlas_description
    assert atlas_description(atlas)["has_info"] is False


def _main(args, capsys):
    code = cli_run.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


def _assert_one_message(err, *words):
    lines = [line for line in err.splitlines() if "ahba-app: error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err


def test_error_no_atlas_and_no_default(tmp_path, ahba_small, capsys, clean_env):
    (tmp_path / "empty").mkdir()
    code, err = _main([tmp_path / "empty", tmp_path / "out", "group", "--no-default-atlas",
                       "--ahba-dir", ahba_small, "-w", tmp_path / "work"], capsys)
    assert code != 0
    _assert_one_message(err, "holds no atlas")
    assert not (tmp_path / "out").exists()


def test_error_table_does_not_match_image(tmp_path, ahba_small, capsys, clean_env):
    inp = make_bids_input(tmp_path / "in", table=False, gifti=False)
    dk_table().iloc[:60].to_csv(inp / TABLE, sep="\t", index=False)
    code, err = _main([inp, tmp_path / "out", "group", "--ahba-dir", ahba_small, "--donors",
                       *DONORS, "-w", tmp_path / "work"], capsys)
    assert code != 0
    _assert_one_message(err, "61", TABLE)
    assert not (tmp_path / "out").exists()
    # without hemisphere/structure the table is still checked against the image
    dk_table()[["index", "name"]].iloc[:60].to_csv(inp / TABLE, sep="\t", index=False)
    code, err = _main([inp, tmp_path / "out", "group", "--ahba-dir", ahba_small, "--donors",
                       *DONORS, "-w", tmp_path / "work"], capsys)
    assert code != 0
    _assert_one_message(err, "does not match", "[61, 62")
    assert not (tmp_path / "out").exists()


def test_error_unwritable_output(tmp_path, ahba_small, capsys, clean_env):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("")
    code, err = _main([tmp_path / "empty", tmp_path / "a_file" / "out", "group", "--ahba-dir",
                       ahba_small, "-w", tmp_path / "work"], capsys)
    assert code != 0
    _assert_one_message(err, "output folder", "not a folder")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        probe = readonly / "probe"
        try:
            probe.write_text("")
            writable = True  # root ignores permissions: nothing to test
            probe.unlink()
        except OSError:
            writable = False
        if not writable:
            code, err = _main([tmp_path / "empty", readonly / "out", "group", "--ahba-dir",
                               ahba_small, "-w", tmp_path / "work"], capsys)
            assert code != 0
            _assert_one_message(err, "not writable")
    finally:
        readonly.chmod(0o755)


def test_error_missing_ahba_data_without_network(tmp_path, capsys, clean_env):
    clean_env.setenv("AHBA_APP_MIRROR", "http://127.0.0.1:9")  # nothing listens there
    (tmp_path / "empty").mkdir()
    code, err = _main([tmp_path / "empty", tmp_path / "out", "group", "--ahba-dir",
                       tmp_path / "no-ahba", "-w", tmp_path / "work", "--donors", *DONORS],
                      capsys)
    assert code != 0
    _assert_one_message(err, "AHBA microarray files", "could not be reached")
    assert not (tmp_path / "out").exists()


def test_error_bad_preset_and_bad_values(tmp_path, ahba_small, capsys, clean_env):
    (tmp_path / "empty").mkdir()
    base = [tmp_path / "empty", tmp_path / "out", "group", "--ahba-dir", ahba_small, "-w",
            tmp_path / "work"]
    for extra, words in ((["--preset", "nope"], ["Unknown preset"]),
                         (["--ibf-threshold", "3"], ["ibf_threshold"]),
                         (["--donors", "9861"], ["at least two"]),
                         (["--donors", "1234"], ["1234"]),
                         (["--atlas", "Schaefer"], ["Schaefer"])):
        code, err = _main(base + extra, capsys)
        assert code != 0
        _assert_one_message(err, *words)
    assert not (tmp_path / "out").exists()


def test_verbose_errors_show_the_traceback(tmp_path, ahba_small, capsys, clean_env):
    (tmp_path / "empty").mkdir()
    code, err = _main([tmp_path / "empty", tmp_path / "out", "group", "--ahba-dir", ahba_small,
                       "-w", tmp_path / "work", "--ibf-threshold", "3", "-v"], capsys)
    assert code != 0 and "Traceback" in err


def test_failed_node_leaves_a_crash_file_and_no_outputs(tmp_path, ahba_small, capsys,
                                                        clean_env):
    def boom(*args, **kwargs):
        raise ValueError("boom: synthetic failure")
    clean_env.setattr(pipeline, "normalize_donor_expression", boom)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    code, err = _main([tmp_path / "empty", out, "group", "--ahba-dir", ahba_small, "-w",
                       tmp_path / "work", "--donors", *DONORS], capsys)
    assert code == 1
    _assert_one_message(err, "normalize", "boom: synthetic failure")
    crashes = list((out / "logs").glob("crash-*"))
    assert crashes and str(crashes[0]) in err
    assert sorted(p.name for p in out.iterdir()) == ["logs"]  # nothing claims success


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------
def _cli_runs(base: Path, ahba_small) -> dict:
    """Group run, a group rerun with another --gene-norm, then a participant run, all sharing
    one work folder (the last one cleans it)."""
    inp = make_bids_input(base / "atlases")
    work, out = base / "work", base / "out"
    common = ["--ahba-dir", str(ahba_small), "-w", str(work), "--participant-label", *DONORS]
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(base / "home"))
        for var in ("NIPYPE_CONFIG_DIR", "MPLCONFIGDIR", "AHBA_DATA", "ABAGEN_DATA",
                    "AHBA_APP_CONTAINER"):
            mp.delenv(var, raising=False)
        results["group"] = cli_run.main([str(inp), str(out), "group", *common, "--nprocs", "2",
                                         "--save-donors"])
        results["mtimes"] = {str(p): p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}
        results["rerun"] = cli_run.main([str(inp), str(out), "group", *common,
                                         "--gene-norm", "zscore"])
        results["rerun_mtimes"] = {str(p): p.stat().st_mtime_ns
                                   for p in work.rglob("result_*.pklz")}
        results["participant"] = cli_run.main([str(inp), str(out), "participant", *common,
                                               "--nprocs", "2", "--clean-workdir"])
        results["home"] = sorted(p.name for p in (base / "home").glob("*"))
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ahba_small, worker_id):
    """The end-to-end runs, made once per test session even with several pytest-xdist workers
    (the first worker runs them, the others wait for its results)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent
    base = root / "cli-runs"
    with FileLock(str(base) + ".lock"):
        stamp = base / "results.json"
        if not stamp.exists():
            base.mkdir(exist_ok=True)
            stamp.write_text(json.dumps(_cli_runs(base, ahba_small)))
        results = json.loads(stamp.read_text())
    results.update(base=base, input=base / "atlases", work=base / "work", out=base / "out")
    for key in ("mtimes", "rerun_mtimes"):
        results[key] = {Path(p): t for p, t in results[key].items()}
    return results


def _api(ahba_small, atlas, info, **kwargs):
    from ahba_app.api import get_expression_data

    return get_expression_data(atlas, info, data_dir=str(ahba_small), donors=DONORS,
                               return_counts=True, **kwargs)


def _read(path):
    return pd.read_csv(path, sep="\t", index_col=0, na_values="n/a")


def test_runs_succeed(runs):
    assert (runs["group"], runs["rerun"], runs["participant"]) == (0, 0, 0)


def test_group_outputs_are_named_as_bids_derivatives(runs):
    out = runs["out"]
    for stem in (STEM_VOL, STEM_SURF):
        for suffix in ("expression.tsv", "expression.json", "counts.tsv", "counts.json",
                       "probes.tsv", "probes.json", "report.html"):
            assert (out / f"{stem}_desc-abagendefaults_{suffix}").is_file(), suffix
            assert (out / f"{stem}_desc-custom_{suffix}").is_file(), suffix
        for donor in DONORS:
            assert (out / f"sub-{donor}" /
                    f"sub-{donor}_{stem}_desc-abagendefaults_expression.tsv").is_file()
    assert (out / "CITATION.md").read_text().startswith("# How to cite")
    ignore = (out / ".bidsignore").read_text().splitlines()
    assert "*_expression.tsv" in ignore and "logs/" in ignore
    assert not list(out.glob(".ahba-app-staging-*"))
    assert not list((out / "logs").glob("crash-*"))


def test_dataset_description(runs):
    desc = json.loads((runs["out"] / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    generated = desc["GeneratedBy"][0]
    assert generated["Name"] == "ahba-app" and generated["Version"] == __version__
    assert generated["CodeURL"] and "Container" not in generated


def test_group_tables_equal_the_python_api(runs, ahba_small):
    inp, out = runs["input"], runs["out"]
    cases = [(STEM_VOL, str(inp / VOLUME), str(inp / TABLE)),
             (STEM_SURF, (str(inp / GIFTI.format("L")), str(inp / GIFTI.format("R"))), None)]
    for stem, atlas, info in cases:
        for desc, options in (("abagendefaults", {}), ("custom", {"gene_norm": "zscore"})):
            expression, counts = _api(ahba_small, atlas, info, **options)
            table = _read(out / f"{stem}_desc-{desc}_expression.tsv")
            assert table.index.name == "index"
            assert list(table.columns) == list(expression.columns)
            assert list(table.index) == list(expression.index)
            np.testing.assert_allclose(table.to_numpy(), expression.to_numpy(), rtol=0,
                                       atol=1e-12)
            assert np.array_equal(np.isnan(table.to_numpy()), np.isnan(expression.to_numpy()))
            got = _read(out / f"{stem}_desc-{desc}_counts.tsv")
            np.testing.assert_array_equal(got.to_numpy(), counts.to_numpy())
            assert list(got.columns) == [str(c) for c in counts.columns]


def test_per_donor_tables_equal_the_python_api(runs, ahba_small):
    from ahba_app.api import get_expression_data

    inp, out = runs["input"], runs["out"]
    tables = get_expression_data(str(inp / VOLUME), str(inp / TABLE), data_dir=str(ahba_small),
                                 donors=DONORS, return_donors=True)
    assert list(tables) == ["9861", "10021"]
    for donor, expected in tables.items():
        path = out / f"sub-{donor}" / f"sub-{donor}_{STEM_VOL}_desc-abagendefaults_expression.tsv"
        np.testing.assert_allclose(_read(path).to_numpy(), expected.to_numpy(), rtol=0,
                                   atol=1e-12)


def test_probes_table(runs):
    table = pd.read_csv(runs["out"] / f"{STEM_VOL}_desc-abagendefaults_probes.tsv", sep="\t")
    assert {"gene_symbol", "probe_name", "criterion", "score", "diff_stability"} <= \
        set(table.columns)
    expression = _read(runs["out"] / f"{STEM_VOL}_desc-abagendefaults_expression.tsv")
    assert set(expression.columns) <= set(table["gene_symbol"])


def test_sidecar_lists_parameters_inputs_and_versions(runs):
    inp = runs["input"]
    sidecar = json.loads((runs["out"] / f"{STEM_VOL}_desc-custom_expression.json").read_text())
    params = sidecar["Parameters"]
    assert params["gene_norm"] == "zscore" and params["sample_norm"] == "scaled_robust_sigmoid"
    assert set(DEFAULTS) <= set(params)
    assert sidecar["Donors"] == DONORS
    files = {f["Path"]: f["SHA256"] for f in sidecar["Atlas"]["Files"]}
    assert files == {str(inp / VOLUME): bids.sha256(inp / VOLUME),
                     str(inp / TABLE): bids.sha256(inp / TABLE)}
    assert {"ahba-app", "numpy", "pandas", "nipype"} <= set(sidecar["SoftwareVersions"])
    assert sidecar["NumberOfRegions"] == 83


def _node_of(result: Path) -> str:
    """The node of a result file (``<node>/result_<node>.pklz`` or, for a MapNode's
    iteration, ``<node>/mapflow/_<node>N/result__<node>N.pklz``)."""
    folder = result.parent
    return folder.parent.parent.name if folder.parent.name == "mapflow" else folder.name


def test_rerun_with_another_gene_norm_reuses_upstream_nodes(runs):
    before, after = runs["mtimes"], runs["rerun_mtimes"]
    ran_names = {_node_of(p) for p, t in after.items() if before.get(p) != t}
    for name in UPSTREAM:
        assert name not in ran_names, f"{name} ran again"
    assert {"normalize", "aggregate", "report", "ds_group"} <= ran_names


def test_participant_outputs_equal_the_pipeline(runs, ahba_small):
    inp, out = runs["input"], runs["out"]
    ref = pipeline.run(str(inp / VOLUME), str(inp / TABLE),
                       settings=pipeline.Settings(donors=DONORS), data_dir=str(ahba_small),
                       aggregate=False)
    for donor in DONORS:
        path = out / f"sub-{donor}" / f"sub-{donor}_{STEM_VOL}_desc-abagendefaults_samples.tsv"
        table = pd.read_csv(path, sep="\t", na_values="n/a")
        genes = list(ref.expression[donor].columns)
        assert list(table.columns[-len(genes):]) == genes
        expected = ref.expression[donor].to_numpy()
        np.testing.assert_array_equal(table[genes].to_numpy(dtype=expected.dtype), expected)
        np.testing.assert_array_equal(table["label"], ref.labels[donor])
        for suffix in ("samples.json", "probes.tsv", "report.html", "genes.json"):
            assert (path.parent / path.name.replace("samples.tsv", suffix)).is_file()


def test_participant_level_writes_each_donors_genes_table(runs, ahba_small):
    """sub-<donor>/..._genes.tsv: every gene symbol of the probe table once, its kept genes the
    gene columns of the donor's sample table, the others with the stage that dropped them;
    the donor's report answers from it."""
    from ahba_app.genes import FATES

    out = runs["out"]
    probes = pd.read_csv(ahba_small / "microarray" / "normalized_microarray_donor9861" /
                         "Probes.csv", keep_default_na=False)
    symbols = set(probes["gene_symbol"].astype(str)) - {""}
    for donor in DONORS:
        stem = out / f"sub-{donor}" / f"sub-{donor}_{STEM_VOL}_desc-abagendefaults"
        genes = pd.read_csv(f"{stem}_genes.tsv", sep="\t", na_values="n/a",
                            keep_default_na=False)
        samples = pd.read_csv(f"{stem}_samples.tsv", sep="\t", na_values="n/a", nrows=1)
        assert genes["gene_symbol"].is_unique and symbols <= set(genes["gene_symbol"])
        assert set(genes["fate"]) <= set(FATES) and {"kept", "intensity_filter"} <= \
            set(genes["fate"])
        kept = genes.loc[genes["fate"] == "kept", "gene_symbol"].tolist()
        columns = samples.columns.tolist()
        assert columns[-len(kept):] == kept          # the gene columns, in order
        assert "stability_threshold" not in set(genes["fate"])
        report = Path(f"{stem}_report.html").read_text(encoding="utf-8")
        assert 'id="gene-query"' in report and f"{stem.name}_genes.tsv" in report


def test_clean_workdir_and_home_untouched(runs):
    assert not runs["work"].exists()
    assert runs["home"] == []


def test_donor_native_atlases_are_checked(tmp_path, ahba_small):
    import shutil

    from ahba_app.datasets import fetch_desikan_killiany

    inp = tmp_path / "in"
    native = fetch_desikan_killiany(native=True)["image"]
    for donor in DONORS:
        (inp / f"sub-{donor}" / "anat").mkdir(parents=True)
        shutil.copyfile(native[donor],
                        inp / f"sub-{donor}" / "anat" / f"sub-{donor}_atlas-DK_dseg.nii.gz")
    dk_table().to_csv(inp / "atlas-DK_dseg.tsv", sep="\t", index=False)
    plan = _prepare(tmp_path, inp, "--donors", *DONORS, ahba=ahba_small)
    (atlas,) = plan.atlases
    assert atlas.kind == "donor-native" and atlas.constrained
    assert atlas.n_regions == 82  # the donor-native DK volumes have no brainstem label
    assert atlas.key == "atlas-DK_space-native"
    with pytest.raises(bids.BIDSInputError, match="12876"):
        _prepare(tmp_path, inp, "--donors", "9861", "12876", ahba=ahba_small)


def test_an_atlas_changed_in_place_is_matched_again(tmp_path, ahba_small, monkeypatch):
    """Nipype hashes files by timestamp: an atlas table edited in place, with the same size
    and modification time, still makes the next run (same work folder) match again, because
    the atlas reaches the nodes with the SHA-256 of its files."""
    import os

    for var in ("NIPYPE_CONFIG_DIR", "MPLCONFIGDIR", "AHBA_DATA", "ABAGEN_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    inp = make_bids_input(tmp_path / "atlases", gifti=False)
    common = ["--ahba-dir", str(ahba_small), "-w", str(tmp_path / "work"),
              "--participant-label", *DONORS]
    counts = f"{STEM_VOL}_desc-abagendefaults_counts.tsv"
    assert cli_run.main([str(inp), str(tmp_path / "first"), "group", *common]) == 0
    before = _read(tmp_path / "first" / counts)
    table_path = inp / TABLE
    stat = table_path.stat()
    table = pd.read_csv(table_path, sep="\t")
    sided = table.loc[table["hemisphere"].isin(["L", "R"]), "index"]
    region = int(before.loc[sided].sum(axis=1).idxmax())  # a one-sided region with samples
    side = table.loc[table["index"] == region, "hemisphere"].item()
    table.loc[table["index"] == region, "hemisphere"] = {"L": "R", "R": "L"}[side]
    table.to_csv(table_path, sep="\t", index=False)
    os.utime(table_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert table_path.stat().st_size == stat.st_size  # the same size and time: only content
    assert cli_run.main([str(inp), str(tmp_path / "second"), "group", *common]) == 0
    after = _read(tmp_path / "second" / counts)
    assert after.loc[region].sum() < before.loc[region].sum()
    _, expected = _api(ahba_small, str(inp / VOLUME), str(table_path))
    np.testing.assert_array_equal(after.loc[expected.index].to_numpy(), expected.to_numpy())


def test_a_signal_after_publishing_says_the_outputs_are_complete(tmp_path, ahba_small, capsys,
                                                                 clean_env):
    """The window session 14's signal stress found: a SIGTERM right after the outputs were
    published (here: at the "Done" line) ends the run with 143, and its message says the
    outputs are complete, not that nothing was published."""
    import signal

    (tmp_path / "empty").mkdir()
    done_info = cli_run.LGR.info

    def interrupted_at_done(message, *args):
        if message.startswith("Done"):
            raise cli_run.Interrupted(signal.SIGTERM)
        done_info(message, *args)

    clean_env.setattr(cli_run.LGR, "info", interrupted_at_done)
    code, err = _main([tmp_path / "empty", tmp_path / "out", "group", "--donors", *DONORS,
                       "--ahba-dir", ahba_small, "-w", tmp_path / "work"], capsys)
    assert code == 128 + signal.SIGTERM, err
    assert "outputs had already been published and are complete" in err
    assert "nothing was published" not in err and "Traceback" not in err
    assert list((tmp_path / "out").glob("atlas-*_expression.tsv"))
