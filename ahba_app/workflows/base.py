"""The top-level workflow of the BIDS App: the AHBA data workflow feeding one workflow per atlas."""

from __future__ import annotations

import os

from nipype.pipeline import engine as pe

from .atlas import atlas_workflow_name, init_atlas_wf
from .data import init_ahba_data_wf

__all__ = ["init_ahba_wf", "workflow_config"]


def workflow_config(*, crash_dir, hash_method="timestamp", stop_on_first_crash=True) -> dict:
    """The Nipype settings of a run, applied per workflow (``workflow.config``)."""
    return {
        "execution": {
            "crashdump_dir": str(crash_dir),
            "crashfile_format": "txt",
            "hash_method": hash_method,
            "remove_unnecessary_outputs": False,
            "stop_on_first_crash": stop_on_first_crash,
            "create_report": False,
            "write_provenance": False,
            "parameterize_dirs": False,
            "check_version": False,
            "poll_sleep_duration": 0.1,
        },
        "monitoring": {"enabled": False},
    }


def init_ahba_wf(*, analysis_level, atlases, out_dir, crash_dir, settings, base_dir=None,
                 desc="custom", metadata=None, parameters=None, data_dir=None,
                 save_donors=False, warnings=None, provenance=None, hash_method="timestamp",
                 data_identity="", name="ahba_wf"):
    """Build the whole ahba-app workflow for a set of atlases.

    Workflow graph::

        ahba_data_wf (fetch, reannotate, annotate, filter_probes, select_probes)
            -> atlas_<name>_wf (match, normalize, aggregate | report, ds_*)   one per atlas

    Template-space atlases share one ``ahba_data_wf``; a donor-native atlas gets its own
    (``ahba_data_<atlas>_wf``: samples placed on each donor's raw T1w, hemispheres checked
    there).

    Parameters
    ----------
    analysis_level : {'participant', 'group'}
        Sample-level tables per donor, or region x gene tables across donors.
    atlases : list of :class:`ahba_app.bids.AtlasInput`
        The atlases, already checked.
    out_dir : str
        Staging folder the derivatives are written into.
    crash_dir : str
        Where Nipype writes crash files.
    base_dir : str
        Nipype's working folder (its cache).
    desc : str
        ``desc-`` label of the outputs.
    metadata : dict
        Sidecar content shared by every output.
    settings : :class:`ahba_app.options.Settings`
        The processing options (donors included), checked.
    parameters : dict
        What the report says besides the options: ``preset``, ``preset_description``,
        ``preset_citations``, ``versions`` (:class:`ahba_app.report.ReportParameters` fields).
    data_dir : str or None
        The AHBA data folder.
    save_donors : bool
        Group level: also write one region x gene table per donor.
    warnings : dict of str to list of str
        Notes for the report of each atlas (keyed by ``AtlasInput.key``).
    provenance : dict
        Key/value pairs shown in the reports.
    hash_method : {'timestamp', 'content'}
        How Nipype decides whether an input file changed. Every file a node takes is an
        intermediate written by the node before it (a re-run rewrites it); the atlas, the only
        user file, reaches the nodes with the SHA-256 of its files (``AtlasInput.checksums``), so
        its content is part of every hash either way. 'content' would re-read (MD5) some
        900 MB of intermediates per run on the full data, for nothing.
    data_identity : str
        :func:`ahba_app.pipeline.data_identity` of the AHBA files, an input of the first node:
        data replaced in the same folder are processed again.
        With ``base_dir`` and several atlases, those that keep the same samples of a donor
        normalize them once: the table is kept in ``<base_dir>/<name>/shared_normalized``
        (:class:`ahba_app.interfaces._files.SharedTables`) and read by the others.
    name : str
        Name of the workflow.
    """
    workflow = pe.Workflow(name=name, base_dir=None if base_dir is None else str(base_dir))
    workflow.config = workflow_config(crash_dir=crash_dir, hash_method=hash_method)
    data_dir = None if data_dir is None else os.fspath(data_dir)
    # the atlases that keep the same samples of a donor share its normalized table (one
    # atlas has no one to share it with: its normalize node writes no table it need not)
    shared_dir = None if base_dir is None or len(atlases) < 2 else os.path.join(
        os.fspath(base_dir), name, "shared_normalized")

    shared_data_wf = None
    connections = []
    for atlas in atlases:
        if atlas.kind == "donor-native":
            # samples on each donor's raw T1w, hemispheres checked there (as the Python API):
            # the samples, and so the probes, are this atlas's own
            ahba_data_wf = init_ahba_data_wf(
                settings=settings, data_dir=data_dir, data_identity=data_identity,
                native_atlas=atlas, raw_mri=raw_mri_identity(settings.donors, data_dir),
                name=f"ahba_data_{atlas_workflow_name(atlas.key)}")
        else:
            if shared_data_wf is None:
                shared_data_wf = init_ahba_data_wf(settings=settings, data_dir=data_dir,
                                                   data_identity=data_identity)
            ahba_data_wf = shared_data_wf
        atlas_wf = init_atlas_wf(
            atlas=atlas, analysis_level=analysis_level, out_dir=out_dir, desc=desc,
            metadata=dict(metadata or {}), parameters=dict(parameters or {}), settings=settings,
            data_dir=data_dir, save_donors=save_donors,
            warnings=(warnings or {}).get(atlas.key, ()), provenance=provenance,
            shared_dir=shared_dir, name=atlas_workflow_name(atlas.key))
        connections += [
            (ahba_data_wf, atlas_wf, [
                ("outputnode.donors", "inputnode.donors"),
                ("outputnode.annotations", "inputnode.annotations"),
                ("outputnode.sample_info", "inputnode.sample_info"),
                ("outputnode.expressions", "inputnode.expressions"),
                ("outputnode.selection", "inputnode.selection"),
                ("outputnode.n_probes", "inputnode.n_probes"),
                ("outputnode.n_annotated", "inputnode.n_annotated"),
                ("outputnode.n_filtered", "inputnode.n_filtered"),
                ("outputnode.n_genes", "inputnode.n_genes"),
                ("outputnode.files", "inputnode.files"),
                ("outputnode.raw_probes", "inputnode.raw_probes"),
                ("outputnode.annotated_probes", "inputnode.annotated_probes"),
                ("outputnode.filtered_probes", "inputnode.filtered_probes"),
                ("outputnode.probe_share", "inputnode.probe_share")]),
        ]
    workflow.connect(connections)
    return workflow


def raw_mri_identity(donors, data_dir) -> dict:
    """Donor -> SHA-256 of its raw T1w in the data folder ('' when it has none)."""
    import hashlib

    from ..fetch import AHBADataNotFoundError, find_raw_mri

    out = {}
    for donor in donors:
        try:
            path = find_raw_mri(data_dir, donor)[str(donor)]["t1w"]
        except AHBADataNotFoundError:
            out[str(donor)] = ""
            continue
        with open(path, "rb") as handle:
            out[str(donor)] = hashlib.file_digest(handle, "sha256").hexdigest()
    return out
