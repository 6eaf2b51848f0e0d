"""ahba_app.mouse against abagen 0.1.3's abagen.mouse, both asking the same local Allen API."""

from __future__ import annotations

import pandas as pd
import pytest

from ahba_app import mouse
from allen_api_server import ABAGEN_REDIRECT, AllenAPIServer
from oracle import run_abagen

pytestmark = [pytest.mark.oracle, pytest.mark.network]

# (label, function, keyword arguments): every function, with ids, acronyms, names, lists,
# attribute subsets, both planes and both averaging modes
CASES = [
    ("avail_gene", "available_gene_info", {}),
    ("avail_structure", "available_structure_info", {}),
    ("avail_unionization", "available_unionization_info", {}),
    ("gene_acronym", "get_gene_info", dict(acronym="Pdyn", attributes=["id", "name"])),
    ("gene_acronyms", "get_gene_info", dict(acronym=["Ace", "Cd99"], attributes=["id", "name"])),
    ("gene_ids_all", "get_gene_info", dict(id=[20617, 18376, 11210])),
    ("gene_id_one", "get_gene_info", dict(id=84193, attributes="entrez_id")),
    ("gene_name", "get_gene_info", dict(name="prodynorphin", attributes="acronym")),
    ("gene_names", "get_gene_info", dict(name=["CD99 antigen", "synuclein, alpha"])),
    ("gene_commas", "get_gene_info", dict(acronym="Slc6a3")),
    ("structure_ids", "get_structure_info", dict(id=[22, 1018], attributes=["acronym", "name"])),
    ("structure_acronym", "get_structure_info", dict(acronym="SSp")),
    ("structure_acronyms", "get_structure_info",
     dict(acronym=["ACA", "ILA", "CA"], attributes=["graph_order", "structure_id_path"])),
    ("structure_name", "get_structure_info", dict(name="Ammon's horn", attributes="id")),
    ("structure_names", "get_structure_info",
     dict(name=["Infralimbic area", "Ventral auditory area"])),
    ("coords_id", "get_structure_coordinates", dict(id=1018)),
    ("coords_acronym_coronal", "get_structure_coordinates",
     dict(acronym="SSp", reference_space="coronal")),
    ("coords_ids", "get_structure_coordinates", dict(id=[1018, 22, 31])),
    ("coords_name", "get_structure_coordinates", dict(name="Ventral auditory area")),
    ("union_doc", "get_unionization_from_gene", dict(acronym="Pdyn", structures=[22, 31])),
    ("union_two_genes", "get_unionization_from_gene",
     dict(acronym=["Ace", "Cd99"], structures=[22, 31])),
    ("union_default", "get_unionization_from_gene", dict(acronym="Snca")),
    ("union_each_all", "get_unionization_from_gene",
     dict(acronym="Snca", average=False, attributes="all")),
    ("union_coronal_subset", "get_unionization_from_gene",
     dict(id=84193, slicing_direction="coronal",
          attributes=["expression_energy", "sum_pixels"])),
    ("union_gba_each", "get_unionization_from_gene",
     dict(acronym="Gba", slicing_direction="coronal", average=False,
          structures=[182305713, 182305709, 182305705], attributes="voxel_energy_cv")),
    ("union_name_genes", "get_unionization_from_gene",
     dict(name=["synuclein, alpha", "prodynorphin"], structures=[22, 375, 1018, 31])),
    # the only call with structure acronyms/names: abagen's look-up works on its first call
    ("union_structure_names", "get_unionization_from_gene",
     dict(acronym="Snca", structures=["ACA", "Ammon's horn"], average=False)),
    ("rubinov", "fetch_rubinov2015_structures", {}),
    ("rubinov_names", "fetch_rubinov2015_structures", dict(entry_type="name")),
    ("genes_acronyms", "fetch_allenref_genes", dict(entry_type="acronym", verbose=False)),
    ("genes_cached", "fetch_allenref_genes", dict(verbose=False)),
    ("structures_ids", "fetch_allenref_structures", dict(entry_type="id", verbose=False)),
    ("structures_cached", "fetch_allenref_structures", dict(verbose=False)),
]
# calls both must refuse with a ValueError
ERRORS = [
    ("err_gene", "get_gene_info", dict(acronym="notagene")),
    ("err_structure", "get_structure_info", dict(id=-100000)),
    ("err_coords", "get_structure_coordinates", dict(acronym="notastructure")),
    ("err_direction", "get_unionization_from_gene", dict(acronym="Gba", slicing_direction="x")),
    ("err_no_experiment", "get_unionization_from_gene",
     dict(id=18608, slicing_direction="coronal", structures=[22])),
    ("err_attribute", "get_gene_info", dict(acronym="Pdyn", attributes="invalid")),
]

ORACLE = ABAGEN_REDIRECT + '''
from abagen import mouse

for label, function, kwargs in PARAMS["cases"]:
    save(label, getattr(mouse, function)(**kwargs))
for label, function, kwargs in PARAMS["errors"]:
    try:
        getattr(mouse, function)(**kwargs)
        save(label, "no error")
    except Exception as exc:
        save(label, [type(exc).__name__, isinstance(exc, ValueError)])
# more genes than the Allen API's default page of 50 rows
save("many_structures", mouse.get_structure_info(id=PARAMS["many"], attributes="acronym"))
# the structure look-up once abagen's list is cached: acronyms reach the API as ids
try:
    save("names_cached", mouse.get_unionization_from_gene(acronym="Snca",
                                                          structures=["ACA", "Ammon's horn"]))
except Exception as exc:
    save("names_cached", [type(exc).__name__, str(exc)[:300]])
'''


def _plain_index(index: pd.Index) -> pd.Index:
    if isinstance(index, pd.MultiIndex):
        return index.set_levels([_plain_index(level) for level in index.levels])
    return index.astype(object) if pd.api.types.is_string_dtype(index) else index


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Text as object (pandas 3 gives text the str dtype; abagen's pandas 1.5, object)."""
    frame = frame.copy()
    for column in frame.columns:
        if pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].astype(object)
    frame.index = _plain_index(frame.index)
    frame.columns = _plain_index(frame.columns)
    return frame


def assert_same(ours, theirs, label):
    if isinstance(theirs, pd.DataFrame):
        assert isinstance(ours, pd.DataFrame), label
        pd.testing.assert_frame_equal(_plain(ours), _plain(theirs), check_exact=True,
                                      obj=label)
    else:
        assert list(ours) == list(theirs), label


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The results of every case from abagen and from ahba-app, on one server."""
    work = tmp_path_factory.mktemp("mouse-parity")
    with AllenAPIServer() as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("AHBA_APP_ALLEN_API", server.url)
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        patch.setenv("no_proxy", "127.0.0.1,localhost")
        many = sorted(s.attrs["id"] for s in server.dataset.structures
                      if s.attrs["ontology_id"] == 1)
        theirs = run_abagen(ORACLE, work, data=str(work / "abagen-data"), cases=CASES,
                            errors=ERRORS, many=many)
        patch.setenv("AHBA_DATA", str(work / "ahba-data"))
        ours = {label: getattr(mouse, function)(**kwargs) for label, function, kwargs in CASES}
        ours["many_structures"] = mouse.get_structure_info(id=many, attributes="acronym")
        ours["names_cached"] = mouse.get_unionization_from_gene(
            acronym="Snca", structures=["ACA", "Ammon's horn"])
        for label, function, kwargs in ERRORS:
            with pytest.raises(ValueError) as error:
                getattr(mouse, function)(**kwargs)
            ours[label] = [type(error.value).__name__, True]
    return ours, theirs, many


@pytest.mark.parametrize("label", [case[0] for case in CASES])
def test_same_as_abagen(both, label):
    ours, theirs, _ = both
    if label in ("genes_cached", "structures_cached"):
        assert list(ours[label].columns) == ["id", "acronym", "name"]
    assert_same(ours[label], theirs[label], label)


@pytest.mark.parametrize("label", [case[0] for case in ERRORS])
def test_same_errors_as_abagen(both, label):
    ours, theirs, _ = both
    assert theirs[label][1] is True, theirs[label]         # abagen: a ValueError too
    assert ours[label][1] is True


def test_more_rows_than_one_page(both):
    """abagen 0.1.3 returns the API's first 50 rows; ahba-app pages through all of them."""
    ours, theirs, many = both
    assert len(many) > 50
    assert len(theirs["many_structures"]) == 50
    assert ours["many_structures"].index.tolist() == many
    pd.testing.assert_frame_equal(_plain(ours["many_structures"].loc[
        theirs["many_structures"].index]), _plain(theirs["many_structures"]))


def test_structure_names_once_the_list_is_cached(both):
    """abagen 0.1.3 recodes acronyms to ids wrongly once its structure list is cached."""
    ours, theirs, _ = both
    assert isinstance(theirs["names_cached"], list), "abagen's cached look-up now works"
    expected = ours["union_structure_names"].groupby(["gene_id", "structure_id"]).mean()
    pd.testing.assert_frame_equal(ours["names_cached"], expected)
    assert sorted(expected.index.get_level_values("structure_id").unique()) == [31, 375]


def test_reference_list_columns_on_the_first_call(tmp_path, monkeypatch):
    """abagen's first (uncached) call orders the columns as the API's JSON keys; ahba-app always
    gives ``id, acronym, name``, the order abagen documents and reads back from its cache."""
    with AllenAPIServer() as server:
        monkeypatch.setenv("AHBA_APP_ALLEN_API", server.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        theirs = run_abagen(ABAGEN_REDIRECT + '''
from abagen import mouse
save("first", mouse.fetch_allenref_structures(verbose=False))
save("second", mouse.fetch_allenref_structures(verbose=False))
''', tmp_path, data=str(tmp_path / "abagen-data"))
        ours = mouse.fetch_allenref_structures(data_dir=tmp_path / "ours", verbose=False)
    assert list(theirs["first"].columns) == ["acronym", "id", "name"]
    assert list(theirs["second"].columns) == list(ours.columns) == ["id", "acronym", "name"]
    assert_same(ours, theirs["second"], "second")
    assert_same(ours, theirs["first"][["id", "acronym", "name"]], "first")
