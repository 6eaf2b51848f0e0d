"""The methods text, its references, the figures and the HTML report (ahba_app.report)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from ahba_app.report import (ReportParameters, RunSummary, advisories, citation_markdown,
                             methods_document, methods_text, render_report, write_report)
from ahba_app.report import figures
from ahba_app.report.methods import (NORMALIZATION, NORMALIZATION_ALIASES, PROBE_SELECTION,
                                     load_references)

DK = {"label": "desikankilliany", "space": "MNI152NLin6Asym", "kind": "volumetric",
      "n_regions": 6, "has_info": True}


def text(**params) -> str:
    params.setdefault("atlas", DK)
    return methods_text(params)


def cited(**params) -> list[str]:
    params.setdefault("atlas", DK)
    return methods_document(params).keys


# ------------------------------------------------------------------------------------------------
# A tiny fake run: 6 regions (one empty), 3 donors, 30 genes
# ------------------------------------------------------------------------------------------------
def tiny_summary(**overrides) -> dict:
    rng = np.random.default_rng(7)
    donors = ["9861", "10021", "12876"]
    regions = [1, 2, 3, 4, 5, 6]
    info = pd.DataFrame({
        "label": ["precentral", "insula", "caudate", "precentral", "insula", "frontalpole"],
        "hemisphere": ["L", "L", "L", "R", "R", "R"],
        "structure": ["cortex", "cortex", "subcortex/brainstem", "cortex", "cortex", "cortex"],
        "x": [-40, -35, -12, 40, 35, 10], "y": [-10, 5, 10, -10, 5, 60], "z": [50, 0, 10, 50, 0, 0],
    }, index=pd.Index(regions, name="id"))
    rows = []
    for d in donors:
        labels = rng.choice([0, 1, 2, 3, 4, 5], size=14)
        xyz = info.loc[np.where(labels == 0, 1, labels), ["x", "y", "z"]].to_numpy(float)
        xyz = xyz + rng.normal(0, 3, xyz.shape)
        rows.append(pd.DataFrame({"mni_x": xyz[:, 0], "mni_y": xyz[:, 1], "mni_z": xyz[:, 2],
                                  "label": labels, "donor": d}))
    coords = pd.concat(rows, ignore_index=True)
    counts = (coords[coords.label > 0].groupby(["label", "donor"]).size().unstack(fill_value=0)
              .reindex(index=regions, columns=donors, fill_value=0))
    samples = pd.DataFrame({"total": [15, 15, 15], "dropped_hemisphere": [1, 1, 1],
                            "kept": [14, 14, 14]}, index=donors)
    samples["matched"] = counts.sum().reindex(donors).to_numpy()
    genes = [f"G{i:02d}" for i in range(30)]
    expression = pd.DataFrame(rng.random((6, 30)), index=regions, columns=genes)
    expression.loc[6] = np.nan
    probes = pd.DataFrame({"probe_name": [f"P{i}" for i in range(30)],
                           "diff_stability": rng.uniform(-0.1, 0.9, 30)}, index=genes)
    summary = dict(donors=donors, n_probes=58692, n_probes_annotated=45821,
                   n_probes_filtered=31569, n_genes=15633, genes_dropped=["G99"],
                   samples=samples, counts=counts, region_info=info, probes=probes,
                   sample_coords=coords, expression=expression,
                   warnings=["Region 6 (frontalpole R) matched no sample."],
                   provenance={"command": "ahba-app in out participant"})
    summary.update(overrides)
    return summary


TINY_PARAMS = dict(atlas=DK, preset="abagen-defaults",
                   preset_description="abagen 0.1.3 defaults",
                   preset_citations=["markello2021"], versions={"python": "3.11"})


# ------------------------------------------------------------------------------------------------
# References as data
# ------------------------------------------------------------------------------------------------
def test_references_are_well_formed():
    raw = json.loads(resources.files("ahba_app.report").joinpath("references.json").read_text())
    keys = [r["key"] for r in raw["references"]]
    assert len(keys) == len(set(keys))
    for ref in raw["references"]:
        assert re.fullmatch(r"[a-z]+\d{4}[a-z]?", ref["key"]), ref["key"]
        assert ref["citation"].strip().endswith((".", ")"))
        assert ref["doi"] or ref["url"], ref["key"]
        if ref["doi"]:
            assert ref["doi"].startswith("10.") and not ref["doi"].startswith("10.1/")
    for key in ("hawrylycz2012", "arnatkeviciute2019", "markello2021", "quackenbush2002",
                "hawrylycz2015", "fulcher2013", "gorgolewski2014", "desikan2006"):
        assert key in keys
    assert load_references()["markello2021"].doi == "10.7554/eLife.72129"


def test_every_preset_cites_known_references():
    tomllib = pytest.importorskip("tomllib")
    known = load_references()
    presets = resources.files("ahba_app").joinpath("presets")
    for preset in presets.iterdir():
        if preset.name.endswith(".toml"):
            for key in tomllib.loads(preset.read_text()).get("citations", []):
                assert key in known, f"{preset.name} cites unknown reference {key!r}"


# ------------------------------------------------------------------------------------------------
# The methods text follows every option
# ------------------------------------------------------------------------------------------------
PROBE_PHRASES = {
    "diff_stability": ("differential stability", "DS(p) ="),
    "rnaseq": ("RNA-sequencing data of that gene", "9861 and 10021"),
    "average": ("averaged, sample by sample",),
    "max_intensity": ("highest mean expression",),
    "max_variance": ("varied most across samples",),
    "pc_loading": ("first component",),
    "corr_intensity": ("three or more probes", "higher mean expression"),
    "corr_variance": ("three or more probes", "varied more across samples"),
}


@pytest.mark.parametrize("method", sorted(PROBE_SELECTION))
def test_probe_selection_is_described_and_cited(method):
    body = text(probe_selection=method)
    for phrase in PROBE_PHRASES[method]:
        assert phrase in body
    keys = cited(probe_selection=method)
    assert ("hawrylycz2015" in keys) == (method == "diff_stability")
    assert ("parkes2017" in keys) == (method == "pc_loading")


def test_probe_selection_texts_all_differ():
    assert PROBE_PHRASES.keys() == PROBE_SELECTION.keys()
    bodies = {text(probe_selection=m) for m in PROBE_SELECTION}
    assert len(bodies) == len(PROBE_SELECTION)
    assert text(probe_selection="mean") == text(probe_selection="average")


@pytest.mark.parametrize("donor_probes, phrase", [
    ("aggregate", "pooled together"),
    ("independent", "different probes in different donors"),
    ("common", "chosen most often"),
])
def test_donor_probes(donor_probes, phrase):
    assert phrase in text(probe_selection="max_variance", donor_probes=donor_probes)


def test_donor_probes_ignored_by_joint_methods_is_said():
    body = text(probe_selection="diff_stability", donor_probes="independent")
    assert 'donor_probes = "independent" does not apply' in body
    assert any("no effect" in note for note in advisories(dict(
        atlas=DK, probe_selection="diff_stability", donor_probes="independent")))


NORM_PHRASES = {
    "center": "subtracting their mean", "zscore": "z-scoring", "minmax": "linearly to the unit",
    "sigmoid": "logistic (sigmoid) function of their z-scores",
    "scaled_sigmoid": "followed by a rescaling", "scaled_sigmoid_quantiles": "95th percentiles",
    "robust_sigmoid": "robust sigmoid function, which", "scaled_robust_sigmoid": "scaled robust",
    "mixed_sigmoid": "interquartile range of the values was zero",
    "batch": "one indicator per donor",
}


@pytest.mark.parametrize("norm", sorted(NORMALIZATION))
def test_normalization_is_described_with_formula(norm):
    body = text(sample_norm=norm, gene_norm=norm)
    assert NORM_PHRASES[norm] in body
    for formula in NORMALIZATION[norm].formulas:
        assert "    " + formula in body  # an indented display line
    if norm != "batch":
        assert "normalised in the same way" in body
    robust = norm in ("robust_sigmoid", "scaled_robust_sigmoid", "mixed_sigmoid")
    assert ("fulcher2013" in cited(sample_norm=norm, gene_norm=norm)) == robust


def test_normalization_texts_all_differ_and_aliases_match():
    assert NORM_PHRASES.keys() == NORMALIZATION.keys()
    bodies = {text(sample_norm=n, gene_norm=n) for n in NORMALIZATION}
    assert len(bodies) == len(NORMALIZATION)
    for alias, name in NORMALIZATION_ALIASES.items():
        assert text(sample_norm=alias, gene_norm=alias) == text(sample_norm=name, gene_norm=name)


def test_normalization_none_and_mixed():
    none = text(sample_norm=None, gene_norm="none")
    assert "No normalisation was applied" in none and "fulcher2013" not in cited(
        sample_norm=None, gene_norm=None)
    only_gene = text(sample_norm=None, gene_norm="zscore")
    assert "Samples were not normalised across genes" in only_gene and "z-scoring" in only_gene
    only_sample = text(sample_norm="srs", gene_norm=None)
    assert "Genes were not normalised across samples" in only_sample
    both = text(sample_norm="minmax", gene_norm="rs")
    assert "linearly to the unit" in both and "robust sigmoid function, which" in both


def test_registries_match_the_processing_modules():
    """Every option the pipeline accepts has a description, and nothing else."""
    from ahba_app.report import methods as m

    normalize = pytest.importorskip("ahba_app.normalize")
    probes = pytest.importorskip("ahba_app.probes")
    samples = pytest.importorskip("ahba_app.samples")
    matching = pytest.importorskip("ahba_app.matching")
    aggregate = pytest.importorskip("ahba_app.aggregate")
    assert set(normalize.METHODS) == set(m.NORMALIZATION)
    assert normalize.ALIASES == m.NORMALIZATION_ALIASES
    assert set(probes.SELECTION_METHODS) == set(m.PROBE_SELECTION)
    assert set(probes.AGGREGATE_ONLY) <= set(m.PROBE_SELECTION)  # (the report reads it)
    assert set(probes.DONOR_PROBES) == set(m.DONOR_PROBES)
    assert set(samples.MIRROR_METHODS) | {None} == set(m.LR_MIRROR)
    assert set(matching.MISSING_METHODS) | {None} == set(m.MISSING)
    assert set(aggregate.REGION_AGGS) == set(m.REGION_AGG)


@pytest.mark.parametrize("norm_matched, norm_structures, phrases", [
    (True, False, ["across the samples assigned to a region", "discarded, before normalisation"]),
    (False, False, ["all samples, assigned to a region or not", "discarded only afterwards"]),
    (True, True, ["separately within cortex, subcortex/brainstem and cerebellum"]),
])
def test_norm_matched_and_structures(norm_matched, norm_structures, phrases):
    body = text(norm_matched=norm_matched, norm_structures=norm_structures)
    for phrase in phrases:
        assert phrase in body


@pytest.mark.parametrize("mirror, phrase", [
    ("bidirectional", "every sample was also copied into the opposite hemisphere"),
    ("leftright", "every left-hemisphere sample was also copied into the right"),
    ("rightleft", "every right-hemisphere sample was also copied into the left"),
])
def test_lr_mirror(mirror, phrase):
    assert phrase in text(lr_mirror=mirror)
    assert {"romerogarcia2018", "gryglewski2018"} <= set(cited(lr_mirror=mirror))


def test_no_mirror_cites_nothing_about_it():
    assert "copied" not in text(lr_mirror="none")
    assert "romerogarcia2018" not in cited(lr_mirror=None)
    assert text(lr_mirror=True) == text(lr_mirror="bidirectional")  # abagen's old spelling


@pytest.mark.parametrize("missing, kind, phrases", [
    (None, "volumetric", ["left without data"]),
    ("centroids", "volumetric", ["closest to the region's centroid", "inversely proportional"]),
    ("interpolate", "volumetric", ["every voxel of such a region"]),
    ("interpolate", "surface", ["every vertex of such a region"]),
])
def test_missing(missing, kind, phrases):
    atlas = dict(DK, kind=kind, space="fsaverage5" if kind == "surface" else "MNI152NLin6Asym")
    body = text(missing=missing, atlas=atlas)
    for phrase in phrases:
        assert phrase in body
    if missing:
        assert "only samples assigned to some region could serve" in body
        assert "only samples assigned" not in text(missing=missing, atlas=atlas,
                                                    norm_matched=False)


def test_atlas_info_present_or_absent():
    with_info = text(atlas=dict(DK, has_info=True))
    without = text(atlas=dict(DK, has_info=False))
    assert "respected hemisphere and tissue class" in with_info
    assert "matching ran unconstrained" in without
    assert "matching ran unconstrained" not in with_info
    notes = advisories(dict(atlas=dict(DK, has_info=False)))
    assert any("hemisphere/structure table" in n for n in notes)


@pytest.mark.parametrize("kind, tolerance, phrase", [
    ("volumetric", 2, "up to 2 mm"),
    ("volumetric", 3.5, "up to 3.5 mm"),
    ("volumetric", 0, "only if it fell inside a labelled voxel"),
    ("surface", 2, "plus 2 standard deviations"),
    ("surface", 0, "than the mean distance over the donor's cortical samples were"),
    ("surface", -4, "more than 4 mm from that vertex"),
])
def test_tolerance_volumetric_and_surface(kind, tolerance, phrase):
    atlas = dict(DK, kind=kind, space="fsaverage5" if kind == "surface" else "MNI152NLin6Asym")
    body = text(atlas=atlas, tolerance=tolerance)
    assert phrase in body
    assert ("only cortical samples" in body) == (kind == "surface")


@pytest.mark.parametrize("tolerance, surface_phrase, volume_phrase", [
    (2, "plus 2 standard deviations", "up to 2 mm"),
    (0, "than the mean distance over the donor's cortical samples were",
     "only if it fell inside a labelled voxel"),
])
def test_cifti_with_subcortical_voxels(tolerance, surface_phrase, volume_phrase):
    """A CIFTI with voxel brain models (HCP grayordinates): the methods describe both parts,
    the surface rule for cortical samples and the volume rule for the others."""
    atlas = dict(label="HCPMMP1", kind="surface", space="fsLR", n_regions=379,
                 volume_regions=19, has_info=True)
    body = text(atlas=atlas, tolerance=tolerance)
    assert "CIFTI grayordinate parcellation: 360 regions drawn on the fsLR cortical surface" \
        in body
    assert "19 subcortical regions drawn as voxels" in body
    assert f"On the surface, each cortical sample was assigned" in body and surface_phrase in body
    assert "In the volume, a sample" in body and volume_phrase in body
    assert "only cortical samples were considered" not in body
    assert not any("only cortical samples are used" in n
                   for n in advisories(dict(atlas=atlas, tolerance=tolerance)))
    plain = text(atlas=dict(atlas, volume_regions=0), tolerance=tolerance)
    assert "only cortical samples were considered" in plain and "voxel" not in plain


def test_spaces_and_atlases_are_cited():
    assert {"desikan2006", "evans2012"} <= set(cited())
    surface = cited(atlas=dict(label="Schaefer2018", kind="surface", space="fsaverage5"))
    assert {"schaefer2018", "fischl1999"} <= set(surface) and "desikan2006" not in surface
    fslr = cited(atlas=dict(label="HCPMMP1", kind="surface", space="fsLR"))
    assert {"glasser2016", "vanessen2012"} <= set(fslr)
    custom = methods_document(dict(atlas=dict(label="myatlas", references=["Doe J. 2024."])))
    assert "desikan2006" not in custom.keys and "Doe J. 2024." in custom.markdown()


def test_donor_native_atlas():
    body = text(atlas=dict(label="desikankilliany", kind="donor-native", n_regions=83,
                           has_info=True))
    assert "each donor's own MRI" in body and "native MRI space" in body
    assert "gorgolewski2014" not in cited(atlas=dict(label="dk", kind="donor-native"))


def test_corrected_mni_reannotated_ibf_and_similarity():
    assert "alleninf" in text(corrected_mni=True) and "gorgolewski2014" in cited()
    assert "supplied with the AHBA" in text(corrected_mni=False)
    assert "gorgolewski2014" not in cited(corrected_mni=False)
    assert "reannotation of" in text(reannotated=True)
    assert "those distributed with the AHBA" in text(reannotated=False)
    assert "at least 50% of the samples" in text(ibf_threshold=0.5)
    assert "at least 20% of the samples" in text(ibf_threshold=0.2)
    assert "in all samples" in text(ibf_threshold=1)
    assert "No intensity-based filtering" in text(ibf_threshold=0)
    assert "quackenbush2002" not in cited(ibf_threshold=0)
    assert "atypical expression profile" not in text()
    assert "more than 3 standard deviations below" in text(sim_threshold=3)


@pytest.mark.parametrize("region_agg, agg_metric, return_donors, phrase", [
    ("donors", "mean", False, "within each donor (by their mean)"),
    ("donors", "median", False, "within each donor (by their median)"),
    ("samples", "mean", False, "pooled across donors and combined by their mean"),
    ("samples", "median", False, "combined by their median"),
    ("donors", "mean", True, "one region-by-gene table per donor"),
])
def test_aggregation(region_agg, agg_metric, return_donors, phrase):
    assert phrase in text(region_agg=region_agg, agg_metric=agg_metric,
                          return_donors=return_donors)


def test_stability_threshold_and_preset():
    body = text(stability_threshold=0.2, preset="enigma-toolbox",
                preset_citations=["lariviere2021", "markello2021"])
    assert "genes below 0.2 were dropped" in body and '"enigma-toolbox" preset' in body
    assert {"hawrylycz2015", "lariviere2021"} <= set(cited(
        stability_threshold=0.2, preset="x", preset_citations=["lariviere2021"]))


def test_unused_references_are_absent_and_numbering_is_consistent():
    doc = methods_document(dict(atlas=DK))
    md = doc.markdown()
    for key in ("romerogarcia2018", "gryglewski2018", "parkes2017", "schaefer2018",
                "fischl1999", "lariviere2021", "fulcher2016"):
        assert key not in doc.keys
        assert load_references()[key].citation not in md
    body, refs = md.split("### References")
    used = {int(n) for group in re.findall(r"\[(\d+(?:, \d+)*)\]", body)
            for n in group.split(", ")}
    assert used == set(range(1, len(doc.references) + 1))
    assert [n for n, _ in doc.references] == list(range(1, len(doc.references) + 1))
    assert "[@" not in md


def test_every_option_combination_renders():
    grid = itertools.product(["diff_stability", "max_intensity"], [None, "bidirectional"],
                             [None, "centroids", "interpolate"], ["srs", None], [True, False],
                             ["volumetric", "surface", "donor-native"], [True, False])
    for probe, mirror, missing, norm, matched, kind, info in grid:
        body = text(probe_selection=probe, lr_mirror=mirror, missing=missing, sample_norm=norm,
                    gene_norm=norm, norm_matched=matched,
                    atlas=dict(label="x", kind=kind, has_info=info))
        assert "### References" in body and "{" not in body.replace("sum_{i < j}", "")


@pytest.mark.parametrize("name, value", [("probe_selection", "best"), ("lr_mirror", "up"),
                                         ("missing", "fill"), ("sample_norm", "quantile"),
                                         ("region_agg", "voxels"), ("donor_probes", "all")])
def test_invalid_options_name_the_value(name, value):
    with pytest.raises(ValueError, match=rf"{name}={value!r}.*allowed"):
        methods_text({name: value})


def test_abagen_arguments_are_accepted():
    body = methods_text(dict(atlas=dict(DK, has_info=False), atlas_info="atlas.csv",
                             data_dir="/data", verbose=1, n_proc=2, return_counts=True))
    assert "respected hemisphere and tissue class" in body
    with pytest.raises(ValueError, match="Unknown parameter.*'ibf'"):
        methods_text(dict(ibf=0.5))


def test_unknown_reference_key_is_an_error():
    with pytest.raises(ValueError, match="nobody1999"):
        methods_text(dict(preset="p", preset_citations=["nobody1999"]))


# ------------------------------------------------------------------------------------------------
# Numbers from the summary
# ------------------------------------------------------------------------------------------------
def test_summary_numbers_appear():
    summary = tiny_summary()
    body = methods_text(TINY_PARAMS, summary)
    counts = summary["counts"]
    matched = int(counts.to_numpy().sum())
    for phrase in ("Three of the six donors were used: donors 9861, 10021 and 12876",
                   "all male", "aged 24 to 57 years", "Together they contributed 45 tissue",
                   "discarded (three samples)", "This left 42 samples",
                   "leaving 45,821 of 58,692 probes", "(31,569 probes remained)",
                   "expression profiles for 15,633 genes",
                   f"In total, {matched} of the 42 samples",
                   "One of the six regions received no sample from any donor: frontalpole (R)",
                   "One gene whose normalised values were undefined",
                   "a table of six regions by 30 genes", "Only donors 9861 and 10021",
                   "Computations used Python 3.11"):
        assert phrase in body, phrase


def test_demographics_of_one_or_two_donors():
    one = methods_text(dict(donors=["15496"]))
    assert "Only one donor was used: donor 15496 (female; aged 49 years)." in one
    assert "This donor was sampled in the left hemisphere only" in one
    two = methods_text(dict(donors=["9861", "H0351.1009"]))
    assert "both male; aged 24 and 57 years" in two


def test_citation_markdown():
    md = citation_markdown(TINY_PARAMS, tiny_summary())
    assert md.startswith("# How to cite")
    assert "CC0" in md and "ahba-app" in md and "## Methods" in md
    assert methods_text(TINY_PARAMS, tiny_summary()).strip() in md
    assert "doi:10.1038/nature11405" in md


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def _svg_tree(svg: str):
    import xml.etree.ElementTree as ET

    return ET.fromstring(svg)  # well-formed XML, or this raises


def _embedded_pngs(svg: str) -> list[np.ndarray]:
    """The PNG images inlined in a figure, decoded (8-bit RGB or RGBA, no filter: what
    figures.png_bytes writes) to arrays."""
    import base64
    import struct
    import zlib

    images = []
    for data in re.findall(r'href="data:image/png;base64,([^"]+)"', svg):
        raw = base64.b64decode(data)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        width, height, depth, kind = struct.unpack(">IIBB", raw[16:26])
        assert depth == 8 and kind in (2, 6)
        pos, idat = 8, b""
        while pos < len(raw):
            (length,) = struct.unpack(">I", raw[pos:pos + 4])
            tag, body = raw[pos + 4:pos + 8], raw[pos + 8:pos + 8 + length]
            crc = struct.unpack(">I", raw[pos + 8 + length:pos + 12 + length])[0]
            assert zlib.crc32(tag + body) & 0xFFFFFFFF == crc
            idat += body if tag == b"IDAT" else b""
            pos += 12 + length
        channels = 3 if kind == 2 else 4
        rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, -1)
        assert (rows[:, 0] == 0).all()
        images.append(rows[:, 1:].reshape(height, width, channels))
    return images


def test_figures_are_svg_documents_with_unique_ids():
    s = tiny_summary()
    svgs = [figures.samples_per_region(s["counts"]),
            figures.sample_positions(s["sample_coords"], background=np.random.default_rng(0)
                                     .normal(0, 40, (500, 3)),
                                     empty_centroids=np.array([[10.0, 60, 0]])),
            figures.stability_histogram(s["probes"]["diff_stability"], threshold=0.2),
            figures.expression_heatmap(s["expression"], n_genes=10)]
    ids = []
    for svg in svgs:
        assert svg.startswith('<svg class="figure"') and svg.rstrip().endswith("</svg>")
        assert "<?xml" not in svg and "DOCTYPE" not in svg
        root = _svg_tree(svg)
        ids += [el.get("id") for el in root.iter() if el.get("id")]
    assert len(ids) == len(set(ids))  # four figures inlined in one page
    labels = [re.search(r'aria-label="([^"]+)"', svg).group(1) for svg in svgs]
    assert labels == ["samples-per-region", "sample-positions", "differential-stability",
                      "expression-heatmap"]


def test_samples_per_region_draws_bars_labels_and_empty_regions():
    counts = pd.DataFrame({"9861": [3, 0, 1], "10021": [2, 0, 0]}, index=[10, 20, 30])
    svg = figures.samples_per_region(counts, region_names={10: "a<b", 20: "insula L"})
    _svg_tree(svg)
    paths = re.findall(r'<path d="([^"]+)" fill="(#[0-9a-f]{6})"', svg)
    # one path of bars per donor, in the donor's colour: 2 bars of donor 9861, 1 of 10021
    assert [(fill, d.count("M")) for d, fill in paths] == [
        (figures.DONOR_COLORS["9861"], 2), (figures.DONOR_COLORS["10021"], 1)]
    assert "a&lt;b" in svg and "a<b" not in svg
    # the empty region: its name in bold red, a shaded column, and a legend entry
    assert re.search(r'fill="#d62728" text-anchor="end" font-weight="bold">insula L<', svg)
    assert svg.count('fill="#d62728" fill-opacity="0.12"') == 1
    assert ">no sample<" in svg and ">30<" in svg and ">donor 10021<" in svg


def test_sample_positions_paints_each_sample():
    coords = pd.DataFrame({"mni_x": [-30.0, 30.0, 0.0], "mni_y": [0.0, 0.0, 40.0],
                           "mni_z": [0.0, 10.0, 20.0], "label": [1, 2, 0]})
    svg = figures.sample_positions(coords, empty_centroids=np.array([[0.0, -20, 0]]))
    _svg_tree(svg)
    images = _embedded_pngs(svg)
    assert len(images) == 3 and all(im.shape[2] == 3 for im in images)
    palette = figures._region_palette([1, 2])
    for image in images:
        colors = {tuple(int(c) for c in px) for px in image.reshape(-1, 3)}
        for region in (1, 2):
            assert tuple(int(palette[region][i:i + 2], 16) for i in (1, 3, 5)) in colors
        assert len(colors) == 4  # white, two regions, the grey of the unassigned sample
    assert svg.count('stroke="#d62728"') == 3 + 1  # a ring per view, and the legend's
    assert ">unassigned sample<" in svg and ">Coronal<" in svg


def test_stability_histogram_counts_genes_below_the_threshold():
    svg = figures.stability_histogram([0.1, 0.2, 0.5, np.nan, "x"], threshold=0.3)
    _svg_tree(svg)
    assert ">threshold 0.3<" in svg and ">2 genes below<" in svg
    assert ">median 0.20<" in svg
    assert svg.count('stroke-dasharray') == 1


def test_expression_heatmap_colours_values_and_marks_missing_regions():
    table = pd.DataFrame({"g1": [0.0, 1.0, np.nan], "g2": [2.0, 0.5, np.nan]}, index=[1, 2, 3])
    svg = figures.expression_heatmap(table, n_genes=2, value_label="z <score>")
    _svg_tree(svg)
    heat, bar = _embedded_pngs(svg)
    # the heat map, cells scaled up: genes (rows) by regions (columns)
    ky, kx = heat.shape[0] // 2, heat.shape[1] // 3
    cells = heat[::ky, ::kx][:2, :3]
    assert (cells[:, 2] == [0xd5, 0xd8, 0xdc]).all()  # region 3: no data
    # g2 peaks in region 1: shown first; its 2.0 is the largest value shown, g1's 0.0 the least
    assert tuple(cells[0, 0]) == (0xfd, 0xe7, 0x25) and tuple(cells[1, 0]) == (0x44, 0x01, 0x54)
    assert ">g2<" in svg.split(">g1<")[0]
    assert tuple(bar[0, 0]) == (0xfd, 0xe7, 0x25) and tuple(bar[-1, 0]) == (0x44, 0x01, 0x54)
    assert "z &lt;score&gt;" in svg


def test_tick_labels_are_round_numbers():
    values, labels = figures._ticks(0, 630, 8)
    assert labels == ["0", "100", "200", "300", "400", "500", "600"]
    values, labels = figures._ticks(-0.13, 1.02)
    assert labels == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert figures._ticks(-82, 83, 7)[1] == ["\u221275", "\u221250", "\u221225", "0", "25",
                                             "50", "75"]
    assert figures._ticks(0, 1.25, 5)[1] == ["0.00", "0.25", "0.50", "0.75", "1.00", "1.25"]


def test_png_bytes_round_trip():
    image = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    svg = f'<image xlink:href="data:image/png;base64,' \
          f'{__import__("base64").b64encode(figures.png_bytes(image)).decode()}"/>'
    assert (_embedded_pngs(svg)[0] == image).all()
    with pytest.raises(ValueError, match="3 or 4 channels"):
        figures.png_bytes(np.zeros((2, 2, 2), np.uint8))


def test_top_variable_genes():
    table = pd.DataFrame({"flat": [1.0, 1.0, 1.0], "peak3": [0, 0, 5.0], "peak1": [4.0, 0, 0]},
                         index=[1, 2, 3])
    top = figures.top_variable_genes(table, n=2)
    assert list(top.columns) == ["peak1", "peak3"]


@pytest.mark.parametrize("block", [2048, 7])
def test_column_variances_are_pandas_var_bit_for_bit(monkeypatch, block):
    """The heat map's ranking: the same variances as DataFrame.var (ties and NaN included),
    in either memory layout, with empty regions, constant genes and genes with one value, in
    one block or in blocks of 7 genes on two threads."""
    monkeypatch.setattr(figures, "_VARIANCE_COLUMNS", block)
    monkeypatch.setenv("AHBA_APP_THREADS", "2")
    rng = np.random.default_rng(3)
    values = np.round(rng.normal(5, 2, (300, 40)), 2)  # rounding makes equal variances likely
    values[[4, 90, 200]] = np.nan  # empty regions
    values[:, 3] = 7.0  # constant gene
    values[1:, 5] = np.nan  # one value only: NaN variance
    values[:, 6] = np.nan
    values[10:20, 7] = np.nan
    values[:, 8] = values[::-1, 9]  # the same values in another order: equal up to rounding
    for order in "CF":
        table = pd.DataFrame(np.asarray(values, order=order),
                             columns=[f"g{i}" for i in range(40)])
        expected = table.var(axis=0, skipna=True).to_numpy()
        got = figures._column_variances(table.to_numpy())
        assert np.array_equal(np.isnan(expected), np.isnan(got))
        finite = ~np.isnan(expected)
        assert (expected[finite].view(np.int64) == got[finite].view(np.int64)).all()
        ranked = table.var().fillna(-np.inf).sort_values(ascending=False, kind="stable")
        for n in (1, 12, 35):
            assert set(figures.top_variable_genes(table, n=n).columns) == set(ranked.index[:n])


def test_the_report_imports_no_plotting_library():
    s = tiny_summary()
    code = ("import sys, pickle\n"
            "from ahba_app.report import render_report\n"
            "params, summary = pickle.loads(sys.stdin.buffer.read())\n"
            "html = render_report(params, summary, brain_outline=False)\n"
            "print(html.count('<svg class=\"figure\"'), 'matplotlib' in sys.modules)")
    import pickle

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                         input=pickle.dumps((TINY_PARAMS, s)))
    assert out.stdout.decode().split() == ["4", "False"]


# ------------------------------------------------------------------------------------------------
# The HTML report
# ------------------------------------------------------------------------------------------------
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class _Checker(HTMLParser):
    """Collects ids, assets and nesting errors of a page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.ids, self.assets, self.tags = [], [], [], [], []
        self.links = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        for name in ("src", "href", "data", "poster"):
            if name in attrs and not (tag == "a" and name == "href"):
                self.assets.append((tag, attrs[name]))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        for name in ("src", "href", "xlink:href"):
            if name in attrs:
                self.assets.append((tag, attrs[name]))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def page() -> str:
    return render_report(TINY_PARAMS, tiny_summary(), title="Tiny <test> report",
                         generated="2026-01-01 00:00 UTC")


def _check(html: str) -> _Checker:
    checker = _Checker()
    checker.feed(html)
    checker.close()
    return checker


def test_html_is_well_formed_and_has_every_section(page):
    from ahba_app.report.html import SECTIONS

    assert page.startswith("<!DOCTYPE html>")
    checker = _check(page)
    assert checker.errors == [] and checker.stack == []
    assert len(checker.ids) == len(set(checker.ids)), "duplicate ids"
    for section, _ in SECTIONS:
        assert section in checker.ids and f"#{section}" in checker.links
    for fig in ("fig-counts", "fig-positions", "fig-stability", "fig-expression"):
        assert fig in checker.ids
    assert "Tiny &lt;test&gt; report" in page


def test_html_is_self_contained(page):
    checker = _check(page)
    for tag, url in checker.assets:
        assert not re.match(r"(https?:)?//", url), f"external asset <{tag}> {url}"
    assert "@import" not in page and not re.search(r"url\(\s*['\"]?(https?:)?//", page)
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=\"(https?:)?//", page)
    assert page.count('<svg class="figure"') == 4
    assert "could not be drawn" not in page
    assert "<script>" in page  # the copy button: inline, no external script


def test_html_content(page):
    checker = _check(page)
    assert 'href="https://doi.org/10.1038/nature11405"' in page
    assert any(link.startswith("#ref-") for link in checker.links)
    assert "ref-1" in checker.ids
    assert "CC0" in page and "Copy as Markdown" in page
    assert "data:text/markdown" in page
    assert "frontalpole" in page and "no data" in page  # the empty region, listed
    assert "Region 6 (frontalpole R) matched no sample." in page  # the run's warning
    assert "45,821" in page and "15,633" in page  # the probe / gene flow
    assert "ahba-app in out participant" in page  # provenance
    assert 'class="changed"' not in page  # TINY_PARAMS keeps abagen's defaults


def test_changed_parameters_are_highlighted():
    html = render_report(dict(TINY_PARAMS, lr_mirror="bidirectional", sample_norm="rs"))
    rows = re.findall(r'<tr class="changed">\s*<td><code>(\w+)</code>', html)
    assert rows == ["lr_mirror", "sample_norm"]


def test_messages_are_escaped():
    html = render_report(TINY_PARAMS, dict(warnings=["<script>alert(1)</script>"],
                                           errors=["bad & worse"]))
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "bad &amp; worse" in html and "message error" in html


def test_report_without_summary():
    html = render_report(dict(atlas=DK))
    checker = _check(html)
    assert checker.errors == []
    assert "written from the parameters alone" in html
    assert html.count('<svg class="figure"') == 0 and html.count('class="fig-missing"') == 4
    assert "No sample counts were given" in html


def test_report_with_donor_level_expression():
    expr = tiny_summary()["expression"]
    summary = dict(expression={"9861": expr, "10021": expr * 0.5})
    html = render_report(dict(TINY_PARAMS, return_donors=True), summary)
    assert html.count('<svg class="figure"') == 1 and "averaged for display" in html
    assert "one region-by-gene table per donor" in html


def test_write_report_is_atomic(tmp_path):
    target = tmp_path / "sub" / "report.html"
    path = write_report(target, TINY_PARAMS, None)
    assert path == target and target.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]


def test_summary_accepts_dataclasses():
    params = ReportParameters(atlas=DK, missing="centroids")
    summary = RunSummary(**tiny_summary(), filled_regions=[6])
    body = methods_text(params, summary)
    assert "One region was filled this way" in body


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_a_headless_browser(tmp_path, page):
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    shot = tmp_path / "shot.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_filled_regions_are_listed_as_filled():
    tiny = tiny_summary()
    html = render_report(dict(TINY_PARAMS, missing="centroids"),
                         dict(counts=tiny["counts"], region_info=tiny["region_info"],
                              filled_regions=[6]))
    assert "filled (centroids)" in html and "One region was filled this way" in html
    html = render_report(dict(TINY_PARAMS, missing="interpolate"),
                         dict(counts=tiny["counts"], filled_regions=[]))
    assert "could not be filled" in html and "No region could be filled this way" in html
