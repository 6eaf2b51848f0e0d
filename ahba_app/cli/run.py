"""Entry point of the ``ahba-app`` BIDS App: check everything, build the workflow, run it,
publish the derivatives.

Order of work:

1. parse the options (:mod:`ahba_app.cli.parser`) and resolve them against ``--preset``;
2. check every input before anything is built: the options (:class:`ahba_app.pipeline.Settings`),
   that the output and work folders can be written, the AHBA files (downloading missing donors
   here, never inside a node), and every atlas (loaded, its region table checked against the
   image, its files hashed);
3. lock the work folder (one run at a time), finish or remove what interrupted runs left in the
   output folder, build :func:`ahba_app.workflows.base.init_ahba_wf` from explicit arguments and
   run it; the derivative sinks write into this run's staging folder inside the output folder;
4. on success publish all outputs at once (:mod:`ahba_app.cli.publish`: dataset-level files
   staged too, then moved by renames, ``dataset_description.json`` first and the completion
   marker last); on failure remove the staging folder, keep the crash files in
   ``OUTPUT_DIR/logs/`` and exit with status 1.

Any problem with the inputs ends with one message on stderr (a traceback only with ``-v``) and
a non-zero exit status, before any output is written. SIGINT and SIGTERM end the run with
status 130 / 143 and one message; Nipype's workers end with it.
"""

from __future__ import annotations

import contextvars
import gc
import importlib
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import types
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import publish as publishing
from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NO_INPUT, EXIT_OK, UsageError
from .parser import DEFAULTS, parse_args, resolve_parameters

LGR = logging.getLogger("ahba_app")




@dataclass
class RunPlan:
    """Everything a run needs, checked."""

    analysis_level: str
    input_dir: Path
    output_dir: Path
    work_dir: Path
    data_dir: str
    settings: object
    atlases: list
    desc: str
    save_donors: bool
    nprocs: int
    clean_workdir: bool
    preset: object = None
    verbose: int = 0
    notes: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    mem_mb: int | None = None
    data_identity: str = ""


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def _check_writable(path: Path, what: str) -> None:
    """Error unless ``path`` is (or can be created as) a folder we can write to; leaves nothing
    behind."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"The {what} {path} cannot be created: {existing} is not a folder.")
    try:
        handle, probe = tempfile.mkstemp(prefix=".ahba-app-write-test-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise UsageError(f"The {what} {path} is not writable ({err.strerror or err}): choose "
                         "another folder or fix its permissions.") from None


def _check_separate(input_dir: Path, output_dir: Path, work_dir: Path) -> None:
    """The outputs and the work folder must not overwrite the input dataset."""
    if os.path.realpath(output_dir) == os.path.realpath(input_dir):
        raise UsageError(f"The output folder {output_dir} is the input folder: the outputs "
                         "(dataset_description.json first) would overwrite the input dataset. "
                         "Choose another output folder, e.g. "
                         f"{Path(input_dir) / 'derivatives' / 'ahba-app'}.")
    for name, folder in (("input", input_dir), ("output", output_dir)):
        if os.path.realpath(work_dir) == os.path.realpath(folder):
            raise UsageError(f"The work folder {work_dir} is the {name} folder: give the work "
                             "folder its own place with -w.")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; the machine's count elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _ceiling(nprocs: int) -> int:
    """--nprocs, at most the CPUs available: more processes than CPUs only add memory."""
    cpus = available_cpus()
    if nprocs > cpus:
        LGR.warning("--nprocs %d is more than the %d CPU(s) this run may use: using %d.",
                    nprocs, cpus, cpus)
        return cpus
    return nprocs


def _choose_desc(opts, params: dict, preset, settings_cls) -> str:
    if opts.desc:
        if not re.fullmatch(r"[A-Za-z0-9]+", opts.desc):
            raise UsageError(f"--desc {opts.desc!r}: a BIDS label holds letters and digits "
                             "only.")
        return opts.desc

    def canonical(values):
        values = dict(values, donors="all")
        return settings_cls(**values).as_dict()

    reference = dict(DEFAULTS)
    label = "abagendefaults"
    if preset is not None:
        reference.update(preset.parameters)
        label = preset.label
    return label if canonical(params) == canonical(reference) else "custom"


def _locate_ahba(data_dir, settings, nprocs, verbose) -> None:
    """Make sure the AHBA files are on disk (downloading missing donors now, not in a node)."""
    from .. import fetch, pipeline
    from ..datasets import RNASEQ_DONORS

    need_rnaseq = settings.probe_selection == "rnaseq"
    try:
        fetch.find_microarray(data_dir, settings.donors)
        if need_rnaseq:
            fetch.find_rnaseq(data_dir, list(RNASEQ_DONORS))
        return
    except fetch.AHBADataNotFoundError:
        where = fetch.get_data_dir(data_dir)
        LGR.info("AHBA files are missing from %s: downloading them before processing.", where)
    pipeline.locate_data(data_dir, settings.donors, need_rnaseq=need_rnaseq, n_proc=nprocs,
                         verbose=verbose)


@contextmanager
def _checking_caches(data_dir, donors) -> Iterator:
    """Within the block, the microarray and PACall caches of the donors are opened on another
    thread, as the nodes would open them first (:func:`ahba_app.io.load_matrix`: headers and
    row tables checked, and the PACall caches' values, into the run's record of checked
    caches, :func:`ahba_app.io.remembering_checks`, which the thread shares; a microarray
    cache's rows are checked as the nodes read them): this overlaps the input checks instead
    of delaying the first nodes. Leaves
    the block when they are done; a failure is left for the node that opens the cache to
    report. Gives the block the executor (:func:`ahba_app._blocks.background`), for more
    checks to overlap (submitted in the caller's context, they share the record too)."""
    from .. import io
    from .._blocks import background
    from ..fetch import find_microarray

    sources = [(each[kind], kind) for each in find_microarray(data_dir, donors).values()
               for kind in ("microarray", "pacall")]
    # only caches already built: a first run builds them in its nodes, as before
    built = all(any(place.is_file() for place in io.cache_locations(Path(source)))
                for source, _ in sources)

    def check(record):
        for source, kind in sources:
            try:
                io.load_matrix(source, kind, checked=record)
            except Exception:  # (the node opening it says what is wrong)
                return

    with io.remembering_checks() as record, background() as pool:
        if built:
            pool.submit(check, record)
        yield pool


def _data_identity(data_dir, settings) -> str:
    """:func:`ahba_app.pipeline.data_identity` of the files the run reads."""
    from .. import fetch, pipeline
    from ..datasets import RNASEQ_DONORS

    rnaseq = (fetch.find_rnaseq(data_dir, list(RNASEQ_DONORS))
              if settings.probe_selection == "rnaseq" else None)
    return pipeline.data_identity(fetch.find_microarray(data_dir, settings.donors), rnaseq)


#: At most this many atlases of a run are kept loaded between its check and its nodes.
_KEPT_ATLASES = 16


def _check_atlases(atlases, settings, data_dir) -> None:
    """Load every atlas as the workflow will, check its region table, hash its files."""
    from .. import bids, pipeline
    from ..fetch import find_microarray

    donors = settings.donors
    # every atlas checked here is loaded again by its match and aggregate nodes: the run keeps
    # them all loaded (~30 MB a 1-mm volume), up to a bound on the memory that takes
    bids.remember_atlases(min(len(atlases), _KEPT_ATLASES))
    samples = pipeline.donor_samples(find_microarray(data_dir, donors),
                                     corrected_mni=settings.corrected_mni,
                                     lr_mirror=settings.lr_mirror)
    for atlas in atlases:
        source = ", ".join(Path(p).name for p in atlas.files()[:2] if p) or atlas.label
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                # hashed first: node hashes, and the atlases kept loaded, go by these checksums
                atlas.checksums = {path: bids.sha256(path) for path in atlas.files()}
                trees, group_atlas = bids.load_atlas_input(atlas, donors, data_dir=data_dir)
                pipeline.check_atlas_settings(group_atlas, settings)
                pipeline.warn_unreachable_regions(trees, group_atlas, samples,
                                                  tolerance=settings.tolerance)
            except (ValueError, TypeError, OSError) as err:
                hint = ""
                if atlas.kind in ("surface", "cifti") and not atlas.geometry:
                    hint = (" Surfaces are looked for in the input folder as "
                            "tpl-<space>[_den-<density>]_hemi-L/R_<midthickness|pial|white>"
                            ".surf.gii.")
                raise UsageError(f"Cannot use atlas-{atlas.name} ({source}): {err}{hint}") \
                    from err
            except Exception as err:  # nibabel and friends raise their own classes
                raise UsageError(f"Cannot read atlas-{atlas.name} ({source}): "
                                 f"{type(err).__name__}: {err}. Check that the file is a whole "
                                 "NIfTI, GIFTI or CIFTI image (copy or export it again).") \
                    from err
        for warning in caught:
            LGR.warning("atlas-%s: %s", atlas.name, warning.message)
        tree = next(iter(trees.values()))
        native = atlas.kind == "donor-native"
        for donor, each in (trees.items() if native else [(None, tree)]):
            where = f"{source} (sub-{donor})" if native else source
            if atlas.info is not None:
                bids.check_region_table(atlas.info, each.labels, where)
            if not len(each.labels):
                raise UsageError(f"atlas-{atlas.name} ({where}) has no labelled region.")
        atlas.n_regions = int(len(tree.labels))
        atlas.constrained = tree.atlas_info is not None
        if not atlas.constrained:
            LGR.warning("atlas-%s has no hemisphere/structure information: samples are matched "
                        "without these constraints (the report says so).", atlas.name)


def prepare_run(opts) -> RunPlan:
    """Check every input and option of a run; raise :class:`UsageError` (or the stage modules'
    ValueError / OSError) with a message naming the problem."""
    from .. import bids, pipeline, templateflow
    from ..fetch import get_data_dir
    from .presets import PresetError

    input_dir, output_dir = opts.input_dir, opts.output_dir
    if not input_dir.is_dir():
        raise UsageError(f"The input folder {input_dir} does not exist.",
                         exit_code=EXIT_NO_INPUT)
    work_dir = opts.work_dir or Path.cwd() / "work"
    _check_separate(input_dir, output_dir, work_dir)
    nprocs = _ceiling(opts.nprocs)
    _check_writable(output_dir, "output folder")
    _check_writable(work_dir, "work folder")
    try:
        params, preset = resolve_parameters(opts)
    except PresetError as err:
        raise UsageError(str(err)) from None
    settings = pipeline.Settings(**params)
    if opts.save_donors and settings.region_agg != "donors":
        raise UsageError("--save-donors needs --region-agg donors: with 'samples' the donors' "
                         "samples are pooled, so there is no per-donor table.")
    desc = _choose_desc(opts, params, preset, pipeline.Settings)
    # resolved now ($AHBA_DATA, $ABAGEN_DATA, per-user folder), so that nodes get it explicitly
    data_dir = str(get_data_dir(opts.ahba_dir))

    try:
        atlases = templateflow.choose_atlases(
            bids.discover_atlases(input_dir, settings.donors), opts.atlas,
            desc=opts.atlas_desc, space=opts.space, res=opts.res, den=opts.den)
    except templateflow.TemplateFlowError as err:
        raise UsageError(str(err), exit_code=err.exit_code) from None
    notes = {}
    if not atlases:
        if not opts.default_atlas:
            raise UsageError(f"The input folder {input_dir} holds no atlas (no *_dseg.nii[.gz], "
                             "*_hemi-L/R_*_dseg.label.gii pair or *_dseg.dlabel.nii with an "
                             "atlas- entity); without --no-default-atlas the bundled "
                             "Desikan-Killiany atlas would be used.")
        LGR.info("The input folder %s holds no atlas: using the bundled Desikan-Killiany atlas.",
                 input_dir)
        atlases = [bids.default_atlas()]
        notes[atlases[0].key] = ["The input folder held no atlas, so the Desikan-Killiany "
                                  "atlas bundled with ahba-app was used."]
    _locate_ahba(data_dir, settings, nprocs, opts.verbose)
    with _checking_caches(data_dir, settings.donors) as pool:
        # the data identity reads (and checks) every file of the run, on another thread while
        # the atlases are checked here (much of both is hashing and decompressing, which let
        # the other thread run: 0.2-0.3 s CPU each)
        identity = pool.submit(contextvars.copy_context().run, _data_identity, data_dir,
                               settings)
        try:
            _check_atlases(atlases, settings, data_dir)
        except Exception:
            identity.result()  # a problem with the data is said first, as when checked first
            raise
        identity = identity.result()
        _import_workflow_modules()
    return RunPlan(analysis_level=opts.analysis_level, input_dir=input_dir,
                   output_dir=output_dir, work_dir=work_dir, data_dir=data_dir,
                   settings=settings, atlases=atlases, desc=desc, save_donors=opts.save_donors,
                   nprocs=nprocs, clean_workdir=opts.clean_workdir, preset=preset,
                   verbose=opts.verbose, notes=notes, mem_mb=opts.mem_mb, data_identity=identity)


def _import_workflow_modules() -> None:
    """Import what building and running the workflow needs next (Nipype, networkx, the
    workflow modules: the largest imports left after the checks) before the caches' checksums
    are awaited: their thread spends most of its time outside the interpreter lock, which the
    imports hold (at 17 digits the checksums, 1.6 GB, can outlast the other checks)."""
    import networkx  # noqa: F401  (Nipype imports it when the first workflow is made)

    from ..workflows import base  # noqa: F401


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def _metadata(plan: RunPlan) -> tuple[dict, dict]:
    """Sidecar content shared by the outputs, and the report's parameters."""
    from ..bids import software_versions

    versions = software_versions()
    settings = plan.settings.as_dict()
    preset = plan.preset
    metadata = {
        "GeneratedBy": [{"Name": "ahba-app", "Version": versions["ahba-app"]}],
        "AnalysisLevel": plan.analysis_level,
        "Parameters": settings,
        "Preset": None if preset is None else {"Name": preset.name,
                                               "Description": preset.description,
                                               "Citations": list(preset.citations)},
        "Donors": list(plan.settings.donors),
        "AHBADataFolder": plan.data_dir,
        "SoftwareVersions": versions,
    }
    # the options come from plan.settings (ahba_app.summary.report_parameters)
    parameters = dict(versions=versions)
    if preset is not None:
        parameters.update(preset=preset.name, preset_description=preset.description,
                          preset_citations=list(preset.citations))
    return metadata, parameters


def build_workflow(plan: RunPlan, staging: Path, crash_dir: Path, argv=None):
    """The Nipype workflow of a checked run (explicit arguments only)."""
    from ..workflows.base import init_ahba_wf

    metadata, parameters = _metadata(plan)
    provenance = {"Command": "ahba-app " + " ".join(map(str, argv or sys.argv[1:])),
                  "Input folder": str(plan.input_dir),
                  "AHBA data folder": plan.data_dir,
                  "Analysis level": plan.analysis_level}
    return init_ahba_wf(
        analysis_level=plan.analysis_level, atlases=plan.atlases, settings=plan.settings,
        out_dir=str(staging), crash_dir=str(crash_dir), base_dir=str(plan.work_dir),
        desc=plan.desc, metadata=metadata, parameters=parameters, data_dir=plan.data_dir,
        save_donors=plan.save_donors, warnings=plan.notes, provenance=provenance,
        data_identity=plan.data_identity)


def _citation_text(staging: Path) -> str | None:
    texts = sorted((staging / "citations").glob("*.md"))
    if not texts:
        return None
    if len(texts) == 1:
        return texts[0].read_text(encoding="utf-8")
    parts = ["# How to cite these results", "",
             "This folder holds the outputs of several atlases; the text for each follows.", ""]
    for path in texts:
        body = re.sub(r"^(#+) ", r"#\1 ", path.read_text(encoding="utf-8"), flags=re.M)
        parts += [f"## {path.stem}", "", body.strip(), ""]
    return "\n".join(parts)


def publish(staging: "publishing.Staging", output_dir: Path, input_dir: Path) -> list[Path]:
    """Complete the staging folder with the dataset-level files, commit it, and move it into
    place: all outputs or none (see :mod:`ahba_app.cli.publish`). Call under the output
    folder's lock."""
    from .. import bids

    folder = staging.path
    citation = _citation_text(folder)
    if citation:
        bids.write_text(citation, folder / "CITATION.md")
    shutil.rmtree(folder / "citations", ignore_errors=True)
    ignore = output_dir / ".bidsignore"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    lines += [p for p in bids.BIDSIGNORE if p not in lines]
    bids.write_text("\n".join(lines) + "\n", folder / ".bidsignore")
    bids.write_json(bids.dataset_description(input_dir), folder / "dataset_description.json")
    files = staging.files()
    staging.commit(files, publishing.marker_content(files, folder.name[len(
        publishing.STAGING_PREFIX):]))
    return publishing.move_committed(folder, output_dir)


def _failure_message(err: BaseException, crash_dir: Path, since: float,
                     folders: tuple = ()) -> str:
    crashes = sorted((p for p in crash_dir.glob("crash-*") if p.stat().st_mtime >= since - 1),
                     key=lambda p: p.stat().st_mtime)
    text = str(err)
    if crashes:
        text = crashes[0].read_text(errors="replace")
    reason = _last_exception_line(text) or f"{type(err).__name__}: {err}"
    node = re.search(r"Node: ([\w.]+)", text)
    where = f"step {node.group(1).split('.')[-1]!r}" if node else "the workflow"
    message = f"{where} failed: {reason}"
    if re.search(r"Errno (28|122)\b|No space left|Disk quota", reason) and folders:
        message += (f". The disk is full: make room in {' or '.join(map(str, folders))}, then "
                    "run the same command again (the finished steps are kept)")
    if crashes:
        message += f" (details: {crashes[0]})"
    return message


def _last_exception_line(text: str) -> str | None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Warning)\b:?", line):
            return line
    return None


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached ahba-app (``signum`` says which)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (unless the process was
    started with them ignored: then they stay ignored), and are remembered:
    Nipype turns an exception inside a node into a node failure, so the run asks
    :attr:`received` whether a "failure" was in fact an interruption. Never inside a fork's
    callbacks (:mod:`ahba_app.cli.forks`), nor in a process the run forked.
    :attr:`published` tells the message whether the outputs were already in place."""

    def __init__(self):
        self.received = None
        self.published = False

    def install(self) -> "_Signals":
        import signal
        import threading

        from . import forks  # noqa: F401 (whole before a handler imports it)

        self.previous = {}
        self.pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                # a signal the run was started ignoring stays ignored (a background job of a
                # script ignores SIGINT, so that Ctrl-C reaches only the script's foreground
                # job; Python keeps such a disposition too)
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self.previous[signum] = signal.signal(signum, self._handle)
            if self.previous:
                self.previous_unraisable = sys.unraisablehook
                sys.unraisablehook = self._unraisable
        return self

    def restore(self) -> None:
        import signal

        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.previous:
            sys.unraisablehook = self.previous_unraisable

    def _unraisable(self, unraisable) -> None:
        # A signal that lands in a finaliser cannot be raised there and Python would print a
        # traceback; it is in self.received and reported after the run.
        if not isinstance(unraisable.exc_value, Interrupted):
            self.previous_unraisable(unraisable)

    def _handle(self, signum, frame):
        from . import forks

        if os.getpid() != self.pid:
            _signal_in_forked_child(signum)
            return
        self.received = signum
        if forks.blocked(signum):
            # a fork is under way: raised in one of its callbacks, the exception would be lost
            # and leave that callback half done. The signal waits until the fork is over.
            forks.hold(signum)
            return
        raise Interrupted(signum)

    def check(self) -> None:
        if self.received is not None:
            raise Interrupted(self.received)


def _signal_in_forked_child(signum: int) -> None:
    """A signal in a process the run forked (a MultiProc worker), before that process sets its
    own handlers (:func:`ahba_app.cli.multiproc._initialize_worker`), treated as they do: the
    run's process handles SIGINT (and ends its workers), SIGTERM ends the worker. Raising
    :class:`Interrupted` here would unwind the run's code in the worker."""
    import signal

    if signum == signal.SIGTERM:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def _run_workflow(workflow, plan: RunPlan, signals: _Signals, engine=None) -> None:
    """Run with ``engine`` (:class:`ahba_app.cli.engines.Engine`: ``--nipype-plugin``); by
    default Linear, or MultiProc with ``--nprocs`` above 1."""
    from .engines import Engine, run_workflow

    run_workflow(workflow, engine or Engine(nprocs=plan.nprocs, mem_mb=plan.mem_mb))


def run_plan(plan: RunPlan, argv=None, signals: _Signals | None = None, engine=None) -> int:
    """Build and run the workflow (with ``engine``: :func:`_run_workflow`), then publish (or
    clean up)."""
    signals = signals or _Signals()
    crash_dir = plan.output_dir / "logs"
    _quiet_nipype(plan.verbose)
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    work_lock = publishing.lock_work_dir(plan.work_dir)
    try:
        plan.output_dir.mkdir(parents=True, exist_ok=True)
        crash_dir.mkdir(exist_ok=True)
        with publishing.publish_lock(plan.output_dir):
            publishing.clean_stale(plan.output_dir)
            staging = publishing.Staging(plan.output_dir)
        try:
            return _run_and_publish(plan, staging, crash_dir, argv, signals, engine)
        finally:
            staging.discard()
    finally:
        work_lock.release()


def _run_and_publish(plan, staging, crash_dir, argv, signals, engine=None) -> int:
    workflow = build_workflow(plan, staging.path, crash_dir, argv)
    started = time.time()
    LGR.info("Running the %s level for %d atlas(es) and donor(s) %s (work folder %s, %d "
             "process(es)).", plan.analysis_level, len(plan.atlases),
             ", ".join(plan.settings.donors), plan.work_dir, plan.nprocs)
    try:
        _run_workflow(workflow, plan, signals, engine)
    except Exception as err:
        signals.check()  # a node "failed" because the run was interrupted
        if plan.verbose:
            LGR.exception("The workflow failed.")
        message = _failure_message(err, crash_dir, started, (plan.work_dir, plan.output_dir))
        print(f"ahba-app: error: {message}", file=sys.stderr)
        return EXIT_FAILED
    # a signal whose exception was swallowed on the way (a node's clean-up, a finaliser)
    signals.check()
    try:
        with publishing.publish_lock(plan.output_dir):
            publish(staging, plan.output_dir, plan.input_dir)
        # (a signal from here on stops a run whose outputs are whole: main says so)
        signals.published = True
    except OSError as err:
        signals.check()
        if plan.verbose:
            LGR.exception("Publishing failed.")
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        if (staging.path / publishing.COMMIT).is_file():
            outcome = ("The outputs were complete but could not all be moved into place; the "
                       "next run using this output folder finishes that")
        else:
            outcome = "Nothing was published"
        print(f"ahba-app: error: cannot write the outputs into {plan.output_dir}: "
              f"{err.strerror or err}{where}. {outcome}; make room (or fix the folder) and run "
              "the same command again: the work folder keeps the finished steps.",
              file=sys.stderr)
        return EXIT_FAILED
    LGR.info("Done: outputs in %s.", plan.output_dir)
    if plan.clean_workdir:
        _clean(plan.work_dir)
    return EXIT_OK


def _clean(work_dir: Path) -> None:
    """Remove what ahba-app put in the work folder, and the folder itself when left empty."""
    for name in ("ahba_wf", ".nipype"):
        shutil.rmtree(work_dir / name, ignore_errors=True)
    (work_dir / ".ahba-app.lock").unlink(missing_ok=True)
    try:
        work_dir.rmdir()
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
def _quiet_nipype(verbose: int) -> None:
    """Nipype's loggers: silent by default (ahba-app reports failures itself), INFO with -v.

    Nipype sets their levels when it is imported, so this runs after the import."""
    import nipype  # noqa: F401

    level = {0: logging.CRITICAL, 1: logging.INFO}.get(verbose, logging.DEBUG)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils", "nipype.filemanip"):
        logging.getLogger(name).setLevel(level)


def _setup_environment(work_dir: Path) -> None:
    """Keep Nipype out of $HOME and off the network (before importing Nipype)."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    os.environ.setdefault("NIPYPE_CONFIG_DIR", str(work_dir / ".nipype"))


def _setup_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [ahba-app] %(levelname)s: %(message)s",
                                           "%H:%M:%S"))
    LGR.handlers[:] = [handler]
    LGR.propagate = False
    LGR.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    if not verbose:
        warnings.simplefilter("ignore", FutureWarning)


def main(argv=None) -> int:
    """``ahba-app INPUT_DIR OUTPUT_DIR {participant,group} [options]``; returns the exit code.

    Exit status: 0 success; 1 a problem with the inputs or a failed step (one message says
    which); 2 bad command-line options; 128 + N when stopped by signal N (130 Ctrl-C, 143
    SIGTERM, what job schedulers send at their time limit).
    """
    signals = _Signals().install()  # first: a signal during the imports below is handled
    whole_process = argv is None  # (the console script: the process is the run's)
    try:
        with _collector(whole_process):
            # (the imports below are most of the objects the collector would walk)
            if whole_process:
                _defer_unused_imports()
            from ..bids import remembering_atlases
            from ..floattext import sharing_rows_helper
            from ..io import remembering_checks

            with remembering_atlases(), remembering_checks(), sharing_rows_helper():
                # (the memos: each atlas is loaded once, each cache checked once, Linear
                # plugin; one process helps format the large TSVs of every atlas)
                return _main(argv, signals)
    except Interrupted as stop:
        import signal

        name = signal.Signals(stop.signum).name
        print(f"ahba-app: interrupted ({name}): {_interrupted_outcome(signals)}",
              file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print(f"ahba-app: interrupted: {_interrupted_outcome(signals)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signals.restore()


def _interrupted_outcome(signals: _Signals) -> str:
    """What an interrupted run leaves, for its last message: a signal that came after the
    outputs were published (while the run was ending) took nothing from them."""
    if signals.published:
        return ("the outputs had already been published and are complete; only the end of "
                "the run (e.g. removing the work folder with --clean-workdir) was cut short.")
    return ("nothing was published. Run the same command again to resume: the work folder "
            "keeps the finished steps.")


#: Modules that Nipype imports when it is loaded and a run never uses: ``scipy.io`` (MATLAB
#: files, for its SPM interfaces) brings scipy.sparse, numpy.f2py and more, 0.08-0.14 s of the
#: 0.6 s a run spends importing before its first node.
UNUSED_IMPORTS = ("scipy.io",)


class _Deferred(types.ModuleType):
    """A module in ``sys.modules`` that is not loaded yet: the first attribute asked of it
    loads the module itself (which then takes its place in ``sys.modules``), and every
    attribute is the loaded module's. ``import`` statements give this object without loading
    anything (its ``__spec__`` is None). Not :class:`importlib.util.LazyLoader`: the ``import``
    statement reads ``__spec__`` of a module found in ``sys.modules``, which loads a lazy one
    (Python 3.11: Nipype's ``import scipy.io as sio`` loaded it)."""

    def __getattr__(self, attr):  # (only for what the object itself does not have)
        loaded = self.__dict__.get("_loaded")
        if loaded is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            loaded = importlib.import_module(self.__name__)
            self._loaded = loaded
        return getattr(loaded, attr)


def _defer_unused_imports(names=UNUSED_IMPORTS) -> None:
    """Put a :class:`_Deferred` in ``sys.modules`` for each module of ``names`` not imported
    yet (its parent package is imported), so that importing Nipype does not load them."""
    for name in names:
        parent, _, child = name.rpartition(".")
        if name in sys.modules:
            continue
        try:
            package = importlib.import_module(parent) if parent else None
            if importlib.util.find_spec(name) is None:
                continue
        except ImportError:  # (not installed: the importer will say so)
            continue
        deferred = _Deferred(name)
        sys.modules[name] = deferred
        if package is not None:
            setattr(package, child, deferred)


@contextmanager
def _collector(whole_process: bool) -> Iterator[None]:
    """Python's cyclic garbage collector when the run is the whole process (the console
    script: no ``argv`` given). The imports and input checks make ~0.5 million long-lived
    objects and hardly any garbage, and a full collection walks them all (0.1-0.15 s each, two
    or three a run, then once more at the interpreter's exit, which took 0.3-0.5 s): the
    collector is off from before the first heavy import (pandas, Nipype) until the inputs are
    checked, then what exists is set aside
    (:func:`gc.freeze`) and the nodes run with it on; at the end everything is set aside, so
    the exit does not walk it. A caller's own process (tests, ``main([...])``) is left
    alone."""
    if not whole_process:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _collecting() -> None:
    """Before the workflow runs (:func:`_collector`): what the imports and checks made is set
    aside and the collector is on again, for the nodes' garbage. No effect when it was on."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _main(argv, signals: _Signals) -> int:
    opts = parse_args(argv)
    _setup_logging(opts.verbose)
    _setup_environment(opts.work_dir or Path.cwd() / "work")
    try:
        plan = prepare_run(opts)
        engine = _engine(opts, plan)
        multiverse = _prepare_multiverse(opts, plan)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # any problem found while checking inputs: one clear message
        signals.check()
        if opts.verbose:
            LGR.exception("Checking the inputs failed.")
        message = str(err) if isinstance(err, (UsageError,)) else _plain(err)
        print(f"ahba-app: error: {message}", file=sys.stderr)
        return getattr(err, "exit_code", EXIT_FAILED)
    _collecting()
    try:
        if multiverse is not None:
            from ..multiverse.command import run_cli
            run_cli(plan, multiverse, engine=engine)
            return EXIT_OK
        return run_plan(plan, argv, signals, engine)
    except KeyboardInterrupt:
        raise
    except UsageError as err:  # e.g. the work folder is used by another run
        print(f"ahba-app: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # e.g. the output folder vanished or filled up
        signals.check()
        if opts.verbose:
            LGR.exception("The run failed.")
        print(f"ahba-app: error: {_plain(err)}", file=sys.stderr)
        return EXIT_FAILED


def _engine(opts, plan: RunPlan):
    """The checked ``--nipype-plugin`` / ``--plugin-args`` (:mod:`ahba_app.cli.engines`)."""
    from .engines import Engine, EngineError

    try:
        return Engine(getattr(opts, "nipype_plugin", None), getattr(opts, "plugin_args", None),
                      nprocs=plan.nprocs, mem_mb=plan.mem_mb)
    except EngineError as err:
        raise UsageError(str(err)) from None


def _prepare_multiverse(opts, plan: RunPlan):
    """The checked ``--multiverse`` run (:mod:`ahba_app.multiverse.command`), or None."""
    if getattr(opts, "multiverse", None) is None:
        for option in ("multiverse_map", "multiverse_save_tables"):
            if getattr(opts, option, None) is not None:
                raise UsageError(f"--{option.replace('_', '-')} needs --multiverse GRID.")
        return None
    from ..multiverse.command import prepare_cli

    return prepare_cli(plan, opts.multiverse, opts.multiverse_map, opts.multiverse_format,
                       save_tables=opts.multiverse_save_tables)


def _plain(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, (ValueError, OSError, TypeError)):
        return text
    return f"{type(err).__name__}: {text}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
