"""Every gene accounted for: ahba_app.genes.gene_fates on stage outputs made by hand."""

from __future__ import annotations

import html as _html
import json
import re
import shutil
import subprocess
import warnings

import numpy as np
import pandas as pd
import pytest

import ahba_app
from ahba_app.genes import ANSWERS, FATES, explain, gene_fates, search_context, summarize
from ahba_app.report import render_report


def _probes(pairs):
    ids, symbols = zip(*pairs)
    return pd.DataFrame({"gene_symbol": list(symbols)}, index=pd.Index(ids, name="probe_id"))


@pytest.fixture
def stages():
    raw = _probes([(1, "KEPT"), (2, "KEPT"), (3, "GONE"), (4, "DIM"), (5, "DIM"), (6, "HALF"),
                   (7, "FLAT"), (8, "NOISY"), (9, "OLDNAME")])
    # reannotation: GONE's probe is dropped, OLDNAME's probe 9 now measures NEWNAME
    annotated = _probes([(1, "KEPT"), (2, "KEPT"), (4, "DIM"), (5, "DIM"), (6, "HALF"),
                         (7, "FLAT"), (8, "NOISY"), (9, "NEWNAME")])
    share = pd.Series([0.9, 0.8, np.nan, 0.3, 0.45, 0.7, 0.9, 0.9, 0.6],
                      index=pd.Index(range(1, 10), name="probe_id"))
    filtered = annotated.loc[[1, 2, 6, 7, 8, 9]]
    selection = pd.DataFrame({
        "donor": ["9861"] * 5 + ["10021"] * 4,
        "gene_symbol": ["KEPT", "HALF", "FLAT", "NOISY", "NEWNAME",
                        "KEPT", "FLAT", "NOISY", "NEWNAME"],
        "probe_id": [1, 6, 7, 8, 9, 2, 7, 8, 9]})
    return dict(raw_probes=raw, annotated=annotated, filtered=filtered, selection=selection,
                expression_genes=["KEPT", "NEWNAME"], share=share, ibf_threshold=0.5,
                dropped_incomplete=["FLAT"],
                stability=pd.Series({"KEPT": 0.6, "NOISY": 0.05, "NEWNAME": 0.4}),
                stability_threshold=0.2, donors=["9861", "10021"])


def test_every_gene_once_with_its_stage_and_numbers(stages):
    table = gene_fates(**stages).set_index("gene_symbol")
    assert sorted(table.index) == ["DIM", "FLAT", "GONE", "HALF", "KEPT", "NEWNAME", "NOISY",
                                   "OLDNAME"]
    assert table["fate"].to_dict() == {
        "DIM": "intensity_filter", "FLAT": "incomplete", "GONE": "no_annotated_probe",
        "HALF": "probe_selection", "KEPT": "kept", "NEWNAME": "kept",
        "NOISY": "stability_threshold", "OLDNAME": "no_annotated_probe"}
    assert table.loc["DIM", "best_share_above_background"] == pytest.approx(0.45)
    assert "45.0% of the samples, below the threshold of 50%" in table.loc["DIM", "reason"]
    assert table.loc["HALF", "donors_without_probe"] == "10021"
    assert table.loc["NOISY", "differential_stability"] == pytest.approx(0.05)
    assert "(0.050) is below the threshold of 0.2" in table.loc["NOISY", "reason"]
    assert table.loc["GONE", "n_probes_array"] == 1 and table.loc["GONE", "n_probes_annotated"] == 0
    assert table.loc["KEPT", ["n_probes_array", "n_probes_annotated",
                              "n_probes_above_threshold"]].tolist() == [2, 2, 2]
    assert summarize(table.reset_index()) == {
        "no_annotated_probe": 2, "intensity_filter": 1, "probe_selection": 1,
        "incomplete": 1, "stability_threshold": 1, "kept": 2}
    assert list(summarize(table.reset_index())) == list(FATES)


def test_kept_genes_must_be_the_expression_columns(stages):
    with pytest.raises(ValueError, match=r"gene\(s\) \['MYSTERY'\] that no stage output"):
        gene_fates(**dict(stages, expression_genes=["KEPT", "NEWNAME", "MYSTERY"]))
    with pytest.raises(ValueError, match="'KEPT' passed every stage but is not in the"):
        gene_fates(**dict(stages, expression_genes=["NEWNAME"], stability_threshold=None,
                          stability=None))


def test_one_choice_for_all_donors(stages):
    selection = pd.DataFrame({"donor": "all", "gene_symbol": ["KEPT", "FLAT", "NOISY",
                                                              "NEWNAME"],
                              "probe_id": [1, 7, 8, 9]})
    table = gene_fates(**dict(stages, selection=selection)).set_index("gene_symbol")
    assert table.loc["HALF", "fate"] == "probe_selection"
    assert table.loc["HALF", "reason"] == "no probe could be chosen for it"


def test_explain(stages):
    table = gene_fates(**stages)
    assert explain(table, "dim").startswith("DIM was dropped at stage 'intensity_filter': its "
                                            "best probe is above background in 45.0%")
    assert explain(table, "KEPT") == "KEPT is kept: it is a column of the expression table."
    assert explain(table, "ESR2") == "ESR2 is not a gene symbol of the AHBA probe table."


# ---------------------------------------------------------------------------------------------
# through get_expression_data: one gene made to fail at exactly each stage
# ---------------------------------------------------------------------------------------------

DONORS = ("9861", "10021", "12876", "14380", "15496", "15697")


def _run(data_dir, **options):
    atlas = ahba_app.fetch_desikan_killiany()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ahba_app.get_expression_data(atlas["image"], atlas["info"], data_dir=data_dir,
                                            return_genes=True, **options)


def _donor_files(root, name):
    return [root / "microarray" / f"normalized_microarray_donor{d}" / name for d in DONORS]


def _single_probe_kept(genes, probes, n):
    """n genes kept in the baseline run that have exactly one probe on the array."""
    one = probes.groupby("gene_symbol").size()
    kept = genes.loc[genes["fate"] == "kept", "gene_symbol"]
    return [g for g in kept if one.get(g) == 1][:n]


@pytest.fixture(scope="module")
def baseline(ahba_small):
    """The unmodified data; a stability threshold of 0 (genes anticorrelated across donors
    are dropped) so that every gene's differential stability is in the table."""
    expression, genes = _run(ahba_small, stability_threshold=0.0)
    return expression, genes


@pytest.fixture(scope="module")
def broken(ahba_small, baseline, tmp_path_factory):
    """A copy of the data where gene DIM is never above background, gene FLAT has the same
    value in every sample (differential stability cannot choose its probe; chosen otherwise,
    its normalization is undefined), and Probes.csv has no Entrez id for gene ORPHAN."""
    root = tmp_path_factory.mktemp("genes") / "ahba"
    shutil.copytree(ahba_small, root, ignore=shutil.ignore_patterns(".ahba-cache", "*.npz"))
    probes = pd.read_csv(_donor_files(root, "Probes.csv")[0], index_col="probe_id")
    dim, flat, orphan = _single_probe_kept(baseline[1], probes, 3)
    ids = {name: probes.index[probes["gene_symbol"] == name][0]
           for name in (dim, flat, orphan)}
    for path in _donor_files(root, "PACall.csv"):
        table = pd.read_csv(path, header=None, index_col=0)
        table.loc[ids[dim]] = 0
        table.to_csv(path, header=False)
    for path in _donor_files(root, "MicroarrayExpression.csv"):
        table = pd.read_csv(path, header=None, index_col=0)
        table.loc[ids[flat]] = 7.25
        table.to_csv(path, header=False)
    for path in _donor_files(root, "Probes.csv"):
        table = pd.read_csv(path)
        table.loc[table["gene_symbol"] == orphan, "entrez_id"] = np.nan
        table.to_csv(path, index=False)
    return dict(root=root, dim=dim, flat=flat, orphan=orphan)


def _fates(genes):
    return genes.set_index("gene_symbol")


def test_genes_table_covers_every_gene_once(ahba_small, baseline):
    expression, genes = baseline
    probes = pd.read_csv(_donor_files(ahba_small, "Probes.csv")[0])
    assert genes["gene_symbol"].is_unique
    assert set(probes["gene_symbol"]) <= set(genes["gene_symbol"])
    kept = genes.loc[genes["fate"] == "kept", "gene_symbol"]
    assert sorted(kept) == sorted(expression.columns)
    # the run's own drops are there with their numbers
    dim = genes.loc[genes["fate"] == "intensity_filter"]
    assert len(dim) and (dim["best_share_above_background"] < 0.5).all()
    assert (genes.loc[genes["fate"] == "kept", "best_share_above_background"] >= 0.5).all()


def test_one_gene_fails_each_stage(broken, baseline):
    expression, genes = _run(broken["root"], stability_threshold=0.0)
    fates = _fates(genes)
    assert fates.loc[broken["dim"], "fate"] == "intensity_filter"
    assert fates.loc[broken["dim"], "best_share_above_background"] == 0.0
    assert fates.loc[broken["flat"], "fate"] == "probe_selection"
    assert fates.loc[broken["flat"], "reason"] == "no probe could be chosen for it"
    assert sorted(fates.index[fates["fate"] == "kept"]) == sorted(expression.columns)
    # no other gene changed its fate up to probe selection (after it, numbers move a little:
    # sample normalization sees two genes fewer)
    changed = [broken["dim"], broken["flat"]]
    early = {"no_annotated_probe", "intensity_filter", "probe_selection"}

    def up_to_selection(table):
        fate = table["fate"].drop(changed).astype(str)
        return fate.where(fate.isin(early), "selected")
    before = up_to_selection(_fates(baseline[1]))
    pd.testing.assert_series_equal(up_to_selection(fates).loc[before.index], before)
    # stability: a threshold just above the least stable kept gene's drops exactly that gene
    # more (those below 0 were dropped already)
    already = set(fates.index[fates["fate"] == "stability_threshold"])
    stability = fates.loc[fates["fate"] == "kept", "differential_stability"]
    lowest, second = np.sort(stability.to_numpy())[:2]
    assert lowest < second
    threshold = float((lowest + second) / 2)
    expression, genes = _run(broken["root"], stability_threshold=threshold)
    fates = _fates(genes)
    unstable = sorted(set(fates.index[fates["fate"] == "stability_threshold"]) - already)
    assert unstable == [stability.idxmin()]
    assert f"below the threshold of {threshold:g}" in fates.loc[unstable[0], "reason"]
    assert unstable[0] not in expression.columns


def test_gene_undefined_after_normalization(broken):
    """Chosen by maximum intensity and not moved by a sample normalization, the constant
    gene's scaled robust sigmoid is undefined."""
    expression, genes = _run(broken["root"], probe_selection="max_intensity", sample_norm=None)
    fates = _fates(genes)
    assert fates.loc[broken["flat"], "fate"] == "incomplete"
    assert broken["flat"] not in expression.columns
    assert sorted(fates.index[fates["fate"] == "kept"]) == sorted(expression.columns)


def test_gene_without_entrez_id(broken, baseline):
    _, genes = _run(broken["root"], reannotated=False)
    fates = _fates(genes)
    assert fates.loc[broken["orphan"], "fate"] == "no_annotated_probe"
    assert fates.loc[broken["orphan"], "reason"] == "none of its 1 probe(s) has an Entrez id"


def test_return_genes_leaves_abagens_returns_alone(ahba_small, baseline):
    atlas = ahba_app.fetch_desikan_killiany()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ahba_app.get_expression_data(atlas["image"], atlas["info"], data_dir=ahba_small,
                                           return_counts=True, return_genes=True,
                                           stability_threshold=0.0)
    assert len(out) == 3
    pd.testing.assert_frame_equal(out[0], baseline[0])
    assert list(out[1].columns) and out[2].equals(baseline[1])


# ---------------------------------------------------------------------------------------------
# the report's search box
# ---------------------------------------------------------------------------------------------


def _report_with_genes(stages) -> str:
    table = gene_fates(**stages)
    return render_report({"atlas": {"label": "desikankilliany", "kind": "volumetric"}},
                         {"genes": table, "genes_file": "atlas-x_genes.tsv",
                          "n_probes": 9, "n_probes_annotated": 8, "n_probes_filtered": 6,
                          "n_genes": 4})


@pytest.mark.parametrize("odd", ["", 'GENE"Q', "A\\B", "\u0391\u0392", "X\x7fY", "C\x01D",
                                 "x</script>y", "TAB\tB"])
def test_search_context_json_is_json_dumps(odd):
    """The search box's JSON (orjson for printable ASCII) is json.dumps's character for
    character, also with quotes, backslashes, non-ASCII and control characters."""
    table = pd.DataFrame({"gene_symbol": ["A1", "B2", "C3" + odd],
                          "fate": ["kept", "intensity_filter", "kept"],
                          "reason": ["", "too faint " + odd, ""]})
    genes = {"A1": ["kept"], "B2": ["intensity_filter", "too faint " + odd], "C3" + odd: ["kept"]}
    expected = json.dumps({"answers": ANSWERS, "genes": genes}, separators=(",", ":"))
    assert search_context(table)["json"] == expected.replace("</", "<\\/")


def test_report_holds_the_search_box_offline(stages):
    page = _report_with_genes(stages)
    assert 'id="gene-query"' in page and 'href="#gene-search"' in page
    assert "atlas-x_genes.tsv" in page
    # no external script or style: the page works offline
    assert not re.search(r"<script[^>]+src=", page) and "<link" not in page
    data = re.search(r'<script type="application/json" id="gene-fates">(.*?)</script>', page,
                     re.S).group(1)
    table = json.loads(data)
    assert table["genes"]["DIM"][0] == "intensity_filter" and table["genes"]["KEPT"] == ["kept"]


def test_report_json_cannot_close_its_script_element(stages):
    stages["raw_probes"] = pd.concat([stages["raw_probes"], _probes([(10, "</script>X")])])
    page = _report_with_genes(stages)
    block = re.search(r'<script type="application/json" id="gene-fates">(.*?)</script>', page,
                      re.S).group(1)
    assert json.loads(block)["genes"]["</script>X"][0] == "no_annotated_probe"


def _chromium_answer(tmp_path, page: str, gene: str) -> str:
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
           f"{report.as_uri()}?gene={gene}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<output id="gene-answer"[^>]*>(.*?)</output>', result.stdout, re.S)
    assert found, result.stdout[-2000:]
    return _html.unescape(found.group(1)).strip()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_search_box_answers_in_a_headless_browser(tmp_path, stages):
    """The page opened with ?gene=... types the gene into the box (an input event, as the
    keyboard sends) and the answer is read back from the rendered page."""
    page = _report_with_genes(stages)
    table = gene_fates(**stages)
    assert _chromium_answer(tmp_path, page, "dim") == explain(table, "DIM")
    assert _chromium_answer(tmp_path, page, "KEPT") == explain(table, "KEPT")
    assert _chromium_answer(tmp_path, page, "ESR2") == explain(table, "ESR2")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_typing_into_the_search_box(tmp_path, stages):
    """Keystrokes sent to the page (DevTools ``Input.dispatchKeyEvent``, tests/browser.py) go
    into the focused search box; the answer follows every key, Backspace included."""
    from browser import Browser

    report = tmp_path / "report.html"
    report.write_text(_report_with_genes(stages), encoding="utf-8")
    table = gene_fates(**stages)
    with Browser(tmp_path / "profile") as browser:
        page = browser.open(report)
        idle = page.text("#gene-answer")
        assert idle == "Type a gene symbol to see what became of it."
        page.focus("#gene-query")
        page.type("di")
        assert page.value("#gene-query") == "di"
        assert page.text("#gene-answer") == explain(table, "di")   # no gene DI: unknown
        page.press("m")
        assert page.text("#gene-answer") == explain(table, "DIM")  # case does not matter
        assert "intensity" in page.text("#gene-answer")
        for _ in "dim":
            page.press("Backspace")
        assert page.value("#gene-query") == ""
        assert page.text("#gene-answer") == idle
        page.type("KEPTX")
        page.press("Backspace")
        assert page.text("#gene-answer") == explain(table, "KEPT")
        page.evaluate("document.getElementById('gene-query').select()")
        page.type("ESR2")                                            # replaces the selection
        assert page.value("#gene-query") == "ESR2"
        assert page.text("#gene-answer") == explain(table, "ESR2")


def test_command_line_writes_the_genes_table(tmp_path, ahba_small, monkeypatch):
    """A group run writes ..._genes.tsv (kept genes = the expression table's columns) and
    the report's search box answers from it."""
    from ahba_app.cli import run as cli_run

    for var in ("NIPYPE_CONFIG_DIR", "MPLCONFIGDIR", "AHBA_APP_CONTAINER"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    code = cli_run.main([str(tmp_path / "in"), str(out), "group", "--ahba-dir", str(ahba_small),
                         "-w", str(tmp_path / "work"), "--stability-threshold", "0.1"])
    assert code == 0
    stem = "atlas-desikankilliany_desc-custom"
    genes = pd.read_csv(out / f"{stem}_genes.tsv", sep="\t", na_values="n/a",
                        keep_default_na=False)
    expression = pd.read_csv(out / f"{stem}_expression.tsv", sep="\t", index_col=0, nrows=1)
    assert genes["gene_symbol"].is_unique
    assert sorted(genes.loc[genes["fate"] == "kept", "gene_symbol"]) == \
        sorted(expression.columns)
    assert set(genes["fate"]) >= {"kept", "intensity_filter", "stability_threshold"}
    unstable = genes.loc[genes["fate"] == "stability_threshold"]
    assert (unstable["differential_stability"] < 0.1).all()
    sidecar = json.loads((out / f"{stem}_genes.json").read_text())
    assert set(sidecar) == set(genes.columns)
    page = (out / f"{stem}_report.html").read_text()
    assert f"{stem}_genes.tsv" in page and 'id="gene-query"' in page
    data = json.loads(re.search(r'<script type="application/json" id="gene-fates">(.*?)'
                                r'</script>', page, re.S).group(1))
    assert set(data["genes"]) == set(genes["gene_symbol"])


def test_symbol_positions_arrow_and_objects():
    """gene_fates' look-up of symbols gives a plain dict look-up's answer whether the values
    are Arrow texts (with NaN), Python texts, mixed objects or numbers: a value that is not a
    text equals no symbol (so "7" is not found for the number 7)."""
    from ahba_app.genes import _Positions

    symbols = pd.Index(["7", "A1BG", "nan", "ZZZ", "é"], dtype="str")
    where = {text: i for i, text in enumerate(symbols.tolist())}
    positions = _Positions(symbols)
    cases = [pd.Series(["ZZZ", np.nan, "A1BG", "B", "é"], dtype="str"),
             ["A1BG", "A1BG", "7", "x"],
             pd.Series(["A1BG", 7, None, "nan", 7.0], dtype=object),
             np.array([7, 1, 2]),
             pd.Index([], dtype=object)]
    for values in cases:
        expected = [where.get(v, -1) if isinstance(v, str) else -1 for v in list(values)]
        assert positions(values).tolist() == expected, values
