"""ahba_app.mouse against a local Allen API (tests/allen_api_server.py) on 127.0.0.1."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from ahba_app import fetch, mouse
from ahba_app.mouse import rma
from allen_api_server import AllenAPIServer, allen_api  # noqa: F401 (a fixture)

pytestmark = pytest.mark.network


@pytest.fixture(autouse=True)
def _quick_network(monkeypatch):
    """Short waits, so that the fault cases take a fraction of a second."""
    monkeypatch.setattr(fetch, "BACKOFF", 0.01)
    monkeypatch.setattr(fetch, "READ_TIMEOUT", 2.0)


def _queries(server, model=None) -> list:
    return [params for name, params in server.requests if model is None or name == model]


# --------------------------------------------------------------------------------------------
# What the functions return

def test_available_lists_are_copies():
    for lister, size in ((mouse.available_gene_info, 16), (mouse.available_structure_info, 17),
                         (mouse.available_unionization_info, 8)):
        first = lister()
        assert isinstance(first, list) and len(first) == size == len(set(first))
        first.append("changed")
        assert "changed" not in lister()


def test_gene_info(allen_api):
    data = allen_api.dataset
    pdyn = data.gene(acronym="Pdyn").attrs
    table = mouse.get_gene_info(acronym="Pdyn", attributes=["id", "name"])
    assert list(table.columns) == ["id", "name"] and table.index.name == "acronym"
    assert table.loc["Pdyn", "id"] == pdyn["id"] and table.loc["Pdyn", "name"] == "prodynorphin"

    everything = mouse.get_gene_info(id=[163028, 11210, 18376])
    assert list(everything.index) == [11210, 18376, 163028]           # sorted
    assert list(everything.columns) == [a for a in mouse.available_gene_info() if a != "id"]
    for gene_id, row in everything.iterrows():
        attrs = data.gene(id=gene_id).attrs
        for key, value in row.items():
            assert (pd.isna(value) and attrs[key] is None) or value == attrs[key], key

    by_name = mouse.get_gene_info(name=["CD99 antigen", data.gene(acronym="Slc6a3").attrs["name"]],
                                  attributes="acronym")
    assert sorted(by_name["acronym"]) == ["Cd99", "Slc6a3"]          # a name with commas
    # numpy and pandas identifiers
    assert list(mouse.get_gene_info(id=pd.Series([18376, 11210]), attributes="acronym")
                ["acronym"]) == ["Ace", "Pdyn"]
    assert mouse.get_gene_info(id=np.int64(18376), attributes="acronym").shape == (1, 1)
    # the human gene of the same name is not a mouse brain gene
    assert list(mouse.get_gene_info(name="prodynorphin", attributes="id")["id"]) == [18376]


def test_structure_info_and_coordinates(allen_api):
    info = mouse.get_structure_info(id=[1018, 22], attributes=["acronym", "name"])
    assert info.to_dict("index") == {
        22: {"acronym": "PTLp", "name": "Posterior parietal association areas"},
        1018: {"acronym": "AUDv", "name": "Ventral auditory area"}}
    assert len(mouse.get_structure_info(id=22).columns) == 16
    # an acronym also used in another ontology: only the mouse atlas's structure
    assert list(mouse.get_structure_info(acronym="SSp", attributes="id")["id"]) == [322]
    # a name with an apostrophe, alone and in a list
    assert list(mouse.get_structure_info(name="Ammon's horn", attributes="id")["id"]) == [375]
    both = mouse.get_structure_info(name=["Ammon's horn", "Infralimbic area"], attributes="id")
    assert sorted(both["id"]) == [44, 375]

    coords = mouse.get_structure_coordinates(id=1018)
    assert list(coords.columns) == ["structure_id", "x", "y", "z"]
    assert coords.values.tolist() == [[1018, 7800, 3400, 1050]]
    coords = mouse.get_structure_coordinates(acronym=["SSp", "AUDv"], reference_space="coronal")
    assert coords.values.tolist() == [[322, 5740, 2060, 8670], [1018, 7800, 3400, 10350]]
    with pytest.raises(mouse.AllenNotFoundError, match="fiber tracts.*sagittal reference"):
        mouse.get_structure_coordinates(acronym="fiber tracts")     # no centre
    with pytest.raises(ValueError, match="reference_space 'axial'"):
        mouse.get_structure_coordinates(id=22, reference_space="axial")


def _expected_unionization(data, gene_acronym, plane, structures, measures):
    """Rows (gene, experiment, structure) -> figures, straight from the server's records."""
    rows = {}
    for exp in data.experiments:
        gene = exp.assoc["genes"][0].attrs
        if (gene["acronym"] != gene_acronym or exp.attrs["failed"]
                or exp.assoc["plane_of_section"].attrs["name"] != plane
                or exp.assoc["products"][0].attrs["id"] != 1):
            continue
        for u in exp.assoc["structure_unionizes"]:
            if u.attrs["structure_id"] in structures:
                rows[(gene["id"], exp.attrs["id"], u.attrs["structure_id"])] = \
                    [u.attrs[m] for m in measures]
    return rows


def test_unionization(allen_api):
    data = allen_api.dataset
    measures = ["expression_energy", "sum_pixels"]
    structures = [22, 31, 375]
    expected = _expected_unionization(data, "Snca", "sagittal", structures, measures)
    # three experiments (a failed one and one of another product are left out); 990 lacks 22
    assert sorted({k[1] for k in expected}) == [988, 990, 79904550]
    each = mouse.get_unionization_from_gene(acronym="Snca", structures=structures,
                                            attributes=measures, average=False)
    assert each.index.names == ["gene_id", "experiment_id", "structure_id"]
    assert list(each.columns) == measures
    assert {k: list(v) for k, v in zip(each.index, each.values)} == expected

    mean = mouse.get_unionization_from_gene(acronym="Snca", structures=structures,
                                            attributes=measures)
    assert mean.index.names == ["gene_id", "structure_id"]
    for (gene, sid), row in mean.iterrows():
        values = np.array([v for k, v in expected.items() if k[2] == sid])
        assert np.allclose(row.values, values.mean(axis=0), rtol=1e-15, atol=0)
    assert len(mean) == 3

    # default: expression_density of the 56 structures of Rubinov et al. (2015)
    default = mouse.get_unionization_from_gene(id=18376)
    assert list(default.columns) == ["expression_density"]
    assert sorted(default.index.get_level_values("structure_id")) == \
        sorted(mouse.fetch_rubinov2015_structures("id"))
    assert default.loc[(18376, 22), "expression_density"] == 0.024840
    every = mouse.get_unionization_from_gene(acronym="Gba", slicing_direction="coronal",
                                             structures=[182305713], attributes="all")
    assert list(every.columns) == mouse.available_unionization_info()
    assert every.loc[(14466, 182305713), "voxel_energy_cv"] == 0.923913


def test_unionization_structures_by_acronym_and_name(allen_api, tmp_path):
    kwargs = dict(acronym="Pdyn", data_dir=tmp_path)
    by_id = mouse.get_unionization_from_gene(structures=[31, 375], **kwargs)
    for _ in range(2):   # the first call queries the structure list, the second reads it
        named = mouse.get_unionization_from_gene(structures=["ACA", "Ammon's horn"], **kwargs)
        pd.testing.assert_frame_equal(named, by_id)
    assert (tmp_path / "allenmouse" / "reference_atlas.csv").is_file()
    assert len(_queries(allen_api, "Structure")) == 1
    mixed = mouse.get_unionization_from_gene(structures=["ACA", 375, "375"], **kwargs)
    pd.testing.assert_frame_equal(mixed, by_id)
    with pytest.raises(mouse.AllenNotFoundError, match="'no such area'"):
        mouse.get_unionization_from_gene(structures=["ACA", "no such area"], **kwargs)


def test_unionization_genes_without_experiments(allen_api):
    with pytest.raises(mouse.AllenNotFoundError, match="coronal experiments"):
        mouse.get_unionization_from_gene(id=18608, slicing_direction="coronal")
    with pytest.raises(mouse.AllenNotFoundError, match="'notagene'"):
        mouse.get_unionization_from_gene(acronym="notagene")
    with pytest.warns(UserWarning, match="'Pde6h'"):
        table = mouse.get_unionization_from_gene(acronym=["Gba", "Pde6h"],
                                                 slicing_direction="coronal", structures=[22])
    assert list(table.index) == [(14466, 22)]
    with pytest.raises(ValueError, match="slicing_direction 'axial'"):
        mouse.get_unionization_from_gene(acronym="Gba", slicing_direction="axial")
    with pytest.raises(ValueError, match="'density'.*available_unionization_info"):
        mouse.get_unionization_from_gene(acronym="Gba", attributes="density")


def test_bad_identifiers_and_attributes(allen_api):
    with pytest.raises(mouse.AllenNotFoundError, match="acronym.*'notagene'"):
        mouse.get_gene_info(acronym="notagene")
    with pytest.raises(mouse.AllenNotFoundError, match="id -100000"):
        mouse.get_structure_info(id=-100000)
    # one unknown gene of a list is named (abagen returned the others silently)
    with pytest.raises(mouse.AllenNotFoundError, match="'nope'") as error:
        mouse.get_gene_info(acronym=["Pdyn", "nope", "Ace"])
    assert "Pdyn" not in str(error.value)
    with pytest.raises(ValueError, match="'invalid'.*available_gene_info"):
        mouse.get_gene_info(acronym="Pdyn", attributes="invalid")
    with pytest.raises(ValueError, match="'invalid'.*available_structure_info"):
        mouse.get_structure_info(id=22, attributes=["name", "invalid"])
    with pytest.raises(ValueError, match="id must be integers"):
        mouse.get_gene_info(id="Pdyn")
    with pytest.raises(ValueError, match="empty"):
        mouse.get_gene_info(acronym=[])
    with pytest.raises(TypeError, match="id=, acronym= or name="):
        mouse.get_structure_info()
    with pytest.raises(ValueError, match="both kinds of quotes"):
        mouse.get_gene_info(name="a 'b\" c")
    assert len(allen_api.requests) == 3        # bad arguments are refused before any query


# --------------------------------------------------------------------------------------------
# The network: paging, faults, no network, mirrors

def test_paging_collects_every_row(allen_api):
    allen_api.page_limit = 7
    table = mouse.fetch_allenref_structures(cache=False, verbose=False)
    ontology = sorted(s.attrs["id"] for s in allen_api.dataset.structures
                      if s.attrs["ontology_id"] == 1)
    assert table["id"].tolist() == ontology
    starts = [int(p["start_row"]) for p in _queries(allen_api, "Structure")]
    assert starts == list(range(0, len(ontology), 7))
    # more identifiers than the server's default page (50) and than one query holds
    allen_api.page_limit = None
    ids = ontology[:60]
    info = mouse.get_structure_info(id=ids, attributes="acronym")
    assert info.index.tolist() == ids


def test_server_that_does_not_page(allen_api):
    allen_api.page_limit = 7
    allen_api.fault("first_page", after=1)
    with pytest.raises(mouse.AllenAPIError, match="asked for rows from 7, the server sent rows "
                                                  "from 0"):
        mouse.fetch_allenref_structures(cache=False, verbose=False)


def test_long_lists_are_split(allen_api, monkeypatch):
    monkeypatch.setattr(rma, "VALUES_PER_QUERY", 4)
    ids = [22, 31, 44, 95, 151, 159, 254, 322, 375]
    info = mouse.get_structure_info(id=ids, attributes="acronym")
    assert info.index.tolist() == sorted(ids)
    assert len(_queries(allen_api)) == 3


def test_server_error_then_success(allen_api):
    allen_api.fault("http500", times=2)
    table = mouse.get_gene_info(id=18376, attributes="acronym")
    assert table.loc[18376, "acronym"] == "Pdyn"
    assert len(allen_api.requests) == 3


def test_dropped_connection_then_success(allen_api):
    allen_api.fault("drop")
    assert mouse.get_structure_info(id=22, attributes="acronym").loc[22, "acronym"] == "PTLp"
    assert len(allen_api.requests) == 2


def test_slow_answer_times_out_then_succeeds(allen_api, monkeypatch):
    monkeypatch.setattr(fetch, "READ_TIMEOUT", 0.3)
    allen_api.fault("slow", delay=1.5)
    assert mouse.get_gene_info(id=18376, attributes="acronym").shape == (1, 1)
    assert len(allen_api.requests) == 2


def test_slow_answers_give_up(allen_api, monkeypatch):
    monkeypatch.setattr(fetch, "READ_TIMEOUT", 0.2)
    allen_api.fault("slow", times=fetch.RETRIES + 1, delay=1.0)
    with pytest.raises(mouse.AllenAPIError, match=r"Gene/query\.json\?criteria=\[id\$eq18376\]"
                                                  r".*timed out.*5 tries"):
        mouse.get_gene_info(id=18376)
    assert len(allen_api.requests) == fetch.RETRIES + 1


def test_server_errors_give_up(allen_api):
    allen_api.fault("http500", times=fetch.RETRIES + 1)
    with pytest.raises(mouse.AllenAPIError, match="HTTP 500.*5 tries"):
        mouse.get_structure_coordinates(id=22)
    assert len(allen_api.requests) == fetch.RETRIES + 1


def test_success_false_names_the_query(allen_api):
    allen_api.fault("success_false")
    with pytest.raises(mouse.AllenQueryError, match=r"refused the query .*Structure/query\.json"
                                                    r"\?criteria=\[id\$eq22\].*fault"):
        mouse.get_structure_info(id=22)
    assert len(allen_api.requests) == 1       # no retry: asking again gets the same answer


def test_malformed_json_names_the_query(allen_api):
    allen_api.fault("malformed")
    with pytest.raises(mouse.AllenAPIError, match=r"SectionDataSet/query\.json.*not valid JSON"):
        mouse.get_unionization_from_gene(acronym="Pdyn", structures=[22])
    assert len(allen_api.requests) == 1


def _closed_port_url() -> str:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_no_network_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("AHBA_APP_ALLEN_API", _closed_port_url())
    monkeypatch.setattr(fetch, "BACKOFF", 5.0)    # a retry would show as a long wait
    for call in (lambda: mouse.get_gene_info(acronym="Pdyn"),
                 lambda: mouse.fetch_allenref_genes(data_dir=tmp_path, verbose=False),
                 lambda: mouse.get_unionization_from_gene(acronym="Pdyn")):
        start = time.monotonic()
        with pytest.raises(mouse.AllenAPIError, match="could not be reached.*AHBA_APP_ALLEN_API"):
            call()
        assert time.monotonic() - start < 2.0
    assert not (tmp_path / "allenmouse" / "reference_genes.csv").exists()


def test_api_url_argument_and_environment(allen_api, monkeypatch):
    monkeypatch.setenv("AHBA_APP_ALLEN_API", _closed_port_url())
    with pytest.raises(mouse.AllenAPIError):
        mouse.get_gene_info(id=18376)
    table = mouse.get_gene_info(id=18376, attributes="acronym", api_url=allen_api.url + "/")
    assert table.loc[18376, "acronym"] == "Pdyn"
    assert rma.api_url() == os.environ["AHBA_APP_ALLEN_API"]
    monkeypatch.delenv("AHBA_APP_ALLEN_API")
    assert rma.api_url() == "https://api.brain-map.org"


def test_wrong_address_is_a_clear_error(allen_api):
    with pytest.raises(mouse.AllenAPIError, match=r"HTTP 404 Not Found; is http://127\.0\.0\.1:"
                                                  r"\d+/v1 the Allen API"):
        mouse.get_gene_info(id=18376, api_url=allen_api.url + "/v1")
    assert len(allen_api.requests) == 1


def test_identifier_forms():
    assert rma.identifiers(id=[22.0, np.int32(31), "44", 22], kind="structure") == \
        ("id", [22, 31, 44])
    assert rma.identifiers(acronym="ACA", name="ignored", kind="structure") == ("acronym", ["ACA"])
    assert rma.match("name", ["Ammon's horn", "x"]) == '[name$in"Ammon\'s horn",\'x\']'
    for bad in (True, 2.5, "Pdyn"):
        with pytest.raises(ValueError, match="id must be integers"):
            rma.identifiers(id=bad, kind="gene")
    with pytest.raises(ValueError, match="gene acronyms must be strings"):
        rma.identifiers(acronym=["Pdyn", 5], kind="gene")
    with pytest.raises(ValueError, match="square brackets"):
        rma.match("name", ["a [b]"])


def test_verbose_prints_the_queries(allen_api, capsys):
    mouse.get_structure_info(id=22, verbose=True)
    assert "Querying " + allen_api.url + "/api/v2/data/Structure/query.json?criteria=[id$eq22]" \
        in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The reference lists and their cache

def test_reference_lists_are_cached_and_used_offline(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    with AllenAPIServer() as server:
        monkeypatch.setenv("AHBA_APP_ALLEN_API", server.url)
        genes = mouse.fetch_allenref_genes(data_dir=folder)
        structures = mouse.fetch_allenref_structures(data_dir=folder, verbose=False)
        assert len(server.requests) == 2
    assert list(genes.columns) == ["id", "acronym", "name"]
    assert genes["id"].tolist() == sorted(g.attrs["id"] for g in server.dataset.genes
                                          if g.attrs["organism_id"] == 2)
    assert sorted(p.name for p in (folder / "allenmouse").iterdir()) == \
        ["reference_atlas.csv", "reference_genes.csv"]        # no temporary file left
    # the server is gone: the cache answers, from a read-only folder too
    (folder / "allenmouse").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        pd.testing.assert_frame_equal(mouse.fetch_allenref_genes(data_dir=folder), genes)
        assert mouse.fetch_allenref_structures("acronym", data_dir=folder / "allenmouse") == \
            structures["acronym"].tolist()
        assert mouse.fetch_allenref_genes("id", data_dir=folder) == genes["id"].tolist()
        with pytest.raises(mouse.AllenAPIError, match="could not be reached"):
            mouse.fetch_allenref_genes(cache=False, data_dir=folder, verbose=False)
    finally:
        (folder / "allenmouse").chmod(stat.S_IRWXU)
    # the default data folder: $AHBA_DATA, then $ABAGEN_DATA (abagen's folder is reused)
    monkeypatch.setenv("ABAGEN_DATA", str(folder))
    pd.testing.assert_frame_equal(mouse.fetch_allenref_structures(), structures)


def test_cache_false_replaces_the_table(allen_api, tmp_path):
    path = tmp_path / "allenmouse" / "reference_genes.csv"
    path.parent.mkdir()
    path.write_text("id,acronym,name\n1,Old,an old table\n")
    assert mouse.fetch_allenref_genes("acronym", data_dir=tmp_path) == ["Old"]
    fresh = mouse.fetch_allenref_genes(cache=False, data_dir=tmp_path, verbose=False)
    assert "Old" not in fresh["acronym"].tolist() and len(fresh) == 10
    assert pd.read_csv(path)["id"].tolist() == fresh["id"].tolist()


def test_unwritable_folder_still_returns_the_table(allen_api, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="Could not keep the Allen gene list.*writable data_dir"):
        genes = mouse.fetch_allenref_genes(data_dir=blocker / "data", verbose=False)
    assert len(genes) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_cached_text_stays_text(tmp_path):
    """'NA', 'null' or 'None' are names, not missing values (abagen read them back as NaN)."""
    path = tmp_path / "allenmouse" / "reference_atlas.csv"
    path.parent.mkdir()
    path.write_text('id,acronym,name\n5,NA,Nucleus ambiguus\n7,None,"null, sort of"\n')
    table = mouse.fetch_allenref_structures(data_dir=tmp_path)
    assert table.values.tolist() == [[5, "NA", "Nucleus ambiguus"], [7, "None", "null, sort of"]]


def test_broken_cache_is_a_clear_error(tmp_path):
    path = tmp_path / "allenmouse" / "reference_genes.csv"
    path.parent.mkdir()
    path.write_text("gene,symbol\n1,x\n")
    with pytest.raises(ValueError, match=r"reference_genes\.csv is not a table of id, acronym, "
                                         r"name.*cache=False"):
        mouse.fetch_allenref_genes(data_dir=tmp_path)
    path.write_text("id,acronym,name\none,x,y\n")
    with pytest.raises(ValueError, match="delete it"):
        mouse.fetch_allenref_genes(data_dir=tmp_path)


def test_rubinov2015_structures():
    table = mouse.fetch_rubinov2015_structures()
    assert table.shape == (56, 3) and list(table.columns) == ["id", "acronym", "name"]
    assert table["id"].dtype == np.int64 and table["id"].is_unique
    assert table.iloc[0].tolist() == [22, "PTLp", "Posterior parietal association areas"]
    assert mouse.fetch_rubinov2015_structures("name")[8] == "Ammon's horn"
    assert mouse.fetch_rubinov2015_structures("acronym") == table["acronym"].tolist()
    for fetcher in (mouse.fetch_rubinov2015_structures, mouse.fetch_allenref_genes,
                    mouse.fetch_allenref_structures):
        with pytest.raises(ValueError, match="entry_type 'wrong'"):
            fetcher(entry_type="wrong")


def test_reachable_from_the_package():
    """``import ahba_app as abagen; abagen.mouse.io...`` works, as with abagen."""
    code = ("import ahba_app as abagen; print(abagen.mouse.io.fetch_allenref_genes.__module__, "
            "sorted(abagen.mouse.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("ahba_app.mouse.io ")
    for name in ("available_gene_info", "available_structure_info", "available_unionization_info",
                 "get_gene_info", "get_structure_info", "get_structure_coordinates",
                 "get_unionization_from_gene", "fetch_allenref_genes",
                 "fetch_allenref_structures", "fetch_rubinov2015_structures"):
        assert f"'{name}'" in out

