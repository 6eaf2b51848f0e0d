"""The eleven defects of the fault campaign (issue #18), one test (or a few) each: every test
here failed before its fix.

1 stale results from a reused work folder        7 duplicated probe_id accepted
2 empty results exit 0                            8 staging litter, SIGTERM/SIGINT, tracebacks
3 --nprocs without ceiling, orphaned workers      9 symlink loops, a folder as atlas image
4 two runs sharing a work folder                 10 a cache lock held by a stopped process
5 publishing not atomic                          11 misleading messages
6 OUTPUT_DIR equal to INPUT_DIR
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ahba_app import _locks, atomic, bids, io, pipeline
from ahba_app.cli import publish as publishing
from ahba_app.cli import run as cli_run
from ahba_app.datasets import fetch_desikan_killiany
from child_signals import default_signals
from polling import wait_for as _wait_for

DONORS = ["9861", "10021"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var in ("NIPYPE_CONFIG_DIR", "MPLCONFIGDIR", "AHBA_APP_MIRROR", "AHBA_APP_CONTAINER"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def _copy_data(ahba_small, dest: Path, donors=DONORS) -> Path:
    """The donors' folders of the synthetic data (caches left out), to change freely."""
    for donor in donors:
        src = ahba_small / "microarray" / f"normalized_microarray_donor{donor}"
        shutil.copytree(src, dest / "microarray" / src.name,
                        ignore=shutil.ignore_patterns(".ahba-cache", "selection-*"))
    return dest


def _main(args, capsys):
    code = cli_run.main([str(a) for a in args])
    return code, capsys.readouterr().err


def _one_error(err: str, *words) -> str:
    lines = [line for line in err.splitlines() if line.startswith("ahba-app: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _outputs(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("atlas-*")) if out.is_dir() else []


def _cli(tmp_path, data, out, *extra, work=None):
    (tmp_path / "in").mkdir(exist_ok=True)
    return [tmp_path / "in", out, "group", "--ahba-dir", data, "-w", work or tmp_path / "work",
            "--donors", *DONORS, *extra]


EXPRESSION = "atlas-desikankilliany_desc-abagendefaults_expression.tsv"


# --------------------------------------------------------------------------------------------
# 1. stale results
# --------------------------------------------------------------------------------------------
def test_1_data_replaced_in_place_are_processed_again(tmp_path, ahba_small, env, capsys):
    data = _copy_data(ahba_small, tmp_path / "ahba")
    assert _main(_cli(tmp_path, data, tmp_path / "first"), capsys)[0] == 0
    # new values for donor 9861: the rows of values in reverse order, same size, same ids
    csv = data / "microarray" / "normalized_microarray_donor9861" / "MicroarrayExpression.csv"
    lines = csv.read_text().splitlines()
    ids = [line.split(",", 1)[0] for line in lines]
    values = [line.split(",", 1)[1] for line in lines][::-1]
    csv.write_text("".join(f"{i},{v}\n" for i, v in zip(ids, values)))
    assert _main(_cli(tmp_path, data, tmp_path / "second"), capsys)[0] == 0
    assert _main(_cli(tmp_path, data, tmp_path / "fresh", work=tmp_path / "work2"),
                 capsys)[0] == 0
    first, second, fresh = ((tmp_path / name / EXPRESSION).read_bytes()
                            for name in ("first", "second", "fresh"))
    assert second != first
    assert second == fresh


# --------------------------------------------------------------------------------------------
# 2. empty or degenerate results are errors, in the API and the CLI
# --------------------------------------------------------------------------------------------
def _scaled_atlas(path: Path) -> Path:
    """The DK volume with 10 mm voxels instead of 1 mm: it still covers MNI brain coordinates,
    and no sample lies in a region."""
    img = nib.load(fetch_desikan_killiany()["image"])
    affine = img.affine.copy()
    affine[:3, :3] *= 10
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine, img.header), path)
    return path


def test_2_api_empty_results_are_errors(tmp_path, ahba_small):
    from ahba_app import get_expression_data

    dk = fetch_desikan_killiany()
    with pytest.raises(ValueError, match="stability_threshold"):
        get_expression_data(dk["image"], dk["info"], data_dir=ahba_small, donors=DONORS,
                            stability_threshold=1.0)
    scaled = _scaled_atlas(tmp_path / "scaled.nii.gz")
    with pytest.raises(ValueError, match="MNI space"):
        get_expression_data(str(scaled), dk["info"], data_dir=ahba_small, donors=DONORS)


def test_2_api_matching_error_comes_before_a_probe_error(tmp_path, ahba_small, monkeypatch):
    # the samples are matched on a worker while the probes are filtered: when both fail, the
    # user sees the matching's error, as when the samples were matched first; alone, the
    # probes' error is the one raised
    from ahba_app import get_expression_data, pipeline

    def broken_filter(*args, **kwargs):
        raise RuntimeError("the probe filter failed")

    monkeypatch.setattr(pipeline, "filter_probe_table", broken_filter)
    dk = fetch_desikan_killiany()
    scaled = _scaled_atlas(tmp_path / "scaled.nii.gz")
    with pytest.raises(ValueError, match="MNI space"):
        get_expression_data(str(scaled), dk["info"], data_dir=ahba_small, donors=DONORS)
    with pytest.raises(RuntimeError, match="the probe filter failed"):
        get_expression_data(dk["image"], dk["info"], data_dir=ahba_small, donors=DONORS)


def test_2_cli_empty_results_are_errors(tmp_path, ahba_small, env, capsys):
    out = tmp_path / "out"
    code, err = _main(_cli(tmp_path, ahba_small, out, "--stability-threshold", "1"), capsys)
    assert code == 1
    _one_error(err, "stability")
    assert _outputs(out) == []

    data = _copy_data(ahba_small, tmp_path / "ahba")
    annot = data / "microarray" / "normalized_microarray_donor9861" / "SampleAnnot.csv"
    annot.write_text(annot.read_text().splitlines()[0] + "\n")
    code, err = _main(_cli(tmp_path, data, out, work=tmp_path / "w2"), capsys)
    assert code == 1
    _one_error(err, str(annot), "no sample")
    assert _outputs(out) == []


def test_2_cli_atlas_matching_no_sample(tmp_path, ahba_small, env, capsys):
    inp = tmp_path / "atlases"
    inp.mkdir()
    _scaled_atlas(inp / "tpl-MNI152NLin6Asym_atlas-Big_dseg.nii.gz")
    out = tmp_path / "out"
    code, err = _main([inp, out, "group", "--ahba-dir", ahba_small, "-w", tmp_path / "work",
                       "--donors", *DONORS], capsys)
    assert code == 1
    _one_error(err, "MNI space")
    assert _outputs(out) == []


# --------------------------------------------------------------------------------------------
# 3. --nprocs has a ceiling; workers die with the run
# --------------------------------------------------------------------------------------------
def test_3_nprocs_has_a_ceiling(tmp_path, ahba_small, caplog):
    (tmp_path / "in").mkdir()
    opts = cli_run.parse_args([str(tmp_path / "in"), str(tmp_path / "out"), "group",
                               "--ahba-dir", str(ahba_small), "--donors", *DONORS,
                               "--nprocs", "100000", "-w", str(tmp_path / "work")])
    plan = cli_run.prepare_run(opts)
    assert plan.nprocs == len(os.sched_getaffinity(0)) < 100000
    assert "--nprocs 100000 is more than" in caplog.text


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_cli(tmp_path, args, **kwargs) -> subprocess.Popen:
    """The command line in a subprocess; its stderr goes to a file (a pipe would stay open as
    long as any worker process lives), read back by :func:`_stderr`."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("NIPYPE_CONFIG_DIR", "MPLCONFIGDIR")}
    with open(tmp_path / "stderr.txt", "w") as err:
        kwargs.setdefault("preexec_fn", default_signals)
        return subprocess.Popen([sys.executable, "-m", "ahba_app.cli.run", *map(str, args)],
                                cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL,
                                stderr=err, text=True, **kwargs)


def _ignoring_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stderr(tmp_path, proc, timeout=120) -> str:
    proc.wait(timeout=timeout)
    return (tmp_path / "stderr.txt").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_3_workers_die_with_a_killed_run(tmp_path, ahba_small):
    proc = _start_cli(tmp_path, _cli(tmp_path, ahba_small, tmp_path / "out", "--nprocs", "2"))
    try:
        workers = _wait_for(lambda: _children(proc.pid) or proc.poll() is not None)
        assert isinstance(workers, list), _stderr(tmp_path, proc)
    finally:
        proc.kill()
        proc.wait()
    alive = _wait_for(lambda: not any(_alive(w) for w in workers), timeout=10)
    for worker in workers:  # the test leaves no process behind, whatever happened
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
    assert alive, f"workers {workers} outlived their run"


# --------------------------------------------------------------------------------------------
# 4. one run per work folder
# --------------------------------------------------------------------------------------------
def test_4_a_second_run_on_a_work_folder_in_use_stops_at_once(tmp_path, ahba_small, env,
                                                             capsys):
    work = tmp_path / "work"
    work.mkdir()
    holder = _locks.try_acquire(work / ".ahba-app.lock", "the work folder")
    try:
        code, err = _main(_cli(tmp_path, ahba_small, tmp_path / "out"), capsys)
    finally:
        holder.release()
    assert code == 1
    line = _one_error(err, str(work), "in use by another ahba-app run",
                      f"process {os.getpid()}", "-w")
    assert "FileNotFoundError" not in line
    assert _outputs(tmp_path / "out") == []


# --------------------------------------------------------------------------------------------
# 5. publishing is atomic
# --------------------------------------------------------------------------------------------
def test_5_a_full_output_disk_publishes_nothing(tmp_path, ahba_small, env, capsys):
    real = bids.write_json

    def full_disk(obj, path):
        if Path(path).name == "dataset_description.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(obj, path)

    env.setattr(bids, "write_json", full_disk)
    out = tmp_path / "out"
    code, err = _main(_cli(tmp_path, ahba_small, out), capsys)
    assert code == 1
    assert _outputs(out) == []
    assert not list(out.glob(publishing.STAGING_PREFIX + "*"))
    _one_error(err, "No space left on device", "Nothing was published")


def test_5_a_publish_cut_short_is_finished_by_the_next_run(tmp_path, ahba_small, env, capsys):
    out = tmp_path / "out"
    assert _main(_cli(tmp_path, ahba_small, tmp_path / "reference"), capsys)[0] == 0
    moves = []

    def dies_midway(src, dst):  # the process "dies" after moving three files
        if len(moves) == 3:
            raise SystemExit("killed")
        moves.append(dst)
        return os.replace(src, dst)

    proxy = types.ModuleType("os")  # the publishing module's os only
    proxy.__dict__.update(os.__dict__)
    proxy.replace = dies_midway
    env.setattr(publishing, "os", proxy)
    with pytest.raises(SystemExit):
        cli_run.main([str(a) for a in _cli(tmp_path, ahba_small, out)])
    env.setattr(publishing, "os", os)
    assert (out / "dataset_description.json").is_file()  # moved first
    assert not (out / publishing.MARKER).exists()          # not complete
    # the next run (another job on the same output folder) finishes that publication first
    code, err = _main(_cli(tmp_path, ahba_small, out, "--gene-norm", "zscore",
                           "--desc", "other"), capsys)
    assert code == 0, err
    marker = json.loads((out / publishing.MARKER).read_text())
    assert "atlas-desikankilliany_desc-other_expression.tsv" in marker["Files"]
    assert (out / EXPRESSION).read_bytes() == (tmp_path / "reference" / EXPRESSION).read_bytes()
    assert not list(out.glob(publishing.STAGING_PREFIX + "*"))


# --------------------------------------------------------------------------------------------
# 6. OUTPUT_DIR equal to INPUT_DIR
# --------------------------------------------------------------------------------------------
def test_6_output_folder_equal_to_input_folder(tmp_path, ahba_small, env, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    description = inp / "dataset_description.json"
    description.write_text('{"Name": "my atlases", "BIDSVersion": "1.10.0"}\n')
    code, err = _main([inp, inp, "group", "--ahba-dir", ahba_small, "-w", tmp_path / "work",
                       "--donors", *DONORS], capsys)
    assert code == 1
    _one_error(err, "is the input folder")
    assert description.read_text() == '{"Name": "my atlases", "BIDSVersion": "1.10.0"}\n'
    assert _outputs(inp) == []


# --------------------------------------------------------------------------------------------
# 7. duplicated probe_id
# --------------------------------------------------------------------------------------------
def test_7_duplicated_probe_id_is_an_error(tmp_path, ahba_small, env, capsys):
    data = _copy_data(ahba_small, tmp_path / "ahba")
    probes = data / "microarray" / "normalized_microarray_donor9861" / "Probes.csv"
    lines = probes.read_text().splitlines()
    lines[2] = lines[1].split(",", 1)[0] + "," + lines[2].split(",", 1)[1]
    probes.write_text("\n".join(lines) + "\n")
    with pytest.raises(io.AHBAFileError, match="more than once"):
        io.read_probes(probes)
    code, err = _main(_cli(tmp_path, data, tmp_path / "out", "--no-reannotated"), capsys)
    assert code == 1
    _one_error(err, str(probes), "more than once")


# --------------------------------------------------------------------------------------------
# 8. interruptions: no litter, SIGTERM handled, no traceback
# --------------------------------------------------------------------------------------------
def test_8_stale_staging_folders_are_removed(tmp_path, ahba_small, env, capsys):
    out = tmp_path / "out"
    stale = out / f"{publishing.STAGING_PREFIX}0123456789ab"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "half-written.tsv").write_text("x\n")
    assert _main(_cli(tmp_path, ahba_small, out), capsys)[0] == 0
    assert not stale.exists()
    assert (out / publishing.MARKER).is_file()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_8_signals_end_the_run_cleanly(tmp_path, ahba_small, signum, code):
    out = tmp_path / "out"
    proc = _start_cli(tmp_path, _cli(tmp_path, ahba_small, out))
    # once the workflow runs (its staging folder exists), interrupt it
    started = _wait_for(lambda: list(out.glob(publishing.STAGING_PREFIX + "*")))
    proc.send_signal(signum)
    err = _stderr(tmp_path, proc, timeout=60)
    assert started, err
    assert proc.returncode == code, err
    line = _one_error(err, "interrupted", signal.Signals(signum).name)
    assert "KeyboardInterrupt" not in err and "failed" not in line
    assert _outputs(out) == [] and not list(out.glob(publishing.STAGING_PREFIX + "*"))


def test_8_a_run_started_ignoring_sigint_keeps_ignoring_it(tmp_path, ahba_small):
    """A background job of a script is started with SIGINT ignored (Ctrl-C is for the
    script's foreground job): the run goes on to the end and publishes its outputs."""
    out = tmp_path / "out"
    proc = _start_cli(tmp_path, _cli(tmp_path, ahba_small, out), preexec_fn=_ignoring_sigint)
    started = _wait_for(lambda: list(out.glob(publishing.STAGING_PREFIX + "*")))
    proc.send_signal(signal.SIGINT)
    err = _stderr(tmp_path, proc, timeout=120)
    assert started, err
    assert proc.returncode == 0, err
    assert "interrupted" not in err.lower()
    assert (out / publishing.MARKER).is_file() and _outputs(out)


def test_8_the_command_line_module_imports_light():
    """A Ctrl-C during start-up must not meet a long import (pandas, Nipype) before the
    handlers are installed: the entry point imports neither."""
    code = textwrap.dedent("""
        import sys
        import ahba_app.cli.run
        heavy = [m for m in ("pandas", "numpy", "nipype", "scipy") if m in sys.modules]
        print(",".join(heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""


# --------------------------------------------------------------------------------------------
# 9. symlink loops, a folder named as an image
# --------------------------------------------------------------------------------------------
def test_9_a_folder_link_loop_finds_each_atlas_once(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copyfile(fetch_desikan_killiany()["image"],
                    inp / "tpl-MNI152NLin6Asym_atlas-DK_dseg.nii.gz")
    (inp / "loop").symlink_to(".")
    (atlas,) = bids.discover_atlases(inp)
    assert atlas.image == str(inp / "tpl-MNI152NLin6Asym_atlas-DK_dseg.nii.gz")


def test_9_a_folder_named_as_an_atlas_image_is_an_error(tmp_path, ahba_small, env, capsys):
    inp = tmp_path / "in"
    (inp / "tpl-MNI152NLin6Asym_atlas-DK_dseg.nii.gz").mkdir(parents=True)
    code, err = _main([inp, tmp_path / "out", "group", "--ahba-dir", ahba_small, "-w",
                       tmp_path / "work", "--donors", *DONORS], capsys)
    assert code == 1
    _one_error(err, "tpl-MNI152NLin6Asym_atlas-DK_dseg.nii.gz", "is a folder")


# --------------------------------------------------------------------------------------------
# 10. a cache lock held by a stopped process
# --------------------------------------------------------------------------------------------
def test_10_a_stopped_cache_builder_is_reported_not_waited_for(tmp_path, ahba_small):
    data = _copy_data(ahba_small, tmp_path / "ahba", donors=["9861"])
    csv = data / "microarray" / "normalized_microarray_donor9861" / "PACall.csv"
    lock = str(io.cache_locations(csv)[0]) + ".lock"
    Path(lock).parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal, sys
        from ahba_app import _locks
        lock = _locks.try_acquire({lock!r}, "the cache")
        print("locked", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _wait_for(lambda: _locks.process_state({"pid": holder.pid, "host":
                                                       __import__("socket").gethostname()})
                         == "stopped", timeout=10)
        reader = subprocess.run([sys.executable, "-c",
                                 f"from ahba_app import io; io.read_pacall({str(csv)!r})"],
                                capture_output=True, text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert reader.returncode != 0
    assert "LockBusyError" in reader.stderr and "stopped" in reader.stderr
    assert f"kill -CONT {holder.pid}" in reader.stderr


# --------------------------------------------------------------------------------------------
# 11. messages that name the right thing
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_11_non_finite_tolerance_is_an_option_error(tmp_path, ahba_small, env, capsys, value):
    with pytest.raises(ValueError, match="tolerance"):
        pipeline.Settings(tolerance=float(value))
    code, err = _main(_cli(tmp_path, ahba_small, tmp_path / "out", f"--tolerance={value}"),
                      capsys)
    line = _one_error(err, "tolerance")
    assert code == 1 and "atlas" not in line.split("tolerance", 1)[0]


def test_11_huge_label_is_called_too_large(tmp_path):
    from ahba_app.atlas import check_atlas

    data = np.zeros((10, 10, 10), dtype=np.uint64)
    data[4:6, 4:6, 4:6] = 2**63 + 5
    path = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2, 2, 2, 1.0]), dtype=np.uint64), path)
    with pytest.raises(ValueError, match="too large") as info:
        check_atlas(str(path))
    assert "negative" not in str(info.value)


def test_11_nan_affine_is_named_when_loading(tmp_path):
    from ahba_app.atlas import check_atlas

    img = nib.load(fetch_desikan_killiany()["image"])
    affine = img.affine.copy()
    affine[0, 3] = np.nan
    path = tmp_path / "nan.nii.gz"
    bad = nib.Nifti1Image(np.asarray(img.dataobj), affine)
    bad.set_sform(affine)
    bad.set_qform(None)
    nib.save(bad, path)
    with pytest.raises(ValueError, match="affine") as info:
        check_atlas(str(path))
    assert str(path) in str(info.value)


def test_11_text_in_coordinates_names_the_file_and_column(tmp_path, ahba_small):
    data = _copy_data(ahba_small, tmp_path / "ahba", donors=["9861"])
    annot = data / "microarray" / "normalized_microarray_donor9861" / "SampleAnnot.csv"
    table = pd.read_csv(annot)
    table["mni_x"] = table["mni_x"].astype(object)
    table.loc[3, "mni_x"] = "left"
    table.to_csv(annot, index=False)
    with pytest.raises(io.AHBAFileError) as info:
        io.read_annotation(annot)
    assert str(annot) in str(info.value) and "'mni_x'" in str(info.value)
    assert "'left'" in str(info.value) and "row 4" in str(info.value)


def test_11_full_cache_disk_falls_back_to_parsing_and_names_it(tmp_path, ahba_small,
                                                               monkeypatch):
    data = _copy_data(ahba_small, tmp_path / "ahba", donors=["9861"])
    csv = data / "microarray" / "normalized_microarray_donor9861" / "MicroarrayExpression.csv"

    def full(location, access=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "create_temporary", full)
    with pytest.warns(UserWarning, match="No space left on device") as caught:
        frame = io.read_microarray(csv)
    message = str(caught[0].message)
    assert str(csv) in message and str(csv.parent / io.CACHE_DIRNAME) in message
    monkeypatch.undo()
    pd.testing.assert_frame_equal(frame, io.read_microarray(csv, parquet=False))


def test_11_samples_without_coordinates_are_reported(tmp_path, ahba_small):
    from ahba_app.samples import prepare_samples

    data = _copy_data(ahba_small, tmp_path / "ahba", donors=["9861"])
    folder = data / "microarray" / "normalized_microarray_donor9861"
    table = pd.read_csv(folder / "SampleAnnot.csv")
    table.loc[[0, 5], "mni_y"] = np.nan
    table.to_csv(folder / "SampleAnnot.csv", index=False)
    with pytest.warns(UserWarning, match="2 of .* samples .* have no MNI coordinates"):
        prepare_samples(str(folder / "SampleAnnot.csv"), str(folder / "Ontology.csv"),
                        corrected_mni=False)


def test_8_a_signal_inside_a_finaliser_prints_no_traceback(monkeypatch):
    """A signal landing in a finaliser or fork callback cannot be raised there: Python hands it
    to sys.unraisablehook, which printed a traceback; the run reports it after the workflow."""
    from ahba_app.cli import run

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    signals = run._Signals().install()
    try:
        class Interrupting:
            def __del__(self):
                raise run.Interrupted(2)

        class Failing:
            def __del__(self):
                raise ValueError("another error is still shown")

        Interrupting()
        Failing()
    finally:
        signals.restore()
    assert [type(unraisable.exc_value) for unraisable in seen] == [ValueError]
    assert sys.unraisablehook == seen.append


@pytest.mark.parametrize("published", [False, True], ids=["before publishing", "after"])
def test_an_interrupted_run_says_whether_its_outputs_were_published(monkeypatch, capsys,
                                                                    published):
    """A signal after publishing (while the run ends: its work folder removed, its handlers
    given back) stops a run whose outputs are complete: the last message must not say that
    nothing was published (session 14's stress of the signal cases found that window)."""
    import signal

    from ahba_app.cli import run

    def interrupted_run(argv, signals):
        signals.published = published
        raise run.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(run, "_main", interrupted_run)
    assert run.main(["in", "out", "group"]) == 128 + signal.SIGTERM
    message = capsys.readouterr().err
    assert message.startswith("ahba-app: interrupted (SIGTERM): ")
    assert ("nothing was published" in message) is not published
    assert ("outputs had already been published and are complete" in message) is published
