"""Shared pieces of the samples/probes parity tests (tests/test_samples.py, tests/test_probes.py).

* :func:`load_dataset` reads a synthetic dataset with :mod:`ahba_app.io` once per process;
* :func:`edge_dataset` writes a copy of a few donors of ``ahba_small`` in which some probes are
  constant or duplicated, to pin down how ties and undefined statistics are resolved;
* :func:`abagen_reference` runs abagen 0.1.3's samples and probes stages for every case of
  :func:`reference_cases` in one oracle subprocess. The results are kept on disk (beside the
  synthetic data, keyed by a hash of the snippet, the oracle preamble, the cases and the data
  stamps), so abagen runs once per change of any of these, not once per test session.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

DONOR_IDS = ("9861", "10021", "12876", "14380", "15496", "15697")
EDGE_DONORS = ("9861", "10021", "12876")
SELECTIONS = ("average", "max_intensity", "max_variance", "pc_loading", "corr_intensity",
              "corr_variance", "diff_stability", "rnaseq")
PER_DONOR = ("max_intensity", "max_variance", "pc_loading", "corr_intensity", "corr_variance")
ALL_COMBOS = tuple([(m, "aggregate") for m in SELECTIONS]
                   + [(m, dp) for m in PER_DONOR for dp in ("independent", "common")])
# bump when the edge dataset's recipe changes
EDGE_VERSION = "1"


def _stamp(root: Path) -> str:
    stamp = Path(root) / ".complete"
    return stamp.read_text() if stamp.exists() else "?"


# --------------------------------------------------------------------------------------------
# our side
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def load_dataset(root: str, donors: tuple = DONOR_IDS) -> dict:
    """Every file of a synthetic dataset as ahba_app.io reads it (once per process)."""
    from ahba_app import io

    root = Path(root)
    out = {"microarray": {}, "pacall": {}, "annotation": {}, "ontology": None, "probes": None,
           "rnaseq": {}}
    for donor in donors:
        folder = root / "microarray" / f"normalized_microarray_donor{donor}"
        out["microarray"][donor] = io.read_microarray(folder / "MicroarrayExpression.csv")
        out["pacall"][donor] = io.read_pacall(folder / "PACall.csv")
        out["annotation"][donor] = io.read_annotation(folder / "SampleAnnot.csv")
        if out["ontology"] is None:
            out["ontology"] = io.read_ontology(folder / "Ontology.csv")
            out["probes"] = io.read_probes(folder / "Probes.csv")
    for donor in ("9861", "10021"):
        folder = root / "rnaseq" / f"rnaseq_donor{donor}"
        if folder.exists():
            out["rnaseq"][donor] = {"tpm": io.read_tpm(folder / "RNAseqTPM.csv"),
                                    "annotation": io.read_annotation(folder / "SampleAnnot.csv")}
    return out


def run_ours(data: dict, case: dict):
    """Our sample and probe-filtering stages for one case: (probe table, samples, filtered)."""
    from ahba_app import probes, samples

    info = probes.prepare_probes(data["probes"], reannotated=case["reannotated"])
    annots = {}
    for donor in data["microarray"]:
        annot = samples.prepare_samples(data["annotation"][donor], data["ontology"],
                                        corrected_mni=case["corrected_mni"],
                                        lr_mirror=case["lr_mirror"])
        if case["sim_threshold"] is not None:
            annot = samples.similarity_threshold(data["microarray"][donor], annot, info,
                                                 threshold=case["sim_threshold"])
        annots[donor] = annot
    filtered = probes.filter_probes(data["pacall"], annots, info,
                                    threshold=case["ibf_threshold"])
    return info, annots, filtered


def expression_differences(ours: dict, selected: pd.DataFrame | None, reference: dict,
                           rtol: float = 1e-6) -> list:
    """How our per-donor samples x genes frames differ from abagen's (empty when they agree).

    Compared: genes (and their order), sample index, the probe chosen for every gene (from our
    selection table and the probe ids abagen's run recorded), column sums, and every value
    where abagen's were kept (the first samples of the first donor).
    """
    problems = []
    if list(ours) != list(reference):
        return [f"donors {list(ours)} != {list(reference)}"]
    for donor, frame in ours.items():
        ref = reference[donor]
        genes, ref_genes = list(frame.columns), list(ref["columns"])
        if genes != ref_genes:
            extra = sorted(set(genes) - set(ref_genes))[:5]
            missing = sorted(set(ref_genes) - set(genes))[:5]
            problems.append(f"donor {donor}: {len(genes)} genes vs {len(ref_genes)} "
                            f"(ours only {extra}, abagen only {missing}, or order differs)")
            continue
        if not np.array_equal(np.asarray(frame.index), ref["index"]):
            problems.append(f"donor {donor}: sample index differs")
            continue
        if selected is not None and (ref["probes"] >= 0).any():
            rows = selected[selected["donor"].isin([str(donor), "all"])]
            ours_ids = rows.set_index("gene_symbol")["probe_id"].reindex(genes)
            differ = ours_ids.to_numpy(dtype=np.int64, na_value=-1) != ref["probes"]
            if differ.any():
                which = np.flatnonzero(differ)[:5]
                problems.append(f"donor {donor}: other probes chosen for {int(differ.sum())} "
                                f"gene(s), e.g. " + ", ".join(
                                    f"{genes[i]}: ours {ours_ids.iloc[i]} abagen "
                                    f"{ref['probes'][i]}" for i in which))
        values = frame.to_numpy(dtype=np.float64)
        sums_ok = np.isclose(values.sum(axis=0), ref["sums"], rtol=rtol, atol=0)
        if not sums_ok.all():
            problems.append(f"donor {donor}: column sums differ for "
                            f"{[genes[i] for i in np.flatnonzero(~sums_ok)[:5]]}")
        if ref["values"] is not None:
            bad = ~np.isclose(values[:len(ref["values"])], ref["values"], rtol=rtol, atol=0)
            if bad.any():
                cols = np.flatnonzero(bad.any(axis=0))
                problems.append(f"donor {donor}: {len(cols)} gene(s) with other values, e.g. "
                                f"{[genes[c] for c in cols[:5]]}")
    return problems


# --------------------------------------------------------------------------------------------
# an edge-case copy of the synthetic data
# --------------------------------------------------------------------------------------------
def _edge_probes(root: Path) -> dict:
    """Probe ids to tamper with, chosen from genes of the reannotated table with 2 and >=3
    probes that pass the intensity filter in the synthetic data."""
    from ahba_app.datasets import load_reannotated

    folder = root / "microarray" / "normalized_microarray_donor9861"
    probes = pd.read_csv(folder / "Probes.csv", index_col=0)
    table = load_reannotated().dropna(subset=["entrez_id"])
    table = table[table["probe_name"].isin(probes["probe_name"])]
    ids = pd.Series(probes.index, index=probes["probe_name"])
    table = table.assign(probe_id=ids.loc[table["probe_name"]].to_numpy()).sort_values("probe_id")
    by_gene = table.groupby("gene_symbol")["probe_id"].apply(list)
    sizes = by_gene.map(len)
    multi = sorted(by_gene[sizes >= 3].index)
    pairs = sorted(by_gene[sizes == 2].index)
    singles = sorted(by_gene[sizes == 1].index)
    return {
        # every probe of these genes is made present in every sample, so all pass the filter
        "genes": [multi[0], multi[1], multi[2], pairs[0], singles[0]],
        "all_probes": [p for g in (multi[0], multi[1], multi[2], pairs[0], singles[0])
                       for p in by_gene[g]],
        # the second probe of a >=3-probe gene is constant: its correlations are undefined
        "constant_in_gene": by_gene[multi[0]][1],
        # every probe of another >=3-probe gene is constant (different levels)
        "all_constant": by_gene[multi[1]],
        # the two probes of a 2-probe gene are identical: every method faces a tie
        "duplicate": by_gene[pairs[0]],
        # a 3+-probe gene whose first two probes are identical
        "duplicate_in_gene": by_gene[multi[2]][:2],
        # a single-probe gene that is constant: its differential stability is undefined
        "constant_single": by_gene[singles[0]][0],
    }


def edge_dataset(ahba_small: Path) -> Path:
    """A copy of donors 9861, 10021 and 12876 of ``ahba_small`` with tampered probes."""
    target = Path(ahba_small).parent / f"{Path(ahba_small).name}-edge-v{EDGE_VERSION}"
    with FileLock(str(target) + ".lock"):
        stamp = target / ".complete"
        wanted = f"{_stamp(ahba_small)}/{EDGE_VERSION}"
        if stamp.exists() and stamp.read_text() == wanted:
            return target
        if target.exists():
            shutil.rmtree(target)
        work = target.with_name(target.name + ".tmp")
        if work.exists():
            shutil.rmtree(work)
        picks = _edge_probes(Path(ahba_small))
        for donor in EDGE_DONORS:
            name = f"normalized_microarray_donor{donor}"
            src, dst = Path(ahba_small) / "microarray" / name, work / "microarray" / name
            dst.mkdir(parents=True)
            for f in ("Ontology.csv", "Probes.csv", "SampleAnnot.csv"):
                shutil.copy(src / f, dst / f)
            micro = pd.read_csv(src / "MicroarrayExpression.csv", header=None, index_col=0)
            pacall = pd.read_csv(src / "PACall.csv", header=None, index_col=0)
            micro.loc[picks["constant_in_gene"]] = 7.25
            for level, pid in enumerate(picks["all_constant"]):
                micro.loc[pid] = 6.5 + level
            micro.loc[picks["duplicate"][1]] = micro.loc[picks["duplicate"][0]].to_numpy()
            a, b = picks["duplicate_in_gene"]
            micro.loc[b] = micro.loc[a].to_numpy()
            micro.loc[picks["constant_single"]] = 8.0
            pacall.loc[picks["all_probes"]] = 1
            micro.to_csv(dst / "MicroarrayExpression.csv", header=False, float_format="%.6f")
            pacall.to_csv(dst / "PACall.csv", header=False)
        shutil.copytree(Path(ahba_small) / "rnaseq", work / "rnaseq")
        (work / "edge_probes.json").write_text(json.dumps(picks, default=int))
        work.rename(target)
        stamp.write_text(wanted)
    return target


# --------------------------------------------------------------------------------------------
# abagen's side
# --------------------------------------------------------------------------------------------
#: abagen's samples and probes stages on the synthetic files, for every case in PARAMS["cases"].
ORACLE_SNIPPET = r'''
import types
import scipy.stats as _scipy_stats
from abagen import io, samples_, probes_
import abagen.datasets as adatasets

# record which probes abagen picks: the frames _groupby_and_apply returns are still indexed by
# probe id, and 'common' keeps the scipy.stats.mode of the per-donor picks
PICKS, MODES = [], []
KEEP_ROWS = 40  # values kept in full: the first donor's first samples
_groupby_and_apply = probes_._groupby_and_apply

def _recording_groupby_and_apply(*args, **kwargs):
    out = _groupby_and_apply(*args, **kwargs)
    PICKS.append([int(c) for c in next(iter(out.values())).columns])
    return out

def _recording_mode(*args, **kwargs):
    res = _scipy_stats.mode(*args, **kwargs)
    MODES.append([int(c) for c in np.atleast_1d(np.squeeze(res[0]))])
    return res

probes_._groupby_and_apply = _recording_groupby_and_apply
probes_.sstats = types.SimpleNamespace(mode=_recording_mode)

def _local_rnaseq(root):
    def fetch(data_dir=None, donors=None, **kwargs):
        wanted = ["9861", "10021"] if donors is None else [str(d) for d in donors]
        keys = [("genes", "Genes.csv"), ("ontology", "Ontology.csv"),
                ("counts", "RNAseqCounts.csv"), ("tpm", "RNAseqTPM.csv"),
                ("annotation", "SampleAnnot.csv")]
        return {d: {k: str(root / "rnaseq" / f"rnaseq_donor{d}" / f) for k, f in keys}
                for d in ["9861", "10021"] if d in wanted}
    return fetch

def compact(frames, method, donor_probes, symbols):
    donors = list(frames)
    if method in ("average", "mean"):
        picks = {d: None for d in donors}
    elif donor_probes == "common":
        picks = {d: MODES[-1] for d in donors}
    elif donor_probes == "independent":
        picks = dict(zip(donors, PICKS))
    else:
        picks = {d: PICKS[-1] for d in donors}
    out = {}
    for n, (d, e) in enumerate(frames.items()):
        by_gene = ({} if picks[d] is None
                   else {symbols[p]: p for p in picks[d]})
        values = np.asarray(e, dtype=np.float64)
        out[d] = dict(index=np.asarray(e.index), columns=np.asarray(e.columns, dtype=object),
                      probes=np.array([by_gene.get(g, -1) for g in e.columns]),
                      sums=values.sum(axis=0),
                      values=values[:KEEP_ROWS] if n == 0 else None)
    return out

loaded = {}
for case in PARAMS["cases"]:
    name, root = case["name"], Path(case["data_dir"])
    key = (str(root), tuple(case["donors"]))
    if key not in loaded:
        files = adatasets.fetch_microarray(data_dir=str(root), donors=case["donors"], verbose=0)
        loaded[key] = (files,
                       {d: io.read_microarray(f["microarray"]) for d, f in files.items()},
                       {d: io.read_pacall(f["pacall"]) for d, f in files.items()},
                       io.read_probes(files[case["donors"][0]]["probes"]))
    files, micro, pacall, raw_probes = loaded[key]
    probes_.datasets.fetch_rnaseq = _local_rnaseq(root)

    info = probes_.reannotate_probes(raw_probes) if case["reannotated"] else raw_probes
    info = info.dropna(subset=["entrez_id"])
    annots = {}
    for d, f in files.items():
        annot = samples_.update_coords(f["annotation"], corrected_mni=case["corrected_mni"])
        if case["lr_mirror"] is not None:
            annot = samples_.mirror_samples(annot, f["ontology"], swap=case["lr_mirror"])
        annot = samples_.drop_mismatch_samples(annot, f["ontology"])
        if case["sim_threshold"] is not None:
            annot = samples_.similarity_threshold(micro[d], annot, info,
                                                  threshold=case["sim_threshold"])
        annots[d] = annot
    save(name + "__annotation", annots)
    save(name + "__probe_info", np.asarray(info.index))
    for ibf in case.get("ibf_extra", []):
        kept = probes_.filter_probes(pacall, annots, info, threshold=ibf)
        save(name + "__ibf_" + str(ibf), np.asarray(kept.index))
    if not case["methods"]:
        continue
    filtered = probes_.filter_probes(pacall, annots, info, threshold=case["ibf_threshold"])
    save(name + "__filtered", np.asarray(filtered.index))
    symbols = filtered["gene_symbol"].to_dict()
    for method, donor_probes in case["methods"]:
        key = name + "__" + method + "__" + donor_probes
        PICKS.clear()
        MODES.clear()
        try:
            out = probes_.collapse_probes(dict(micro), annots, filtered, method=method,
                                          donor_probes=donor_probes)
            save(key, compact(out, method, donor_probes, symbols))
        except Exception as err:
            save(key, "ERROR " + type(err).__name__ + ": " + str(err))
'''


def _case(name, donors=DONOR_IDS, *, edge=False, corrected_mni=True, reannotated=True,
          lr_mirror=None, sim_threshold=None, ibf_threshold=0.5, ibf_extra=(), methods=()):
    return dict(name=name, edge=edge, donors=list(donors), corrected_mni=corrected_mni,
                reannotated=reannotated, lr_mirror=lr_mirror, sim_threshold=sim_threshold,
                ibf_threshold=ibf_threshold, ibf_extra=list(ibf_extra),
                methods=[list(m) for m in methods])


_SOME = (("diff_stability", "aggregate"), ("average", "aggregate"), ("pc_loading", "common"),
         ("corr_variance", "independent"), ("rnaseq", "aggregate"))

#: Every case compared with abagen; sample-only cases have no methods. ``edge`` cases run on
#: :func:`edge_dataset`, the others on ``ahba_small``.
CASES = (
    # sample stage: every lr_mirror mode with corrected and original coordinates
    *[_case(f"samples-{'corrected' if corrected else 'original'}-{mirror}",
            corrected_mni=corrected, lr_mirror=mirror)
      for corrected in (True, False) for mirror in (None, "bidirectional", "leftright",
                                                    "rightleft")],
    _case("samples-sim1", sim_threshold=1.0),
    _case("samples-sim2-mirror", lr_mirror="bidirectional", sim_threshold=2.0,
          corrected_mni=False),
    # probes: every method and donor_probes mode on two opposite configurations
    _case("default", ibf_extra=(0.0, 0.25, 0.9, 1.0), methods=ALL_COMBOS),
    _case("original-bidirectional-sim", corrected_mni=False, reannotated=False,
          lr_mirror="bidirectional", sim_threshold=2.0, ibf_extra=(0.3,), methods=ALL_COMBOS),
    _case("leftright", lr_mirror="leftright", ibf_threshold=0.3, methods=_SOME),
    _case("rightleft-original", lr_mirror="rightleft", corrected_mni=False, reannotated=False,
          ibf_threshold=0.7, methods=_SOME),
    # constant and duplicated probes (three donors)
    _case("edge", EDGE_DONORS, edge=True, methods=ALL_COMBOS),
)
CASES_BY_NAME = {c["name"]: c for c in CASES}


def reference_cases(ahba_small: Path, edge: Path) -> list[dict]:
    """:data:`CASES` with the folder each one reads."""
    return [dict(c, data_dir=str(edge if c["edge"] else ahba_small)) for c in CASES]


def _cache_root() -> Path:
    repo = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("AHBA_TEST_CACHE", repo / ".cache"))


def abagen_reference(ahba_small: Path, workdir: Path) -> tuple[dict, dict]:
    """(cases by name, abagen's results by key), computed once and kept on disk."""
    import oracle

    edge = edge_dataset(ahba_small)
    cases = reference_cases(ahba_small, edge)
    key_text = json.dumps({"snippet": ORACLE_SNIPPET, "preamble": oracle._PREAMBLE,
                           "cases": cases, "data": [_stamp(ahba_small), _stamp(edge)]},
                          sort_keys=True)
    digest = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    target = _cache_root() / f"oracle-samples-probes-{digest}.pkl"
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.exists():
            results = oracle.run_abagen(ORACLE_SNIPPET, workdir, cases=cases)
            tmp = target.with_name(target.name + ".tmp")
            with open(tmp, "wb") as handle:
                pickle.dump(results, handle)
            os.replace(tmp, target)
        with open(target, "rb") as handle:
            results = pickle.load(handle)
    return {c["name"]: c for c in cases}, results
