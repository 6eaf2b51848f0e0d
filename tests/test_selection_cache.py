"""ahba_app.selection_cache: probe choices stored beside the matrix caches.

A choice made on cached data is stored, and a later selection with the same inputs reads it
instead of choosing again, with the same table and the same values. Any change of input makes
a different key; a damaged or unfitting file is ignored and replaced; a folder that cannot be
written only means nothing is stored.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from ahba_app import io, pipeline, probes, selection_cache

DONORS = ["9861", "10021"]


@pytest.fixture
def data(ahba_small, tmp_path):
    """Two donors' files copied to a folder of this test (their caches, and choices, too)."""
    for donor in DONORS:
        name = f"normalized_microarray_donor{donor}"
        shutil.copytree(ahba_small / "microarray" / name, tmp_path / "microarray" / name,
                        ignore=shutil.ignore_patterns(".ahba-cache"))
    files, _ = pipeline.locate_data(tmp_path, DONORS)
    table = pipeline.load_probe_table(files)
    annotations = {d: pipeline.prepare_donor_samples(files[d], table)[0] for d in DONORS}
    table = pipeline.filter_probe_table(files, annotations, table)
    microarray = {d: io.load_matrix(files[d]["microarray"]) for d in DONORS}
    return microarray, annotations, table


def stored_files(microarray) -> list:
    folder = next(iter(microarray.values())).cache.parent
    return sorted(folder.glob(selection_cache.PREFIX + "*"))


@pytest.fixture
def calls(monkeypatch):
    """How many times each selection method really ran."""
    counted = {}
    for name, method in probes.SELECTION_METHODS.items():
        def spy(*args, _name=name, _method=method, **kwargs):
            counted[_name] = counted.get(_name, 0) + 1
            return _method(*args, **kwargs)
        monkeypatch.setitem(probes.SELECTION_METHODS, name, spy)
    return counted


def select(microarray, annotations, table, **kwargs):
    kwargs.setdefault("store", selection_cache.ChoiceStore())
    chosen, info = probes.select_probes(microarray, annotations, table, **kwargs)
    return info, {d: chosen.frame(d) for d in chosen.donors}


def assert_same(got, expected):
    pd.testing.assert_frame_equal(got[0], expected[0], check_exact=True)
    for donor, frame in expected[1].items():
        pd.testing.assert_frame_equal(got[1][donor], frame, check_exact=True)


@pytest.mark.parametrize("method,donor_probes", [("diff_stability", "aggregate"),
                                                 ("max_variance", "independent"),
                                                 ("corr_intensity", "common")])
def test_the_same_selection_reads_the_stored_choice(data, calls, method, donor_probes):
    first = select(*data, method=method, donor_probes=donor_probes)
    assert calls == {method: 1 if donor_probes == "aggregate" else len(DONORS)}
    assert len(stored_files(data[0])) == 1
    again = select(*data, method=method, donor_probes=donor_probes)
    assert calls == {method: 1 if donor_probes == "aggregate" else len(DONORS)}  # not again
    assert_same(again, first)


def test_any_changed_input_chooses_again(data, calls):
    microarray, annotations, table = data
    select(microarray, annotations, table)
    fewer_samples = dict(annotations, **{"9861": annotations["9861"].iloc[1:]})
    select(microarray, fewer_samples, table)
    moved = annotations["10021"].copy()
    moved.iloc[0, moved.columns.get_loc("structure_id")] += 1
    select(microarray, dict(annotations, **{"10021": moved}), table)
    select(microarray, annotations, table.iloc[1:])
    select(microarray, annotations, table, method="max_intensity")
    assert calls == {"diff_stability": 4, "max_intensity": 1}
    assert len(stored_files(microarray)) == 5


def test_the_key_digests_the_matrix_content(data):
    microarray, annotations, table = data
    genes = probes._Genes.from_probes(table)
    store = selection_cache.ChoiceStore()
    base = probes._choice_store(probes._Data(microarray, annotations, genes), "diff_stability",
                                "aggregate", store)
    first = next(iter(microarray))
    other = dict(microarray, **{first: io.CachedMatrix(
        **{**microarray[first].__dict__, "content_id": microarray[first].content_id + "x"})})
    changed = probes._choice_store(probes._Data(other, annotations, genes), "diff_stability",
                                   "aggregate", store)
    assert changed[0].parent == base[0].parent and changed[1] != base[1]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong probe", "wrong key"])
def test_a_damaged_or_unfitting_store_is_replaced(data, calls, damage):
    expected = select(*data)
    [path] = stored_files(data[0])
    content = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not an npz file at all")
    elif damage == "truncated":
        path.write_bytes(content[:len(content) // 2])
    else:
        with np.load(path) as stored:
            arrays = dict(stored)
        if damage == "wrong probe":  # the first gene's probe given to the last gene
            ids = arrays["probe_ids"]
            ids[0, -1] = ids[0, 0]
        else:
            arrays["key"] = np.array("0" * 64)
        with open(path, "wb") as out:
            np.savez(out, **arrays)
    got = select(*data)
    assert calls == {"diff_stability": 2}
    assert_same(got, expected)
    select(*data)  # the file was written again, whole: read this time
    assert calls == {"diff_stability": 2}


def test_an_unwritable_folder_stores_nothing(data, calls, monkeypatch):
    def refuse(location):
        raise PermissionError(13, "Permission denied", str(location))

    from ahba_app import atomic

    monkeypatch.setattr(atomic, "create_temporary", refuse)
    expected = select(*data)
    assert stored_files(data[0]) == []
    assert_same(select(*data), expected)
    assert calls == {"diff_stability": 2}


def test_tables_given_as_frames_are_never_stored(data, calls):
    microarray, annotations, table = data
    frames = {d: m.to_frame() for d, m in microarray.items()}
    select(frames, annotations, table)
    select(frames, annotations, table)
    assert calls == {"diff_stability": 2}
    assert stored_files(microarray) == []


def test_the_api_gives_the_same_table_when_the_choice_is_read(data, tmp_path, calls):
    import ahba_app

    atlas = ahba_app.fetch_desikan_killiany()
    kwargs = dict(donors=DONORS, data_dir=tmp_path)
    first = ahba_app.get_expression_data(atlas["image"], atlas["info"], **kwargs)
    again = ahba_app.get_expression_data(atlas["image"], atlas["info"], **kwargs)
    assert calls == {"diff_stability": 1}
    pd.testing.assert_frame_equal(again, first, check_exact=True)


def test_without_a_store_nothing_is_read_or_written(data, calls):
    select(*data, store=None)
    select(*data, store=None)
    assert calls == {"diff_stability": 2} and not stored_files(data[0])


def test_a_store_may_be_another_folder(data, tmp_path, calls):
    folder = tmp_path / "choices"
    folder.mkdir()
    first = select(*data, store=selection_cache.ChoiceStore(folder))
    assert len(list(folder.glob("selection-*.npz"))) == 1 and not stored_files(data[0])
    assert_same(select(*data, store=selection_cache.ChoiceStore(folder)), first)
    assert calls == {"diff_stability": 1}


def test_the_key_digests_the_selection_code(data, calls, monkeypatch):
    """A change of the code that chooses probes never reads a choice the old code made (so the
    test session need not delete stored choices)."""
    select(*data)
    monkeypatch.setattr(selection_cache, "code_version", lambda: "edited")
    select(*data)
    assert calls == {"diff_stability": 2} and len(stored_files(data[0])) == 2
