"""keep_stable_genes, differential_stability and remove_distance, checked against abagen 0.1.3."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ahba_app.correct import (atlas_centroids, column_correlations, differential_stability,
                              keep_stable_genes, remove_distance, volume_centroids)
from ahba_app.datasets import data_path
from oracle import run_abagen

pytestmark = pytest.mark.filterwarnings("ignore:numpy.core:DeprecationWarning")

SEED = 99
N_REGIONS, N_GENES = 20, 40
CONSTANT_IN_DONOR_3, NAN_CELL_IN_DONOR_0, TIED = 5, 7, 9
STABILITY_CASES = [(0.9, True, True), (0.5, True, False), (0.1, False, True),
                   (0.3, False, False)]
DK_IMAGE = data_path("atlas-desikankilliany.nii.gz")
DK_INFO = data_path("atlas-desikankilliany.csv")


def _region_tables():
    rng = np.random.default_rng(SEED)
    pattern = rng.normal(size=(N_REGIONS, N_GENES))
    noise = np.linspace(0.1, 3.0, N_GENES)
    arrays = [pattern + rng.normal(size=pattern.shape) * noise for _ in range(4)]
    arrays[1][[2, 3]] = np.nan                       # regions no sample of donor 1 reached
    arrays[2][9] = np.nan
    arrays[3][:, CONSTANT_IN_DONOR_3] = 0.5
    arrays[0][4, NAN_CELL_IN_DONOR_0] = np.nan
    for a in arrays:
        a[:, TIED] = np.round(a[:, TIED])
    return arrays


def _frames(arrays):
    index = pd.Index(np.arange(1, N_REGIONS + 1), name="label")
    columns = pd.Index([f"G{g}" for g in range(N_GENES)], name="gene_symbol")
    return [pd.DataFrame(a, index=index, columns=columns) for a in arrays]


def _coexpression(n, seed):
    return np.corrcoef(np.random.default_rng(seed).normal(size=(n, 50)))


SNIPPET = r'''
from abagen import correct

index = pd.Index(np.arange(1, PARAMS["n_regions"] + 1), name="label")
columns = pd.Index([f"G{g}" for g in range(PARAMS["n_genes"])], name="gene_symbol")
frames = [pd.DataFrame(np.load(p), index=index, columns=columns) for p in PARAMS["tables"]]
for threshold, percentile, rank in PARAMS["cases"]:
    kept, stability = correct.keep_stable_genes(frames, threshold=threshold,
                                                percentile=percentile, rank=rank,
                                                return_stability=True)
    key = f"{threshold}-{percentile}-{rank}"
    save(f"kept-{key}", kept)
    save(f"stability-{key}", pd.Series(stability))

full = np.load(PARAMS["coexpression_full"])
save("distance-all", pd.DataFrame(correct.remove_distance(full, PARAMS["atlas"])))
subset = np.load(PARAMS["coexpression_subset"])
save("distance-subset", pd.DataFrame(correct.remove_distance(subset, PARAMS["atlas"],
                                                             labels=PARAMS["subset"])))
save("distance-info", pd.DataFrame(correct.remove_distance(full, PARAMS["atlas"],
                                                           atlas_info=PARAMS["info"])))
'''

SUBSET = list(range(1, 35))  # left cortex


@pytest.fixture(scope="module")
def tables():
    return _region_tables()


@pytest.fixture(scope="module")
def oracle(tables, tmp_path_factory):
    work = tmp_path_factory.mktemp("oracle-correct")
    paths = []
    for n, a in enumerate(tables):
        np.save(work / f"table{n}.npy", a)
        paths.append(str(work / f"table{n}.npy"))
    np.save(work / "full.npy", _coexpression(83, 1))
    np.save(work / "subset.npy", _coexpression(len(SUBSET), 2))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(work))
        return run_abagen(SNIPPET, work, tables=paths, n_regions=N_REGIONS, n_genes=N_GENES,
                          cases=STABILITY_CASES, coexpression_full=str(work / "full.npy"),
                          coexpression_subset=str(work / "subset.npy"), subset=SUBSET,
                          atlas=str(DK_IMAGE), info=str(DK_INFO))


# ---------------------------------------------------------------------------------------------
# parity with abagen
# ---------------------------------------------------------------------------------------------

@pytest.mark.oracle
@pytest.mark.parametrize("threshold, percentile, rank", STABILITY_CASES)
def test_keep_stable_genes_matches_abagen(threshold, percentile, rank, tables, oracle):
    key = f"{threshold}-{percentile}-{rank}"
    kept, stability = keep_stable_genes(_frames(tables), threshold=threshold,
                                        percentile=percentile, rank=rank,
                                        return_stability=True)
    np.testing.assert_allclose(stability, oracle[f"stability-{key}"].to_numpy(), rtol=1e-6,
                               atol=1e-12)
    assert 0 < kept[0].shape[1] < N_GENES
    for ours, theirs in zip(kept, oracle[f"kept-{key}"]):
        pd.testing.assert_frame_equal(ours, theirs, check_column_type=False,
                                      check_index_type=False)


@pytest.mark.oracle
def test_remove_distance_matches_abagen(oracle):
    ours = remove_distance(_coexpression(83, 1), DK_IMAGE)
    np.testing.assert_allclose(ours, oracle["distance-all"].to_numpy(), rtol=1e-6, atol=1e-9)
    subset = remove_distance(_coexpression(len(SUBSET), 2), str(DK_IMAGE), labels=SUBSET)
    np.testing.assert_allclose(subset, oracle["distance-subset"].to_numpy(), rtol=1e-6,
                               atol=1e-9)


@pytest.mark.oracle
def test_remove_distance_with_atlas_info_differs_from_abagen(oracle):
    """abagen renames 'subcortex' to 'subcortex/brainstem' when it checks atlas_info and then
    looks for the classes 'cortex' and 'subcortex': every pair involving a non-cortical region
    is never residualized and comes back as 0. Ours residualizes each kind of pair (here
    cortex-cortex, cortex-subcortex/brainstem, subcortex/brainstem-subcortex/brainstem) on its
    own."""
    coexpression = _coexpression(83, 1)
    theirs = oracle["distance-info"].to_numpy()
    ours = remove_distance(coexpression, DK_IMAGE, atlas_info=DK_INFO)
    info = pd.read_csv(DK_INFO).set_index("id").loc[np.arange(1, 84)]
    cortex = (info["structure"] == "cortex").to_numpy()
    off_diagonal = ~np.eye(83, dtype=bool)
    assert np.all(theirs[~np.outer(cortex, cortex) & off_diagonal] == 0)
    np.testing.assert_allclose(ours[np.ix_(cortex, cortex)], theirs[np.ix_(cortex, cortex)],
                               rtol=1e-6, atol=1e-9)
    # the other blocks: an ordinary least-squares fit of each block on distance
    centroids = volume_centroids(DK_IMAGE)
    points = np.vstack([centroids[lab] for lab in range(1, 84)])
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    upper = np.triu(np.ones((83, 83), dtype=bool), k=1)
    for block in (np.outer(cortex, ~cortex) | np.outer(~cortex, cortex),
                  np.outer(~cortex, ~cortex)):
        pairs = block & upper
        slope, intercept = np.polyfit(distance[pairs], coexpression[pairs], 1)
        expected = coexpression[pairs] - (slope * distance[pairs] + intercept)
        np.testing.assert_allclose(ours[pairs], expected, atol=1e-9)
    np.testing.assert_allclose(ours, ours.T)
    np.testing.assert_array_equal(np.diag(ours), 1.0)


def test_atlas_info_as_bids_tsv(tmp_path):
    coexpression = _coexpression(83, 1)
    dk = volume_centroids(DK_IMAGE)
    expected = remove_distance(coexpression, centroids=dk, atlas_info=DK_INFO)
    info = pd.read_csv(DK_INFO).rename(columns={"id": "index", "label": "name"})
    info.loc[info["structure"] == "subcortex/brainstem", "structure"] = "subcortex"
    info.iloc[::-1].to_csv(tmp_path / "dseg.tsv", sep="\t", index=False)
    ours = remove_distance(coexpression, centroids=dk, atlas_info=tmp_path / "dseg.tsv")
    np.testing.assert_array_equal(ours, expected)


# ---------------------------------------------------------------------------------------------
# our behaviour
# ---------------------------------------------------------------------------------------------

def test_differential_stability(tables):
    frames = _frames(tables)
    ds = differential_stability(frames)
    assert isinstance(ds, pd.Series) and list(ds.index) == list(frames[0].columns)
    # the least noisy genes are the most stable
    assert ds.iloc[:5].mean() > ds.iloc[-5:].mean()
    np.testing.assert_allclose(ds.to_numpy(), keep_stable_genes(frames,
                                                                return_stability=True)[1])
    # one pair by hand: Spearman over the regions both donors have
    pair = differential_stability(frames[:2], rank=True)
    shared = frames[1].dropna(how="all").index
    a, b = frames[0].rank().loc[shared, "G0"], frames[1].rank().loc[shared, "G0"]
    assert pair["G0"] == pytest.approx(np.corrcoef(a, b)[0, 1])
    # a gene undefined in every pair gets 0
    frames[0]["G1"] = 1.0
    assert differential_stability(frames[:2])["G1"] == 0.0


def test_keep_stable_genes_dict_and_errors(tables):
    frames = dict(zip(["9861", "10021", "12876", "14380"], _frames(tables)))
    kept = keep_stable_genes(frames, threshold=0.5)
    assert list(kept) == list(frames) and kept["9861"].shape[1] == N_GENES // 2
    with pytest.raises(ValueError, match="threshold=90"):
        keep_stable_genes(frames, threshold=90)
    with pytest.raises(ValueError, match="same genes"):
        keep_stable_genes([f for f in frames.values()][:1] + [frames["10021"].iloc[:, :3]])
    with pytest.raises(ValueError, match="list"):
        keep_stable_genes(np.ones((3, 3)))


def test_column_correlations():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 4)), rng.normal(size=(12, 4))
    expected = [np.corrcoef(x[:, j], y[:, j])[0, 1] for j in range(4)]
    np.testing.assert_allclose(column_correlations(x, y), expected)
    x[:, 1] = 3.0
    assert np.isnan(column_correlations(x, y)[1])
    assert np.isnan(column_correlations(x[:0], y[:0])).all()
    with pytest.raises(ValueError, match="same shape"):
        column_correlations(x, y[:3])


def test_centroids_sources():
    centroids = volume_centroids(DK_IMAGE)
    assert sorted(centroids) == list(range(1, 84))
    assert centroids[1][0] < 0 < centroids[42][0]  # left / right hemisphere in MNI x
    import nibabel as nib
    assert atlas_centroids(nib.load(DK_IMAGE)).keys() == centroids.keys()

    class Checked:  # what ahba_app.atlas.check_atlas returns
        labels = np.array([2, 1])
        centroids = {1: np.zeros(3), 2: np.array([3.0, 4.0, 0.0])}

    out = remove_distance(np.array([[1, 0.2], [0.2, 1]]), Checked())
    np.testing.assert_allclose(out, [[1, 0], [0, 1]], atol=1e-12)  # two points fit exactly
    given = remove_distance(_coexpression(3, 0), centroids={5: [0, 0, 0], 6: [1, 0, 0],
                                                            7: [0, 3, 0]})
    assert given.shape == (3, 3)


def test_remove_distance_errors():
    coexpression = _coexpression(83, 1)
    with pytest.raises(ValueError, match="34 region labels"):
        remove_distance(coexpression, DK_IMAGE, labels=SUBSET)
    dk = volume_centroids(DK_IMAGE)
    with pytest.raises(ValueError, match="square"):
        remove_distance(coexpression[:5], centroids=dk)
    asymmetric = coexpression.copy()
    asymmetric[0, 1] += 0.1
    with pytest.raises(ValueError, match="not symmetric"):
        remove_distance(asymmetric, centroids=dk)
    with pytest.raises(ValueError, match=r"\[99\]"):
        remove_distance(_coexpression(2, 0), centroids=dk, labels=[1, 99])
    info = pd.read_csv(DK_INFO)
    with pytest.raises(ValueError, match=r"\[81, 82, 83\]"):
        remove_distance(coexpression, centroids=dk, atlas_info=info.iloc[:80])
    with pytest.raises(ValueError, match="'structure'"):
        remove_distance(coexpression, centroids=dk, atlas_info=info.drop(columns="structure"))
    with pytest.raises(ValueError, match="atlas or centroids"):
        remove_distance(coexpression)
