"""Every interface run as a Nipype node on the small synthetic AHBA data (two donors, DK)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from nipype.interfaces.base import isdefined
from nipype.pipeline import engine as pe

from ahba_app import pipeline
from ahba_app.bids import default_atlas
from ahba_app.interfaces import (AggregateExpression, FilterProbes, GroupDerivatives, LoadProbes,
                                 LocateData, MatchSamples, NormalizeExpression,
                                 ParticipantDerivatives, PrepareSamples, RunReport,
                                 SelectProbes)
from ahba_app.interfaces._files import (read_frame, read_json, read_labels, read_samples,
                                        write_frame, write_json, write_labels)

DONORS = ["9861", "10021"]  # the order fetch gives them in (and pipeline.run uses)


def _run(interface, name, base_dir, **inputs):
    node = pe.Node(interface, name=name)
    for key, value in inputs.items():
        setattr(node.inputs, key, value)
    node.base_dir = str(base_dir)
    node.config = {"execution": {"hash_method": "content", "crashdump_dir": str(base_dir)}}
    return node.run().outputs


@pytest.fixture(scope="module")
def chain(tmp_path_factory, ahba_small):
    """Run every node once, in pipeline order; keep their outputs and the reference run."""
    base = tmp_path_factory.mktemp("nodes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(base / "home"))
        mp.setenv("MPLCONFIGDIR", str(base / "mpl"))
        atlas = default_atlas()
        atlas.n_regions, atlas.constrained = 83, True
        out = {"atlas": atlas, "base": base}
        out["fetch"] = _run(LocateData(data_dir=str(ahba_small), donors=DONORS[::-1]), "fetch",
                            base)
        out["reannotate"] = _run(LoadProbes(files=out["fetch"].files), "reannotate", base)
        out["annotate"] = _run(PrepareSamples(files=out["fetch"].files,
                                              probes=out["reannotate"].probes),
                               "annotate", base, donors=DONORS)
        annotations = out["annotate"].annotation
        out["filter"] = _run(FilterProbes(files=out["fetch"].files, donors=DONORS,
                                          annotations=annotations,
                                          probes=out["reannotate"].probes), "filter", base)
        out["select"] = _run(SelectProbes(files=out["fetch"].files,
                                          rnaseq_files=out["fetch"].rnaseq_files,
                                          donors=DONORS, annotations=annotations,
                                          probes=out["filter"].probes), "select", base)
        out["match"] = _run(MatchSamples(atlas=atlas.as_dict()), "match", base,
                            donors=DONORS, annotations=annotations)
        out["normalize"] = _run(NormalizeExpression(), "normalize", base,
                                expression=out["select"].expressions, annotation=annotations,
                                labels=out["match"].labels)
        norm = out["normalize"]
        out["aggregate"] = _run(AggregateExpression(
            atlas=atlas.as_dict(), donors=DONORS, expressions=norm.expression,
            annotations=norm.annotation, labels=norm.labels, return_donors=True),
            "aggregate", base)
        out["report"] = _run(RunReport(
            atlas=atlas.as_dict(), parameters={"donors": DONORS}, donors=DONORS,
            sample_info=out["annotate"].info, annotations=annotations,
            labels=out["match"].labels, selection=out["select"].selection,
            n_probes=out["reannotate"].n_probes, n_annotated=out["reannotate"].n_annotated,
            n_filtered=out["filter"].n_filtered, n_genes=out["select"].n_genes,
            expression=out["aggregate"].expression, counts=out["aggregate"].counts,
            aggregate=out["aggregate"].summary, provenance={"Command": "test"}),
            "report", base)
        dk = {"image": atlas.image, "info": atlas.info}
        out["reference"] = pipeline.run(dk["image"], dk["info"],
                                        settings=pipeline.Settings(donors=DONORS),
                                        data_dir=ahba_small)
        out["reference_samples"] = pipeline.run(dk["image"], dk["info"],
                                                settings=pipeline.Settings(donors=DONORS),
                                                data_dir=ahba_small, aggregate=False)
        yield out


@pytest.mark.parametrize("index", [pd.Index([1, 1, 2, 5], name="sample_id"),
                                   pd.RangeIndex(1, 5, name="label"),
                                   pd.Index(["a", "b", "c", "d"], name="well"),
                                   pd.MultiIndex.from_arrays([[1, 1, 2, 2], [3, 4, 3, 4]],
                                                             names=["label", "sample_id"])])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matrices_round_trip_as_fixed_size_rows(tmp_path, index, dtype):
    genes = pd.Index([f"G{i}" for i in range(70)], name="gene_symbol", dtype=object)
    frame = pd.DataFrame(np.random.default_rng(0).random((4, 70)).astype(dtype), index=index,
                         columns=genes)
    frame.iloc[1, 2] = np.nan
    path = write_frame(frame, tmp_path / "m")
    assert path == str(tmp_path / "m.arrow")  # the quick layout was used
    assert [p.name for p in tmp_path.iterdir()] == ["m.arrow"]  # nothing left aside
    back = read_frame(path)
    pd.testing.assert_frame_equal(back, frame, check_exact=True, check_index_type=True)
    assert not back.to_numpy().flags["WRITEABLE"]  # mapped from the file
    # rewriting the file (a node run again) leaves a table read before intact
    write_frame(frame * 2, tmp_path / "m")
    pd.testing.assert_frame_equal(back, frame, check_exact=True)
    pd.testing.assert_frame_equal(read_frame(path), frame * 2, check_exact=True)
    # row-major values come back row-major, column-major ones (as probe selection gives
    # them) column-major: nothing is transposed on the way
    for order, flag in (("C", "C_CONTIGUOUS"), ("F", "F_CONTIGUOUS")):
        laid = pd.DataFrame(np.asarray(frame.to_numpy(), order=order), index=index,
                            columns=genes, copy=False)
        assert laid.to_numpy().flags[flag]
        back = read_frame(write_frame(laid, tmp_path / order))
        pd.testing.assert_frame_equal(back, frame, check_exact=True, check_index_type=True)
        assert back.to_numpy().flags[flag]
    labelled = pd.DataFrame(frame.to_numpy(), index=index, columns=pd.RangeIndex(70))
    pd.testing.assert_frame_equal(read_frame(write_frame(labelled, tmp_path / "r.parquet")),
                                  labelled, check_exact=True, check_column_type=False)
    frame.iloc[:, :5].to_parquet(tmp_path / "plain.parquet")  # other tables: plain parquet
    pd.testing.assert_frame_equal(read_frame(tmp_path / "plain.parquet"), frame.iloc[:, :5],
                                  check_column_type=False)


def test_matrices_written_through_a_map_as_a_stream_writes_them(tmp_path, monkeypatch):
    """The same bytes as an Arrow file stream; a full disk is an OSError before any byte is
    written into the map (never a SIGBUS), with nothing left; a file system that cannot
    reserve the blocks is written the ordinary way."""
    import errno
    import os

    import pyarrow as pa
    import pyarrow.ipc as ipc

    from ahba_app.interfaces import _files

    genes = pd.Index([f"G{i}" for i in range(300)], name="gene_symbol")
    frame = pd.DataFrame(np.random.default_rng(1).random((50, 300)),
                         index=pd.Index(np.arange(50) % 7, name="sample_id"), columns=genes)
    mapped = write_frame(frame, tmp_path / "mapped")
    with pa.memory_map(mapped) as source:
        table = ipc.open_file(source).read_all()
    with pa.OSFile(str(tmp_path / "streamed.arrow"), "wb") as sink, \
            ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    written = (tmp_path / "mapped.arrow").read_bytes()
    assert written == (tmp_path / "streamed.arrow").read_bytes()

    def cannot(errno_value):
        def reserve(fd, offset, length):
            raise OSError(errno_value, os.strerror(errno_value))
        return reserve

    monkeypatch.setattr(os, "posix_fallocate", cannot(errno.ENOSPC))
    with pytest.raises(OSError, match="No space left on device") as caught:
        write_frame(frame, tmp_path / "full")
    assert caught.value.errno == errno.ENOSPC
    assert not list(tmp_path.glob("full*"))
    monkeypatch.setattr(os, "posix_fallocate", cannot(errno.EOPNOTSUPP))
    assert _files.Path(write_frame(frame, tmp_path / "plain")).read_bytes() == written


def test_files_round_trip(tmp_path):
    frame = pd.DataFrame(np.arange(6, dtype=np.float32).reshape(3, 2),
                         index=pd.Index([1, 1, 2], name="sample_id"),
                         columns=pd.Index(["A", "B"], name="gene_symbol"))
    path = write_frame(frame, tmp_path / "f")
    assert path.endswith("f.arrow")  # a small table: Arrow IPC, as pandas gives it
    back = read_frame(path)
    pd.testing.assert_frame_equal(back, frame)
    assert back.dtypes.iloc[0] == np.float32 and back.columns.name == "gene_symbol"
    labels = np.array([0, 3, 5])
    np.testing.assert_array_equal(read_labels(write_labels(labels, tmp_path / "l.parquet")),
                                  labels)


def test_locate_data(chain, ahba_small):
    files = read_json(chain["fetch"].files)
    assert list(files) == DONORS and chain["fetch"].donors == DONORS
    assert files["9861"]["microarray"].startswith(str(ahba_small))
    assert read_json(chain["fetch"].rnaseq_files) is None


def test_probe_stages(chain):
    assert chain["reannotate"].n_probes >= chain["reannotate"].n_annotated > 0
    assert chain["reannotate"].n_annotated >= chain["filter"].n_filtered > 0
    selection = read_frame(chain["select"].selection)
    pd.testing.assert_frame_equal(selection, chain["reference"].selection,
                                  check_column_type=False)
    assert chain["select"].n_genes == selection["gene_symbol"].nunique()


def test_annotate_writes_sample_tables_and_counts(chain):
    for donor, path, info in zip(DONORS, chain["annotate"].annotation, chain["annotate"].info):
        annotation = read_frame(path)
        assert {"mni_x", "hemisphere", "structure", "well_id"} <= set(annotation.columns)
        info = read_json(info)
        assert info["donor"] == donor and info["n_kept"] == len(annotation)


def test_select_passes_the_probes_to_read_from_the_cache(chain, tmp_path):
    """Select probes writes which probe each gene got; the next node reads the samples it needs
    from the microarray cache: the table probe selection gives, in its dtype."""
    files = read_json(chain["fetch"].files)
    annotations = {d: read_frame(p) for d, p in zip(DONORS, chain["annotate"].annotation)}
    expected, _ = pipeline.select_donor_probes(files, annotations,
                                               read_frame(chain["filter"].probes))
    for donor, path in zip(DONORS, chain["select"].expressions):
        assert path.endswith(".json")
        table = read_samples(path, annotations[donor])
        pd.testing.assert_frame_equal(table, expected.frame(donor), check_exact=True)
        assert table.shape[1] == chain["select"].n_genes
        rows = np.array([2, 0])
        part = read_samples(path, annotations[donor], rows, order="C")
        pd.testing.assert_frame_equal(part, expected.frame(donor).iloc[rows], check_exact=True)
        assert part.to_numpy().flags["C_CONTIGUOUS"]
    stale = read_json(path)
    stale["content_id"] += "0"  # the cache was rebuilt since: an error, not other numbers
    with pytest.raises(ValueError, match="changed after the probes were chosen"):
        read_samples(write_json(stale, tmp_path / "stale.json"), annotations[donor])


def test_averaged_probes_are_passed_as_tables(chain, tmp_path):
    annotations = chain["annotate"].annotation
    out = _run(SelectProbes(files=chain["fetch"].files, donors=DONORS, annotations=annotations,
                            probes=chain["filter"].probes, probe_selection="average"),
               "select_average", tmp_path)
    files = read_json(chain["fetch"].files)
    tables = {d: read_frame(p) for d, p in zip(DONORS, annotations)}
    expected, _ = pipeline.select_donor_probes(files, tables, read_frame(chain["filter"].probes),
                                               probe_selection="average")
    for donor, path in zip(DONORS, out.expressions):
        assert path.endswith(".arrow")
        pd.testing.assert_frame_equal(read_samples(path, tables[donor]), expected[donor],
                                      check_exact=True)


def test_match_and_normalize_equal_the_pipeline(chain):
    ref = chain["reference_samples"]
    for donor, labels, expr in zip(DONORS, chain["normalize"].labels,
                                   chain["normalize"].expression):
        np.testing.assert_array_equal(read_labels(labels), ref.labels[donor])
        np.testing.assert_array_equal(read_frame(expr).to_numpy(),
                                      ref.expression[donor].to_numpy())
    matched = [int((read_labels(p) != 0).sum()) for p in chain["match"].labels]
    assert matched == [ref.summary.samples.loc[d, "matched"] for d in DONORS]


def test_aggregate_equals_the_pipeline(chain):
    ref = chain["reference"]
    expression = read_frame(chain["aggregate"].expression)
    pd.testing.assert_frame_equal(expression, ref.expression, check_exact=True,
                                  check_column_type=False)
    pd.testing.assert_frame_equal(read_frame(chain["aggregate"].counts), ref.counts,
                                  check_dtype=False, check_column_type=False)
    assert len(chain["aggregate"].donor_expressions) == 2
    summary = read_json(chain["aggregate"].summary)
    assert summary["n_genes"] == expression.shape[1]
    empty = ref.counts.index[ref.counts.sum(axis=1) == 0]
    assert summary["regions_without_samples"] == [int(r) for r in empty]


@pytest.mark.parametrize("threads", ["1", "2"])
def test_normalize_in_file_order_on_threads_gives_the_same_tables(chain, tmp_path,
                                                                  monkeypatch, threads):
    """Genes read in the order of the microarray's rows, donors normalized side by side: each
    normalized table is the symbol-order one with its columns permuted, bit for bit, and the
    aggregate node gives back the region table of the symbol-order run."""
    monkeypatch.setenv("AHBA_APP_THREADS", threads)
    select = chain["select"]
    norm = _run(NormalizeExpression(file_order=True), "normalize", tmp_path,
                expression=select.expressions, annotation=chain["annotate"].annotation,
                labels=chain["match"].labels)
    for ours, theirs in zip(norm.expression, chain["normalize"].expression):
        ours, theirs = read_frame(ours), read_frame(theirs)
        assert not ours.columns.is_monotonic_increasing  # (the genes are in file order)
        pd.testing.assert_frame_equal(ours[theirs.columns], theirs, check_exact=True)
    atlas = chain["atlas"]
    aggregate = _run(AggregateExpression(
        atlas=atlas.as_dict(), donors=DONORS, expressions=norm.expression,
        annotations=norm.annotation, labels=norm.labels, missing="interpolate",
        file_order=True), "aggregate", tmp_path)
    reference = _run(AggregateExpression(
        atlas=atlas.as_dict(), donors=DONORS, expressions=chain["normalize"].expression,
        annotations=chain["normalize"].annotation, labels=chain["normalize"].labels,
        missing="interpolate"), "aggregate_reference", tmp_path)
    pd.testing.assert_frame_equal(read_frame(aggregate.expression),
                                  read_frame(reference.expression), check_exact=True)
    assert read_json(aggregate.summary) == read_json(reference.summary)
    # the order is the flag's, not guessed from the columns: without it, file order stays
    unsorted = _run(AggregateExpression(
        atlas=atlas.as_dict(), donors=DONORS, expressions=norm.expression,
        annotations=norm.annotation, labels=norm.labels, missing="interpolate"),
        "aggregate_unsorted", tmp_path)
    assert not read_frame(unsorted.expression).columns.is_monotonic_increasing


@pytest.fixture(scope="module")
def samples_aggregated(chain):
    """The aggregate node's outputs from the normalized samples (default options)."""
    norm = chain["normalize"]
    return _run(AggregateExpression(
        atlas=chain["atlas"].as_dict(), donors=DONORS, expressions=norm.expression,
        annotations=norm.annotation, labels=norm.labels), "aggregate_samples", chain["base"])


def _same_group_tables(ours, theirs):
    for name in ("expression", "counts"):
        assert open(getattr(ours, name), "rb").read() == open(getattr(theirs, name), "rb").read()
    assert read_json(ours.summary) == read_json(theirs.summary)


@pytest.mark.parametrize("file_order", [False, True])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_normalize_to_region_tables_then_fold_gives_the_same_group_tables(
        chain, samples_aggregated, tmp_path, monkeypatch, file_order, threads):
    """With ``regions`` the normalize node writes each donor's region means and no
    sample-level table; the aggregate node folds them into the very bytes it writes from the
    normalized samples."""
    monkeypatch.setenv("AHBA_APP_THREADS", threads)
    select = chain["select"]
    norm = _run(NormalizeExpression(regions=True, file_order=file_order), "normalize",
                tmp_path, expression=select.expressions,
                annotation=chain["annotate"].annotation, labels=chain["match"].labels)
    assert len(norm.region_tables) == len(DONORS)
    assert not isdefined(norm.expression) and not isdefined(norm.annotation)
    written = {p.name for p in (tmp_path / "normalize").iterdir() if p.suffix == ".arrow"}
    assert written == {f"{kind}{k}.arrow" for kind in ("regions", "labels")
                       for k in range(len(DONORS))}  # no sample-level table
    # each region table is the mean of the donor's normalized samples in each region
    for path, samples, labels in zip(norm.region_tables, chain["normalize"].expression,
                                     chain["normalize"].labels):
        samples = read_frame(samples)
        means = samples.groupby(read_labels(labels)).mean()
        means = means[means.index != 0]
        table = read_frame(path)
        np.testing.assert_allclose(table[means.columns].to_numpy(), means.to_numpy(),
                                   rtol=1e-12)
    folded = _run(AggregateExpression(
        atlas=chain["atlas"].as_dict(), donors=DONORS, region_tables=norm.region_tables,
        labels=norm.labels, file_order=file_order), "aggregate", tmp_path)
    _same_group_tables(folded, samples_aggregated)


def test_region_tables_of_shared_normalized_tables(chain, samples_aggregated, tmp_path):
    """Several atlases sharing their tables: the first normalizes and keeps the tables in the
    store (for the others) and reduces them; the next reduces the stored ones: the same
    region tables, the same group tables."""
    select, store = chain["select"], str(tmp_path / "store")
    inputs = dict(expression=select.expressions, annotation=chain["annotate"].annotation,
                  labels=chain["match"].labels)
    first = _run(NormalizeExpression(regions=True, shared=store), "first", tmp_path, **inputs)
    second = _run(NormalizeExpression(regions=True, shared=store), "second", tmp_path,
                  **inputs)
    assert first.expression == second.expression  # the store's tables, given to both
    assert all(path.startswith(store) for path in first.expression)
    for ours, theirs in zip(first.region_tables, second.region_tables):
        assert ours != theirs and open(ours, "rb").read() == open(theirs, "rb").read()
    folded = _run(AggregateExpression(
        atlas=chain["atlas"].as_dict(), donors=DONORS, region_tables=second.region_tables,
        labels=second.labels), "aggregate", tmp_path)
    _same_group_tables(folded, samples_aggregated)


def test_donors_with_other_genes_give_their_samples_not_region_tables(chain, tmp_path):
    """Region tables are folded donor by donor only when they have the same genes: for
    donors whose chosen genes differ the node gives the normalized samples."""
    select = chain["select"]
    chosen = read_json(select.expressions[1])
    fewer = dict(chosen, probe_id=chosen["probe_id"][:-1],
                 gene_symbol=chosen["gene_symbol"][:-1])
    expressions = [select.expressions[0], write_json(fewer, tmp_path / "fewer.json")]
    norm = _run(NormalizeExpression(regions=True), "normalize", tmp_path,
                expression=expressions, annotation=chain["annotate"].annotation,
                labels=chain["match"].labels)
    assert not isdefined(norm.region_tables)
    assert [read_frame(p).shape[1] for p in norm.expression] == [
        len(chosen["gene_symbol"]), len(chosen["gene_symbol"]) - 1]


@pytest.mark.parametrize("options", [dict(missing="centroids"), dict(agg_metric="median"),
                                     dict(return_donors=True), dict(stability_threshold=0.2),
                                     dict(region_agg="samples")])
def test_region_tables_with_options_needing_samples_are_refused(chain, tmp_path, options):
    norm = _run(NormalizeExpression(regions=True), "normalize", tmp_path,
                expression=chain["select"].expressions,
                annotation=chain["annotate"].annotation, labels=chain["match"].labels)
    with pytest.raises(Exception, match="need its normalized samples"):
        _run(AggregateExpression(atlas=chain["atlas"].as_dict(), donors=DONORS,
                                 region_tables=norm.region_tables, labels=norm.labels,
                                 **options), "aggregate", tmp_path)
    with pytest.raises(Exception, match="needs the normalized samples"):
        _run(AggregateExpression(atlas=chain["atlas"].as_dict(), donors=DONORS,
                                 labels=norm.labels), "aggregate_nothing", tmp_path)


def test_in_symbol_order_sorts_the_genes_and_the_dropped_genes():
    from ahba_app.summary import GroupFacts

    table = pd.DataFrame([[1.0, 2.0, 3.0]], columns=pd.Index(["b", "C", "a"],
                                                             name="gene_symbol"))
    facts = GroupFacts(regions_without_samples=[], genes_dropped=["z", "Y", "x"])
    group = pipeline.in_symbol_order({"expression": table, "summary": facts})
    assert group["expression"].columns.tolist() == ["C", "a", "b"]  # (code points)
    assert group["expression"].to_numpy().tolist() == [[2.0, 3.0, 1.0]]
    assert group["summary"].genes_dropped == ["Y", "x", "z"]
    assert facts.genes_dropped == ["z", "Y", "x"]  # (the argument is left as it was)


def test_report(chain):
    html = open(chain["report"].report, encoding="utf-8").read()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "Desikan" in html
    citation = open(chain["report"].citation, encoding="utf-8").read()
    assert citation.startswith("# How to cite")


def test_group_sink(chain, tmp_path):
    atlas = chain["atlas"]
    out = _run(GroupDerivatives(
        out_dir=str(tmp_path / "stage"), atlas=atlas.as_dict(), desc="abagendefaults",
        metadata={"Parameters": {"a": 1}}, selection=chain["select"].selection,
        expression=chain["aggregate"].expression, counts=chain["aggregate"].counts,
        donors=DONORS, donor_expressions=chain["aggregate"].donor_expressions,
        aggregate=chain["aggregate"].summary, report=chain["report"].report,
        citation=chain["report"].citation), "ds_group", tmp_path)
    stem = "atlas-desikankilliany_desc-abagendefaults"
    names = {p.replace(str(tmp_path / "stage") + "/", "") for p in out.out_files}
    assert {f"{stem}_expression.tsv", f"{stem}_expression.json", f"{stem}_counts.tsv",
            f"{stem}_probes.tsv", f"{stem}_report.html", f"citations/{stem}.md",
            f"sub-9861/sub-9861_{stem}_expression.tsv"} <= names
    table = pd.read_csv(tmp_path / "stage" / f"{stem}_expression.tsv", sep="\t", index_col=0,
                        na_values="n/a")
    assert table.index.name == "index"
    assert np.array_equal(table.to_numpy(), chain["reference"].expression.to_numpy(),
                          equal_nan=True)
    sidecar = json.loads((tmp_path / "stage" / f"{stem}_expression.json").read_text())
    assert sidecar["Parameters"] == {"a": 1}
    assert sidecar["Atlas"]["Files"][0]["Path"] == atlas.image


def test_group_sink_with_a_rows_helper_writes_the_same_files(chain, tmp_path, monkeypatch):
    """The region x gene table written with a helper process (as large tables are) and
    without: the same bytes in every file, the same paths in the same order."""
    from ahba_app import floattext

    def sink(folder):
        out = _run(GroupDerivatives(
            out_dir=str(tmp_path / folder), atlas=chain["atlas"].as_dict(), desc="abagendefaults",
            metadata={"Parameters": {"a": 1}}, selection=chain["select"].selection,
            expression=chain["aggregate"].expression, counts=chain["aggregate"].counts,
            donors=DONORS, donor_expressions=chain["aggregate"].donor_expressions,
            aggregate=chain["aggregate"].summary), f"ds_{folder}", tmp_path)
        return [os.path.relpath(p, tmp_path / folder) for p in out.out_files]

    alone = sink("alone")
    started = []
    monkeypatch.setattr(floattext, "HELPER_MIN_VALUES", 1)
    monkeypatch.setenv("AHBA_APP_THREADS", "2")
    monkeypatch.setattr(floattext.RowsHelper, "__enter__",
                        lambda self: started.append(self) or self)
    assert sink("helped") == alone
    assert len(started) == 1 and alone[0].endswith("_expression.tsv")
    for name in alone:
        assert (tmp_path / "helped" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()


def test_participant_sink(chain, tmp_path):
    atlas = chain["atlas"]
    norm = chain["normalize"]
    out = _run(ParticipantDerivatives(
        out_dir=str(tmp_path / "stage"), atlas=atlas.as_dict(), desc="custom",
        metadata={}, selection=chain["select"].selection, donor="10021",
        expression=norm.expression[1], annotation=norm.annotation[1],
        labels=norm.labels[1]), "ds_participant", tmp_path)
    samples = tmp_path / "stage" / "sub-10021" / \
        "sub-10021_atlas-desikankilliany_desc-custom_samples.tsv"
    assert str(samples) in out.out_files
    table = pd.read_csv(samples, sep="\t", na_values="n/a")
    assert list(table.columns[:2]) == ["well_id", "structure_id"]
    ref = chain["reference_samples"]
    genes = ref.expression["10021"].columns
    # values are written at the precision of their dtype: exact once read back in it
    expected = ref.expression["10021"].to_numpy()
    np.testing.assert_array_equal(table[list(genes)].to_numpy(dtype=expected.dtype), expected)
    np.testing.assert_array_equal(table["label"], ref.labels["10021"])


@pytest.mark.parametrize("options", [
    {"missing": "centroids"},
    {"missing": "interpolate", "agg_metric": "median"},
    {"region_agg": "samples", "stability_threshold": 0.2},
])
def test_aggregate_group_on_node_files_equals_the_pipeline(chain, ahba_small, options):
    """The aggregate node's function, on the normalize nodes' files, for other options."""
    from ahba_app.bids import load_atlas_input

    atlas = chain["atlas"]
    norm = chain["normalize"]
    atlases, _ = load_atlas_input(atlas, DONORS)
    settings = dict(missing=None, region_agg="donors", agg_metric="mean",
                    stability_threshold=None)
    settings.update(options)
    result = pipeline.aggregate_group(
        atlases, atlases[DONORS[0]].labels,
        {d: read_frame(p) for d, p in zip(DONORS, norm.expression)},
        {d: read_frame(p) for d, p in zip(DONORS, norm.annotation)},
        {d: read_labels(p) for d, p in zip(DONORS, norm.labels)},
        return_donors=False, **settings)
    ref = pipeline.run(atlas.image, atlas.info, data_dir=ahba_small,
                       settings=pipeline.Settings(donors=DONORS, **settings))
    pd.testing.assert_frame_equal(result["expression"], ref.expression, check_exact=True,
                                  check_column_type=False)
    assert result["summary"].n_genes == ref.expression.shape[1]
